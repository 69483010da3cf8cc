// Fair shares of the pool among tenants, and the order in which pool pressure takes pages back
// (docs/architecture.md, "Pool allocation"). Pure functions: the caller holds whatever lock
// protects the figures.
//
//   unreserved = capacity − Σ_all guarantee_t
//   share_t    = guarantee_t + unreserved · w_t / Σ_{active} w      (t active)
//   share_t    = guarantee_t                                          (t not active)
// A tenant is active when it holds device pages or is asking for some. Admission stays
// work-conserving (quota.h): a tenant may use more than its share while the pool has room; under
// pressure, pages are taken first from tenants above their share (never below it), then, unless
// the asking tenant is itself above its share, from tenants above their guarantee (never below
// it). Within a tier the globally cheapest pages go first.
//
//   std::vector<uint64_t> shares = FairShares(inputs, capacity);
//   std::vector<size_t> victims = ChooseVictims(candidates, tenants, target, requester);
#ifndef KVKEEP_SERVICE_POOL_POOL_SHARES_H_
#define KVKEEP_SERVICE_POOL_POOL_SHARES_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace kvkeep {

// How pool pressure frees pages (kvkeepd --pressure_policy).
enum class PressurePolicy {
  kLru,       // "lru": spill whole least-recently-used sequences
  kCapacity,  // "capacity": drop the cheapest whole pages by capacity cost, then spill
  kCompress,  // "compress": compress the unleased sequences whose marginal loss per freed page
              // is smallest (service/engine/compress_pressure.h), then spill
};
// "lru" / "capacity" / "compress"; false for anything else.
bool ParsePressurePolicy(std::string_view name, PressurePolicy* out);
const char* PressurePolicyName(PressurePolicy policy);

struct ShareInput {
  uint64_t guarantee_bytes = 0;
  uint32_t weight = 0;
  bool active = false;
};

// share_t per input (see above). Integer arithmetic; the remainder of the division stays unshared.
std::vector<uint64_t> FairShares(const std::vector<ShareInput>& tenants, uint64_t capacity);

struct TenantStanding {
  uint64_t used_bytes = 0;
  uint64_t guarantee_bytes = 0;
  uint64_t share_bytes = 0;
};

// One page that pool pressure may free.
struct VictimCandidate {
  double cost = 0;          // PageCosts::Cost: information lost
  std::string tenant;
  uint64_t bytes = 0;       // page bytes
  uint64_t recency = 0;     // tie-break: smaller = less recently used, goes first
  size_t sequence = 0;      // caller's index
  uint32_t head = 0, page = 0;
};

// Indices into `candidates` of the pages to free, in order, until their bytes reach `target`
// (or nothing more is allowed): tier 1 takes a page only from a tenant that stays at or above its
// share, tier 2 (skipped when `requester` is a tenant above its share) only from one that stays at
// or above its guarantee; within a tier, cheapest first (ties: least recently used). `tenants`
// holds every candidate's tenant; the standings are updated as pages are chosen. The caller
// counts the requester's pending allocation in its standing (the engine does).
std::vector<size_t> ChooseVictims(const std::vector<VictimCandidate>& candidates,
                                  absl::flat_hash_map<std::string, TenantStanding>* tenants,
                                  uint64_t target, const std::string& requester);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_POOL_POOL_SHARES_H_
