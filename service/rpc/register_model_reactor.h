// KvCache.RegisterModel: a client stream of ModelChunks (the layout first, then W_o Gram
// matrices), collected into a Model and registered with the engine when the stream ends.
//
// The first chunk must carry the layout and no later one may; an empty chunk, a bad layout or a
// bad Gram matrix finishes the stream with INVALID_ARGUMENT at once. The chunks are read as raw
// bytes, so an unparseable one fails the call with INVALID_ARGUMENT naming its index and what the
// chunks before it held (nothing is registered), instead of reading as the end of the stream.
//
// Driven by gRPC, one reaction at a time; deletes itself in OnDone.
#ifndef KVKEEP_SERVICE_RPC_REGISTER_MODEL_REACTOR_H_
#define KVKEEP_SERVICE_RPC_REGISTER_MODEL_REACTOR_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "kvkeep/v1/kvcache.pb.h"
#include "service/engine/cache_engine.h"

namespace kvkeep {

class RegisterModelReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  // `tenant`: the caller, or the status the stream finishes with at once. `engine` must outlive
  // the reactor; `reply` (the encoded RegisterModelReply) lives until the call finishes.
  RegisterModelReactor(CacheEngine* engine, std::string method,
                       absl::StatusOr<std::string> tenant, grpc::ByteBuffer* reply);

  void OnReadDone(bool ok) override;
  void OnDone() override { delete this; }

 private:
  // Adds one chunk to model_.
  absl::Status Apply(const v1::ModelChunk& chunk);
  // After the last chunk: registers the model, finishes the call.
  void Register();

  CacheEngine* const engine_;
  const std::string method_;
  const absl::StatusOr<std::string> tenant_;
  grpc::ByteBuffer* const reply_;
  grpc::ByteBuffer raw_;
  v1::ModelChunk chunk_;
  std::optional<Model> model_;
  uint64_t chunks_ = 0;  // applied so far
  uint64_t grams_ = 0;   // of which W_o Gram matrices
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_REGISTER_MODEL_REACTOR_H_
