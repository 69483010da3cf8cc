// One unary call of the C++ clients (kvkeep::Client, AdminClient): bearer-token metadata, an
// optional deadline, and the gRPC status turned into an absl::Status (common/grpc_status.h).
//
//   v1::GetArenaRequest request;
//   request.set_arena_id(id);
//   absl::StatusOr<v1::ArenaExport> arena =
//       UnaryCall(token, *stub, &v1::KvCache::Stub::GetArena, request);
//
// The call blocks until the reply, the deadline or a failure. Thread-safe as the stub is.
#ifndef KVKEEP_CLIENT_UNARY_CALL_H_
#define KVKEEP_CLIENT_UNARY_CALL_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "client/call_context.h"
#include "common/grpc_status.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/status.h"

namespace kvkeep {

// Calls `method` of `stub` with `request` and "authorization: Bearer <token>". `timeout`: the
// call's deadline from now (infinite: none); past it the call fails with DEADLINE_EXCEEDED. Any
// other failure is the daemon's status code and message.
template <typename Stub, typename Request, typename Reply>
absl::StatusOr<Reply> UnaryCall(const std::string& token, Stub& stub,
                                grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&,
                                                             Reply*),
                                const Request& request,
                                absl::Duration timeout = absl::InfiniteDuration()) {
  std::unique_ptr<grpc::ClientContext> context = MakeCallContext(token);
  if (timeout != absl::InfiniteDuration()) {
    context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  }
  Reply reply;
  grpc::Status status = (stub.*method)(context.get(), request, &reply);
  if (!status.ok()) return FromGrpcStatus(status);
  return reply;
}

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_UNARY_CALL_H_
