#include "service/arena_channel/arena_tickets.h"

#include <openssl/rand.h>

#include "service/arena_channel/arena_channel_wire.h"

namespace kvkeep {

std::string ArenaTickets::Issue(const std::string& tenant, const std::string& session_id) {
  std::string ticket(kAttachTicketBytes, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(ticket.data()),
                 static_cast<int>(ticket.size())) != 1) {
    return "";  // no entropy: no ticket (the worker then has the bytes path only)
  }
  absl::MutexLock lock(&mu_);
  auto old = ticket_of_session_.find(session_id);
  if (old != ticket_of_session_.end()) by_ticket_.erase(old->second);
  by_ticket_[ticket] = TicketBinding{tenant, session_id};
  ticket_of_session_[session_id] = ticket;
  return ticket;
}

absl::StatusOr<TicketBinding> ArenaTickets::Redeem(const std::string& ticket) {
  absl::MutexLock lock(&mu_);
  auto it = by_ticket_.find(ticket);
  if (ticket.size() != kAttachTicketBytes || it == by_ticket_.end()) {
    return absl::NotFoundError("attach ticket unknown, already used, or its session ended");
  }
  TicketBinding binding = std::move(it->second);
  by_ticket_.erase(it);
  ticket_of_session_.erase(binding.session_id);
  return binding;
}

void ArenaTickets::EndSession(const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  auto it = ticket_of_session_.find(session_id);
  if (it == ticket_of_session_.end()) return;
  by_ticket_.erase(it->second);
  ticket_of_session_.erase(it);
}

std::size_t ArenaTickets::outstanding() const {
  absl::MutexLock lock(&mu_);
  return by_ticket_.size();
}

}  // namespace kvkeep
