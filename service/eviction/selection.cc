#include "service/eviction/selection.h"

#include <algorithm>
#include <cmath>
#include <functional>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "service/eviction/sequence_allocation.h"

namespace kvkeep::eviction {
namespace {

// Candidate range [begin, end) of a head of n tokens: everything but the forced tokens.
struct Range {
  int begin, end;
  int size() const { return end - begin; }
};
Range Candidates(const Policy& p, int n) {
  const int b = std::min(p.sinks, n);
  const int e = std::max(b, n - p.window);
  return {b, e};
}

// Apportions `total` over `weights` (non-negative) in proportion, by largest remainder with ties to
// the lower index: the result sums to `total` exactly (all zeros when every weight is zero).
std::vector<int64_t> Apportion(int64_t total, const std::vector<double>& weights) {
  std::vector<int64_t> out(weights.size(), 0);
  double sum = 0;
  for (double w : weights) sum += w;
  if (!(sum > 0) || total <= 0) return out;
  std::vector<std::pair<double, size_t>> frac;
  frac.reserve(weights.size());
  int64_t assigned = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const double quota = static_cast<double>(total) * (weights[i] / sum);
    const double fl = std::floor(quota);
    out[i] = static_cast<int64_t>(fl);
    assigned += out[i];
    frac.push_back({quota - fl, i});
  }
  std::stable_sort(frac.begin(), frac.end(),
                   [](const auto& a, const auto& b) { return a.first > b.first; });
  for (size_t k = 0; assigned < total && k < frac.size(); ++k, ++assigned) ++out[frac[k].second];
  // Floating-point quotas can leave a unit over or under; settle it on the largest weights.
  for (size_t k = 0; assigned > total; k = (k + 1) % frac.size()) {
    if (out[frac[k].second] > 0) {
      --out[frac[k].second];
      --assigned;
    }
  }
  for (size_t k = 0; assigned < total; k = (k + 1) % frac.size(), ++assigned) ++out[frac[k].second];
  return out;
}

// The k largest of s[0, count) with ties to the lower index, appended to `out` as ascending
// indices offset by `base`. `tmp` is scratch.
void TopKAscending(const float* s, int count, int64_t k, int32_t base, std::vector<float>& tmp,
                   std::vector<int32_t>& out) {
  if (k <= 0) return;
  if (k >= count) {
    for (int j = 0; j < count; ++j) out.push_back(base + j);
    return;
  }
  tmp.assign(s, s + count);
  std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
  const float t = tmp[k - 1];
  int64_t above = 0;
  for (int j = 0; j < count; ++j) above += s[j] > t;
  int64_t ties = k - above;
  for (int j = 0; j < count; ++j) {
    if (s[j] > t || (s[j] == t && ties-- > 0)) out.push_back(base + j);
  }
}

absl::Status ValidateBudget(const Budget& b) {
  const bool ratio = b.keep_ratio != 0;
  const bool tokens = b.tokens != 0;
  if (ratio == tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "exactly one of budget.keep_ratio (", b.keep_ratio, ") and budget.tokens (", b.tokens,
        ") must be set"));
  }
  if (ratio && !(b.keep_ratio > 0 && b.keep_ratio <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget.keep_ratio must be in (0, 1], got ", b.keep_ratio));
  }
  if (tokens && (b.tokens < 0 || b.tokens > (int64_t{1} << 40))) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget.tokens must be in (0, 2^40], got ", b.tokens));
  }
  return absl::OkStatus();
}

// The shape of a sequence's scores, checked: every layer has `kv_heads` heads, every score is
// finite and every head fits an int32 index.
struct ScoreShape {
  int layers = 0;
  int kv_heads = 0;
  int64_t total_tokens = 0;  // Σ n over every (layer, head)
  int pairs() const { return layers * kv_heads; }
};

int HeadLength(const std::vector<HeadScores>& layers, int l, int g) {
  return static_cast<int>(layers[l].per_head[g].size());
}

