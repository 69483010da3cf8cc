// Quality measures of a kept-token set (algorithms.md, "Quality measures"), computed against the
// full-cache attention of the held-out future queries.
//
// For every layer a LayerReference is built once from the dataset: the softmax of each future query
// over the whole cache (positions < prefix), the full outputs, and the oracle's ranking (attention
// the future queries actually pay). A kept set is then scored without recomputing any logit: the
// attention restricted to S is the full attention renormalised over S.
//
//   std::vector<LayerReference> refs;
//   for (int l = 0; l < meta.layers; ++l) refs.push_back(BuildReference(meta, layer_data[l]));
//   auto targets = FindNeedleTargets(meta.needles, refs);
//   ASSIGN_OR_RETURN(Metrics m, Measure(refs, kept, targets));
#ifndef KVKEEP_BENCH_EVAL_MEASURES_H_
#define KVKEEP_BENCH_EVAL_MEASURES_H_

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/eval/dataset.h"

namespace kvkeep::eval {

// [layer][kv_head] ascending token indices (< prefix) that stay in the cache.
using KeptSets = std::vector<std::vector<std::vector<int32_t>>>;

// Everything the measures need of one layer. Built once; read-only afterwards (thread-compatible).
struct LayerReference {
  int q_heads = 0, kv_heads = 0, head_dim = 0;
  int64_t prefix = 0;   // P, cached tokens
  int64_t future = 0;   // F, held-out queries
  std::vector<float> probs;         // [q_heads][F][P] softmax(q·Kᵀ/√d) over the full cache
  std::vector<float> values;        // [kv_heads][P][d]
  std::vector<double> full_out;     // [q_heads][F][d] softmax(q·Kᵀ/√d)·V
  std::vector<double> future_mass;  // [kv_heads][P] Σ over the group's heads and the future
                                    // queries of probs: the oracle's ranking
  std::vector<int32_t> oracle_order;  // [kv_heads][P] token indices by future_mass descending
                                      // (ties: lower index first)
  std::vector<double> future_output;  // [kv_heads][P] Σ over the group's heads and the future
                                      // queries of a_j·‖v_j − o‖/((1 − a_j)‖o‖): the relative
                                      // output change of evicting j alone (oracle-out's ranking)
  std::vector<int32_t> output_order;  // [kv_heads][P] token indices by future_output descending
  // Decode-time measure: future query t (position P + t) attends the cache AND every generated
  // position P..min(P + t, kv_len − 1) exactly (they are never evicted at compression time).
  // Attention normalised over that whole causal context:
  std::vector<double> gen_mass;     // [q_heads][F] mass on the generated positions (0 if none)
  std::vector<double> gen_out;      // [q_heads][F][d] Σ over generated j of a_j v_j
  std::vector<double> full_out_decode;  // [q_heads][F][d] full decode-time output
                                        // = (1 − gen_mass)·full_out + gen_out
  int64_t wo_hidden = 0;            // 0 = no W_O
  std::vector<double> wo;           // [hidden][q_heads * d]
  std::vector<double> full_y;       // [F][hidden] Σ_h o_h·W_O^h, when W_O is given
};

// Builds the reference of one layer: future queries are q rows prefix..T-1.
LayerReference BuildReference(const DatasetMeta& meta, const LayerData& layer);

// A planted key and the (q head, future query) pairs whose full-cache attention argmax is it.
struct NeedleTarget {
  int layer = 0, kv_head = 0;
  int64_t position = 0;
  std::vector<std::pair<int, int64_t>> queries;  // (q head, future index)
  std::vector<int64_t> full_answer;  // per query: argmax_j cos(o_full, v_j), the "retrieved" token
};

// Keeps only the needles some future query targets (argmax of its attention over the cache).
std::vector<NeedleTarget> FindNeedleTargets(const std::vector<Needle>& needles,
                                            const std::vector<LayerReference>& refs);

struct Metrics {
  double rel_error = 0;      // mean over layers, q heads, future queries of ‖o_S − o‖ / ‖o‖
  double rel_error_decode = 0;  // as rel_error, decode-time (LayerReference::gen_*): a future
                                // query attends S plus the generated positions before it exactly
  double rel_error_wo = -1;  // same for y = Σ_h o_h W_O^h, mean over layers, queries; -1 = no W_O
  double retained_mass = 0;  // mean of Σ_{j∈S} a_j(q)
  double needle_recall = -1; // fraction of targeted needles kept; -1 = no targeted needle
  double needle_argmax = -1; // fraction of (needle, targeting query) whose retrieved token
                             // argmax_j cos(o, v_j) is unchanged by the eviction; -1 = none
  double oracle_recall = 0;  // Σ |S ∩ top-|S| by future attention| / Σ |S| over (layer, kv head)
  double kept_fraction = 0;  // Σ |S| / (layers · kv_heads · prefix): the budget actually used
  int needles = 0;           // targeted needles counted
};

// INVALID_ARGUMENT if `kept` does not match the references' layers/heads, or holds an index out of
// [0, prefix) or not strictly ascending.
absl::StatusOr<Metrics> Measure(const std::vector<LayerReference>& refs, const KeptSets& kept,
                                const std::vector<NeedleTarget>& needles);

// How concentrated the future queries' attention is.
struct Sparsity {
  double top5_mass = 0;                 // mean over layers, heads, queries of the mass of the top
                                        // ceil(5 % · P) tokens
  double sink_mass = 0;                 // mean mass on the first 4 tokens
  std::vector<double> layer_top5_mass;  // per layer
};
Sparsity MeasureSparsity(const std::vector<LayerReference>& refs);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_MEASURES_H_
