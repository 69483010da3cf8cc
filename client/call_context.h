// How the C++ clients reach the daemon: channel creation and per-call metadata.
#ifndef KVKEEP_CLIENT_CALL_CONTEXT_H_
#define KVKEEP_CLIENT_CALL_CONTEXT_H_

#include <memory>
#include <string>

#include "grpcpp/channel.h"
#include "grpcpp/client_context.h"
#include "grpcpp/security/credentials.h"

namespace kvkeep {

struct ChannelOptions {
  // "unix:/path/to/kvkeepd.sock" or "host:port". A bare path is taken as a Unix socket.
  std::string target = "unix:./kvkeep-data/kvkeepd.sock";  // Default: the quick-start socket
  // Default: insecure (right for the Unix socket); TLS credentials for TCP.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  int max_message_bytes = 4 << 20;  // Default: 4 MiB, as the daemon
};

std::shared_ptr<grpc::Channel> MakeChannel(const ChannelOptions& options);

// A context carrying "authorization: Bearer <token>".
std::unique_ptr<grpc::ClientContext> MakeCallContext(const std::string& token);

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_CALL_CONTEXT_H_
