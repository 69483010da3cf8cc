#include "service/compress/policy_convert.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "common/status_matchers.h"
#include "gpu/math/policy_defaults.h"
#include "service/compress/device_scoring_request.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using absl::StatusCode;
using eviction::Allocation;
using eviction::ScorerKind;
using ::kvkeep::testing::StatusIs;

v1::Policy WithRatio(double ratio) {
  v1::Policy p;
  p.set_keep_ratio(ratio);
  return p;
}

TEST(PolicyConvertTest, DefaultsWhenNeitherPolicySetsAField) {
  ASSERT_OK_AND_ASSIGN(ResolvedPolicy r, ResolvePolicy(v1::Policy(), WithRatio(0.5)));
  EXPECT_EQ(r.policy.scorer, ScorerKind::kSnapKv);
  EXPECT_EQ(r.policy.allocation, Allocation::kUniform);
  EXPECT_EQ(r.policy.sinks, 4);
  EXPECT_EQ(r.policy.window, 32);
  EXPECT_EQ(r.policy.pool_kernel, 7);
  EXPECT_LT(r.policy.ada_alpha, 0);  // auto
  EXPECT_EQ(r.policy.seed, 0u);
  EXPECT_EQ(r.budget.keep_ratio, 0.5);
  EXPECT_EQ(r.budget.tokens, 0);
}

// The wire policy's unset fields, eviction::Policy and DeviceScorerParams share one set of
// defaults: an empty wire policy resolves to what the device scorer assumes when told nothing.
TEST(PolicyConvertTest, WireLibraryAndDeviceDefaultsAgree) {
  ASSERT_OK_AND_ASSIGN(ResolvedPolicy r, ResolvePolicy(v1::Policy(), WithRatio(0.5)));
  EXPECT_EQ(std::string(eviction::ScorerName(r.policy.scorer)),
            std::string(policy_defaults::kScorerName));
  const DeviceScorerParams resolved = ToDeviceScorerParams(r.policy);
  const DeviceScorerParams device;
  EXPECT_EQ(resolved.kind, device.kind);
  EXPECT_EQ(resolved.sinks, device.sinks);
  EXPECT_EQ(resolved.window, device.window);
  EXPECT_EQ(resolved.pool_kernel, device.pool_kernel);
  EXPECT_EQ(resolved.pool_max, device.pool_max);
  EXPECT_EQ(resolved.capkv_tau, device.capkv_tau);
  EXPECT_EQ(resolved.rope_horizon, device.rope_horizon);
  EXPECT_EQ(resolved.seed, device.seed);
  EXPECT_EQ(resolved.greedy_picks, device.greedy_picks);
  EXPECT_EQ(r.policy.ada_alpha, policy_defaults::kAdaAlphaAuto);
  EXPECT_EQ(r.policy.pyramid_beta, policy_defaults::kPyramidBeta);
}

TEST(PolicyConvertTest, RequestOverridesTenantDefaultFieldByField) {
  v1::Policy tenant;
  tenant.set_scorer("capkv");
  tenant.set_allocation("ada");
  tenant.set_sinks(8);
  tenant.set_window(16);
  tenant.set_pool_kernel(5);
  tenant.set_ada_alpha(0.3);
  tenant.set_keep_ratio(0.25);
  v1::Policy request;
  request.set_window(0);  // explicitly set to 0: overrides 16
  request.set_seed(9);
  request.set_pool_kernel(3);
  ASSERT_OK_AND_ASSIGN(ResolvedPolicy r, ResolvePolicy(request, tenant));
  EXPECT_EQ(r.policy.scorer, ScorerKind::kCapKv);
  EXPECT_EQ(r.policy.allocation, Allocation::kAda);
  EXPECT_EQ(r.policy.sinks, 8);
  EXPECT_EQ(r.policy.window, 0);
  EXPECT_EQ(r.policy.pool_kernel, 3);
  EXPECT_DOUBLE_EQ(r.policy.ada_alpha, 0.3);
  EXPECT_EQ(r.policy.seed, 9u);
  EXPECT_EQ(r.budget.keep_ratio, 0.25);

  request.set_scorer("knorm");
  request.set_sinks(0);
  ASSERT_OK_AND_ASSIGN(r, ResolvePolicy(request, tenant));
  EXPECT_EQ(r.policy.scorer, ScorerKind::kKnorm);
  EXPECT_EQ(r.policy.allocation, Allocation::kAda);  // still the tenant's
  EXPECT_EQ(r.policy.sinks, 0);
}

