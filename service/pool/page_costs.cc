#include "service/pool/page_costs.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/math/dtype.h"
#include "service/eviction/policy.h"
#include "service/compress/head_reader.h"

namespace kvkeep {

bool PageCosts::FreshFor(const SequenceTable& table) const {
  if (!computed || counts.size() != table.heads()) return false;
  for (uint32_t h = 0; h < table.heads(); ++h) {
    if (counts[h] != table.head(h).count) return false;
  }
  return true;
}

double PageCosts::Cost(const SequenceTable& table, uint32_t head, uint32_t page) const {
  const uint32_t tpp = table.tokens_per_page();
  const std::vector<double>& costs = per_head[head];
  const uint64_t full_then = counts[head] / tpp;
  if (page < full_then && counts[head] <= table.head(head).count) return costs[page];
  double total = 0;
  for (double c : costs) total += c;
  const double per_token = counts[head] == 0 ? 0.0 : total / counts[head];
  const uint64_t end = std::min<uint64_t>(table.head(head).count, (uint64_t{page} + 1) * tpp);
  const uint64_t begin = uint64_t{page} * tpp;
  return per_token * static_cast<double>(end > begin ? end - begin : 0);
}

void PageCosts::RemovePage(uint32_t head, uint32_t page, uint32_t tokens_per_page) {
  std::vector<double>& costs = per_head[head];
  if (page < costs.size()) costs.erase(costs.begin() + page);
  counts[head] = counts[head] >= tokens_per_page ? counts[head] - tokens_per_page : 0;
}

double TokenCapacityCost(double s) {
  s = std::clamp(s, 0.0, 1.0 - 1e-9);
  return -std::log1p(-s);
}

void UnweightedLeverage(const float* v, int n, int d, std::vector<double>* gram,
                        std::vector<double>* out) {
  // A = I + Σ v vᵀ, Cholesky A = L Lᵀ in place (lower triangle), s_j = ‖L⁻¹ v_j‖².
  gram->assign(static_cast<size_t>(d) * d, 0.0);
  double* a = gram->data();
  for (int j = 0; j < n; ++j) {
    const float* x = v + static_cast<size_t>(j) * d;
    for (int r = 0; r < d; ++r) {
      const double xr = x[r];
      for (int c = 0; c <= r; ++c) a[r * d + c] += xr * x[c];
    }
  }
  for (int r = 0; r < d; ++r) a[r * d + r] += 1.0;
  for (int c = 0; c < d; ++c) {
    double diag = a[c * d + c];
    for (int k = 0; k < c; ++k) diag -= a[c * d + k] * a[c * d + k];
    diag = std::sqrt(std::max(diag, 1e-12));  // A >= I: never below 1 in exact arithmetic
    a[c * d + c] = diag;
    for (int r = c + 1; r < d; ++r) {
      double x = a[r * d + c];
      for (int k = 0; k < c; ++k) x -= a[r * d + k] * a[c * d + k];
      a[r * d + c] = x / diag;
    }
  }
  out->resize(n);
  std::vector<double> y(d);
  for (int j = 0; j < n; ++j) {
    const float* x = v + static_cast<size_t>(j) * d;
    double s = 0;
    for (int r = 0; r < d; ++r) {
      double t = x[r];
      for (int k = 0; k < r; ++k) t -= a[r * d + k] * y[k];
      y[r] = t / a[r * d + r];
      s += y[r] * y[r];
    }
    (*out)[j] = s;
  }
}

absl::StatusOr<PageCosts> ComputePageCosts(const Model& model, const SequenceTable& table,
                                           const SequenceStats& stats, Backend& backend,
                                           const PagePool& pool, PageCostScratch& scratch) {
  const PageGeometry& geo = model.geometry();
  const uint32_t layers = model.layers(), kv_heads = model.kv_heads();
  const uint32_t tpp = geo.tokens_per_page, d = geo.head_dim;
  if (table.heads() != model.head_tables() || table.tokens_per_page() != tpp) {
    return absl::InternalError("sequence table does not match its model");
  }
  eviction::Policy capkv;
  capkv.scorer = eviction::ScorerKind::kCapKv;
  const bool anchored = CheckStatsFor(model, table, stats, capkv.scorer).ok();

  PageCosts out;
  out.computed = true;
  out.from_query_moments = anchored;
  out.per_head.resize(table.heads());
  out.counts.resize(table.heads());
  scratch.keys_.resize(kv_heads);
  scratch.values_.resize(kv_heads);
  scratch.key_ptrs_.assign(kv_heads, nullptr);
  scratch.value_ptrs_.assign(kv_heads, nullptr);

  for (uint32_t layer = 0; layer < layers; ++layer) {
    for (uint32_t g = 0; g < kv_heads; ++g) {
      const uint32_t h = layer * kv_heads + g;
      for (int part = anchored ? 0 : 1; part < 2; ++part) {
        const bool values = part == 1;
        std::vector<float>& dst = values ? scratch.values_[g] : scratch.keys_[g];
        const absl::Status status =
            ReadHeadAsFloat(geo, table, h, values, pool, backend, &scratch.staging_, &dst);
        (values ? scratch.value_ptrs_ : scratch.key_ptrs_)[g] = dst.data();
        if (!status.ok()) {
          return absl::InternalError(absl::StrCat("page costs: reading layer ", layer,
                                                  " KV head ", g, ": ", status.message()));
        }
      }
    }
    if (anchored) {
      BuildLayerInputs(model, table, stats, capkv, layer, scratch.key_ptrs_, scratch.value_ptrs_,
                       &scratch.inputs_);
      absl::Status scored =
          eviction::ScoreLayerInto(capkv, scratch.inputs_, scratch.workspace_, &scratch.scores_);
      if (!scored.ok()) {
        return absl::Status(scored.code(), absl::StrCat("page costs: scoring layer ", layer,
                                                        ": ", scored.message()));
      }
    }
    for (uint32_t g = 0; g < kv_heads; ++g) {
      const uint32_t h = layer * kv_heads + g;
      const uint32_t n = table.head(h).count;
      if (!anchored) {
        UnweightedLeverage(scratch.values_[g].data(), static_cast<int>(n), static_cast<int>(d),
                           &scratch.gram_, &scratch.lev_);
      }
      std::vector<double>& costs = out.per_head[h];
      costs.assign((uint64_t{n} + tpp - 1) / tpp, 0.0);
      for (uint32_t j = 0; j < n; ++j) {
        const double s = anchored ? scratch.scores_.per_head[g][j] : scratch.lev_[j];
        costs[j / tpp] += TokenCapacityCost(s);
      }
      out.counts[h] = n;
    }
  }
  return out;
}

}  // namespace kvkeep
