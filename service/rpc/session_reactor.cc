#include "service/rpc/session_reactor.h"

#include <utility>

#include "service/rpc/reactors.h"

namespace kvkeep {

SessionReactor::SessionReactor(CacheEngine* engine, SessionLimits* limits, std::string method,
                               const std::string& tenant, const std::string& worker,
                               ArenaChannelServer* arena_channel,
                               BulkChannelServer* bulk_channel)
    : engine_(engine),
      limits_(limits),
      arena_channel_(arena_channel),
      bulk_channel_(bulk_channel),
      method_(std::move(method)),
      tenant_(tenant) {
  // Its buckets exist before any call can name the session.
  auto attached = engine_->Attach(tenant, worker, this);
  if (!attached.ok()) {
    {
      absl::MutexLock lock(&mu_);
      finished_ = true;
    }
    Finish(CallStatus(method_, tenant_, attached.status()));
    return;
  }
  session_id_ = attached->session_id;
  if (limits_ != nullptr) limits_->OpenSession(tenant, session_id_);
  v1::SessionEvent event = StartedEvent(*attached);
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

v1::SessionEvent SessionReactor::StartedEvent(const CacheEngine::Attached& attached) const {
  v1::SessionEvent event;
  v1::SessionStarted* started = event.mutable_started();
  started->set_session_id(attached.session_id);
  started->set_tenant(tenant_);
  for (const ArenaInfo& a : attached.arenas) ToProto(a, started->add_arenas());
  started->set_max_message_bytes(engine_->max_message_bytes());
  started->set_superseded_session_id(attached.superseded_session_id);
  started->set_adopted_sequences(attached.adopted_sequences);
  if (arena_channel_ != nullptr) {
    // The worker's one-time key to its arenas' fds (service/arena_channel).
    started->set_attach_ticket(arena_channel_->Issue(tenant_, attached.session_id));
    started->set_arena_socket(arena_channel_->path());
  }
  if (bulk_channel_ != nullptr) {
    // The worker's one-time key to the bulk channel (service/bulk_channel).
    started->set_bulk_ticket(bulk_channel_->Issue(tenant_, attached.session_id));
    started->set_bulk_socket(bulk_channel_->path());
  }
  return event;
}

void SessionReactor::ArenaAdded(const ArenaInfo& arena) {
  v1::SessionEvent event;
  ToProto(arena, event.mutable_arena_added());
  absl::MutexLock lock(&mu_);
  QueueLocked(std::move(event));
}

void SessionReactor::End(const absl::Status& status) {
  // Converted (and an internal error logged) before the lock: logging may block on stderr.
  grpc::Status end_status = CallStatus(method_, tenant_, status);
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    if (status.ok()) {
      v1::SessionEvent event;
      event.mutable_drain()->set_reason("daemon shutting down");
      QueueLocked(std::move(event));
    }
    ending_ = true;
    end_status_ = std::move(end_status);
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

void SessionReactor::OnWriteDone(bool ok) {
  std::optional<grpc::Status> finish;
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    queue_.pop_front();
    if (!ok) {
      finish = TakeFinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "session stream broken"));
    } else if (!queue_.empty()) {
      writing_ = true;
      StartWrite(&queue_.front());
    } else if (ending_) {
      finish = TakeFinishLocked(end_status_);
    }
  }
  if (finish.has_value()) Finish(*finish);
}

void SessionReactor::OnCancel() {
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

void SessionReactor::OnDone() {
  if (!session_id_.empty()) {
    engine_->EndSession(session_id_);
    if (limits_ != nullptr) limits_->CloseSession(session_id_);
    if (arena_channel_ != nullptr) arena_channel_->EndSession(session_id_);
    if (bulk_channel_ != nullptr) bulk_channel_->EndSession(session_id_);
  }
  delete this;
}

void SessionReactor::QueueLocked(v1::SessionEvent event) {
  if (finished_ || ending_) return;
  queue_.push_back(std::move(event));
  if (started_ && !writing_) {
    writing_ = true;
    StartWrite(&queue_.front());
  }
}

std::optional<grpc::Status> SessionReactor::TakeFinishLocked(const grpc::Status& status) {
  if (finished_) return std::nullopt;
  finished_ = true;
  return status;
}

}  // namespace kvkeep
