#include "service/rpc/kvcache_service.h"

#include <deque>
#include <functional>
#include <optional>

#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "common/grpc_status.h"
#include "service/rpc/request_auth.h"

namespace kvkeep {
namespace {

// The daemon's end of a worker's Session stream. Events queue here and are written one at a time.
// Deleted in OnDone, after the engine has forgotten the session. Finish() is called only after mu_
// is released: it may run OnDone (which deletes the reactor, mu_ included) on another thread at
// once, so nothing may touch the reactor after it (ThreadSanitizer caught the destruction of mu_
// racing with the unlock that followed a Finish under the lock).
class SessionReactor final : public grpc::ServerWriteReactor<v1::SessionEvent>,
                             public SessionSink {
 public:
  SessionReactor(CacheEngine* engine, SessionLimits* limits, const std::string& tenant,
                 const std::string& worker)
      : engine_(engine), limits_(limits) {
    // Its buckets exist before any call can name the session.
    auto attached = engine_->Attach(tenant, worker, this);
    if (!attached.ok()) {
      {
        absl::MutexLock lock(&mu_);
        finished_ = true;
      }
      Finish(ToGrpcStatus(attached.status()));
      return;
    }
    session_id_ = attached->session_id;
    if (limits_ != nullptr) limits_->OpenSession(tenant, session_id_);
    v1::SessionEvent event;
    v1::SessionStarted* started = event.mutable_started();
    started->set_session_id(attached->session_id);
    started->set_tenant(tenant);
    for (const ArenaInfo& a : attached->arenas) ToProto(a, started->add_arenas());
    started->set_max_message_bytes(engine_->max_message_bytes());
    started->set_superseded_session_id(attached->superseded_session_id);
    started->set_adopted_sequences(attached->adopted_sequences);
    // Events the engine queued since Attach returned wait behind this first one.
    absl::MutexLock lock(&mu_);
    started_ = true;
    if (finished_) return;
    queue_.push_front(std::move(event));
    if (!writing_) {
      writing_ = true;
      StartWrite(&queue_.front());
    }
  }

  void ArenaAdded(const ArenaInfo& arena) override {
    v1::SessionEvent event;
    ToProto(arena, event.mutable_arena_added());
    absl::MutexLock lock(&mu_);
    QueueLocked(std::move(event));
  }

  void End(const absl::Status& status) override {
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      if (status.ok()) {
        v1::SessionEvent event;
        event.mutable_drain()->set_reason("daemon shutting down");
        QueueLocked(std::move(event));
      }
      ending_ = true;
      end_status_ = ToGrpcStatus(status);
      if (!writing_) {
        if (started_ && !queue_.empty()) {
          writing_ = true;
          StartWrite(&queue_.front());
        } else {
          finish = TakeFinishLocked(end_status_);
        }
      }
    }
    if (finish.has_value()) Finish(*finish);
  }

  void OnWriteDone(bool ok) override {
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      queue_.pop_front();
      if (!ok) {
        finish = TakeFinishLocked(
            grpc::Status(grpc::StatusCode::CANCELLED, "session stream broken"));
      } else if (!queue_.empty()) {
        writing_ = true;
        StartWrite(&queue_.front());
      } else if (ending_) {
        finish = TakeFinishLocked(end_status_);
      }
    }
    if (finish.has_value()) Finish(*finish);
  }

