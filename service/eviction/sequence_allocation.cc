#include "service/eviction/sequence_allocation.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvkeep::eviction {
namespace {

struct Shape {
  int layers = 0;
  int heads = 0;
  int tokens = 0;
  int cand_begin = 0;  // candidates: [cand_begin, cand_end)
  int cand_end = 0;
};

absl::StatusOr<Shape> ShapeOf(const Policy& policy, const std::vector<HeadScores>& layers) {
  Shape s;
  s.layers = static_cast<int>(layers.size());
  if (s.layers == 0) return absl::InvalidArgumentError("allocation sequence: no layers");
  s.heads = static_cast<int>(layers[0].per_head.size());
  if (s.heads == 0)
    return absl::InvalidArgumentError("allocation sequence: layer 0 has no KV heads");
  s.tokens = static_cast<int>(layers[0].per_head[0].size());
  for (int l = 0; l < s.layers; ++l) {
    if (static_cast<int>(layers[l].per_head.size()) != s.heads) {
      return absl::InvalidArgumentError(absl::StrCat(
          "layer ", l, " has ", layers[l].per_head.size(), " KV heads, layer 0 has ", s.heads));
    }
    for (int g = 0; g < s.heads; ++g) {
      const std::vector<float>& v = layers[l].per_head[g];
      if (static_cast<int>(v.size()) != s.tokens) {
        return absl::InvalidArgumentError(absl::StrCat(
            "allocation sequence keeps one token set for the whole sequence and needs every head "
            "to hold the same tokens: layer ",
            l, " head ", g, " has ", v.size(), ", layer 0 head 0 has ", s.tokens));
      }
      for (size_t j = 0; j < v.size(); ++j) {
        if (!std::isfinite(v[j])) {
          return absl::InvalidArgumentError(absl::StrCat(
              "score of layer ", l, " head ", g, " token ", j, " is not finite (", v[j], ")"));
        }
      }
    }
  }
  s.cand_begin = std::min(policy.sinks, s.tokens);
  s.cand_end = std::max(s.cand_begin, s.tokens - policy.window);
  return s;
}

}  // namespace

absl::StatusOr<std::vector<double>> CombinedSequenceScores(const Policy& policy,
                                                           const std::vector<HeadScores>& layers) {
  ASSIGN_OR_RETURN(const Shape s, ShapeOf(policy, layers));
  std::vector<double> combined(s.tokens, 0.0);
  const double pairs = static_cast<double>(s.layers) * s.heads;
  for (int l = 0; l < s.layers; ++l) {
    for (int g = 0; g < s.heads; ++g) {
      const std::vector<float>& v = layers[l].per_head[g];
      double abs_sum = 0;
      for (int j = s.cand_begin; j < s.cand_end; ++j) abs_sum += std::fabs(v[j]);
      if (!(abs_sum > 0)) continue;
      const double w = 1.0 / (abs_sum * pairs);
      for (int j = s.cand_begin; j < s.cand_end; ++j) combined[j] += v[j] * w;
    }
  }
  return combined;
}

absl::StatusOr<Selection> SelectSequenceTokens(const Policy& policy, const Budget& budget,
                                               const std::vector<HeadScores>& layers) {
  ASSIGN_OR_RETURN(const Shape s, ShapeOf(policy, layers));
  ASSIGN_OR_RETURN(const std::vector<double> combined, CombinedSequenceScores(policy, layers));
  // T / (L·Hk): `tokens` per head, or the ratio of the (equal) head length.
  const int64_t per_head = budget.tokens > 0
                               ? budget.tokens
                               : std::llround(budget.keep_ratio * static_cast<double>(s.tokens));
  const int candidates = s.cand_end - s.cand_begin;
  const int64_t forced = s.tokens - candidates;
  const int64_t picks = std::clamp<int64_t>(per_head - forced, 0, candidates);

  std::vector<int32_t> order(candidates);
  std::iota(order.begin(), order.end(), s.cand_begin);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return combined[a] > combined[b]; });
  order.resize(static_cast<size_t>(picks));
  std::vector<int32_t> kept;
  kept.reserve(static_cast<size_t>(forced + picks));
  for (int j = 0; j < s.cand_begin; ++j) kept.push_back(j);
  std::sort(order.begin(), order.end());
  kept.insert(kept.end(), order.begin(), order.end());
  for (int j = s.cand_end; j < s.tokens; ++j) kept.push_back(j);

  Selection sel;
  sel.kept.assign(s.layers, std::vector<std::vector<int32_t>>(s.heads, kept));
  return sel;
}

}  // namespace kvkeep::eviction
