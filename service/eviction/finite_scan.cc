#include "service/eviction/finite_scan.h"

#include <algorithm>
#include <cmath>

#include "service/eviction/scorers_internal.h"

namespace kvkeep::eviction {
namespace {

// x * 0 is (+-)0 for finite x and NaN for NaN/Inf, so a block whose lanes sum to 0 is clean: the
// common case is one vectorised pass (eight explicit lanes, so GCC vectorises it without
// -ffast-math); the slow path only locates the culprit. Inlined into each clone below.
template <typename T>
__attribute__((always_inline)) inline int64_t Scan(const T* x, int64_t count) {
  constexpr int64_t kBlock = 1024;
  for (int64_t start = 0; start < count; start += kBlock) {
    const int64_t end = std::min(count, start + kBlock);
    T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t i = start;
    for (; i + 8 <= end; i += 8) {
      for (int l = 0; l < 8; ++l) acc[l] += x[i + l] * T(0);
    }
    T tail = 0;
    for (; i < end; ++i) tail += x[i] * T(0);
    T total = tail;
    for (int l = 0; l < 8; ++l) total += acc[l];
    if (total != T(0)) {
      for (int64_t k = start; k < end; ++k) {
        if (!std::isfinite(x[k])) return k;
      }
    }
  }
  return -1;
}

// The clones are local to this file (GCC 12 cannot call a target_clones function from another).
KVKEEP_SIMD_CLONES int64_t ScanFloat(const float* x, int64_t count) { return Scan(x, count); }
KVKEEP_SIMD_CLONES int64_t ScanDouble(const double* x, int64_t count) { return Scan(x, count); }

}  // namespace

int64_t FirstNonFinite(const float* x, int64_t count) { return ScanFloat(x, count); }
int64_t FirstNonFinite(const double* x, int64_t count) { return ScanDouble(x, count); }

}  // namespace kvkeep::eviction
