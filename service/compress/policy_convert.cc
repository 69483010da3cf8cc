#include "service/compress/policy_convert.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvkeep {
namespace {

absl::Status Bad(absl::string_view which, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(which, ".", field, " ", what));
}

absl::Status Validate(const v1::Policy& p, absl::string_view which) {
  if (!p.scorer().empty()) {
    absl::StatusOr<eviction::ScorerKind> kind = eviction::ParseScorer(p.scorer());
    if (!kind.ok())
      return Bad(which, "scorer", absl::StrCat("is invalid: ", kind.status().message()));
  }
  if (!p.allocation().empty()) {
    absl::StatusOr<eviction::Allocation> a = eviction::ParseAllocation(p.allocation());
    if (!a.ok())
      return Bad(which, "allocation", absl::StrCat("is invalid: ", a.status().message()));
  }
  if (p.has_sinks() && p.sinks() > kMaxPolicySinks) {
    return Bad(which, "sinks",
               absl::StrCat("= ", p.sinks(), " is out of range [0, ", kMaxPolicySinks, "]"));
  }
  if (p.has_window() && p.window() > kMaxPolicyWindow) {
    return Bad(which, "window",
               absl::StrCat("= ", p.window(), " is out of range [0, ", kMaxPolicyWindow, "]"));
  }
  if (p.has_pool_kernel() &&
      (p.pool_kernel() < 1 || p.pool_kernel() > kMaxPolicyPoolKernel || p.pool_kernel() % 2 == 0)) {
    return Bad(
        which, "pool_kernel",
        absl::StrCat("= ", p.pool_kernel(), " must be odd and in [1, ", kMaxPolicyPoolKernel, "]"));
  }
  if (p.has_ada_alpha() && !(p.ada_alpha() >= 0 && p.ada_alpha() <= 1)) {
    return Bad(which, "ada_alpha", absl::StrCat("= ", p.ada_alpha(), " must be in [0, 1]"));
  }
  if (p.has_keep_ratio() && !(p.keep_ratio() > 0 && p.keep_ratio() <= 1)) {
    return Bad(which, "keep_ratio", absl::StrCat("= ", p.keep_ratio(), " must be in (0, 1]"));
  }
  if (p.has_max_tokens() && p.max_tokens() == 0) {
    return Bad(which, "max_tokens", "must be > 0");
  }
  if (p.has_keep_ratio() && p.has_max_tokens()) {
    return Bad(which, "keep_ratio",
               absl::StrCat("and ", which, ".max_tokens are both set; a budget is one of them"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidatePolicyProto(const v1::Policy& policy) { return Validate(policy, "policy"); }

v1::Policy MergePolicy(const v1::Policy& request, const v1::Policy& tenant_default) {
  v1::Policy out = tenant_default;
  if (!request.scorer().empty()) out.set_scorer(request.scorer());
  if (!request.allocation().empty()) out.set_allocation(request.allocation());
  if (request.has_sinks()) out.set_sinks(request.sinks());
  if (request.has_window()) out.set_window(request.window());
  if (request.has_pool_kernel()) out.set_pool_kernel(request.pool_kernel());
  if (request.has_ada_alpha()) out.set_ada_alpha(request.ada_alpha());
  if (request.has_seed()) out.set_seed(request.seed());
  if (request.has_keep_ratio() || request.has_max_tokens()) {
    out.clear_keep_ratio();
    out.clear_max_tokens();
    if (request.has_keep_ratio()) out.set_keep_ratio(request.keep_ratio());
    if (request.has_max_tokens()) out.set_max_tokens(request.max_tokens());
  }
  return out;
}

absl::StatusOr<ResolvedPolicy> ResolvePolicy(const v1::Policy& request,
                                             const v1::Policy& tenant_default) {
  RETURN_IF_ERROR(Validate(request, "policy"));
  RETURN_IF_ERROR(Validate(tenant_default, "tenant default policy"));
  const v1::Policy merged = MergePolicy(request, tenant_default);

  ResolvedPolicy out;
  eviction::Policy& p = out.policy;
  // Unset fields keep eviction::Policy's defaults (gpu/math/policy_defaults.h).
  if (!merged.scorer().empty()) {
    ASSIGN_OR_RETURN(p.scorer, eviction::ParseScorer(merged.scorer()));
  }
  if (merged.allocation().empty()) {
    p.allocation = eviction::DefaultAllocation(p.scorer);
  } else {
    ASSIGN_OR_RETURN(p.allocation, eviction::ParseAllocation(merged.allocation()));
  }
  if (merged.has_sinks()) p.sinks = static_cast<int>(merged.sinks());
  if (merged.has_window()) p.window = static_cast<int>(merged.window());
  if (merged.has_pool_kernel()) p.pool_kernel = static_cast<int>(merged.pool_kernel());
  if (merged.has_ada_alpha()) p.ada_alpha = merged.ada_alpha();
  if (merged.has_seed()) p.seed = merged.seed();
  if (merged.has_keep_ratio()) {
    out.budget.keep_ratio = merged.keep_ratio();
  } else if (merged.has_max_tokens()) {
    out.budget.tokens = merged.max_tokens();
  } else {
    return absl::InvalidArgumentError(
        "policy has no budget: set policy.keep_ratio or policy.max_tokens in the request or in "
        "the tenant's default policy");
  }
  RETURN_IF_ERROR(eviction::ValidatePolicy(p));
  return out;
}

}  // namespace kvkeep
