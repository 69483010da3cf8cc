#include "service/pool/pool_shares.h"

#include <algorithm>
#include <numeric>

namespace kvkeep {

bool ParsePressurePolicy(std::string_view name, PressurePolicy* out) {
  if (name == "lru") {
    *out = PressurePolicy::kLru;
  } else if (name == "capacity") {
    *out = PressurePolicy::kCapacity;
  } else if (name == "compress") {
    *out = PressurePolicy::kCompress;
  } else {
    return false;
  }
  return true;
}

const char* PressurePolicyName(PressurePolicy policy) {
  switch (policy) {
    case PressurePolicy::kCapacity:
      return "capacity";
    case PressurePolicy::kCompress:
      return "compress";
    case PressurePolicy::kLru:
      break;
  }
  return "lru";
}

std::vector<uint64_t> FairShares(const std::vector<ShareInput>& tenants, uint64_t capacity) {
  uint64_t reserved = 0, weights = 0;
  for (const ShareInput& t : tenants) {
    reserved += t.guarantee_bytes;
    if (t.active) weights += t.weight;
  }
  const uint64_t unreserved = capacity > reserved ? capacity - reserved : 0;
  std::vector<uint64_t> shares;
  shares.reserve(tenants.size());
  for (const ShareInput& t : tenants) {
    uint64_t extra = 0;
    if (t.active && weights > 0) {
      // unreserved · w / Σw without overflow for any pool below 2^64 bytes.
      extra = static_cast<uint64_t>(static_cast<unsigned __int128>(unreserved) * t.weight /
                                    weights);
    }
    shares.push_back(t.guarantee_bytes + extra);
  }
  return shares;
}

std::vector<size_t> ChooseVictims(const std::vector<VictimCandidate>& candidates,
                                  absl::flat_hash_map<std::string, TenantStanding>* tenants,
                                  uint64_t target, const std::string& requester) {
  std::vector<size_t> order(candidates.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const VictimCandidate &x = candidates[a], &y = candidates[b];
    if (x.cost != y.cost) return x.cost < y.cost;
    if (x.recency != y.recency) return x.recency < y.recency;
    return a < b;
  });
  bool tier2 = true;
  if (auto r = tenants->find(requester); r != tenants->end()) {
    tier2 = r->second.used_bytes <= r->second.share_bytes;
  }
  std::vector<size_t> chosen;
  std::vector<bool> taken(candidates.size(), false);
  uint64_t freed = 0;
  for (int tier = 1; tier <= 2 && freed < target; ++tier) {
    if (tier == 2 && !tier2) break;
    for (size_t i : order) {
      if (freed >= target) break;
      if (taken[i]) continue;
      const VictimCandidate& c = candidates[i];
      TenantStanding& t = (*tenants)[c.tenant];
      const uint64_t floor = tier == 1 ? t.share_bytes : t.guarantee_bytes;
      if (t.used_bytes < c.bytes || t.used_bytes - c.bytes < floor) continue;
      t.used_bytes -= c.bytes;
      freed += c.bytes;
      taken[i] = true;
      chosen.push_back(i);
    }
  }
  return chosen;
}

}  // namespace kvkeep
