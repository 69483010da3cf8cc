// The plan of --pressure_policy=compress (compress_pressure.h): smallest marginal loss per freed
// page first, loss power, fair shares and guarantees, protected pages.
#include "service/engine/compress_pressure.h"

#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using Standings = absl::flat_hash_map<std::string, TenantStanding>;

// One tenant that may give everything.
Standings Free(const std::string& tenant, uint64_t used) { return {{tenant, {used, 0, 0}}}; }

TEST(PlanPressureCompression, TakesTheSmallestMarginalLossPerFreedPageFirst) {
  // b's pages are cheap, a's dear: 3 pages come from b (the cheapest of its pages first),
  // none from a, even though a is the less recently used.
  std::vector<CompressCandidate> c = {{"t", 100, 0, {0.5, 0.4, 0.6}},
                                      {"t", 100, 1, {0.02, 0.01, 0.03, 0.9}}};
  Standings s = Free("t", 10000);
  const CompressPlan plan = PlanPressureCompression(c, &s, 300, "", {.loss_power = 1});
  EXPECT_EQ(plan.pages, (std::vector<uint32_t>{0, 3}));
  EXPECT_NEAR(plan.loss[1], 0.06, 1e-12);
  EXPECT_EQ(plan.bytes, 300u);
  EXPECT_EQ(s["t"].used_bytes, 10000u - 300u);
}

TEST(PlanPressureCompression, LossPerByteFavoursLargerPages) {
  // Same loss per page; b's pages free twice the bytes: one page of b covers the target.
  std::vector<CompressCandidate> c = {{"t", 100, 0, {0.1, 0.1}}, {"t", 200, 1, {0.1, 0.1}}};
  Standings s = Free("t", 10000);
  const CompressPlan plan = PlanPressureCompression(c, &s, 200, "");
  EXPECT_EQ(plan.pages, (std::vector<uint32_t>{0, 1}));
}

TEST(PlanPressureCompression, PowerTwoSpreadsTheLossWherePowerOneDrainsOneSequence) {
  // a's pages each cost slightly less than b's. Power 1: all four from a. Power 2: a's second
  // page costs (0.18² − 0.09²) = 0.0243 > b's first 0.01, so the loss is spread 2 + 2.
  std::vector<CompressCandidate> c = {{"t", 1, 0, {0.09, 0.09, 0.09, 0.09}},
                                      {"t", 1, 1, {0.1, 0.1, 0.1, 0.1}}};
  Standings s1 = Free("t", 100), s2 = Free("t", 100);
  EXPECT_EQ(PlanPressureCompression(c, &s1, 4, "", {.loss_power = 1}).pages,
            (std::vector<uint32_t>{4, 0}));
  EXPECT_EQ(PlanPressureCompression(c, &s2, 4, "", {.loss_power = 2}).pages,
            (std::vector<uint32_t>{2, 2}));
}

TEST(PlanPressureCompression, FairSharesFirstThenGuaranteesNeverBelow) {
  // Pages of 10 bytes. a: used 100, share 80, guarantee 60; b: used 50, share 50, guarantee 20.
  // a's pages are dearer than b's, but tier 1 takes only from tenants above their share: a gives
  // 2 pages (down to 80). Tier 2 (requester r within its share) takes the cheapest down to the
  // guarantees: b's 3 pages (down to 20), then a's next 2 (down to 60); the target of 90 bytes
  // cannot be met further.
  std::vector<CompressCandidate> c = {{"a", 10, 0, std::vector<double>(8, 0.5)},
                                      {"b", 10, 0, std::vector<double>(8, 0.01)}};
  Standings s = {{"a", {100, 60, 80}}, {"b", {50, 20, 50}}, {"r", {10, 0, 40}}};
  const CompressPlan plan = PlanPressureCompression(c, &s, 90, "r", {.loss_power = 1});
  EXPECT_EQ(plan.pages, (std::vector<uint32_t>{4, 3}));
  EXPECT_EQ(plan.bytes, 70u);
  EXPECT_EQ(s["a"].used_bytes, 60u);
  EXPECT_EQ(s["b"].used_bytes, 20u);
}

TEST(PlanPressureCompression, RequesterAboveItsShareTakesOnlyFromTenantsAboveTheirs) {
  std::vector<CompressCandidate> c = {{"a", 10, 0, std::vector<double>(8, 0.5)},
                                      {"b", 10, 0, std::vector<double>(8, 0.01)}};
  Standings s = {{"a", {100, 60, 80}}, {"b", {50, 20, 50}}, {"r", {90, 0, 40}}};
  const CompressPlan plan = PlanPressureCompression(c, &s, 90, "r", {.loss_power = 1});
  EXPECT_EQ(plan.pages, (std::vector<uint32_t>{2, 0}));  // a down to its share; b untouched
}

TEST(PlanPressureCompression, NothingPlannedWithoutCandidatesOrTarget) {
  std::vector<CompressCandidate> c = {{"t", 10, 0, {}}, {"t", 10, 0, {0.1}}};
  Standings s = Free("t", 100);
  EXPECT_EQ(PlanPressureCompression(c, &s, 0, "").bytes, 0u);
  const CompressPlan plan = PlanPressureCompression(c, &s, 1000, "");
  EXPECT_EQ(plan.pages, (std::vector<uint32_t>{0, 1}));  // all there is
}

TEST(NormalisedPageLosses, ProtectedPagesCountInTheTotalButAreNoCandidates) {
  // Head 0: costs 1, 2, 3, 4 (total 10); only pages 1 and 2 may go (0: sinks or a shared
  // prefix, 3: the window). Head 1: all zero. Two heads: loss = cost / (10 · 2).
  const std::vector<double> losses = NormalisedPageLosses(
      {{1, 2, 3, 4}, {0, 0}}, {{false, true, true, false}, {true, false}});
  EXPECT_EQ(losses, (std::vector<double>{0.1, 0.15, 0.0}));
}

}  // namespace
}  // namespace kvkeep
