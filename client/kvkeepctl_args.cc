#include "client/kvkeepctl_args.h"

#include <algorithm>

#include "client/kvkeepctl_commands.h"

namespace kvkeep::ctl {
namespace {

bool IsBoolFlag(const std::string& name) {
  return name == "json" || name == "force" || name == "help";
}

}  // namespace

bool IsGlobalFlag(const std::string& name) {
  static const std::vector<std::string> kGlobalFlags = {"socket",      "target", "admin-token-file",
                                                        "admin-token", "json",   "help"};
  return std::find(kGlobalFlags.begin(), kGlobalFlags.end(), name) != kGlobalFlags.end();
}

bool IsKnownFlag(const std::string& name) {
  if (IsGlobalFlag(name)) return true;
  return std::any_of(Commands().begin(), Commands().end(), [&](const Command& c) {
    return std::find(c.flags.begin(), c.flags.end(), name) != c.flags.end();
  });
}

bool ParseArgs(int argc, char** argv, Args* args, std::string* error) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-h") a = "--help";
    if (a.rfind("--", 0) == 0 && a.size() > 2) {
      std::string name = a.substr(2), value;
      size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (!IsBoolFlag(name) && IsKnownFlag(name)) {  // Run names unknown flags
        if (i + 1 >= argc) {
          *error = "flag --" + name + " needs a value";
          return false;
        }
        value = argv[++i];
      }
      args->flags[name] = value;
    } else {
      args->positional.push_back(a);
    }
  }
  return true;
}

}  // namespace kvkeep::ctl
