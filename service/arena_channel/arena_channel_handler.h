// What the arena channel answers to one request datagram of one connection: the state machine
// "attach with a ticket first, then arena fds of that session's tenant only". Kept apart from the
// socket code so the fuzz target (tests/fuzz/fuzz_arena_channel.cc) drives it directly.
//
//   ArenaChannelHandler handler(&tickets, &source);
//   ArenaChannelConnection conn;
//   ArenaChannelOutcome out = handler.Handle(conn, datagram);  // send out.reply (+ out.fd)
//   if (out.close) ...;                                        // then close the connection
//
// Thread-safe: the handler is stateless beyond the tickets and the source (both thread-safe); a
// connection is handled by one thread at a time.
#ifndef KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_CHANNEL_HANDLER_H_
#define KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_CHANNEL_HANDLER_H_

#include <optional>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/owned_fd.h"
#include "kvkeep/v1/common.pb.h"
#include "service/arena_channel/arena_tickets.h"

namespace kvkeep {

// Where arena fds come from (the engine in the daemon, CacheEngine::ArenaFdFor).
class ArenaFdSource {
 public:
  virtual ~ArenaFdSource() = default;
  // The export and a new fd (the caller owns it) of an arena the session's tenant may map.
  virtual absl::StatusOr<std::pair<v1::ArenaExport, int>> ArenaFd(const std::string& tenant,
                                                                  const std::string& session_id,
                                                                  uint32_t arena_id) const = 0;
};

// One connection's state: unattached until a ticket is redeemed.
struct ArenaChannelConnection {
  std::optional<TicketBinding> session;
  int peer_uid = -1;  // SO_PEERCRED, logged only
};

struct ArenaChannelOutcome {
  std::string reply;  // one serialized ArenaChannelReply
  OwnedFd fd;         // sent with the reply (SCM_RIGHTS) when valid
  bool close = false;  // close the connection after sending
};

class ArenaChannelHandler {
 public:
  // Both must outlive the handler.
  ArenaChannelHandler(ArenaTickets* tickets, const ArenaFdSource* source)
      : tickets_(tickets), source_(source) {}

  // A malformed datagram, a first request that is not a valid ticket, or a second attach: an
  // error reply and close. An arena request: the fd, or an error reply (connection kept).
  ArenaChannelOutcome Handle(ArenaChannelConnection& connection, absl::string_view datagram) const;

 private:
  ArenaTickets* const tickets_;
  const ArenaFdSource* const source_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_CHANNEL_HANDLER_H_
