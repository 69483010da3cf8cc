// The wire policy (kvkeep.v1.Policy) -> the eviction library's Policy and Budget.
//
// A request's policy overrides the tenant's default field by field: a non-empty scorer or
// allocation, and every optional field that is set, win. The budget is one unit: when the request
// sets keep_ratio or max_tokens, that is the budget; otherwise the tenant default's. A field that
// neither sets takes eviction::Policy's default (gpu/math/policy_defaults.h: scorer "snapkv",
// sinks 4, ...); when neither names an allocation it is eviction::DefaultAllocation(scorer)
// (global for laprox, uniform otherwise).
//
//   ASSIGN_OR_RETURN(ResolvedPolicy p, ResolvePolicy(request.policy(), tenant.default_policy()));
//   ASSIGN_OR_RETURN(CompressOutcome out, CompressSequence(..., p.policy, p.budget, ...));
//
// Thread-safe (pure functions).
#ifndef KVKEEP_SERVICE_COMPRESS_POLICY_CONVERT_H_
#define KVKEEP_SERVICE_COMPRESS_POLICY_CONVERT_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kvkeep/v1/common.pb.h"
#include "service/eviction/policy.h"
#include "service/eviction/selection.h"

namespace kvkeep {

// Limits of the wire fields (the library accepts more; these keep requests sane).
inline constexpr uint32_t kMaxPolicySinks = 1u << 16;
inline constexpr uint32_t kMaxPolicyWindow = 1u << 16;
inline constexpr uint32_t kMaxPolicyPoolKernel = 255;

struct ResolvedPolicy {
  eviction::Policy policy;
  eviction::Budget budget;  // exactly one of keep_ratio / tokens set
};

// Checks the fields that are set (a partial policy is fine: Admin SetPolicy of a tenant default):
//   OK, or INVALID_ARGUMENT naming the field: unknown scorer or allocation, sinks > 65536,
//   window > 65536, pool_kernel even or outside [1, 255], ada_alpha outside [0, 1] or NaN,
//   keep_ratio outside (0, 1] or NaN, max_tokens 0, or both keep_ratio and max_tokens set.
absl::Status ValidatePolicyProto(const v1::Policy& policy);

// `request` over `tenant_default` as described above, without validation.
v1::Policy MergePolicy(const v1::Policy& request, const v1::Policy& tenant_default);

// Validates both policies (the message says which one is wrong), merges them and converts:
//   OK                 a valid eviction::Policy (ValidatePolicy passes) and a Budget;
//   INVALID_ARGUMENT   a bad field (see ValidatePolicyProto), or no budget in either policy.
absl::StatusOr<ResolvedPolicy> ResolvePolicy(const v1::Policy& request,
                                             const v1::Policy& tenant_default);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_COMPRESS_POLICY_CONVERT_H_
