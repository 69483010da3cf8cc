// The arena channel: a SOCK_SEQPACKET Unix socket next to the gRPC socket over which workers
// receive their arenas as file descriptors (SCM_RIGHTS). Authentication is the Session stream's
// one-time attach ticket (arena_tickets.h); what a connection may get is the handler's rule
// (arena_channel_handler.h): its session's tenant's arenas, its sharing group's read-only. The
// peer's uid (SO_PEERCRED) is logged, never trusted, so workers may run under any uid that can
// reach the socket.
//
//   ASSIGN_OR_RETURN(auto channel, ArenaChannelServer::Start(path, &engine_fd_source));
//   std::string ticket = channel->Issue(tenant, session_id);  // SessionStarted.attach_ticket
//   channel->EndSession(session_id);                          // closes its connections
//
// One thread polls the listening socket and every connection; sockets are non-blocking and a peer
// that does not read its replies is disconnected, so no peer can stall another. At most
// kMaxConnections connections; one that has not attached within kAttachTimeout is closed.
// Thread-safe: Issue/EndSession from any thread (mu_ guards the ended-session queue; the poll
// thread alone owns the connections).
#ifndef KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_CHANNEL_SERVER_H_
#define KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_CHANNEL_SERVER_H_

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/owned_fd.h"
#include "service/arena_channel/arena_channel_handler.h"
#include "service/arena_channel/arena_tickets.h"

namespace kvkeep {

class ArenaChannelServer {
 public:
  static constexpr std::size_t kMaxConnections = 4096;
  static constexpr absl::Duration kAttachTimeout = absl::Seconds(10);

  // Binds `path` (a leftover file there is removed: the caller proves it unused), mode 0660 like
  // the gRPC socket, and starts the poll thread. `source` must outlive the server.
  static absl::StatusOr<std::unique_ptr<ArenaChannelServer>> Start(const std::string& path,
                                                                   const ArenaFdSource* source);
  ~ArenaChannelServer();  // stops the thread, closes every connection, unlinks the socket

  const std::string& path() const { return path_; }
  std::string Issue(const std::string& tenant, const std::string& session_id) {
    return tickets_.Issue(tenant, session_id);
  }
  // Voids the session's ticket and closes the connections attached to it.
  void EndSession(const std::string& session_id);

 private:
  struct Connection {
    OwnedFd fd;
    ArenaChannelConnection state;
    absl::Time opened;
  };
  ArenaChannelServer(std::string path, OwnedFd listener, OwnedFd wake, const ArenaFdSource* source);
  void Loop();
  void Accept();
  // Reads and answers every datagram waiting on `c`; false when it is to be closed.
  bool Serve(Connection& c);
  // Closes connections whose session ended or that never attached in time.
  void Prune();

  const std::string path_;
  const OwnedFd listener_;
  const OwnedFd wake_;  // eventfd: EndSession and the destructor wake the loop
  ArenaTickets tickets_;
  const ArenaChannelHandler handler_;
  std::vector<std::unique_ptr<Connection>> connections_;  // the poll thread's alone
  std::thread thread_;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::string> ended_sessions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_CHANNEL_SERVER_H_
