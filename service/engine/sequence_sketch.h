// The query sketch a sequence holds per layer (LayerStats.sketch, qsketch / qsketch-post): how a
// wire QuerySketch is checked, stored, grown by the window queries the daemon receives, and handed
// to the scorers.
//
// A sent sketch REPLACES the stored one (the worker's sketch already summarises every query it
// has seen). Window queries (post-RoPE) of positions after the sketch's last_position are folded
// in (common/query_sketch.h FoldQuery), un-rotated by their positions with the model's RoPE first
// when the sketch is pre-RoPE; positions already covered are never folded twice.
//
//   RETURN_IF_ERROR(ValidateQuerySketch(model, positions, s));   // INVALID_ARGUMENT, nothing kept
//   LayerSketch stored = SketchFromProto(s.sketch());
//   FoldWindowIntoSketch(model, window, window_queries, window_next_position, &stored);
//
// Not thread-safe: it lives in SequenceStats, under the owning Sequence's mutex.
#ifndef KVKEEP_SERVICE_ENGINE_SEQUENCE_SKETCH_H_
#define KVKEEP_SERVICE_ENGINE_SEQUENCE_SKETCH_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "common/query_sketch.h"
#include "kvkeep/v1/common.pb.h"
#include "service/eviction/layer_inputs.h"
#include "service/engine/model_layout.h"

namespace kvkeep {

// Largest QuerySketch.k accepted: q_heads x 256 x head_dim floats per layer at most.
inline constexpr uint32_t kMaxSketchK = 256;

struct LayerSketch {
  uint32_t k = 0;  // 0 = no sketch stored
  bool post_rope = false;
  std::vector<sketch::HeadSketch> heads;  // q_heads entries, each 1..k centroids
  int64_t first_position = 0, last_position = 0;
  uint64_t query_count = 0;

  bool empty() const { return k == 0; }
  size_t bytes() const;
};

// INVALID_ARGUMENT naming the QuerySketch field when `s.sketch()` (if set) does not fit the model
// (head_dim, head_counts per query head, centroid / weight counts), holds a NaN/Inf, a weight
// <= 0, k outside 1..kMaxSketchK, or positions outside [0, positions) (`positions`: the
// sequence's next position once the pending tokens are committed). OK when no sketch is set.
absl::Status ValidateQuerySketch(const Model& model, int64_t positions, const v1::LayerStats& s);

// The stored form of a validated sketch.
LayerSketch SketchFromProto(const v1::QuerySketch& sketch);

// Folds the window queries ([q_heads][window][head_dim], post-RoPE; query i at position
// window_next_position - window + i) whose positions are after sketch->last_position. Returns the
// number of positions folded.
uint32_t FoldWindowIntoSketch(const Model& model, uint32_t window,
                              const std::vector<float>& window_queries,
                              int64_t window_next_position, LayerSketch* sketch);

// Rotates `x` ([head_dim]) back by the model's RoPE angle of `position` (the inverse rotation);
// a model without RoPE (theta 0, no table) leaves it unchanged.
void UnrotateQuery(const Model& model, int64_t position, float* x);

// Fills in->sketch_* from `sketch` (sketch_k = 0 when it is empty): slots past a head's centroids
// get weight 0.
void SketchToLayerInputs(const LayerSketch& sketch, uint32_t q_heads, uint32_t head_dim,
                         eviction::LayerInputs* in);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_SEQUENCE_SKETCH_H_
