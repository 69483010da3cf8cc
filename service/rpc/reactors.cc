#include "service/rpc/reactors.h"

#include "common/grpc_status.h"
#include "service/observability/log.h"

namespace kvkeep {

grpc::Status CallStatus(absl::string_view method, absl::string_view tenant,
                        const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kDataLoss:
    case absl::StatusCode::kUnknown:
      log::Error("rpc.internal_error",
                 {{"method", method}, {"tenant", tenant}, {"status", status}});
      break;
    default:
      break;
  }
  return ToGrpcStatus(status);
}

}  // namespace kvkeep
