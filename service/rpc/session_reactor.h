// The daemon's end of a worker's Session stream (KvCache.Session): attaches the worker to the
// engine, sends SessionStarted, then every event the engine queues (new arenas, drain), and ends
// the session when the stream ends.
//
//   return new SessionReactor(engine, limits, FullMethodName(service, "Session"), tenant, worker);
//
// Thread-safe: the engine calls ArenaAdded/End from any thread (possibly holding its own lock),
// gRPC the reactions. Events queue under mu_ and are written one at a time. Finish() is called
// only after mu_ is released: it may run OnDone (which deletes the reactor, mu_ included) on
// another thread at once, so nothing may touch the reactor after it (ThreadSanitizer caught the
// destruction of mu_ racing with the unlock that followed a Finish under the lock).
#ifndef KVKEEP_SERVICE_RPC_SESSION_REACTOR_H_
#define KVKEEP_SERVICE_RPC_SESSION_REACTOR_H_

#include <deque>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/support/server_callback.h"
#include "kvkeep/v1/kvcache.pb.h"
#include "service/arena_channel/arena_channel_server.h"
#include "service/bulk_channel/bulk_channel_server.h"
#include "service/engine/cache_engine.h"
#include "service/engine/session_sink.h"
#include "service/rpc/session_limits.h"

namespace kvkeep {

class SessionReactor final : public grpc::ServerWriteReactor<v1::SessionEvent>,
                             public SessionSink {
 public:
  // Attaches at once; an attach failure finishes the stream with it. `engine` and `limits`
  // (null: none) must outlive the reactor, which deletes itself in OnDone.
  SessionReactor(CacheEngine* engine, SessionLimits* limits, std::string method,
                 const std::string& tenant, const std::string& worker,
                 ArenaChannelServer* arena_channel = nullptr,
                 BulkChannelServer* bulk_channel = nullptr);

  // SessionSink: queue an event / end the stream (OK: with a drain event first).
  void ArenaAdded(const ArenaInfo& arena) override;
  void End(const absl::Status& status) override;

  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  // The SessionStarted event of a successful attach.
  v1::SessionEvent StartedEvent(const CacheEngine::Attached& attached) const;
  void QueueLocked(v1::SessionEvent event) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `status` when the stream is to finish now (the caller calls Finish with it after releasing
  // mu_), nothing when it already finished.
  std::optional<grpc::Status> TakeFinishLocked(const grpc::Status& status)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  CacheEngine* const engine_;
  SessionLimits* const limits_;  // may be null
  ArenaChannelServer* const arena_channel_;  // may be null: no attach ticket then
  BulkChannelServer* const bulk_channel_;    // may be null: no bulk ticket then
  const std::string method_;
  const std::string tenant_;
  std::string session_id_;  // set once in the constructor; empty when the attach failed

  absl::Mutex mu_;
  // Protected by mu_.
  std::deque<v1::SessionEvent> queue_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status end_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_SESSION_REACTOR_H_
