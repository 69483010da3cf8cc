#include "service/engine/compress_pressure.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <queue>
#include <tuple>

namespace kvkeep {
namespace {

// The marginal loss of candidate i's next page after `taken` pages, per byte.
struct Next {
  double per_byte;
  uint64_t recency;
  size_t candidate;
  bool operator>(const Next& o) const {
    return std::tie(per_byte, recency, candidate) >
           std::tie(o.per_byte, o.recency, o.candidate);
  }
};

}  // namespace

std::vector<double> NormalisedPageLosses(const std::vector<std::vector<double>>& costs,
                                         const std::vector<std::vector<bool>>& candidate) {
  std::vector<double> out;
  const double heads = static_cast<double>(std::max<size_t>(costs.size(), 1));
  for (size_t h = 0; h < costs.size(); ++h) {
    const double total = std::accumulate(costs[h].begin(), costs[h].end(), 0.0);
    for (size_t p = 0; p < costs[h].size(); ++p) {
      if (h >= candidate.size() || p >= candidate[h].size() || !candidate[h][p]) continue;
      out.push_back(total > 0 ? std::max(costs[h][p], 0.0) / (total * heads) : 0.0);
    }
  }
  return out;
}

CompressPlan PlanPressureCompression(const std::vector<CompressCandidate>& candidates,
                                     absl::flat_hash_map<std::string, TenantStanding>* tenants,
                                     uint64_t target, const std::string& requester,
                                     const CompressPlanOptions& options) {
  const double p = std::max(options.loss_power, 1.0);
  const size_t n = candidates.size();
  CompressPlan plan;
  plan.pages.assign(n, 0);
  plan.loss.assign(n, 0.0);
  std::vector<std::vector<double>> sorted(n);
  for (size_t i = 0; i < n; ++i) {
    sorted[i] = candidates[i].page_losses;
    for (double& x : sorted[i]) x = std::isfinite(x) ? std::max(x, 0.0) : 0.0;
    std::sort(sorted[i].begin(), sorted[i].end());
  }
  auto next_of = [&](size_t i) {
    const double before = plan.loss[i];
    const double after = before + sorted[i][plan.pages[i]];
    const double marginal = std::pow(after, p) - std::pow(before, p);
    return Next{marginal / static_cast<double>(std::max<uint64_t>(candidates[i].page_bytes, 1)),
                candidates[i].recency, i};
  };
  bool tier2 = true;
  if (auto r = tenants->find(requester); r != tenants->end()) {
    tier2 = r->second.used_bytes <= r->second.share_bytes;
  }
  for (int tier = 1; tier <= 2 && plan.bytes < target; ++tier) {
    if (tier == 2 && !tier2) break;
    std::priority_queue<Next, std::vector<Next>, std::greater<Next>> heap;
    for (size_t i = 0; i < n; ++i) {
      if (plan.pages[i] < sorted[i].size() && candidates[i].page_bytes > 0) heap.push(next_of(i));
    }
    while (!heap.empty() && plan.bytes < target) {
      const size_t i = heap.top().candidate;
      heap.pop();
      const CompressCandidate& c = candidates[i];
      TenantStanding& t = (*tenants)[c.tenant];
      const uint64_t floor = tier == 1 ? t.share_bytes : t.guarantee_bytes;
      // A tenant at its floor gives nothing more in this tier; its other pages stay too.
      if (t.used_bytes < c.page_bytes || t.used_bytes - c.page_bytes < floor) continue;
      t.used_bytes -= c.page_bytes;
      plan.bytes += c.page_bytes;
      plan.loss[i] += sorted[i][plan.pages[i]];
      ++plan.pages[i];
      if (plan.pages[i] < sorted[i].size()) heap.push(next_of(i));
    }
  }
  return plan;
}

}  // namespace kvkeep