  void OnCancel() override {
    // The worker is gone (exit, crash, lost connection): release what it held. Not under mu_: the
    // engine calls into this sink with its own lock held.
    if (!session_id_.empty()) engine_->EndSession(session_id_);
    std::optional<grpc::Status> finish;
    {
      absl::MutexLock lock(&mu_);
      finish = TakeFinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "session cancelled"));
    }
    if (finish.has_value()) Finish(*finish);
  }

  void OnDone() override {
    if (!session_id_.empty()) {
      engine_->EndSession(session_id_);
      if (limits_ != nullptr) limits_->CloseSession(session_id_);
    }
    delete this;
  }

 private:
  void QueueLocked(v1::SessionEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_ || ending_) return;
    queue_.push_back(std::move(event));
    if (started_ && !writing_) {
      writing_ = true;
      StartWrite(&queue_.front());
    }
  }
  // `status` when the stream is to finish now (the caller calls Finish with it after releasing
  // mu_), nothing when it already finished.
  std::optional<grpc::Status> TakeFinishLocked(const grpc::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return std::nullopt;
    finished_ = true;
    return status;
  }

  CacheEngine* const engine_;
  SessionLimits* const limits_;  // may be null
  std::string session_id_;  // set once in the constructor
  absl::Mutex mu_;
  std::deque<v1::SessionEvent> queue_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status end_status_ ABSL_GUARDED_BY(mu_);
};

// Collects a model layout and its Gram matrices, then registers them.
class RegisterModelReactor final : public grpc::ServerReadReactor<v1::ModelChunk> {
 public:
  RegisterModelReactor(CacheEngine* engine, absl::StatusOr<std::string> tenant,
                       v1::RegisterModelReply* reply)
      : engine_(engine), tenant_(std::move(tenant)), reply_(reply) {
    if (!tenant_.ok()) {
      Finish(ToGrpcStatus(tenant_.status()));
      return;
    }
    StartRead(&chunk_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (!model_.has_value()) {
        Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                            "RegisterModel needs a first chunk with the layout"));
        return;
      }
      auto reply = engine_->RegisterModel(*tenant_, std::move(*model_));
      if (reply.ok()) *reply_ = *reply;
      Finish(ToGrpcStatus(reply.status()));
      return;
    }
    absl::Status status;
    if (chunk_.has_layout()) {
      if (model_.has_value()) {
        status = absl::InvalidArgumentError("the layout must be sent once, in the first chunk");
      } else {
        auto model = Model::FromLayout(chunk_.layout());
        if (model.ok()) model_ = std::move(*model);
        status = model.status();
      }
    } else if (chunk_.has_wo_gram()) {
      status = model_.has_value()
                   ? model_->AddWoGram(chunk_.wo_gram())
                   : absl::InvalidArgumentError("the first chunk must carry the layout");
    } else {
      status = absl::InvalidArgumentError("empty ModelChunk");
    }
    if (!status.ok()) {
      Finish(ToGrpcStatus(status));
      return;
    }
    StartRead(&chunk_);
  }

  void OnDone() override { delete this; }

 private:
  CacheEngine* const engine_;
  const absl::StatusOr<std::string> tenant_;
  v1::RegisterModelReply* const reply_;
  v1::ModelChunk chunk_;
  std::optional<Model> model_;
};

// A client stream whose chunks are applied as they arrive (WriteKV, PutStats); the reply goes out
// only after the last one landed. The first failing chunk ends the stream with its status.
template <typename Chunk, typename Reply>
class ChunkStreamReactor final : public grpc::ServerReadReactor<Chunk> {
 public:
  using Apply = std::function<absl::Status(const std::string& tenant, const Chunk&, Reply*)>;

  ChunkStreamReactor(absl::StatusOr<std::string> tenant, Reply* reply, Apply apply)
      : tenant_(std::move(tenant)), reply_(reply), apply_(std::move(apply)) {
    if (!tenant_.ok()) {
      this->Finish(ToGrpcStatus(tenant_.status()));
      return;
    }
    this->StartRead(&chunk_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      this->Finish(grpc::Status::OK);
      return;
    }
    absl::Status status = apply_(*tenant_, chunk_, reply_);
    if (!status.ok()) {
      this->Finish(ToGrpcStatus(absl::Status(
          status.code(), absl::StrCat("chunk ", chunks_, ": ", status.message()))));
      return;
    }
    ++chunks_;
    this->StartRead(&chunk_);
  }