// The shape of `layers` (which must not be empty), or INVALID_ARGUMENT naming the first bad
// layer, head or score.
absl::StatusOr<ScoreShape> CheckScores(const std::vector<HeadScores>& layers) {
  ScoreShape shape;
  shape.layers = static_cast<int>(layers.size());
  shape.kv_heads = static_cast<int>(layers[0].per_head.size());
  const int hk = shape.kv_heads;
  if (hk == 0) return absl::InvalidArgumentError("layer 0 has no KV heads");
  for (int l = 0; l < shape.layers; ++l) {
    if (static_cast<int>(layers[l].per_head.size()) != hk) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, " has ",
                                                     layers[l].per_head.size(),
                                                     " KV heads, layer 0 has ", hk));
    }
    for (int g = 0; g < hk; ++g) {
      const std::vector<float>& s = layers[l].per_head[g];
      if (s.size() > static_cast<size_t>(INT32_MAX)) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", l, " head ", g, " has too many tokens (", s.size(), ")"));
      }
      for (size_t j = 0; j < s.size(); ++j) {
        if (!std::isfinite(s[j])) {
          return absl::InvalidArgumentError(absl::StrCat("score of layer ", l, " head ", g,
                                                         " token ", j, " is not finite (", s[j],
                                                         ")"));
        }
      }
      shape.total_tokens += static_cast<int64_t>(s.size());
    }
  }
  return shape;
}

// Pyramid's base shares (see selection.h), or an empty vector when the pyramid does not apply
// (fewer than two layers, or bounds outside n̄ >= max >= min >= sinks + window).
std::vector<int64_t> PyramidShares(const Policy& policy, const ScoreShape& shape, int64_t total,
                                   const std::vector<double>& head_weight) {
  const int L = shape.layers;
  const int hk = shape.kv_heads;
  const int pairs = shape.pairs();
  if (L < 2) return {};
  const double u = static_cast<double>(total) / pairs;
  const double n_ref = static_cast<double>(shape.total_tokens) / pairs;
  double mn = u / policy.pyramid_beta;
  double mx = 2 * u - mn;
  if (mx >= n_ref - policy.window) {
    mx = n_ref - policy.window;
    mn = 2 * u - mx;
  }
  if (!(n_ref >= mx && mx >= mn && mn >= policy.sinks + policy.window)) return {};
  std::vector<double> layer_weight(L);
  for (int l = 0; l < L; ++l) layer_weight[l] = mx - l * (mx - mn) / (L - 1);
  const std::vector<int64_t> layer_total = Apportion(total, layer_weight);
  std::vector<int64_t> share(pairs, 0);
  for (int l = 0; l < L; ++l) {
    std::vector<double> w(head_weight.begin() + l * hk, head_weight.begin() + (l + 1) * hk);
    const std::vector<int64_t> s = Apportion(layer_total[l], w);
    std::copy(s.begin(), s.end(), share.begin() + l * hk);
  }
  return share;
}

// Base share of every (layer, head), flattened l * kv_heads + g: the sequence budget `total`
// apportioned equally (token budget) or by length (ratio), or by pyramid's layer totals.
std::vector<int64_t> BaseShares(const Policy& policy, const Budget& budget,
                                const std::vector<HeadScores>& layers, const ScoreShape& shape,
                                int64_t total) {
  std::vector<double> head_weight(shape.pairs());
  for (int l = 0; l < shape.layers; ++l) {
    for (int g = 0; g < shape.kv_heads; ++g) {
      head_weight[l * shape.kv_heads + g] =
          budget.tokens > 0 ? 1.0 : static_cast<double>(HeadLength(layers, l, g));
    }
  }
  if (policy.allocation == Allocation::kPyramid) {
    std::vector<int64_t> share = PyramidShares(policy, shape, total, head_weight);
    if (!share.empty()) return share;
  }
  return Apportion(total, head_weight);
}

// Candidate picks per head: its share less its forced tokens, clamped to [0, candidates].
std::vector<int64_t> CandidatePicks(const Policy& policy, const std::vector<HeadScores>& layers,
                                    const ScoreShape& shape, const std::vector<int64_t>& share) {
  const int hk = shape.kv_heads;
  std::vector<int64_t> picks(shape.pairs());
  for (int l = 0; l < shape.layers; ++l) {
    for (int g = 0; g < hk; ++g) {
      const int n = HeadLength(layers, l, g);
      const Range r = Candidates(policy, n);
      const int64_t forced = n - r.size();
      picks[l * hk + g] = std::clamp<int64_t>(share[l * hk + g] - forced, 0, r.size());
    }
  }
  return picks;
}

// Scratch buffers of AdaRedistribute, reused across layers.
struct AdaScratch {
  std::vector<float> flat, tmp;
  std::vector<int32_t> top;
};

