// The service side of scoring on the device: turns one layer of a sequence (its page table, the
// eviction::LayerInputs that BuildLayerInputs made of its statistics, the policy) into a
// DeviceLayerRequest (gpu/device_scoring.h) whose token runs point into device memory. No CUDA
// here.
//
//   BuildLayerInputs(model, table, stats, policy, layer, no_keys, no_values, &inputs);
//   DeviceLayerRequest request;
//   RETURN_IF_ERROR(BuildDeviceLayerRequest(model, table, inputs, policy, layer, page_address,
//                                           &request));
//   RETURN_IF_ERROR(backend.layer_scorer()->ScoreLayer(request, &scores.per_head));
#ifndef KVKEEP_SERVICE_COMPRESS_DEVICE_SCORING_REQUEST_H_
#define KVKEEP_SERVICE_COMPRESS_DEVICE_SCORING_REQUEST_H_

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gpu/device_scoring.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"
#include "service/engine/model_layout.h"
#include "service/engine/sequence_table.h"

namespace kvkeep {

DeviceScorerKind ToDeviceScorerKind(eviction::ScorerKind kind);
DeviceScorerParams ToDeviceScorerParams(const eviction::Policy& policy);

// Address of the first byte of a page (its arena's device address plus the page's offset), or an
// error (a page not in the pool, an arena without a device address).
using PageAddressFn = std::function<absl::StatusOr<const char*>(uint64_t page)>;

// Fills *out for `layer`: shapes, RoPE, statistics and positions BORROWED from `in` (which must
// outlive *out), the scorer parameters from `policy`, and for every KV head one run per page
// segment of its committed tokens (keys at page + slot * token_bytes, values at page +
// value_offset + slot * token_bytes), in token order.
//   OK                 *out is complete;
//   INVALID_ARGUMENT   the model's dtype is not fp32/fp16/bf16;
//   any error of page_address or of the table's segment walk, with the layer and head named.
absl::Status BuildDeviceLayerRequest(const Model& model, const SequenceTable& table,
                                     const eviction::LayerInputs& in,
                                     const eviction::Policy& policy, uint32_t layer,
                                     const PageAddressFn& page_address, DeviceLayerRequest* out);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_COMPRESS_DEVICE_SCORING_REQUEST_H_