  void OnDone() override { delete this; }

 private:
  const absl::StatusOr<std::string> tenant_;
  Reply* const reply_;
  const Apply apply_;
  Chunk chunk_;
  uint64_t chunks_ = 0;
};

// Streams a ReadCursor, one chunk in flight at a time.
class ReadKvReactor final : public grpc::ServerWriteReactor<v1::KvChunk> {
 public:
  // Each chunk is charged to `limits` (may be null) before it is sent.
  explicit ReadKvReactor(absl::StatusOr<std::unique_ptr<CacheEngine::ReadCursor>> cursor,
                         SessionLimits* limits = nullptr, std::string tenant = "")
      : limits_(limits), tenant_(std::move(tenant)) {
    if (!cursor.ok()) {
      Finish(ToGrpcStatus(cursor.status()));
      return;
    }
    cursor_ = std::move(*cursor);
    WriteNext();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "reader went away"));
      return;
    }
    WriteNext();
  }

  void OnDone() override { delete this; }

 private:
  void WriteNext() {
    absl::StatusOr<bool> more = cursor_->Next(&chunk_);
    if (!more.ok()) {
      Finish(ToGrpcStatus(more.status()));
    } else if (!*more) {
      Finish(grpc::Status::OK);
    } else {
      if (limits_ != nullptr) {
        absl::Status charged = limits_->ChargeBytes(
            tenant_, "", chunk_.keys().size() + chunk_.values().size());
        if (!charged.ok()) {
          Finish(ToGrpcStatus(charged));
          return;
        }
      }
      StartWrite(&chunk_);
    }
  }

  SessionLimits* const limits_;
  const std::string tenant_;
  std::unique_ptr<CacheEngine::ReadCursor> cursor_;
  v1::KvChunk chunk_;
};

}  // namespace

absl::StatusOr<std::string> KvCacheService::Admit(grpc::CallbackServerContext* context,
                                                  const std::string& session_id) {
  absl::StatusOr<std::string> tenant = AuthenticateWorker(*context, *engine_, admin_token_hash_);
  if (!tenant.ok() || limits_ == nullptr) return tenant;
  RETURN_IF_ERROR(limits_->ChargeCall(*tenant, session_id));
  return tenant;
}

template <typename Reply, typename Fn>
grpc::ServerUnaryReactor* KvCacheService::Unary(grpc::CallbackServerContext* context,
                                                Reply* reply, Fn fn,
                                                const std::string& session_id) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> tenant = Admit(context, session_id);
  if (!tenant.ok()) {
    reactor->Finish(ToGrpcStatus(tenant.status()));
    return reactor;
  }
  auto result = fn(*tenant);
  if (result.ok()) *reply = std::move(*result);
  reactor->Finish(ToGrpcStatus(result.status()));
  return reactor;
}

grpc::ServerWriteReactor<v1::SessionEvent>* KvCacheService::Session(
    grpc::CallbackServerContext* context, const v1::AttachRequest* request) {
  absl::StatusOr<std::string> tenant = Admit(context, "");
  if (!tenant.ok()) {
    // A reactor that only finishes.
    struct Failed final : grpc::ServerWriteReactor<v1::SessionEvent> {
      explicit Failed(const absl::Status& s) { Finish(ToGrpcStatus(s)); }
      void OnDone() override { delete this; }
    };
    return new Failed(tenant.status());
  }
  return new SessionReactor(engine_, limits_, *tenant, request->worker_name());
}

grpc::ServerReadReactor<v1::ModelChunk>* KvCacheService::RegisterModel(
    grpc::CallbackServerContext* context, v1::RegisterModelReply* reply) {
  return new RegisterModelReactor(engine_, Admit(context, ""), reply);
}

