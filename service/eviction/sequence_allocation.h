// The `sequence` allocation: one kept token set for the whole sequence, the same for every layer
// and KV head. Engines that keep one set of cells for all layers and heads (llama.cpp, and every
// paged engine whose block table is shared by the layers) can only drop a token everywhere at
// once, so the scores of the (layer, head) pairs are combined into one score per token
// (docs/quality.md, "The sequence allocation"):
//
//   c_j = (1 / (L·Hk)) Σ_{l,g} s_{l,g,j} / Σ_{i ∈ candidates} |s_{l,g,i}|
//
// Each head's candidate scores are divided by their absolute sum, so every (layer, head) has the
// same say whatever its scale (a head whose scores are all zero contributes nothing). Sinks and
// window are forced as for every allocation. The per-token budget is T / (L·Hk) rounded to the
// nearest token (T: the sequence budget of selection.h), and the top (budget − forced) candidates
// by c_j are kept, ties to the lower token index.
//
// Needs every head of the sequence to hold the same number of tokens (token j of every head is the
// same cell); INVALID_ARGUMENT otherwise. Stateless and thread-safe.
#ifndef KVKEEP_SERVICE_EVICTION_SEQUENCE_ALLOCATION_H_
#define KVKEEP_SERVICE_EVICTION_SEQUENCE_ALLOCATION_H_

#include <vector>

#include "absl/status/statusor.h"
#include "service/eviction/policy.h"
#include "service/eviction/scorers.h"
#include "service/eviction/selection.h"

namespace kvkeep::eviction {

// Combined score per token (c_j above); the forced tokens get 0. INVALID_ARGUMENT on unequal head
// lengths, no layers or heads, or a non-finite score.
absl::StatusOr<std::vector<double>> CombinedSequenceScores(const Policy& policy,
                                                           const std::vector<HeadScores>& layers);

// SelectTokens for Allocation::kSequence (the policy and budget are validated by the caller):
// every kept[l][g] is the same ascending list.
absl::StatusOr<Selection> SelectSequenceTokens(const Policy& policy, const Budget& budget,
                                               const std::vector<HeadScores>& layers);

}  // namespace kvkeep::eviction

#endif  // KVKEEP_SERVICE_EVICTION_SEQUENCE_ALLOCATION_H_
