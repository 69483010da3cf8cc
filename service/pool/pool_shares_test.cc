#include "service/pool/pool_shares.h"

#include "gtest/gtest.h"

namespace kvkeep {
namespace {

TEST(FairShares, GuaranteePlusWeightedShareOfUnreservedPool) {
  // capacity 100, guarantees 10 + 20 + 0 = 30, unreserved 70, weights 1 : 2 : 4 (all active).
  std::vector<uint64_t> s = FairShares({{10, 1, true}, {20, 2, true}, {0, 4, true}}, 100);
  EXPECT_EQ(s, (std::vector<uint64_t>{10 + 10, 20 + 20, 40}));
}

TEST(FairShares, InactiveTenantsKeepTheirGuaranteeOnly) {
  std::vector<uint64_t> s = FairShares({{10, 1, true}, {20, 2, false}, {0, 4, true}}, 100);
  EXPECT_EQ(s, (std::vector<uint64_t>{10 + 14, 20, 56}));
}

TEST(FairShares, ZeroWeightsAndOverReservedPoolsShareNothing) {
  EXPECT_EQ(FairShares({{10, 0, true}, {5, 0, true}}, 100), (std::vector<uint64_t>{10, 5}));
  EXPECT_EQ(FairShares({{80, 1, true}, {40, 1, true}}, 100), (std::vector<uint64_t>{80, 40}));
}

TEST(ParsePressurePolicy, KnowsLruCapacityAndCompressOnly) {
  PressurePolicy p;
  ASSERT_TRUE(ParsePressurePolicy("capacity", &p));
  EXPECT_EQ(p, PressurePolicy::kCapacity);
  ASSERT_TRUE(ParsePressurePolicy("lru", &p));
  EXPECT_EQ(p, PressurePolicy::kLru);
  ASSERT_TRUE(ParsePressurePolicy("compress", &p));
  EXPECT_EQ(p, PressurePolicy::kCompress);
  EXPECT_STREQ(PressurePolicyName(PressurePolicy::kCompress), "compress");
  EXPECT_FALSE(ParsePressurePolicy("LRU", &p));
  EXPECT_FALSE(ParsePressurePolicy("", &p));
  EXPECT_STREQ(PressurePolicyName(PressurePolicy::kCapacity), "capacity");
}

VictimCandidate Page(double cost, const std::string& tenant, size_t seq, uint32_t page,
                     uint64_t recency = 0) {
  return {.cost = cost, .tenant = tenant, .bytes = 10, .recency = recency, .sequence = seq,
          .head = 0, .page = page};
}

TEST(ChooseVictims, CheapestFirstAcrossSequencesAndTenants) {
  std::vector<VictimCandidate> c = {Page(5, "a", 0, 0), Page(1, "b", 1, 0), Page(3, "a", 2, 0),
                                    Page(2, "b", 1, 1)};
  absl::flat_hash_map<std::string, TenantStanding> t = {{"a", {100, 0, 0}}, {"b", {100, 0, 0}}};
  EXPECT_EQ(ChooseVictims(c, &t, 30, ""), (std::vector<size_t>{1, 3, 2}));
  EXPECT_EQ(t["a"].used_bytes, 90u);
  EXPECT_EQ(t["b"].used_bytes, 80u);
}

TEST(ChooseVictims, TiesGoToTheLeastRecentlyUsed) {
  std::vector<VictimCandidate> c = {Page(1, "a", 0, 0, 9), Page(1, "a", 1, 0, 3)};
  absl::flat_hash_map<std::string, TenantStanding> t = {{"a", {100, 0, 0}}};
  EXPECT_EQ(ChooseVictims(c, &t, 10, ""), (std::vector<size_t>{1}));
}

TEST(ChooseVictims, AboveFairShareFirstAndNeverBelowGuarantee) {
  // a: used 50, guarantee 30, share 40 (10 above share); b: used 50, guarantee 20, share 45.
  // Tier 1: a may lose 1 page, b none (45 + 10 > 50 - ... b may lose 0: 50 - 10 < 45).
  // Tier 2: a down to 30, b down to 20 — cheapest first.
  std::vector<VictimCandidate> c;
  for (uint32_t i = 0; i < 5; ++i) c.push_back(Page(10 + i, "a", 0, i));
  for (uint32_t i = 0; i < 5; ++i) c.push_back(Page(1 + i, "b", 1, i));
  absl::flat_hash_map<std::string, TenantStanding> t = {{"a", {50, 30, 40}}, {"b", {50, 20, 45}}};
  std::vector<size_t> v = ChooseVictims(c, &t, 1000, "");
  // Tier 1 takes a's cheapest page although b's pages are cheaper (b is within its share).
  ASSERT_FALSE(v.empty());
  EXPECT_EQ(v[0], 0u);
  EXPECT_EQ(t["a"].used_bytes, 30u);  // never below its guarantee
  EXPECT_EQ(t["b"].used_bytes, 20u);
  EXPECT_EQ(v.size(), 2u + 3u);
}

TEST(ChooseVictims, RequesterAboveItsShareTakesNothingFromTenantsWithinTheirs) {
  std::vector<VictimCandidate> c = {Page(1, "b", 0, 0), Page(9, "a", 1, 0)};
  // a (the requester) is above its share, b between guarantee and share.
  absl::flat_hash_map<std::string, TenantStanding> t = {{"a", {60, 0, 40}}, {"b", {40, 0, 60}}};
  EXPECT_EQ(ChooseVictims(c, &t, 20, "a"), (std::vector<size_t>{1}));
  EXPECT_EQ(t["b"].used_bytes, 40u);
  // A requester within its share may take b's page in tier 2.
  absl::flat_hash_map<std::string, TenantStanding> t2 = {{"a", {30, 0, 40}}, {"b", {40, 0, 60}}};
  EXPECT_EQ(ChooseVictims(c, &t2, 10, "a"), (std::vector<size_t>{0}));
  EXPECT_EQ(t2["b"].used_bytes, 30u);
}

}  // namespace
}  // namespace kvkeep
