// The NaN/Inf scan behind ValidateLayerInputs' finite checks (layer_inputs.cc,
// layer_inputs_sketch.cc): the index of the first non-finite entry of an array. One vectorised
// pass in the common (all finite) case, AVX2 where the CPU has it. Stateless.
#ifndef KVKEEP_SERVICE_EVICTION_FINITE_SCAN_H_
#define KVKEEP_SERVICE_EVICTION_FINITE_SCAN_H_

#include <cstdint>

namespace kvkeep::eviction {

// Index of the first NaN or Inf among x[0, count), or -1 when all are finite.
int64_t FirstNonFinite(const float* x, int64_t count);
int64_t FirstNonFinite(const double* x, int64_t count);

}  // namespace kvkeep::eviction

#endif  // KVKEEP_SERVICE_EVICTION_FINITE_SCAN_H_