// Ada-KV's redistribution of one layer's picks (selection.h): the layer's top K over all heads'
// candidates gives counts c_h, then B_h = round((1 - α) c_h + ⌊α b⌋) with the rounding settled so
// that Σ B_h = K. Overwrites picks[l * kv_heads, + kv_heads).
absl::Status AdaRedistributeLayer(const Policy& policy, const std::vector<HeadScores>& layers,
                                  int hk, int l, double alpha, AdaScratch& scratch,
                                  std::vector<int64_t>& picks) {
  std::vector<float>& flat = scratch.flat;
  std::vector<int32_t>& top = scratch.top;
  int64_t k = 0;
  std::vector<int> cand(hk);
  flat.clear();
  std::vector<int64_t> offset(hk + 1, 0);
  for (int g = 0; g < hk; ++g) {
    k += picks[l * hk + g];
    const Range r = Candidates(policy, HeadLength(layers, l, g));
    cand[g] = r.size();
    const std::vector<float>& s = layers[l].per_head[g];
    flat.insert(flat.end(), s.begin() + r.begin, s.begin() + r.end);
    offset[g + 1] = offset[g] + r.size();
  }
  if (flat.size() > static_cast<size_t>(INT32_MAX)) {
    return absl::InvalidArgumentError(absl::StrCat("layer ", l, " has too many candidates"));
  }
  top.clear();
  TopKAscending(flat.data(), static_cast<int>(flat.size()), k, 0, scratch.tmp, top);
  std::vector<int64_t> count(hk, 0);
  int g = 0;
  for (int32_t idx : top) {
    while (idx >= offset[g + 1]) ++g;
    ++count[g];
  }
  const double b = static_cast<double>(k) / hk;
  const double floor_ab = std::floor(alpha * b);
  std::vector<double> raw(hk);
  std::vector<int64_t> bh(hk);
  int64_t sum = 0;
  for (int h = 0; h < hk; ++h) {
    raw[h] = (1 - alpha) * static_cast<double>(count[h]) + floor_ab;
    bh[h] = std::clamp<int64_t>(std::llround(raw[h]), 0, cand[h]);
    sum += bh[h];
  }
  while (sum < k) {
    int best = -1;
    for (int h = 0; h < hk; ++h) {
      if (bh[h] < cand[h] && (best < 0 || raw[h] - bh[h] > raw[best] - bh[best])) best = h;
    }
    ++bh[best];
    ++sum;
  }
  while (sum > k) {
    int best = -1;
    for (int h = 0; h < hk; ++h) {
      const int64_t floor_h = std::min<int64_t>(static_cast<int64_t>(floor_ab), cand[h]);
      if (bh[h] > floor_h && (best < 0 || raw[h] - bh[h] < raw[best] - bh[best])) best = h;
    }
    --bh[best];
    --sum;
  }
  for (int h = 0; h < hk; ++h) picks[l * hk + h] = bh[h];
  return absl::OkStatus();
}

absl::Status AdaRedistribute(const Policy& policy, const std::vector<HeadScores>& layers,
                             const ScoreShape& shape, int q_heads_per_kv,
                             std::vector<int64_t>& picks) {
  const double alpha = EffectiveAdaAlpha(policy, q_heads_per_kv);
  AdaScratch scratch;
  for (int l = 0; l < shape.layers; ++l) {
    RETURN_IF_ERROR(
        AdaRedistributeLayer(policy, layers, shape.kv_heads, l, alpha, scratch, picks));
  }
  return absl::OkStatus();
}

