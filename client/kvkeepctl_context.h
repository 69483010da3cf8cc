// What every kvkeepctl command body shares: its context (parsed arguments, the Admin client, the
// output mode) and how it ends. Exit statuses: 0 done, 1 the daemon refused or could not be reached
// (FailStatus prints the gRPC code and message), 2 a usage error, nothing sent (Fail).
//
//   int RunX(ctl::Ctx& c) {
//     if (!c.has("name")) return ctl::Fail("--name is needed");
//     return ctl::Output(c, c.admin.GetStatus(), [](const v1::DaemonStatus& s) { ... });
//   }
//
// A Ctx borrows the arguments and the client for one command; one thread.
#ifndef KVKEEP_CLIENT_KVKEEPCTL_CONTEXT_H_
#define KVKEEP_CLIENT_KVKEEPCTL_CONTEXT_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/admin_client.h"
#include "client/kvkeepctl_args.h"
#include "client/kvkeepctl_format.h"

namespace kvkeep::ctl {

// Everything a command needs: its parsed arguments, the client, the output mode.
struct Ctx {
  Args& args;
  AdminClient& admin;
  bool json;
  bool has(const std::string& flag) const { return args.flags.count(flag) > 0; }
  const std::string& flag(const std::string& name) { return args.flags[name]; }
  const std::string& pos(size_t i) const { return args.positional[i]; }
};

// Prints "kvkeepctl: <message>" to stderr; returns `code` (2: a usage error).
int Fail(const std::string& message, int code = 2);
// Prints "kvkeepctl: <CODE>: <message>" to stderr; returns 1.
int FailStatus(const absl::Status& status);

// Prints `reply` as JSON (--json), or calls `human`; a failed call: FailStatus.
template <typename Reply, typename Human>
int Output(const Ctx& c, const absl::StatusOr<Reply>& reply, Human human) {
  if (!reply.ok()) return FailStatus(reply.status());
  if (c.json) {
    PrintJson(*reply);
  } else {
    human(*reply);
  }
  return 0;
}

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_CONTEXT_H_
