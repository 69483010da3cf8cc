// One server-streaming call of the C++ client that reads every message (the chunked table replies
// of kvkeep.v1.KvCache, docs/api.md "Chunked replies"): bearer-token metadata, the gRPC status
// turned into an absl::Status (common/grpc_status.h).
//
//   absl::StatusOr<std::vector<v1::PageTable>> chunks =
//       StreamCall(token, *stub, &v1::KvCache::Stub::GetSequenceStream, request);
//
// Blocks until the stream ends. Thread-safe as the stub is.
#ifndef KVKEEP_CLIENT_STREAM_CALL_H_
#define KVKEEP_CLIENT_STREAM_CALL_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/call_context.h"
#include "common/grpc_status.h"
#include "grpcpp/client_context.h"
#include "grpcpp/support/sync_stream.h"

namespace kvkeep {

template <typename Stub, typename Request, typename Msg>
absl::StatusOr<std::vector<Msg>> StreamCall(
    const std::string& token, Stub& stub,
    std::unique_ptr<grpc::ClientReader<Msg>> (Stub::*method)(grpc::ClientContext*,
                                                             const Request&),
    const Request& request) {
  std::unique_ptr<grpc::ClientContext> context = MakeCallContext(token);
  std::unique_ptr<grpc::ClientReader<Msg>> reader = (stub.*method)(context.get(), request);
  std::vector<Msg> messages(1);
  while (reader->Read(&messages.back())) messages.emplace_back();
  messages.pop_back();
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  return messages;
}

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_STREAM_CALL_H_
