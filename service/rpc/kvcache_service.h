// The worker API (kvkeep.v1.KvCache) over the gRPC callback API: authenticates each call, turns
// requests into CacheEngine calls and absl::Status into gRPC status. Streams are reactors that
// never block on I/O.
#ifndef KVKEEP_SERVICE_RPC_KVCACHE_SERVICE_H_
#define KVKEEP_SERVICE_RPC_KVCACHE_SERVICE_H_

#include <string>

#include "kvkeep/v1/kvcache.grpc.pb.h"
#include "service/engine/cache_engine.h"
#include "service/executor.h"
#include "service/rpc/session_limits.h"

namespace kvkeep {

class KvCacheService final : public v1::KvCache::CallbackService {
 public:
  // `engine`, `executor` (where Compress runs) and `limits` (per-session rate and size limits;
  // null = none) must outlive the service.
  KvCacheService(CacheEngine* engine, Executor* executor, std::string admin_token_hash,
                 SessionLimits* limits = nullptr)
      : engine_(engine), executor_(executor), admin_token_hash_(std::move(admin_token_hash)),
        limits_(limits) {}

  grpc::ServerWriteReactor<v1::SessionEvent>* Session(grpc::CallbackServerContext* context,
                                                      const v1::AttachRequest* request) override;
  grpc::ServerReadReactor<v1::ModelChunk>* RegisterModel(grpc::CallbackServerContext* context,
                                                         v1::RegisterModelReply* reply) override;
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
  grpc::ServerReadReactor<v1::KvChunk>* WriteKV(grpc::CallbackServerContext* context,
                                                v1::WriteSummary* reply) override;
  grpc::ServerWriteReactor<v1::KvChunk>* ReadKV(grpc::CallbackServerContext* context,
                                                const v1::ReadRequest* request) override;
  grpc::ServerReadReactor<v1::StatsChunk>* PutStats(grpc::CallbackServerContext* context,
                                                     v1::StatsAck* reply) override;
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

 private:
  // Authenticates, charges the call to `session_id`'s limits, runs `fn(tenant)` (returning
  // absl::StatusOr<Reply>), stores the reply.
  template <typename Reply, typename Fn>
  grpc::ServerUnaryReactor* Unary(grpc::CallbackServerContext* context, Reply* reply, Fn fn,
                                  const std::string& session_id = "");
  // As Unary, but `fn` runs on the executor (disk or scoring work never runs on gRPC threads).
  template <typename Reply, typename Fn>
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* context, Reply* reply, Fn fn,
                                    const std::string& session_id = "");
  // The tenant of the call's token, charged one call (OK when there are no limits).
  absl::StatusOr<std::string> Admit(grpc::CallbackServerContext* context,
                                    const std::string& session_id);

  CacheEngine* const engine_;
  Executor* const executor_;
  const std::string admin_token_hash_;
  SessionLimits* const limits_;  // may be null
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_KVCACHE_SERVICE_H_
