// kvkeepctl's commands: the table of every command (its name, arguments, flags, the Admin RPC it
// calls, its help), and the help texts printed from it (docs/api.md lists the same commands).
//
//   const ctl::Command* cmd = ...;  // one of ctl::Commands()
//   if (help) ctl::PrintCommandHelp(*cmd);
//   if (args.positional.size() != words + ctl::ExpectedOperands(*cmd)) ... usage error
//
// The table is built once and never changes: safe to read from any thread.
#ifndef KVKEEP_CLIENT_KVKEEPCTL_COMMANDS_H_
#define KVKEEP_CLIENT_KVKEEPCTL_COMMANDS_H_

#include <cstddef>
#include <cstdio>
#include <string>
#include <vector>

namespace kvkeep::ctl {

// One command of the CLI and the Admin RPC it calls.
struct Command {
  std::string name;                // "tenant create"
  std::string args;                // positional arguments and flags
  std::string brief;               // one line for the command list
  std::string summary;
  std::string rpc;                 // Admin RPC(s)
  std::vector<std::string> flags;  // command flags it accepts (global flags always)
  std::string examples;            // one per line
};

// The flags of a policy (policy set / validate, seq compress).
const std::vector<std::string>& PolicyFlags();
// Every command, in the order of the help.
const std::vector<Command>& Commands();

// "kvkeepctl tenant create NAME [--quota SIZE] ...".
std::string CommandUsage(const Command& c);
// Positional arguments after the command words, from its usage line.
size_t ExpectedOperands(const Command& cmd);

// Every command, the global and policy flags and examples: to stdout for --help, to stderr after
// a usage error.
void PrintGlobalHelp(std::FILE* out);
// One command's usage, summary, RPC, examples (kvkeepctl seq show --help); to stdout.
void PrintCommandHelp(const Command& c);
// The commands of a group ("kvkeepctl seq --help"); to stdout.
void PrintGroupHelp(const std::string& group);

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_COMMANDS_H_
