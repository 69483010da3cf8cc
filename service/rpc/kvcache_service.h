// The worker API (kvkeep.v1.KvCache) over the gRPC callback API: authenticates each call and
// charges it to the session's limits, turns requests into CacheEngine calls and absl::Status into
// gRPC status (service/rpc/reactors.h). Streams are reactors that never block on I/O; disk,
// device and scoring work runs on the executor.
//
// Thread-safe (the members are constant; the engine and the limits are thread-safe).
#ifndef KVKEEP_SERVICE_RPC_KVCACHE_SERVICE_H_
#define KVKEEP_SERVICE_RPC_KVCACHE_SERVICE_H_

#include <string>

#include "kvkeep/v1/kvcache.grpc.pb.h"
#include "service/engine/cache_engine.h"
#include "service/executor.h"
#include "service/arena_channel/arena_channel_server.h"
#include "service/bulk_channel/bulk_channel_server.h"
#include "service/rpc/reactors.h"
#include "service/rpc/session_limits.h"

namespace kvkeep {

// WriteKV and ReadKV are raw methods: their KvChunks are parsed from and serialised into the gRPC
// buffers directly (service/rpc/kv_wire.h), without the protobuf copies. PutStats is read as raw
// bytes so that an unparseable chunk fails the call (reactors.h, ChunkStreamReader) instead of
// reading as the end of the stream; WriteKV's reader does the same (kvcache_service_bytes.cc).
// RegisterModel is raw for the same reason (register_model_reactor.h).
using KvCacheServiceBase = v1::KvCache::WithRawCallbackMethod_ReadKV<
    v1::KvCache::WithRawCallbackMethod_WriteKV<v1::KvCache::WithRawCallbackMethod_PutStats<
        v1::KvCache::WithRawCallbackMethod_RegisterModel<v1::KvCache::CallbackService>>>>;

class KvCacheService final : public KvCacheServiceBase {
 public:
  // `engine`, `executor` (where disk, device and scoring work runs) and `limits` (per-session
  // rate and size limits; null = none) must outlive the service.
  KvCacheService(CacheEngine* engine, Executor* executor, std::string admin_token_hash,
                 SessionLimits* limits = nullptr);
  // The arena channel whose tickets Session hands out (null: none, arenas go by handle only).
  // Set before the service serves; must outlive it.
  void set_arena_channel(ArenaChannelServer* channel) { arena_channel_ = channel; }
  void set_bulk_channel(BulkChannelServer* channel) { bulk_channel_ = channel; }

  grpc::ServerWriteReactor<v1::SessionEvent>* Session(grpc::CallbackServerContext* context,
                                                      const v1::AttachRequest* request) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* RegisterModel(grpc::CallbackServerContext* context,
                                                           grpc::ByteBuffer* reply) override;
  grpc::ServerUnaryReactor* GetArena(grpc::CallbackServerContext* context,
                                     const v1::GetArenaRequest* request,
                                     v1::ArenaExport* reply) override;
  grpc::ServerUnaryReactor* CreateSequence(grpc::CallbackServerContext* context,
                                           const v1::CreateSequenceRequest* request,
                                           v1::PageTable* reply) override;
  grpc::ServerUnaryReactor* AllocatePages(grpc::CallbackServerContext* context,
                                          const v1::AllocateRequest* request,
                                          v1::PageTableDelta* reply) override;
  grpc::ServerUnaryReactor* CommitTokens(grpc::CallbackServerContext* context,
                                         const v1::CommitRequest* request,
                                         v1::CommitReply* reply) override;
  // The bytes path (kvcache_service_bytes.cc): a stream of KvChunk in, a WriteSummary out; a
  // ReadRequest in, a stream of KvChunk out (encoded as kvkeep.v1 says; raw gRPC buffers here).
  grpc::ServerReadReactor<grpc::ByteBuffer>* WriteKV(grpc::CallbackServerContext* context,
                                                     grpc::ByteBuffer* reply) override;
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ReadKV(grpc::CallbackServerContext* context,
                                                     const grpc::ByteBuffer* request) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* PutStats(grpc::CallbackServerContext* context,
                                                      grpc::ByteBuffer* reply) override;
  grpc::ServerUnaryReactor* Compress(grpc::CallbackServerContext* context,
                                     const v1::CompressRequest* request,
                                     v1::CompressReply* reply) override;
  grpc::ServerUnaryReactor* Spill(grpc::CallbackServerContext* context,
                                  const v1::SpillRequest* request, v1::SpillReply* reply) override;
  grpc::ServerUnaryReactor* Restore(grpc::CallbackServerContext* context,
                                    const v1::RestoreRequest* request,
                                    v1::PageTable* reply) override;
  grpc::ServerUnaryReactor* GetSequence(grpc::CallbackServerContext* context,
                                        const v1::GetSequenceRequest* request,
                                        v1::PageTable* reply) override;
  grpc::ServerUnaryReactor* Acquire(grpc::CallbackServerContext* context,
                                    const v1::AcquireRequest* request,
                                    v1::PageTable* reply) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseReply* reply) override;
  grpc::ServerUnaryReactor* Drop(grpc::CallbackServerContext* context,
                                 const v1::DropRequest* request, v1::DropReply* reply) override;
  grpc::ServerUnaryReactor* PublishPrefix(grpc::CallbackServerContext* context,
                                          const v1::PublishPrefixRequest* request,
                                          v1::PublishPrefixReply* reply) override;
  grpc::ServerUnaryReactor* LookupPrefix(grpc::CallbackServerContext* context,
                                         const v1::LookupPrefixRequest* request,
                                         v1::LookupPrefixReply* reply) override;
  grpc::ServerUnaryReactor* Ping(grpc::CallbackServerContext* context,
                                 const v1::PingRequest* request, v1::PingReply* reply) override;