TEST(PolicyConvertTest, EmptyAllocationFollowsTheScorer) {
  v1::Policy request = WithRatio(0.5);
  request.set_scorer("laprox");
  ASSERT_OK_AND_ASSIGN(ResolvedPolicy r, ResolvePolicy(request, v1::Policy()));
  EXPECT_EQ(r.policy.allocation, Allocation::kGlobal);
  request.set_allocation("pyramid");
  ASSERT_OK_AND_ASSIGN(r, ResolvePolicy(request, v1::Policy()));
  EXPECT_EQ(r.policy.allocation, Allocation::kPyramid);
  // The tenant names laprox, the request another scorer: the default follows the merged scorer.
  v1::Policy tenant = WithRatio(0.5);
  tenant.set_scorer("laprox");
  v1::Policy other;
  other.set_scorer("h2o");
  ASSERT_OK_AND_ASSIGN(r, ResolvePolicy(other, tenant));
  EXPECT_EQ(r.policy.scorer, ScorerKind::kH2o);
  EXPECT_EQ(r.policy.allocation, Allocation::kUniform);
}

TEST(PolicyConvertTest, RequestBudgetReplacesTheTenantBudgetAsAUnit) {
  v1::Policy tenant;
  tenant.set_max_tokens(128);
  ASSERT_OK_AND_ASSIGN(ResolvedPolicy r, ResolvePolicy(WithRatio(0.25), tenant));
  EXPECT_EQ(r.budget.keep_ratio, 0.25);
  EXPECT_EQ(r.budget.tokens, 0);

  v1::Policy request;
  request.set_max_tokens(64);
  ASSERT_OK_AND_ASSIGN(r, ResolvePolicy(request, WithRatio(0.5)));
  EXPECT_EQ(r.budget.tokens, 64);
  EXPECT_EQ(r.budget.keep_ratio, 0);

  ASSERT_OK_AND_ASSIGN(r, ResolvePolicy(v1::Policy(), tenant));
  EXPECT_EQ(r.budget.tokens, 128);

  v1::Policy merged = MergePolicy(request, WithRatio(0.5));
  EXPECT_FALSE(merged.has_keep_ratio());
  EXPECT_EQ(merged.max_tokens(), 64u);
}

TEST(PolicyConvertTest, MissingBudgetIsInvalid) {
  v1::Policy request;
  request.set_scorer("snapkv");
  EXPECT_THAT(ResolvePolicy(request, v1::Policy()),
              StatusIs(StatusCode::kInvalidArgument, "policy.keep_ratio or policy.max_tokens"));
}

