// Redis Cluster redirections: the MOVED and ASK error replies.
//
// "MOVED 3999 127.0.0.1:6381": slot 3999 is now served by that node for good - route there and
// refresh the slot map. "ASK 3999 127.0.0.1:6381": the slot is being migrated and this one key is
// already at the target - send ASKING then the command to the target, once, without changing the
// slot map (Redis Cluster specification, "Redirection and resharding").
//
//   if (auto r = ParseRedirection(error_text)) { ... r->target ... }
//
// Pure functions, thread-safe.
#ifndef KVKEEP_SERVICE_FLEET_REDIRECTION_H_
#define KVKEEP_SERVICE_FLEET_REDIRECTION_H_

#include <cstdint>
#include <optional>

#include "absl/strings/string_view.h"
#include "service/fleet/node_address.h"

namespace kvkeep::fleet {

struct Redirection {
  enum class Kind { kMoved, kAsk };
  Kind kind = Kind::kMoved;
  uint16_t slot = 0;
  NodeAddress target;
};

// The redirection an error reply's text names; nullopt for any other error (or a malformed one:
// a slot outside 0..16383, a bad address, extra words).
std::optional<Redirection> ParseRedirection(absl::string_view error);

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_REDIRECTION_H_