  // Chunked replies (kvcache_service_chunked.cc): the calls above with the table split into
  // messages below the message limit (common/table_chunks.h).
  grpc::ServerWriteReactor<v1::PageTable>* CreateSequenceStream(
      grpc::CallbackServerContext* context, const v1::CreateSequenceRequest* request) override;
  grpc::ServerWriteReactor<v1::PageTableDelta>* AllocatePagesStream(
      grpc::CallbackServerContext* context, const v1::AllocateRequest* request) override;
  grpc::ServerWriteReactor<v1::CompressReply>* CompressStream(
      grpc::CallbackServerContext* context, const v1::CompressRequest* request) override;
  grpc::ServerWriteReactor<v1::PageTable>* RestoreStream(
      grpc::CallbackServerContext* context, const v1::RestoreRequest* request) override;
  grpc::ServerWriteReactor<v1::PageTable>* GetSequenceStream(
      grpc::CallbackServerContext* context, const v1::GetSequenceRequest* request) override;
  grpc::ServerWriteReactor<v1::PageTable>* AcquireStream(
      grpc::CallbackServerContext* context, const v1::AcquireRequest* request) override;

  // KvBatch (several chunks per message; kv_batch_service.h registers them): WriteKV and ReadKV
  // with KvChunkBatch messages (kvcache_service_bytes.cc).
  grpc::ServerReadReactor<grpc::ByteBuffer>* WriteKVBatch(grpc::CallbackServerContext* context,
                                                          grpc::ByteBuffer* reply);
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ReadKVBatch(grpc::CallbackServerContext* context,
                                                          const grpc::ByteBuffer* request);
  // ReadKVBatch's chunk bytes per message when the request leaves it 0.
  static constexpr uint64_t kDefaultBatchMessageBytes = 1 << 20;

 private:
  grpc::ServerReadReactor<grpc::ByteBuffer>* NewWriteKv(grpc::CallbackServerContext* context,
                                                        grpc::ByteBuffer* reply, bool batched);
  // The tenant of the call's token, charged one call to `session_id`'s limits (OK when there are
  // no limits).
  absl::StatusOr<std::string> Admit(grpc::CallbackServerContext* context,
                                    const std::string& session_id);
  // Admit, plus the size limit on the statistics a commit carries.
  absl::StatusOr<std::string> AdmitCommit(grpc::CallbackServerContext* context,
                                          const v1::CommitRequest& request);
  // A read stream of the admitted `tenant`, counted against its open read streams until the
  // holder goes (a null holder without limits); `tenant`'s error as is.
  absl::StatusOr<std::shared_ptr<const void>> OpenReadStream(
      const absl::StatusOr<std::string>& tenant);
  // "/kvkeep.v1.KvCache/<method>" (logs).
  std::string FullName(absl::string_view method) const;
  // The largest reply message the daemon sends (the message limit less framing room).
  uint64_t ReplyBudget() const;

  Executor* const executor_;

  CacheEngine* const engine_;
  const std::string admin_token_hash_;
  SessionLimits* const limits_;  // may be null
  ArenaChannelServer* arena_channel_ = nullptr;  // may be null; set before serving
  BulkChannelServer* bulk_channel_ = nullptr;    // may be null; set before serving
  const UnaryCalls unary_;  // admits through Admit()
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_KVCACHE_SERVICE_H_
