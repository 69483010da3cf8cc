// Policy validation and resolution (service/policy_convert.h): a request's policy over a tenant's
// default, as CompressRequest / SetPolicy / decode-time eviction see them.
//
// Input: [u16 length][request Policy bytes][tenant default Policy bytes: the rest]. Invariants:
// ResolvePolicy is OK only when both policies validate; then eviction::ValidatePolicy passes,
// exactly one of budget.keep_ratio (in (0, 1]) and budget.tokens (> 0) is set, and the wire limits
// hold; two valid policies merge into a valid one, and resolve exactly when the merge has a
// budget; every error is INVALID_ARGUMENT with a message.
#include <cmath>

#include "kvkeep/v1/common.pb.h"
#include "service/eviction/policy.h"
#include "service/compress/policy_convert.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvkeep::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvkeep;
  using namespace kvkeep::fuzz;
  FuzzInput in(data, size);
  v1::Policy request, tenant_default;
  if (!request.ParseFromString(in.Record())) return 0;
  if (!tenant_default.ParseFromString(in.Rest())) return 0;

  const absl::Status request_ok = ValidatePolicyProto(request);
  const absl::Status default_ok = ValidatePolicyProto(tenant_default);
  FUZZ_CHECK_STATUS_MESSAGE(request_ok);
  FUZZ_CHECK_STATUS_MESSAGE(default_ok);
  for (const absl::Status* s : {&request_ok, &default_ok}) {
    FUZZ_CHECK(s->ok() || s->code() == absl::StatusCode::kInvalidArgument, s->ToString());
  }

  const v1::Policy merged = MergePolicy(request, tenant_default);
  if (request_ok.ok() && default_ok.ok()) {
    const absl::Status merged_ok = ValidatePolicyProto(merged);
    FUZZ_CHECK(merged_ok.ok(), "two valid policies merged into an invalid one: " +
                                   merged_ok.ToString() + " merged=" + merged.ShortDebugString());
  }

  absl::StatusOr<ResolvedPolicy> resolved = ResolvePolicy(request, tenant_default);
  FUZZ_CHECK_STATUS_MESSAGE(resolved.status());
  if (!resolved.ok()) {
    FUZZ_CHECK(resolved.status().code() == absl::StatusCode::kInvalidArgument,
               resolved.status().ToString());
    if (request_ok.ok() && default_ok.ok()) {
      FUZZ_CHECK(!merged.has_keep_ratio() && !merged.has_max_tokens(),
                 "valid policies with a budget did not resolve: " + resolved.status().ToString());
    }
    return 0;
  }
  FUZZ_CHECK(request_ok.ok() && default_ok.ok(), "resolved an invalid policy");
  const eviction::Policy& p = resolved->policy;
  const eviction::Budget& b = resolved->budget;
  const absl::Status valid = eviction::ValidatePolicy(p);
  FUZZ_CHECK(valid.ok(), "resolved policy fails eviction::ValidatePolicy: " + valid.ToString());
  FUZZ_CHECK((b.keep_ratio != 0) != (b.tokens != 0), "budget must set exactly one of keep_ratio/tokens");
  if (b.keep_ratio != 0) {
    FUZZ_CHECK(b.keep_ratio > 0 && b.keep_ratio <= 1 && !std::isnan(b.keep_ratio),
               "keep_ratio out of (0, 1]");
    FUZZ_CHECK(merged.has_keep_ratio() && merged.keep_ratio() == b.keep_ratio, "keep_ratio source");
  } else {
    FUZZ_CHECK(b.tokens > 0, "tokens budget <= 0");
    FUZZ_CHECK(merged.has_max_tokens() && merged.max_tokens() == b.tokens, "tokens source");
  }
  FUZZ_CHECK(p.sinks >= 0 && static_cast<uint32_t>(p.sinks) <= kMaxPolicySinks, "sinks");
  FUZZ_CHECK(p.window >= 0 && static_cast<uint32_t>(p.window) <= kMaxPolicyWindow, "window");
  FUZZ_CHECK(p.pool_kernel >= 1 && static_cast<uint32_t>(p.pool_kernel) <= kMaxPolicyPoolKernel &&
                 p.pool_kernel % 2 == 1,
             "pool_kernel");
  FUZZ_CHECK(!merged.has_ada_alpha() || (p.ada_alpha >= 0 && p.ada_alpha <= 1), "ada_alpha");
  const std::string scorer = merged.scorer().empty() ? "snapkv" : merged.scorer();
  FUZZ_CHECK(eviction::ScorerName(p.scorer) == scorer, "scorer name does not round-trip");
  if (!merged.allocation().empty()) {
    FUZZ_CHECK(eviction::AllocationName(p.allocation) == merged.allocation(),
               "allocation name does not round-trip");
  } else {
    FUZZ_CHECK(p.allocation == eviction::DefaultAllocation(p.scorer), "default allocation");
  }
  return 0;
}
