// Why a call failed, as a type rather than as text.
//
// A refusal that other code must react to (pressure relief retries a pool shortage but not a
// tenant's own maximum; /metrics counts each reason) carries a FailureReason as a status payload.
// Code never inspects error messages: it asks ReasonOf(status). The payload stays inside the
// daemon: the RPC layer sends only the code and the message (common/grpc_status.h).
//
//   return WithReason(absl::ResourceExhaustedError("..."), FailureReason::kTenantMax);
//   if (ReasonOf(status) == FailureReason::kPoolShort) RelievePressure(...);
#ifndef KVKEEP_COMMON_FAILURE_REASON_H_
#define KVKEEP_COMMON_FAILURE_REASON_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"

namespace kvkeep {

enum class FailureReason {
  kNone = 0,         // no reason attached (OK, or a failure nobody needs to tell apart)
  kTenantMax,        // the tenant's own hard maximum (max_bytes); pressure relief cannot help
  kPoolShort,        // the pool after other tenants' guarantees is short; relief may help
  kBackendExhausted, // the backend could not provide another arena (device or shm memory)
  kSpillQuota,       // the tenant's spill quota
  kSessionLimit,     // a per-session rate or size limit
  kMetadataLimit,    // a bound on what a tenant may make the daemon hold (sequences, sessions)
  kDiskFull,         // the spill tier's disk is full
};
inline constexpr int kFailureReasonCount = 8;

// Stable lower-case names (the `reason` label of /metrics, log fields).
inline absl::string_view FailureReasonName(FailureReason reason) {
  switch (reason) {
    case FailureReason::kNone: return "none";
    case FailureReason::kTenantMax: return "tenant_max";
    case FailureReason::kPoolShort: return "pool_short";
    case FailureReason::kBackendExhausted: return "backend_exhausted";
    case FailureReason::kSpillQuota: return "spill_quota";
    case FailureReason::kSessionLimit: return "session_limit";
    case FailureReason::kMetadataLimit: return "metadata_limit";
    case FailureReason::kDiskFull: return "disk_full";
  }
  return "none";
}

inline constexpr char kFailureReasonPayloadUrl[] = "kvkeep.dev/failure-reason";

// `status` with `reason` attached (an OK status stays OK).
inline absl::Status WithReason(absl::Status status, FailureReason reason) {
  if (!status.ok() && reason != FailureReason::kNone) {
    status.SetPayload(kFailureReasonPayloadUrl,
                      absl::Cord(std::string(1, static_cast<char>(reason))));
  }
  return status;
}

// The reason as it rides in a grpc::Status's error details from the RPC layer
// (common/grpc_status.h) to the metrics interceptor, which reads it and strips it before the status
// leaves the daemon (service/observability/metrics.cc). Empty for kNone.
inline std::string ReasonDetails(FailureReason reason) {
  if (reason == FailureReason::kNone) return std::string();
  return std::string(kFailureReasonPayloadUrl) + "=" + std::string(FailureReasonName(reason));
}
inline FailureReason ReasonFromDetails(absl::string_view details) {
  for (int r = 1; r < kFailureReasonCount; ++r) {
    const FailureReason reason = static_cast<FailureReason>(r);
    if (details == ReasonDetails(reason)) return reason;
  }
  return FailureReason::kNone;
}

// The reason attached to `status`; kNone when none is.
inline FailureReason ReasonOf(const absl::Status& status) {
  auto payload = status.GetPayload(kFailureReasonPayloadUrl);
  if (!payload.has_value() || payload->size() != 1) return FailureReason::kNone;
  int value = static_cast<unsigned char>((*payload)[0]);
  if (value >= kFailureReasonCount) return FailureReason::kNone;
  return static_cast<FailureReason>(value);
}

}  // namespace kvkeep

#endif  // KVKEEP_COMMON_FAILURE_REASON_H_
