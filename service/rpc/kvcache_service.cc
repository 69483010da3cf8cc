#include "service/rpc/kvcache_service.h"

#include <memory>
#include <utility>

#include "common/status_macros.h"
#include "common/table_chunks.h"
#include "service/rpc/register_model_reactor.h"
#include "service/rpc/request_auth.h"
#include "service/rpc/session_reactor.h"

namespace kvkeep {

KvCacheService::KvCacheService(CacheEngine* engine, Executor* executor,
                               std::string admin_token_hash, SessionLimits* limits)
    : executor_(executor), engine_(engine), admin_token_hash_(std::move(admin_token_hash)), limits_(limits),
      unary_("kvkeep.v1.KvCache", executor,
             [this](grpc::CallbackServerContext* context, const std::string& session_id) {
               return Admit(context, session_id);
             }) {}

absl::StatusOr<std::string> KvCacheService::Admit(grpc::CallbackServerContext* context,
                                                  const std::string& session_id) {
  absl::StatusOr<std::string> tenant = AuthenticateWorker(*context, *engine_, admin_token_hash_);
  if (!tenant.ok() || limits_ == nullptr) return tenant;
  RETURN_IF_ERROR(limits_->ChargeCall(*tenant, session_id));
  return tenant;
}

absl::StatusOr<std::shared_ptr<const void>> KvCacheService::OpenReadStream(
    const absl::StatusOr<std::string>& tenant) {
  if (!tenant.ok()) return tenant.status();
  if (limits_ == nullptr) return std::shared_ptr<const void>();
  return limits_->OpenReadStream(*tenant);
}

absl::StatusOr<std::string> KvCacheService::AdmitCommit(grpc::CallbackServerContext* context,
                                                        const v1::CommitRequest& request) {
  ASSIGN_OR_RETURN(std::string tenant, Admit(context, request.session_id()));
  if (limits_ != nullptr && request.stats_size() > 0) {
    uint64_t stats_bytes = 0;
    for (const v1::LayerStats& s : request.stats()) stats_bytes += s.ByteSizeLong();
    RETURN_IF_ERROR(limits_->CheckStatsBytes(stats_bytes));
  }
  return tenant;
}

std::string KvCacheService::FullName(absl::string_view method) const {
  return FullMethodName(unary_.service(), method);
}

uint64_t KvCacheService::ReplyBudget() const {
  return ::kvkeep::ReplyBudget(engine_->max_message_bytes());
}

// ---- Streams -------------------------------------------------------------------------------

grpc::ServerWriteReactor<v1::SessionEvent>* KvCacheService::Session(
    grpc::CallbackServerContext* context, const v1::AttachRequest* request) {
  absl::StatusOr<std::string> tenant = Admit(context, "");
  if (!tenant.ok()) {
    return new FailedStream<grpc::ServerWriteReactor<v1::SessionEvent>>(
        CallStatus(FullName("Session"), "", tenant.status()));
  }
  return new SessionReactor(engine_, limits_, FullName("Session"), *tenant,
                            request->worker_name(), arena_channel_, bulk_channel_);
}

grpc::ServerReadReactor<grpc::ByteBuffer>* KvCacheService::RegisterModel(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* reply) {
  return new RegisterModelReactor(engine_, FullName("RegisterModel"), Admit(context, ""), reply);
}

grpc::ServerReadReactor<grpc::ByteBuffer>* KvCacheService::PutStats(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* reply) {
  return new ChunkStreamReader<v1::StatsChunk, v1::StatsAck>(
      FullName("PutStats"), AuthenticateWorker(*context, *engine_, admin_token_hash_), reply,
      [this](const std::string& tenant, const v1::StatsChunk& chunk, v1::StatsAck* ack) {
        if (limits_ != nullptr) {
          if (ack->layers() == 0) RETURN_IF_ERROR(limits_->ChargeCall(tenant, ""));
          const uint64_t bytes = chunk.stats().ByteSizeLong();
          RETURN_IF_ERROR(limits_->CheckStatsBytes(bytes));
          RETURN_IF_ERROR(limits_->ChargeBytes(tenant, "", bytes));
        }
        RETURN_IF_ERROR(engine_->PutStats(tenant, chunk));
        ack->set_layers(ack->layers() + 1);
        return absl::OkStatus();
      });
}

// ---- Unary calls on the gRPC thread ---------------------------------------------------------

grpc::ServerUnaryReactor* KvCacheService::GetArena(grpc::CallbackServerContext* context,
                                                   const v1::GetArenaRequest* request,
                                                   v1::ArenaExport* reply) {
  return unary_.Inline(context, "GetArena", reply, [&](const std::string& t) {
    return engine_->GetArena(t, request->arena_id());
  });
}

grpc::ServerUnaryReactor* KvCacheService::CreateSequence(grpc::CallbackServerContext* context,
                                                         const v1::CreateSequenceRequest* request,
                                                         v1::PageTable* reply) {
  return unary_.Inline(
      context, "CreateSequence", reply,
      [&](const std::string& t) { return engine_->CreateSequence(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::AllocatePages(grpc::CallbackServerContext* context,
                                                        const v1::AllocateRequest* request,
                                                        v1::PageTableDelta* reply) {
  return unary_.Inline(
      context, "AllocatePages", reply,
      [&](const std::string& t) { return engine_->AllocatePages(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::CommitTokens(grpc::CallbackServerContext* context,
                                                       const v1::CommitRequest* request,
                                                       v1::CommitReply* reply) {
  absl::StatusOr<std::string> tenant = AdmitCommit(context, *request);
  // A tenant whose policy has max_tokens may get a decode-time compression inside the commit:
  // that runs on the executor. Plain commits stay on the gRPC thread (the hot path).
  RunOn where = RunOn::kCallThread;
  if (tenant.ok()) {
    absl::StatusOr<v1::Policy> policy = engine_->GetPolicy(*tenant);
    if (policy.ok() && policy->has_max_tokens()) where = RunOn::kExecutor;
  }
  return unary_.Run(context, "CommitTokens", std::move(tenant), where, reply,
                    [this, request](const std::string& t) -> absl::StatusOr<v1::CommitReply> {
                      ASSIGN_OR_RETURN(v1::CommitReply committed,
                                       engine_->CommitTokens(t, *request));
                      // A compressed table over the limit: the worker reads it in chunks.
                      if (committed.has_compressed() &&
                          committed.ByteSizeLong() > ReplyBudget()) {
                        committed.mutable_compressed()->mutable_table()->clear_heads();
                        committed.set_compressed_table_omitted(true);
                      }
                      return committed;
                    });
}

grpc::ServerUnaryReactor* KvCacheService::GetSequence(grpc::CallbackServerContext* context,
                                                      const v1::GetSequenceRequest* request,
                                                      v1::PageTable* reply) {
  return unary_.Inline(context, "GetSequence", reply, [&](const std::string& t) {
    return engine_->GetSequence(t, request->sequence_id(), request->with_positions());
  });
}

grpc::ServerUnaryReactor* KvCacheService::Release(grpc::CallbackServerContext* context,
                                                  const v1::ReleaseRequest* request,
                                                  v1::ReleaseReply* reply) {
  return unary_.Inline(
      context, "Release", reply,
      [&](const std::string& t) { return engine_->Release(t, *request); }, request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::Drop(grpc::CallbackServerContext* context,
                                               const v1::DropRequest* request,
                                               v1::DropReply* reply) {
  return unary_.Inline(
      context, "Drop", reply, [&](const std::string& t) { return engine_->Drop(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::LookupPrefix(grpc::CallbackServerContext* context,
                                                       const v1::LookupPrefixRequest* request,
                                                       v1::LookupPrefixReply* reply) {
  return unary_.Inline(context, "LookupPrefix", reply, [&](const std::string& t) {
    return engine_->LookupPrefix(t, *request);
  });
}

grpc::ServerUnaryReactor* KvCacheService::Ping(grpc::CallbackServerContext* context,
                                               const v1::PingRequest* request,
                                               v1::PingReply* reply) {
  return unary_.Inline(context, "Ping", reply, [](const std::string&) {
    return absl::StatusOr<v1::PingReply>(v1::PingReply());
  });
}

// ---- Unary calls on the executor (disk, device or scoring work) -----------------------------

grpc::ServerUnaryReactor* KvCacheService::Compress(grpc::CallbackServerContext* context,
                                                   const v1::CompressRequest* request,
                                                   v1::CompressReply* reply) {
  return unary_.Offload(
      context, "Compress", reply,
      [this, request](const std::string& t) { return engine_->Compress(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::Spill(grpc::CallbackServerContext* context,
                                                const v1::SpillRequest* request,
                                                v1::SpillReply* reply) {
  return unary_.Offload(
      context, "Spill", reply,
      [this, request](const std::string& t) { return engine_->Spill(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::Restore(grpc::CallbackServerContext* context,
                                                  const v1::RestoreRequest* request,
                                                  v1::PageTable* reply) {
  return unary_.Offload(
      context, "Restore", reply,
      [this, request](const std::string& t) { return engine_->Restore(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::Acquire(grpc::CallbackServerContext* context,
                                                  const v1::AcquireRequest* request,
                                                  v1::PageTable* reply) {
  // May restore a spilled sequence from disk.
  return unary_.Offload(
      context, "Acquire", reply,
      [this, request](const std::string& t) { return engine_->Acquire(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::PublishPrefix(grpc::CallbackServerContext* context,
                                                        const v1::PublishPrefixRequest* request,
                                                        v1::PublishPrefixReply* reply) {
  // Publishing copies pages through the backend (device work).
  return unary_.Offload(
      context, "PublishPrefix", reply,
      [this, request](const std::string& t) { return engine_->PublishPrefix(t, *request); },
      request->session_id());
}

}  // namespace kvkeep
