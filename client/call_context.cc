#include "client/call_context.h"

#include "grpcpp/create_channel.h"

namespace kvkeep {

std::shared_ptr<grpc::Channel> MakeChannel(const ChannelOptions& options) {
  std::string target = options.target;
  if (!target.empty() && (target[0] == '/' || target[0] == '.')) target = "unix:" + target;
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(options.max_message_bytes);
  args.SetMaxSendMessageSize(options.max_message_bytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  // Each client gets its own connection (workers are separate processes in production; tests
  // and benchmarks run many in one process and must not share one HTTP/2 connection).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // Bulk bytes: as the daemon (service/rpc/server.cc), 1 MiB frames and a 4 MiB stream window.
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4 << 20);
  auto creds = options.credentials ? options.credentials : grpc::InsecureChannelCredentials();
  return grpc::CreateCustomChannel(target, creds, args);
}

std::unique_ptr<grpc::ClientContext> MakeCallContext(const std::string& token) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->AddMetadata("authorization", "Bearer " + token);
  return context;
}

}  // namespace kvkeep
