// Attach tickets of the arena channel: 32 random bytes per session, bound to (tenant, session),
// redeemable once, void when the session ends. A ticket is a capability the Session stream hands
// its own worker; the arena channel accepts a connection only with one (the peer's uid is logged,
// never trusted).
//
//   std::string ticket = tickets.Issue("team-a", session_id);   // SessionStarted.attach_ticket
//   ASSIGN_OR_RETURN(TicketBinding who, tickets.Redeem(ticket)); // once; then NOT_FOUND
//   tickets.EndSession(session_id);                              // unredeemed ticket void
//
// Thread-safe (mu_ guards the map; it takes no other lock).
#ifndef KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_TICKETS_H_
#define KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_TICKETS_H_

#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace kvkeep {

struct TicketBinding {
  std::string tenant;
  std::string session_id;
};

class ArenaTickets {
 public:
  // A fresh ticket for the session (a second Issue for the same session replaces the first).
  std::string Issue(const std::string& tenant, const std::string& session_id);
  // The session the ticket was issued to; consumes it. NOT_FOUND for an unknown, redeemed or
  // ended ticket (the message never says which).
  absl::StatusOr<TicketBinding> Redeem(const std::string& ticket);
  // Voids the session's unredeemed ticket.
  void EndSession(const std::string& session_id);
  std::size_t outstanding() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, TicketBinding> by_ticket_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> ticket_of_session_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_TICKETS_H_
