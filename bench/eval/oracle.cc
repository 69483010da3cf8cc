#include "bench/eval/oracle.h"

#include <algorithm>
#include <cmath>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvkeep::eval {
namespace {

struct Candidate {
  double mass;
  int layer, head;
  int32_t token;
};

// Top `count` of `candidates` by mass (ties: layer, head, token ascending), appended to `kept`.
void TakeTop(std::vector<Candidate>& candidates, int64_t count, KeptSets& kept) {
  count = std::min<int64_t>(count, static_cast<int64_t>(candidates.size()));
  auto better = [](const Candidate& a, const Candidate& b) {
    if (a.mass != b.mass) return a.mass > b.mass;
    return std::tie(a.layer, a.head, a.token) < std::tie(b.layer, b.head, b.token);
  };
  std::partial_sort(candidates.begin(), candidates.begin() + count, candidates.end(), better);
  for (int64_t i = 0; i < count; ++i) {
    kept[candidates[i].layer][candidates[i].head].push_back(candidates[i].token);
  }
}

// "sequence": one token set for every layer and KV head, the top round(ratio · P) tokens by the
// future scores summed over (layer, head) after dividing each head's by its sum (every head has
// the same say, as eviction::CombinedSequenceScores). INVALID_ARGUMENT when layers differ in P.
absl::Status SequenceTop(const std::vector<LayerReference>& refs, double keep_ratio, bool mass,
                         KeptSets& kept) {
  const int64_t P = refs.empty() ? 0 : refs[0].prefix;
  std::vector<double> combined(P, 0.0);
  for (const LayerReference& ref : refs) {
    if (ref.prefix != P) {
      return absl::InvalidArgumentError("the sequence oracle needs the same prefix in every layer");
    }
    for (int g = 0; g < ref.kv_heads; ++g) {
      const double* s = (mass ? ref.future_mass : ref.future_output).data() +
                        static_cast<size_t>(g) * P;
      double total = 0;
      for (int64_t j = 0; j < P; ++j) total += std::fabs(s[j]);
      if (total <= 0) continue;
      for (int64_t j = 0; j < P; ++j) combined[j] += s[j] / total;
    }
  }
  std::vector<int32_t> order(P);
  for (int64_t j = 0; j < P; ++j) order[j] = static_cast<int32_t>(j);
  const int64_t budget = HeadBudget(P, keep_ratio);
  std::partial_sort(order.begin(), order.begin() + budget, order.end(), [&](int32_t a, int32_t b) {
    return combined[a] != combined[b] ? combined[a] > combined[b] : a < b;
  });
  order.resize(budget);
  for (auto& layer : kept) {
    for (auto& head : layer) head = order;
  }
  return absl::OkStatus();
}

}  // namespace

int64_t HeadBudget(int64_t prefix, double keep_ratio) {
  const int64_t b = std::llround(keep_ratio * static_cast<double>(prefix));
  return std::clamp<int64_t>(b, 1, prefix);
}

absl::StatusOr<KeptSets> OracleSelection(const std::vector<LayerReference>& refs,
                                         absl::string_view allocation, double keep_ratio,
                                         OracleKind kind) {
  const bool mass = kind == OracleKind::kMass;
  if (!(keep_ratio > 0 && keep_ratio <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("keep ratio must be in (0, 1], got ", keep_ratio));
  }
  const int L = static_cast<int>(refs.size());
  KeptSets kept(L);
  for (int l = 0; l < L; ++l) kept[l].resize(refs[l].kv_heads);

  auto per_head_top = [&](int l, int64_t budget) {
    const LayerReference& ref = refs[l];
    budget = std::clamp<int64_t>(budget, 0, ref.prefix);
    for (int g = 0; g < ref.kv_heads; ++g) {
      const int32_t* order = (mass ? ref.oracle_order : ref.output_order).data() +
                             static_cast<size_t>(g) * ref.prefix;
      kept[l][g].assign(order, order + budget);
    }
  };

  if (allocation == "uniform") {
    for (int l = 0; l < L; ++l) per_head_top(l, HeadBudget(refs[l].prefix, keep_ratio));
  } else if (allocation == "pyramid") {
    for (int l = 0; l < L; ++l) {
      const double b = static_cast<double>(HeadBudget(refs[l].prefix, keep_ratio));
      const double lo = b / 20.0;
      const double hi = std::min(2 * b - lo, static_cast<double>(refs[l].prefix));
      const double layer_b = L == 1 ? b : hi - l * (hi - lo) / (L - 1);
      per_head_top(l, std::llround(layer_b));
    }
  } else if (allocation == "ada" || allocation == "global") {
    std::vector<Candidate> all;
    int64_t total = 0;
    for (int l = 0; l < L; ++l) {
      const LayerReference& ref = refs[l];
      const int64_t b = HeadBudget(ref.prefix, keep_ratio);
      if (allocation == "ada") all.clear();
      for (int g = 0; g < ref.kv_heads; ++g) {
        for (int64_t j = 0; j < ref.prefix; ++j) {
          const size_t at = static_cast<size_t>(g) * ref.prefix + j;
          all.push_back({mass ? ref.future_mass[at] : ref.future_output[at], l, g,
                         static_cast<int32_t>(j)});
        }
      }
      if (allocation == "ada") {
        TakeTop(all, b * ref.kv_heads, kept);
      } else {
        total += b * ref.kv_heads;
      }
    }
    if (allocation == "global") TakeTop(all, total, kept);
  } else if (allocation == "sequence") {
    RETURN_IF_ERROR(SequenceTop(refs, keep_ratio, mass, kept));
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown allocation \"", allocation, "\" (uniform, ada, pyramid, global, sequence)"));
  }
  for (auto& layer : kept) {
    for (auto& head : layer) std::sort(head.begin(), head.end());
  }
  return kept;
}

}  // namespace kvkeep::eval
