// kvkeepctl: the operator CLI of kvkeepd, one command per Admin RPC (kvkeepctl_commands.cc,
// docs/api.md). Exit status: 0 done, 1 the daemon refused or could not be reached (the gRPC code is
// printed), 2 a usage error (nothing was sent).
//
// This file finds the command and dispatches it. The pieces, one concept per file:
//   kvkeepctl_args       the command line: words and flags
//   kvkeepctl_commands   the command table and the help printed from it
//   kvkeepctl_connect    where the daemon is and the admin token
//   kvkeepctl_context    what a command body gets, and how it ends (exit statuses)
//   kvkeepctl_format     sizes, tables, JSON
//   kvkeepctl_status     status, top, pool watermarks
//   kvkeepctl_tenant     tenant commands and the tenant table
//   kvkeepctl_policy     policy flags and commands
//   kvkeepctl_seq        sequence commands
//   kvkeepctl_fleet      group set-secret, fleet status
#include <algorithm>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/admin_client.h"
#include "client/kvkeepctl_args.h"
#include "client/kvkeepctl_commands.h"
#include "client/kvkeepctl_connect.h"
#include "client/kvkeepctl_context.h"
#include "client/kvkeepctl_fleet.h"
#include "client/kvkeepctl_policy.h"
#include "client/kvkeepctl_seq.h"
#include "client/kvkeepctl_status.h"
#include "client/kvkeepctl_tenant.h"

namespace kvkeep::ctl {
namespace {

int Run(int argc, char** argv) {
  Args args;
  std::string error;
  if (!ParseArgs(argc, argv, &args, &error)) return Fail(error);
  if (!args.positional.empty() && args.positional[0] == "help") {
    args.positional.erase(args.positional.begin());
    args.flags["help"] = "";
  }
  const bool help = args.flags.count("help") > 0;
  for (const auto& [name, value] : args.flags) {
    if (!help && args.positional.empty() && !IsKnownFlag(name)) {
      return Fail("unknown flag --" + name + " (see kvkeepctl --help)");
    }
  }
  if (args.positional.empty()) {
    PrintGlobalHelp(help ? stdout : stderr);
    return help ? 0 : 2;
  }
  // The command: one word (status, top) or a group and a subcommand.
  const Command* cmd = nullptr;
  bool group = false;
  for (const Command& c : Commands()) {
    if (c.name == args.positional[0] ||
        (args.positional.size() > 1 && c.name == args.positional[0] + " " + args.positional[1])) {
      cmd = &c;
      break;
    }
    if (c.name.rfind(args.positional[0] + " ", 0) == 0) group = true;
  }
  if (cmd == nullptr) {
    if (!group) {
      return Fail("unknown command \"" + args.positional[0] + "\" (see kvkeepctl --help)");
    }
    PrintGroupHelp(args.positional[0]);
    if (help) return 0;
    return Fail(args.positional.size() > 1
                    ? "unknown " + args.positional[0] + " subcommand \"" + args.positional[1] + "\""
                    : args.positional[0] + " needs a subcommand");
  }
  if (help) {
    PrintCommandHelp(*cmd);
    return 0;
  }
  for (const auto& [name, value] : args.flags) {
    if (!IsGlobalFlag(name) &&
        std::find(cmd->flags.begin(), cmd->flags.end(), name) == cmd->flags.end()) {
      return Fail(absl::StrCat("unknown flag --", name, " for `", cmd->name, "`; usage: ",
                               CommandUsage(*cmd)));
    }
  }
  const size_t words = std::count(cmd->name.begin(), cmd->name.end(), ' ') + 1;
  if (args.positional.size() != words + ExpectedOperands(*cmd)) {
    return Fail(absl::StrCat("wrong number of arguments; usage: ", CommandUsage(*cmd)));
  }

  absl::StatusOr<Connection> connection = ResolveConnection(args.flags);
  if (!connection.ok()) return Fail(std::string(connection.status().message()));
  auto admin = AdminClient::Connect(connection->channel, connection->token);
  Ctx c{args, *admin, args.flags.count("json") > 0};
  const std::string first = args.positional[0];
  const std::string sub = words > 1 ? args.positional[1] : "";
  if (first == "status") return RunStatus(c);
  if (first == "top") return RunTop(c);
  if (first == "tenant") return RunTenant(c, sub);
  if (first == "policy") return RunPolicy(c, sub);
  if (first == "seq") return RunSeq(c, sub);
  if (first == "group") return RunGroupSetSecret(c.admin, c.pos(2), c.flag("from-file"), c.json);
  if (first == "fleet") return RunFleetStatus(c.admin, c.json);
  return RunPool(c);
}

}  // namespace
}  // namespace kvkeep::ctl

int main(int argc, char** argv) { return kvkeep::ctl::Run(argc, argv); }
