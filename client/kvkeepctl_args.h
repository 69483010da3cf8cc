// kvkeepctl's command line: positional words and --flags, in any order. A flag is `--name value`
// or `--name=value`; a boolean flag (--json, --force, --help, -h) takes no value; an unknown flag
// is kept (without a value) so that Run can name it in its usage error.
//
//   ctl::Args args;
//   std::string error;
//   if (!ctl::ParseArgs(argc, argv, &args, &error)) return Fail(error);
//   if (!ctl::IsGlobalFlag(name) && !accepted_by_the_command) ... usage error
//
// Pure functions over the argument vector and the command table (kvkeepctl_commands.h).
#ifndef KVKEEP_CLIENT_KVKEEPCTL_ARGS_H_
#define KVKEEP_CLIENT_KVKEEPCTL_ARGS_H_

#include <map>
#include <string>
#include <vector>

namespace kvkeep::ctl {

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;  // --name value (or "" for booleans)
};

// --socket, --target, --admin-token-file, --admin-token, --json, --help: accepted by every command.
bool IsGlobalFlag(const std::string& name);
// A global flag or one that some command accepts.
bool IsKnownFlag(const std::string& name);

// Fills *args from argv[1..argc); false with *error when a known flag that needs a value is last.
bool ParseArgs(int argc, char** argv, Args* args, std::string* error);

}  // namespace kvkeep::ctl

#endif  // KVKEEP_CLIENT_KVKEEPCTL_ARGS_H_
