// What a worker would send with a Compress, computed from a dataset layer's prefix: the cached
// keys/values, the observation window's queries, the pre-RoPE query moments (sinks excluded), the
// accumulated causal attention of every prefix query, and the W_O Grams. Nothing here looks at the
// future queries, so every online scorer sees exactly what it would see in production.
//
//   ASSIGN_OR_RETURN(eviction::LayerInputs in, BuildLayerInputs(meta, layer, l, {}));
//   // `in` borrows layer.k / layer.v: keep `layer` alive while `in` is used.
#ifndef KVKEEP_BENCH_EVAL_PREFIX_STATS_H_
#define KVKEEP_BENCH_EVAL_PREFIX_STATS_H_

#include "absl/status/statusor.h"
#include "bench/eval/dataset.h"
#include "service/eviction/layer_inputs.h"

namespace kvkeep::eval {

struct PrefixStatsOptions {
  int window = 32;  // Default: 32, the scorers' default observation window.
  int sinks = 4;    // Default: 4, excluded from the query moments.
  int sketch_k = 32;           // Default: 32 centroids per query head (qsketch).
  int sketch_iterations = 6;   // Default: 6 Lloyd iterations.
  uint64_t sketch_seed = 0;    // Default: 0.
  // Variant "sketch + observation window" (docs/quality.md): > 0 appends the `window` last prefix
  // queries as their own centroids (not merged into clusters), together carrying this share of
  // the head's total weight; the sketch then has sketch_k + window slots. Default: 0 = off.
  double sketch_window_share = 0;
};

// The query sketch a worker would send: per query head, common/query_sketch's k-means of every
// prefix query (positions 0..P-1), of the pre-RoPE queries (post_rope = false, for qsketch) or of
// the post-RoPE ones (true, for qsketch-post). Fills in->sketch_* (slots a head does not use get
// weight 0).
// A layer that carries a worker's sketch (LayerData::sketch_k > 0, from `kvkeep-eval synth` or a
// real engine's dump) is evaluated with that sketch instead, for the pre-RoPE scorer when the
// sketch has options.sketch_k slots and no window variant is asked for.
void SetQuerySketch(const DatasetMeta& meta, const LayerData& layer,
                    const PrefixStatsOptions& options, bool post_rope, eviction::LayerInputs* in);

// Fills every layer's sketch_* with the pre-RoPE sketch a worker would send (SetQuerySketch's
// computation with `options`), for `kvkeep-eval synth` to write.
void AttachWorkerSketches(const DatasetMeta& meta, const PrefixStatsOptions& options,
                          std::vector<LayerData>* layers);

// INVALID_ARGUMENT if the window or sinks do not fit in the prefix or sketch_k is not in
// [1, policy_defaults::kMaxSketchCentroids]. The result borrows `layer`'s key and value buffers.
// It carries the pre-RoPE query sketch (SetQuerySketch with post_rope = false).
absl::StatusOr<eviction::LayerInputs> BuildLayerInputs(const DatasetMeta& meta,
                                                       const LayerData& layer, int layer_index,
                                                       const PrefixStatsOptions& options);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_PREFIX_STATS_H_
