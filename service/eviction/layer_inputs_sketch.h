// Internal to ValidateLayerInputs (layer_inputs.cc): the checks of the optional query sketch
// (LayerInputs::sketch_*). Stateless; no locks.
#ifndef KVKEEP_SERVICE_EVICTION_LAYER_INPUTS_SKETCH_H_
#define KVKEEP_SERVICE_EVICTION_LAYER_INPUTS_SKETCH_H_

#include "absl/status/status.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"

namespace kvkeep::eviction {

// OK when no sketch was sent and `needs.query_sketch` is false, or when the sketch is well formed:
// 1 <= sketch_k <= policy_defaults::kMaxSketchCentroids, centroids [q_heads][sketch_k][head_dim]
// and weights [q_heads][sketch_k] all finite, weights >= 0 with at least one > 0 per query head.
//   INVALID_ARGUMENT     a malformed sketch (the message names the field, index and value);
//   FAILED_PRECONDITION  the scorer needs a sketch and none was sent, or it was sent for the other
//                        side of RoPE (qsketch needs pre-RoPE centroids, qsketch-post post-RoPE).
absl::Status CheckQuerySketch(const LayerInputs& in, const Needs& needs, const Policy& policy);

}  // namespace kvkeep::eviction

#endif  // KVKEEP_SERVICE_EVICTION_LAYER_INPUTS_SKETCH_H_