grpc::ServerUnaryReactor* KvCacheService::GetArena(grpc::CallbackServerContext* context,
                                                   const v1::GetArenaRequest* request,
                                                   v1::ArenaExport* reply) {
  return Unary(context, reply,
               [&](const std::string& t) { return engine_->GetArena(t, request->arena_id()); });
}

grpc::ServerUnaryReactor* KvCacheService::CreateSequence(grpc::CallbackServerContext* context,
                                                         const v1::CreateSequenceRequest* request,
                                                         v1::PageTable* reply) {
  return Unary(
      context, reply, [&](const std::string& t) { return engine_->CreateSequence(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::AllocatePages(grpc::CallbackServerContext* context,
                                                        const v1::AllocateRequest* request,
                                                        v1::PageTableDelta* reply) {
  return Unary(
      context, reply, [&](const std::string& t) { return engine_->AllocatePages(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::CommitTokens(grpc::CallbackServerContext* context,
                                                       const v1::CommitRequest* request,
                                                       v1::CommitReply* reply) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> tenant = Admit(context, request->session_id());
  if (tenant.ok() && limits_ != nullptr && request->stats_size() > 0) {
    uint64_t stats_bytes = 0;
    for (const v1::LayerStats& s : request->stats()) stats_bytes += s.ByteSizeLong();
    absl::Status size = limits_->CheckStatsBytes(stats_bytes);
    if (!size.ok()) tenant = size;
  }
  if (!tenant.ok()) {
    reactor->Finish(ToGrpcStatus(tenant.status()));
    return reactor;
  }
  auto commit = [this, reactor, request, reply, tenant = *tenant] {
    auto result = engine_->CommitTokens(tenant, *request);
    if (result.ok()) *reply = std::move(*result);
    reactor->Finish(ToGrpcStatus(result.status()));
  };
  // A tenant whose policy has max_tokens may get a decode-time compression inside the commit:
  // that runs on the executor. Plain commits stay on the gRPC thread (the hot path).
  absl::StatusOr<v1::Policy> policy = engine_->GetPolicy(*tenant);
  if (policy.ok() && policy->has_max_tokens()) {
    executor_->Schedule(std::move(commit));
  } else {
    commit();
  }
  return reactor;
}

grpc::ServerReadReactor<v1::KvChunk>* KvCacheService::WriteKV(grpc::CallbackServerContext* context,
                                                              v1::WriteSummary* reply) {
  return new ChunkStreamReactor<v1::KvChunk, v1::WriteSummary>(
      AuthenticateWorker(*context, *engine_, admin_token_hash_), reply,
      [this](const std::string& tenant, const v1::KvChunk& chunk, v1::WriteSummary* summary) {
        if (limits_ != nullptr) {
          // The stream is one call, charged with its first chunk (which may name the session).
          if (summary->chunks() == 0) RETURN_IF_ERROR(limits_->ChargeCall(tenant, chunk.session_id()));
          RETURN_IF_ERROR(limits_->ChargeBytes(tenant, chunk.session_id(),
                                               chunk.keys().size() + chunk.values().size()));
        }
        RETURN_IF_ERROR(engine_->WriteChunk(tenant, chunk));
        summary->set_chunks(summary->chunks() + 1);
        summary->set_tokens(summary->tokens() + chunk.token_count());
        summary->set_bytes(summary->bytes() + chunk.keys().size() + chunk.values().size());
        return absl::OkStatus();
      });
}

grpc::ServerWriteReactor<v1::KvChunk>* KvCacheService::ReadKV(grpc::CallbackServerContext* context,
                                                              const v1::ReadRequest* request) {
  absl::StatusOr<std::string> tenant = Admit(context, "");
  if (!tenant.ok()) return new ReadKvReactor(tenant.status());
  return new ReadKvReactor(engine_->OpenRead(*tenant, *request), limits_, *tenant);
}

grpc::ServerReadReactor<v1::StatsChunk>* KvCacheService::PutStats(
    grpc::CallbackServerContext* context, v1::StatsAck* reply) {
  return new ChunkStreamReactor<v1::StatsChunk, v1::StatsAck>(
      AuthenticateWorker(*context, *engine_, admin_token_hash_), reply,
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

template <typename Reply, typename Fn>
grpc::ServerUnaryReactor* KvCacheService::Offload(grpc::CallbackServerContext* context,
                                                  Reply* reply, Fn fn,
                                                  const std::string& session_id) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<std::string> tenant = Admit(context, session_id);
  if (!tenant.ok()) {
    reactor->Finish(ToGrpcStatus(tenant.status()));
    return reactor;
  }
  // The request and reply live until Finish.
  executor_->Schedule([reactor, reply, fn = std::move(fn), tenant = *tenant] {
    auto result = fn(tenant);
    if (result.ok()) *reply = std::move(*result);
    reactor->Finish(ToGrpcStatus(result.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* KvCacheService::Compress(grpc::CallbackServerContext* context,
                                                   const v1::CompressRequest* request,
                                                   v1::CompressReply* reply) {
  return Offload(context, reply,
                 [this, request](const std::string& t) { return engine_->Compress(t, *request); },
                 request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::Spill(grpc::CallbackServerContext* context,
                                                const v1::SpillRequest* request,
                                                v1::SpillReply* reply) {
  return Offload(context, reply,
                 [this, request](const std::string& t) { return engine_->Spill(t, *request); },
                 request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::Restore(grpc::CallbackServerContext* context,
                                                  const v1::RestoreRequest* request,
                                                  v1::PageTable* reply) {
  return Offload(context, reply,
                 [this, request](const std::string& t) { return engine_->Restore(t, *request); },
                 request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::GetSequence(grpc::CallbackServerContext* context,
                                                      const v1::GetSequenceRequest* request,
                                                      v1::PageTable* reply) {
  return Unary(context, reply, [&](const std::string& t) {
    return engine_->GetSequence(t, request->sequence_id(), request->with_positions());
  });
}

grpc::ServerUnaryReactor* KvCacheService::Acquire(grpc::CallbackServerContext* context,
                                                  const v1::AcquireRequest* request,
                                                  v1::PageTable* reply) {
  // May restore a spilled sequence from disk: off the gRPC threads.
  return Offload(context, reply,
                 [this, request](const std::string& t) { return engine_->Acquire(t, *request); },
                 request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::Release(grpc::CallbackServerContext* context,
                                                  const v1::ReleaseRequest* request,
                                                  v1::ReleaseReply* reply) {
  return Unary(
      context, reply, [&](const std::string& t) { return engine_->Release(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::Drop(grpc::CallbackServerContext* context,
                                               const v1::DropRequest* request,
                                               v1::DropReply* reply) {
  return Unary(
      context, reply, [&](const std::string& t) { return engine_->Drop(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::PublishPrefix(grpc::CallbackServerContext* context,
                                                        const v1::PublishPrefixRequest* request,
                                                        v1::PublishPrefixReply* reply) {
  // Publishing copies pages through the backend (device work): on the executor, as Compress.
  return Offload(
      context, reply,
      [this, request](const std::string& t) { return engine_->PublishPrefix(t, *request); },
      request->session_id());
}

grpc::ServerUnaryReactor* KvCacheService::LookupPrefix(grpc::CallbackServerContext* context,
                                                       const v1::LookupPrefixRequest* request,
                                                       v1::LookupPrefixReply* reply) {
  return Unary(context, reply,
               [&](const std::string& t) { return engine_->LookupPrefix(t, *request); });
}

grpc::ServerUnaryReactor* KvCacheService::Ping(grpc::CallbackServerContext* context,
                                               const v1::PingRequest* request,
                                               v1::PingReply* reply) {
  return Unary(context, reply,
               [](const std::string&) { return absl::StatusOr<v1::PingReply>(v1::PingReply()); });
}

}  // namespace kvkeep
