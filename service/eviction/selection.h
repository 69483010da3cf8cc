// Budget allocation and token selection: turns the per-layer scores of a sequence into the token
// indices each (layer, KV head) keeps, under a sequence budget and the policy's allocation
// (uniform, ada, pyramid, global: shared/docs/algorithms.md; sequence: sequence_allocation.h).
//
//   std::vector<HeadScores> layers = ...;   // ScoreLayer of every layer
//   ASSIGN_OR_RETURN(Selection sel, SelectTokens(policy, Budget{.keep_ratio = 0.1}, layers,
//                                                q_heads / kv_heads));
//   // sel.kept[l][g]: ascending token indices of head g of layer l to keep.
//
// Budget arithmetic (all allocations):
//  * The sequence budget T is tokens * L * Hk for a token budget, round(keep_ratio * Σ n) for a
//    ratio; it counts sinks and window.
//  * Base shares: T is apportioned over the (layer, head) pairs, equally for a token budget and in
//    proportion to n for a ratio (so equal lengths give equal shares), by largest remainder (ties to
//    the lower (layer, head)): the shares sum to T exactly.
//  * The forced tokens of a head (its first `sinks` and last `window`, min(n, sinks + window)) are
//    always kept; a share is raised to them and capped at n. Only these two clamps can make the
//    kept total differ from T; surplus from the cap is not moved to other heads (except by ada
//    within a layer and by global).
//  * Ties between equal scores go to the lower token index (then lower head, then lower layer).
#ifndef KVKEEP_SERVICE_EVICTION_SELECTION_H_
#define KVKEEP_SERVICE_EVICTION_SELECTION_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "service/eviction/policy.h"
#include "service/eviction/scorers.h"

namespace kvkeep::eviction {

// Exactly one field > 0. tokens = average kept per (layer, KV head); both count sinks + window.
struct Budget {
  double keep_ratio = 0;  // in (0, 1]
  int64_t tokens = 0;
};

struct Selection {
  // [layer][kv_head] ascending, unique token INDICES (not positions) to keep.
  std::vector<std::vector<std::vector<int32_t>>> kept;
};

// Selects the tokens to keep. Head lengths come from the scores (per_head sizes); every layer must
// have the same number of KV heads. q_heads_per_kv (>= 1) picks ada's automatic alpha.
//   OK                 `kept` as above;
//   INVALID_ARGUMENT   bad policy, bad budget (none or both set, ratio > 1, NaN), inconsistent
//                      head counts, or a NaN/Inf score.
//
// Allocations:
//  * uniform: each head keeps its base share: its top (share - forced) candidates.
//  * ada (Ada-KV): per layer, b = K / Hk where K = Σ_heads (share - forced); the global top K of
//    all heads' candidates gives counts c_h; B_h = round((1 - α) c_h + ⌊α b⌋). Rounding is then
//    fixed so that Σ B_h = K exactly: while short, +1 to the head with the largest r_h - B_h
//    (r_h the unrounded value) that has candidates left; while over, -1 from the head with the
//    smallest r_h - B_h still above its floor min(⌊α b⌋, candidates). Floors are never broken.
//  * pyramid (PyramidKV, kvpress rules): u = T / (L Hk), n̄ = mean head length, min = u / β,
//    max = 2u - min; if max >= n̄ - window then max = n̄ - window and min = 2u - max. Layer l gets
//    max - l (max - min) / (L - 1) per head; the layer totals are apportioned from T (so they sum
//    to T and the mean equals uniform's) and split over the heads like the base shares. Falls back
//    to uniform when L < 2 or not n̄ >= max >= min >= sinks + window (kvpress checks min >= window;
//    our budgets also count the sinks, so the floor is sinks + window).
//  * global: scores divided by their layer's Σ|score| over candidates, one top-(T - Σ forced) over
//    all (layer, head, candidate) of the sequence.
//  * sequence: one token set for every (layer, head), scores combined across them
//    (sequence_allocation.h); needs equal head lengths.
absl::StatusOr<Selection> SelectTokens(const Policy& policy, const Budget& budget,
                                       const std::vector<HeadScores>& layers, int q_heads_per_kv);

}  // namespace kvkeep::eviction

#endif  // KVKEEP_SERVICE_EVICTION_SELECTION_H_