TEST(PolicyConvertTest, BadFieldsAreInvalidAndNamed) {
  struct Case {
    std::function<void(v1::Policy*)> set;
    const char* field;
  };
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Case cases[] = {
      {[](v1::Policy* p) { p->set_scorer("fastest"); }, "policy.scorer"},
      {[](v1::Policy* p) { p->set_scorer("SnapKV"); }, "policy.scorer"},
      {[](v1::Policy* p) { p->set_allocation("greedy"); }, "policy.allocation"},
      {[](v1::Policy* p) { p->set_sinks(kMaxPolicySinks + 1); }, "policy.sinks"},
      {[](v1::Policy* p) { p->set_window(kMaxPolicyWindow + 1); }, "policy.window"},
      {[](v1::Policy* p) { p->set_window(4000000000u); }, "policy.window"},
      {[](v1::Policy* p) { p->set_pool_kernel(0); }, "policy.pool_kernel"},
      {[](v1::Policy* p) { p->set_pool_kernel(4); }, "policy.pool_kernel"},
      {[](v1::Policy* p) { p->set_pool_kernel(257); }, "policy.pool_kernel"},
      {[](v1::Policy* p) { p->set_ada_alpha(1.5); }, "policy.ada_alpha"},
      {[](v1::Policy* p) { p->set_ada_alpha(-0.1); }, "policy.ada_alpha"},
      {[nan](v1::Policy* p) { p->set_ada_alpha(nan); }, "policy.ada_alpha"},
      {[](v1::Policy* p) { p->set_keep_ratio(0); }, "policy.keep_ratio"},
      {[](v1::Policy* p) { p->set_keep_ratio(1.01); }, "policy.keep_ratio"},
      {[](v1::Policy* p) { p->set_keep_ratio(-0.5); }, "policy.keep_ratio"},
      {[nan](v1::Policy* p) { p->set_keep_ratio(nan); }, "policy.keep_ratio"},
      {[](v1::Policy* p) { p->set_max_tokens(0); }, "policy.max_tokens"},
      {[](v1::Policy* p) {
         p->set_keep_ratio(0.5);
         p->set_max_tokens(10);
       },
       "policy.keep_ratio"},
  };
  for (const Case& c : cases) {
    v1::Policy p;
    c.set(&p);
    EXPECT_THAT(ValidatePolicyProto(p), StatusIs(StatusCode::kInvalidArgument, c.field))
        << p.ShortDebugString();
    // In a request (with a valid tenant budget), and as a tenant default.
    EXPECT_THAT(ResolvePolicy(p, WithRatio(0.5)), StatusIs(StatusCode::kInvalidArgument, c.field))
        << p.ShortDebugString();
    v1::Policy budget_only;
    budget_only.set_max_tokens(8);
    EXPECT_THAT(ResolvePolicy(budget_only, p),
                StatusIs(StatusCode::kInvalidArgument, std::string("tenant default ") + c.field))
        << p.ShortDebugString();
  }
}

TEST(PolicyConvertTest, PartialAndBoundaryPoliciesAreValid) {
  EXPECT_OK(ValidatePolicyProto(v1::Policy()));
  v1::Policy p;
  p.set_sinks(0);
  EXPECT_OK(ValidatePolicyProto(p));
  p.set_sinks(kMaxPolicySinks);
  p.set_window(kMaxPolicyWindow);
  p.set_pool_kernel(kMaxPolicyPoolKernel);
  p.set_ada_alpha(1);
  p.set_keep_ratio(1);
  EXPECT_OK(ValidatePolicyProto(p));
  ASSERT_OK_AND_ASSIGN(ResolvedPolicy r, ResolvePolicy(p, v1::Policy()));
  EXPECT_EQ(r.policy.sinks, static_cast<int>(kMaxPolicySinks));
  EXPECT_EQ(r.budget.keep_ratio, 1.0);
  p.set_pool_kernel(1);
  p.set_ada_alpha(0);
  p.set_keep_ratio(1e-6);
  EXPECT_OK(ValidatePolicyProto(p));
  for (const char* name : {"streaming", "random", "knorm", "tova", "h2o", "observed", "snapkv",
                           "expected", "capkv", "capkv-dot", "capkv-greedy", "laprox"}) {
    v1::Policy s = WithRatio(0.5);
    s.set_scorer(name);
    ASSERT_OK_AND_ASSIGN(r, ResolvePolicy(s, v1::Policy()));
    EXPECT_EQ(eviction::ScorerName(r.policy.scorer), name);
  }
}

}  // namespace
}  // namespace kvkeep
