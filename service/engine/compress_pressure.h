// Which unleased sequences pool pressure compresses, and by how many pages each
// (kvkeepd --pressure_policy=compress; docs/architecture.md, "Pool allocation").
//
// Each candidate sequence brings the estimated loss of every page compression may free from it
// (its capacity page costs, service/pool/page_costs.h, divided by its head's total cost and by its
// head count: the fraction of the sequence's capacity that page carries; sinks, the observation
// window and shared prefix pages are not candidates). Freeing the k cheapest pages of sequence i
// loses L_i(k) = Σ of its k smallest page losses. The plan minimises Σ_i L_i(k_i)^p over the
// sequences (p = loss_power, default 4) subject to the bytes freed reaching the target: the
// marginal loss of a sequence's next page, L_i(k + 1)^p − L_i(k)^p, never decreases, so taking
// the globally smallest marginal loss per freed byte, one page at a time, is optimal. p > 1 makes
// a sequence that already lost much dearer, which keeps any one sequence from being drained
// (p = 1 is the plain global cheapest-first order of --pressure_policy=capacity, per sequence).
//
// Tenants as in ChooseVictims (pool_shares.h): tier 1 takes a page only from a tenant that stays
// at or above its fair share, tier 2 (skipped when the requester is above its share) only from one
// that stays at or above its guarantee.
//
//   std::vector<CompressCandidate> c = ...;   // one per unleased, unshared sequence
//   CompressPlan plan = PlanPressureCompression(c, &standings, target_bytes, requester);
//   // compress candidate i to (tokens − plan.pages[i] · tokens_per_page) tokens
//
// Pure function; thread-safe.
#ifndef KVKEEP_SERVICE_ENGINE_COMPRESS_PRESSURE_H_
#define KVKEEP_SERVICE_ENGINE_COMPRESS_PRESSURE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "service/pool/pool_shares.h"

namespace kvkeep {

struct CompressCandidate {
  std::string tenant;
  uint64_t page_bytes = 0;
  uint64_t recency = 0;            // tie-break: smaller = less recently used, goes first
  std::vector<double> page_losses;  // >= 0, one per page compression may free (any order)
};

struct CompressPlanOptions {
  // p above; >= 1. Default: 4 (kvkeep-eval pool, docs/quality.md: 3 and 4 both beat per-sequence
  // compression on the mean and on the worst sequence; 4 gives the best worst sequence).
  double loss_power = 4.0;
};

struct CompressPlan {
  std::vector<uint32_t> pages;  // per candidate: pages to free (0: leave it alone)
  std::vector<double> loss;     // per candidate: L_i(pages[i])
  uint64_t bytes = 0;           // Σ pages · page_bytes
};

// The plan for freeing `target` bytes (or as many as the shares allow). `tenants` holds every
// candidate's tenant standing and is updated as pages are planned; the caller counts the
// requester's pending allocation in its standing.
CompressPlan PlanPressureCompression(const std::vector<CompressCandidate>& candidates,
                                     absl::flat_hash_map<std::string, TenantStanding>* tenants,
                                     uint64_t target, const std::string& requester,
                                     const CompressPlanOptions& options = {});

// Per-page losses of one sequence from per-(head, page) costs: cost / (head total · heads), for
// the pages `candidate[h][p]` marks; heads with zero total cost contribute losses of 0.
std::vector<double> NormalisedPageLosses(const std::vector<std::vector<double>>& costs,
                                         const std::vector<std::vector<bool>>& candidate);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_COMPRESS_PRESSURE_H_
