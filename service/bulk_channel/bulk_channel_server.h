// The bulk channel's listener (docs/api.md §5.2): a Unix stream socket next to the gRPC one
// ("<socket>.bulk", mode 0660). There is no TCP form: the bytes would travel in plain text beside
// a TLS listener; TCP workers keep the gRPC bytes path. Authentication is a one-time ticket per session, handed out on
// the Session stream (SessionStarted.bulk_ticket); the connection then serves that session's
// tenant (bulk_connection.h) until the session ends, when it is shut down.
//
//   ASSIGN_OR_RETURN(auto bulk, BulkChannelServer::Start(path, engine, limits));
//   std::string ticket = bulk->Issue(tenant, session_id);   // SessionStarted.bulk_ticket
//   bulk->EndSession(session_id);                          // closes its connections
//
// One accept thread and one thread per connection (at most kMaxConnections, more are closed at
// once; at most kMaxConnectionsPerTenant attached ones per tenant). A connection that has not attached within kAttachTimeout is closed; inside a frame
// every send and receive must progress within kStallTimeout. Thread-safe.
#ifndef KVKEEP_SERVICE_BULK_CHANNEL_BULK_CHANNEL_SERVER_H_
#define KVKEEP_SERVICE_BULK_CHANNEL_BULK_CHANNEL_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/owned_fd.h"
#include "service/arena_channel/arena_tickets.h"
#include "service/bulk_channel/bulk_connection.h"
#include "service/engine/cache_engine.h"
#include "service/observability/metrics.h"
#include "service/rpc/session_limits.h"

namespace kvkeep {

class BulkChannelServer {
 public:
  static constexpr std::size_t kMaxConnections = 1024;
  // Attached connections of one tenant: no tenant takes every slot from the others.
  static constexpr std::size_t kMaxConnectionsPerTenant = 256;
  static constexpr absl::Duration kAttachTimeout = absl::Seconds(10);
  static constexpr absl::Duration kStallTimeout = absl::Seconds(10);
  static constexpr int kSendBufferBytes = 4 << 20;

  // Binds `path` (a leftover file there is removed: the caller proves it unused) and starts
  // accepting. INVALID_ARGUMENT for an empty path or one too long for a Unix socket;
  // UNAVAILABLE when it cannot be bound. `engine` and `limits` (may be null) must outlive the
  // server.
  static absl::StatusOr<std::unique_ptr<BulkChannelServer>> Start(const std::string& path,
                                                                  CacheEngine* engine,
                                                                  SessionLimits* limits);
  // Stops accepting, shuts every connection down and waits for their threads; unlinks the socket.
  ~BulkChannelServer();

  const std::string& path() const { return path_; }
  std::string Issue(const std::string& tenant, const std::string& session_id);
  // Voids the session's ticket and shuts its connections down.
  void EndSession(const std::string& session_id);
  std::size_t connections() const;
  // kvkeep_bulk_* families: connections open, bytes and chunks moved, failed batches and reads,
  // refused connections.
  void WriteMetrics(ExpositionWriter* w) const;

 private:
  struct Connection {
    int fd;
    std::string session_id;  // empty until attached
    std::string tenant;      // likewise
  };
  BulkChannelServer(std::string path, OwnedFd listener, OwnedFd wake, CacheEngine* engine,
                    SessionLimits* limits);
  void AcceptLoop();
  void Serve(uint64_t id, OwnedFd fd);
  // Redeems the first frame's ticket and binds the connection to its session, under mu_ (so a
  // session that ends meanwhile either voided the ticket first or sees the connection).
  // RESOURCE_EXHAUSTED (the ticket unused) when the tenant has kMaxConnectionsPerTenant already.
  absl::StatusOr<TicketBinding> Attach(uint64_t id, const std::string& ticket);

  const std::string path_;
  const OwnedFd listener_;
  const OwnedFd wake_;
  CacheEngine* const engine_;
  SessionLimits* const limits_;
  ArenaTickets tickets_;  // one-time tickets, as the arena channel's
  BulkChannelStats stats_;
  std::atomic<uint64_t> refused_{0};  // connections that never attached

  mutable absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_map<uint64_t, Connection> connections_ ABSL_GUARDED_BY(mu_);
  std::thread accept_thread_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_BULK_CHANNEL_BULK_CHANNEL_SERVER_H_
