// kvkeep::LayerQuerySketch: the worker side of LayerStats.sketch (qsketch, qsketch-post). Builds
// the sketch of one layer from a block of queries (every query head: k-means++ seeding and a few
// Lloyd steps, common/query_sketch.h; query head h is seeded with seed + h, as the Python client
// does) and folds each later query in (nearest centroid, running mean, weight + 1), so a decoding
// worker keeps it current at K x head_dim floats per head. Send it with Commit or PutStats.
//
//   ASSIGN_OR_RETURN(LayerQuerySketch sketch,
//                    LayerQuerySketch::Build(layer, q_heads, head_dim, prefill_queries, n,
//                                            /*first_position=*/0, {.k = 32, .seed = 7}));
//   RETURN_IF_ERROR(client->Commit(seq, n, {}, {sketch.ToLayerStats()}).status());
//   RETURN_IF_ERROR(sketch.Fold(next_queries, /*position=*/n));      // one per query head
//
// Queries are pre-RoPE unless Options::post_rope. Not thread-safe (one per layer and worker).
#ifndef KVKEEP_CLIENT_LAYER_QUERY_SKETCH_H_
#define KVKEEP_CLIENT_LAYER_QUERY_SKETCH_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "common/query_sketch.h"
#include "kvkeep/v1/common.pb.h"

namespace kvkeep {

class LayerQuerySketch {
 public:
  struct Options {
    int k = 32;              // Default: 32 centroids per query head (the daemon allows 1..256).
    int iterations = 6;      // Default: 6 Lloyd steps.
    uint64_t seed = 0;       // Default: 0; query head h uses seed + h.
    bool post_rope = false;  // Default: false (pre-RoPE queries, for qsketch).
  };

  // From queries [q_heads][n][head_dim] (row-major) of positions first_position ..
  // first_position + n - 1. INVALID_ARGUMENT for n == 0, bad shapes or options, a NaN/Inf.
  static absl::StatusOr<LayerQuerySketch> Build(uint32_t layer, int q_heads, int head_dim,
                                                const float* queries, int n,
                                                int64_t first_position, const Options& options);

  // Folds one query per head ([q_heads][head_dim]) of `position` (after last_position()).
  absl::Status Fold(const float* queries, int64_t position);

  void WriteTo(v1::QuerySketch* out) const;
  v1::LayerStats ToLayerStats() const;  // {layer, sketch}

  const std::vector<sketch::HeadSketch>& heads() const { return heads_; }
  int64_t last_position() const { return last_position_; }
  uint64_t query_count() const { return query_count_; }

 private:
  uint32_t layer_ = 0;
  int head_dim_ = 0;
  Options options_;
  std::vector<sketch::HeadSketch> heads_;
  int64_t first_position_ = 0, last_position_ = 0;
  uint64_t query_count_ = 0;
};

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_LAYER_QUERY_SKETCH_H_
