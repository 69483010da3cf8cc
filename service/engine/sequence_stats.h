// The query statistics a sequence has received (design.md §4), per layer, and how they become the
// scorers' eviction::LayerInputs.
//
// Window queries, attention mass and the query sketch REPLACE what was stored; query moments (sum,
// count, optional sum of squares) ACCUMULATE over decoding; window queries of positions after a
// stored sketch's last position are also folded into the sketch (service/engine/sequence_sketch.h).
// Everything is validated against the model and the sequence's head token counts before anything
// is stored.
//
//   SequenceStats stats;                                  // lives beside the SequenceTable
//   RETURN_IF_ERROR(table.Commit(n, positions));
//   for (const v1::LayerStats& s : request.stats()) {
//     RETURN_IF_ERROR(ApplyLayerStats(model, table, s, &stats));
//   }
//   RETURN_IF_ERROR(CheckStatsFor(model, table, stats, policy.scorer));   // before a Compress
//
// Not thread-safe: the owning Sequence's mutex protects a SequenceStats with its table.
#ifndef KVKEEP_SERVICE_ENGINE_SEQUENCE_STATS_H_
#define KVKEEP_SERVICE_ENGINE_SEQUENCE_STATS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kvkeep/v1/common.pb.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"
#include "service/engine/model_layout.h"
#include "service/engine/sequence_sketch.h"
#include "service/engine/sequence_table.h"

namespace kvkeep {

// Statistics of one layer. Empty vectors = not received.
struct LayerStatistics {
  // Window queries: post-RoPE queries of the last `window` positions, [q_heads][window][head_dim].
  uint32_t window = 0;
  std::vector<float> window_queries;
  // table.next_position() when they were stored: they are the CURRENT window only while the
  // sequence has not grown since (CheckStatsFor rejects stale ones).
  int64_t window_next_position = 0;

  // Pre-RoPE query moments (sinks excluded), [q_heads][head_dim], summed over query_count queries.
  std::vector<double> query_sum;
  std::vector<double> query_sq_sum;  // optional diagonal second moment; kept only while every
                                     // update of the layer carried it
  uint64_t query_count = 0;

  // Attention mass Σ_i A[i, j] per query head, each as long as its KV head's token count when it
  // was stored, in token-slot order. CompactStats keeps it aligned with compaction; commits make
  // it stale (CheckStatsFor rejects stale mass).
  std::vector<std::vector<float>> attention_mass;

  // Query sketch (LayerStats.sketch): the latest one sent, grown by the window queries received
  // after it. Empty (k == 0) = none.
  LayerSketch sketch;
};

struct SequenceStats {
  std::vector<LayerStatistics> layers;  // empty, or one entry per model layer

  void Clear() { layers.clear(); }
  // Heap held by the statistics, every kind of them (query sketches included): the ledger charges the sequence's tenant
  // exactly this (metadata_charge.h), and metrics report it. A kind of statistics added here must
  // be counted here.
  size_t HeldBytes() const;
  size_t bytes() const { return HeldBytes(); }
  // Gives the unused capacity of the attention-mass vectors back to the heap (CompactStats
  // shortens them in place), so that HeldBytes() is what the statistics still hold.
  void ShrinkToFit();
};

// Checks `s` against the model and the table as it will be once `pending_tokens` more tokens are
// committed (so the engine can validate a CommitRequest's statistics before committing):
//   OK                 ApplyLayerStats of `s` will succeed once the tokens are committed;
//   INVALID_ARGUMENT   layer out of range, inconsistent or wrong-sized fields, a NaN/Inf (or a
//                      negative second moment), a window longer than the sequence, moments whose
//                      accumulated sums would overflow, or a second moment sent with only some of
//                      a layer's query sums, or a bad query sketch (ValidateQuerySketch). The
//                      message names the LayerStats field.
absl::Status ValidateLayerStats(const Model& model, const SequenceTable& table,
                                const SequenceStats& stats, const v1::LayerStats& s,
                                uint32_t pending_tokens = 0);

// Validates `s` (as ValidateLayerStats with no pending tokens) and stores it in *stats: window and
// attention mass and sketch replace, moments accumulate; then window queries after the stored
// sketch's last position are folded into it. On error nothing changes.
absl::Status ApplyLayerStats(const Model& model, const SequenceTable& table,
                             const v1::LayerStats& s, SequenceStats* stats);

// FAILED_PRECONDITION naming the missing statistic when `scorer` needs one that some layer lacks or
// holds stale (window sent before the last commit, attention mass of another token count), e.g.
// "capkv needs query moments (LayerStats.query_sum); layer 3 has none; send them with
// CommitTokens or PutStats". OK otherwise.
absl::Status CheckStatsFor(const Model& model, const SequenceTable& table,
                           const SequenceStats& stats, eviction::ScorerKind scorer);

// After head (layer, kv_head) kept the token indices `kept` (ascending) of its `old_count`: keeps
// the attention-mass entries of the kept tokens, in order, for the query heads of that KV head.
// Mass that did not cover exactly `old_count` tokens (stale) is dropped.
void CompactStats(const Model& model, uint32_t layer, uint32_t kv_head, uint32_t old_count,
                  absl::Span<const int32_t> kept, SequenceStats* stats);

// Fills `in` for `layer` of the sequence, reusing its vectors' capacity: shapes, the model's RoPE
// (theta, rotary dim, interleaving, explicit inverse frequencies; a model without RoPE, theta 0
// and no table, gets a table of zero frequencies, i.e. no rotation), next_position, each KV
// head's count and positions from `table` (borrowed: `table` must outlive the use of `in`), the
// given float32 keys/values per KV head ([count][head_dim], borrowed; nullptr when the scorer does
// not read them), the statistics the policy's scorer needs (copied), and for laprox the model's
// W_O Grams (identity for query heads without one; none at all when the model has none).
// Call CheckStatsFor first; eviction::ValidateLayerInputs / ScoreLayer check the rest.
void BuildLayerInputs(const Model& model, const SequenceTable& table, const SequenceStats& stats,
                      const eviction::Policy& policy, uint32_t layer,
                      absl::Span<const float* const> keys, absl::Span<const float* const> values,
                      eviction::LayerInputs* in);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_SEQUENCE_STATS_H_
