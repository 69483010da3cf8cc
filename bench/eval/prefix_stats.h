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
};

// INVALID_ARGUMENT if the window or sinks do not fit in the prefix. The result borrows `layer`'s
// key and value buffers.
absl::StatusOr<eviction::LayerInputs> BuildLayerInputs(const DatasetMeta& meta,
                                                       const LayerData& layer, int layer_index,
                                                       const PrefixStatsOptions& options);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_PREFIX_STATS_H_
