#include "service/eviction/policy.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "common/status_matchers.h"

namespace kvkeep::eviction {
namespace {

using ::kvkeep::testing::StatusIs;

TEST(PolicyNames, EveryScorerRoundTrips) {
  const char* names[] = {"streaming", "random", "knorm",     "tova",      "h2o",          "observed",
                         "snapkv",    "expected", "capkv", "capkv-dot", "capkv-greedy", "laprox",
                         "qsketch",   "qsketch-post"};
  std::set<ScorerKind> seen;
  for (const char* name : names) {
    ASSERT_OK_AND_ASSIGN(ScorerKind kind, ParseScorer(name));
    EXPECT_EQ(ScorerName(kind), name);
    seen.insert(kind);
  }
  EXPECT_EQ(seen.size(), 14u);
}

TEST(PolicyNames, EveryAllocationRoundTrips) {
  for (const char* name : {"uniform", "ada", "pyramid", "global", "sequence"}) {
    ASSERT_OK_AND_ASSIGN(Allocation a, ParseAllocation(name));
    EXPECT_EQ(AllocationName(a), name);
  }
}

TEST(PolicyNames, UnknownNamesAreInvalidArgumentListingTheChoices) {
  EXPECT_THAT(ParseScorer("capkv_dot"), StatusIs(absl::StatusCode::kInvalidArgument, "capkv-dot"));
  EXPECT_THAT(ParseScorer("SnapKV"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseAllocation("adakv"), StatusIs(absl::StatusCode::kInvalidArgument, "pyramid"));
}

TEST(PolicyDefaults, MatchTheSpecification) {
  const Policy p;
  EXPECT_EQ(ScorerName(p.scorer), "snapkv");
  EXPECT_EQ(p.sinks, 4);
  EXPECT_EQ(p.window, 32);
  EXPECT_EQ(p.pool_kernel, 7);
  EXPECT_TRUE(p.pool_max);
  EXPECT_EQ(p.pyramid_beta, 20);
  EXPECT_EQ(p.capkv_tau, 5);
  EXPECT_EQ(p.rope_horizon, 512);
  EXPECT_OK(ValidatePolicy(p));
  EXPECT_EQ(DefaultAllocation(ScorerKind::kLaProx), Allocation::kGlobal);
  EXPECT_EQ(DefaultAllocation(ScorerKind::kSnapKv), Allocation::kUniform);
  EXPECT_DOUBLE_EQ(EffectiveAdaAlpha(p, 4), 0.2);
  EXPECT_DOUBLE_EQ(EffectiveAdaAlpha(p, 1), 0.5);
  Policy q;
  q.ada_alpha = 0.3;
  EXPECT_DOUBLE_EQ(EffectiveAdaAlpha(q, 4), 0.3);
}

TEST(PolicyValidation, RejectsEachBadFieldByName) {
  auto bad = [](auto mutate, const char* field) {
    Policy p;
    mutate(p);
    EXPECT_THAT(ValidatePolicy(p), StatusIs(absl::StatusCode::kInvalidArgument, field));
  };
  bad([](Policy& p) { p.sinks = -1; }, "sinks");
  bad([](Policy& p) { p.window = -2; }, "window");
  bad([](Policy& p) { p.pool_kernel = 6; }, "pool_kernel");
  bad([](Policy& p) { p.pool_kernel = 0; }, "pool_kernel");
  bad([](Policy& p) { p.ada_alpha = 1.5; }, "ada_alpha");
  bad([](Policy& p) { p.ada_alpha = std::nan(""); }, "ada_alpha");
  bad([](Policy& p) { p.pyramid_beta = 0.5; }, "pyramid_beta");
  bad([](Policy& p) { p.capkv_tau = 0; }, "capkv_tau");
  bad([](Policy& p) { p.rope_horizon = 0; }, "rope_horizon");
  bad([](Policy& p) { p.greedy_picks = -1; }, "greedy_picks");
  bad([](Policy& p) { p.sketch_positions = 0; }, "sketch_positions");
  bad([](Policy& p) { p.sketch_positions = policy_defaults::kMaxSketchPositions + 1; },
      "sketch_positions");
  bad([](Policy& p) { p.sketch_horizon = 0; }, "sketch_horizon");
  bad([](Policy& p) { p.scorer = static_cast<ScorerKind>(99); }, "scorer");
}

TEST(PolicyNeeds, ListWhatEachScorerReads) {
  EXPECT_FALSE(ScorerNeeds(ScorerKind::kStreaming).keys);
  EXPECT_TRUE(ScorerNeeds(ScorerKind::kKnorm).keys);
  EXPECT_FALSE(ScorerNeeds(ScorerKind::kKnorm).values);
  EXPECT_TRUE(ScorerNeeds(ScorerKind::kSnapKv).window_queries);
  EXPECT_TRUE(ScorerNeeds(ScorerKind::kTova).window_queries);
  EXPECT_TRUE(ScorerNeeds(ScorerKind::kH2o).attention_mass);
  EXPECT_TRUE(ScorerNeeds(ScorerKind::kObserved).attention_mass);
  for (ScorerKind k : {ScorerKind::kExpected, ScorerKind::kCapKv, ScorerKind::kCapKvDot,
                       ScorerKind::kCapKvGreedy}) {
    EXPECT_TRUE(ScorerNeeds(k).query_moments);
    EXPECT_TRUE(ScorerNeeds(k).values);
    EXPECT_FALSE(ScorerNeeds(k).window_queries);
  }
  EXPECT_TRUE(ScorerNeeds(ScorerKind::kLaProx).values);
  EXPECT_TRUE(ScorerNeeds(ScorerKind::kLaProx).window_queries);
  for (ScorerKind kind : {ScorerKind::kQSketch, ScorerKind::kQSketchPost}) {
    EXPECT_TRUE(ScorerNeeds(kind).query_sketch);
    EXPECT_TRUE(ScorerNeeds(kind).keys);
    EXPECT_FALSE(ScorerNeeds(kind).window_queries);
    EXPECT_FALSE(ScorerNeeds(kind).query_moments);
  }
  EXPECT_FALSE(ScorerNeeds(ScorerKind::kSnapKv).query_sketch);
}

}  // namespace
}  // namespace kvkeep::eviction