// Global allocation: every candidate's score divided by its layer's Σ|score| over candidates, one
// top-(total - Σ forced) over the whole sequence; forced tokens are kept. Fills sel->kept.
void SelectGlobal(const Policy& policy, const std::vector<HeadScores>& layers,
                  const ScoreShape& shape, int64_t total, Selection* sel) {
  const int L = shape.layers;
  const int hk = shape.kv_heads;
  auto n_of = [&](int l, int g) { return HeadLength(layers, l, g); };
  int64_t forced_total = 0, cand_total = 0;
  std::vector<float> inv_total(L, 1.0f);
  for (int l = 0; l < L; ++l) {
    double layer_sum = 0;
    for (int g = 0; g < hk; ++g) {
      const Range r = Candidates(policy, n_of(l, g));
      forced_total += n_of(l, g) - r.size();
      cand_total += r.size();
      const std::vector<float>& s = layers[l].per_head[g];
      for (int j = r.begin; j < r.end; ++j) layer_sum += std::fabs(s[j]);
    }
    if (layer_sum > 0) inv_total[l] = static_cast<float>(1.0 / layer_sum);
  }
  const int64_t k = std::clamp<int64_t>(total - forced_total, 0, cand_total);
  std::vector<float> flat;
  flat.reserve(cand_total);
  for (int l = 0; l < L; ++l) {
    for (int g = 0; g < hk; ++g) {
      const Range r = Candidates(policy, n_of(l, g));
      const std::vector<float>& s = layers[l].per_head[g];
      for (int j = r.begin; j < r.end; ++j) flat.push_back(s[j] * inv_total[l]);
    }
  }
  float t = 0;
  int64_t ties = 0;
  if (k > 0 && k < cand_total) {
    std::vector<float> tmp = flat;
    std::nth_element(tmp.begin(), tmp.begin() + (k - 1), tmp.end(), std::greater<float>());
    t = tmp[k - 1];
    int64_t above = 0;
    for (float v : flat) above += v > t;
    ties = k - above;
  }
  size_t pos = 0;
  for (int l = 0; l < L; ++l) {
    for (int g = 0; g < hk; ++g) {
      const int n = n_of(l, g);
      const Range r = Candidates(policy, n);
      std::vector<int32_t>& kept = sel->kept[l][g];
      for (int j = 0; j < r.begin; ++j) kept.push_back(j);
      for (int j = r.begin; j < r.end; ++j, ++pos) {
        const float v = flat[pos];
        const bool take = k >= cand_total || (k > 0 && (v > t || (v == t && ties-- > 0)));
        if (take) kept.push_back(j);
      }
      for (int j = r.end; j < n; ++j) kept.push_back(j);
    }
  }
}

// Per-head selection: each head keeps its forced tokens and its top picks[l * kv_heads + g]
// candidates. Fills sel->kept.
void SelectPerHead(const Policy& policy, const std::vector<HeadScores>& layers,
                   const ScoreShape& shape, const std::vector<int64_t>& picks, Selection* sel) {
  std::vector<float> tmp;
  for (int l = 0; l < shape.layers; ++l) {
    for (int g = 0; g < shape.kv_heads; ++g) {
      const int n = HeadLength(layers, l, g);
      const Range r = Candidates(policy, n);
      std::vector<int32_t>& kept = sel->kept[l][g];
      const int64_t k = picks[l * shape.kv_heads + g];
      kept.reserve(static_cast<size_t>(n - r.size() + k));
      for (int j = 0; j < r.begin; ++j) kept.push_back(j);
      TopKAscending(layers[l].per_head[g].data() + r.begin, r.size(), k, r.begin, tmp, kept);
      for (int j = r.end; j < n; ++j) kept.push_back(j);
    }
  }
}

}  // namespace

absl::StatusOr<Selection> SelectTokens(const Policy& policy, const Budget& budget,
                                       const std::vector<HeadScores>& layers,
                                       int q_heads_per_kv) {
  RETURN_IF_ERROR(ValidatePolicy(policy));
  RETURN_IF_ERROR(ValidateBudget(budget));
  if (policy.allocation == Allocation::kSequence) return SelectSequenceTokens(policy, budget, layers);
  if (q_heads_per_kv < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("q_heads_per_kv must be >= 1, got ", q_heads_per_kv));
  }
  Selection sel;
  if (layers.empty()) return sel;
  ASSIGN_OR_RETURN(const ScoreShape shape, CheckScores(layers));
  const int64_t total =
      budget.tokens > 0 ? budget.tokens * shape.pairs()
                        : std::llround(budget.keep_ratio * static_cast<double>(shape.total_tokens));
  sel.kept.assign(shape.layers, std::vector<std::vector<int32_t>>(shape.kv_heads));
  if (policy.allocation == Allocation::kGlobal) {
    SelectGlobal(policy, layers, shape, total, &sel);
    return sel;
  }
  std::vector<int64_t> picks =
      CandidatePicks(policy, layers, shape, BaseShares(policy, budget, layers, shape, total));
  if (policy.allocation == Allocation::kAda) {
    RETURN_IF_ERROR(AdaRedistribute(policy, layers, shape, q_heads_per_kv, picks));
  }
  SelectPerHead(policy, layers, shape, picks, &sel);
  return sel;
}

}  // namespace kvkeep::eviction
