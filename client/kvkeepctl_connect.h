// kvkeepctl's connection: where the daemon is and the admin token, from the global flags and the
// environment, in this order of precedence:
//   target: --target ADDR, else "unix:" + (--socket PATH, $KVKEEP_SOCKET,
//           ./kvkeep-data/kvkeepd.sock);
//   token:  --admin-token T, $KVKEEP_ADMIN_TOKEN (when not empty), the contents of
//           --admin-token-file F (default ./kvkeep-data/admin.token), surrounding white space
//           stripped.
//
//   absl::StatusOr<ctl::Connection> connection = ctl::ResolveConnection(args.flags);
//   if (!connection.ok()) return Fail(std::string(connection.status().message()));
//   auto admin = AdminClient::Connect(connection->channel, connection->token);
//
// Reads only the flags, the environment and the token file; connects to nothing.
#ifndef KVKEEP_CLIENT_KVKEEPCTL_CONNECT_H_
#define KVKEEP_CLIENT_KVKEEPCTL_CONNECT_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "client/call_context.h"

namespace kvkeep::ctl {

struct Connection {
  ChannelOptions channel;
  std::string token;
};

// `flags`: the parsed global flags (name without "--" -> value). FAILED_PRECONDITION, with a
// message naming the file and the three ways to give a token, when no token was given and the
// token file cannot be read or is empty.
absl::StatusOr<Connection> ResolveConnection(const std::map<std::string, std::string>& flags);

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_CONNECT_H_
