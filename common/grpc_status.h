// The one place absl::Status becomes grpc::Status (the codes are the same numbers).
#ifndef KVKEEP_COMMON_GRPC_STATUS_H_
#define KVKEEP_COMMON_GRPC_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "common/failure_reason.h"
#include "grpcpp/support/status.h"

namespace kvkeep {

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // A FailureReason rides in the error details as far as the metrics interceptor, which strips
  // it before the status leaves the daemon (service/observability/metrics.cc).
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()),
                      ReasonDetails(ReasonOf(s)));
}

inline absl::Status FromGrpcStatus(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

}  // namespace kvkeep

#endif  // KVKEEP_COMMON_GRPC_STATUS_H_
