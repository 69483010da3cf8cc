#include "client/kvkeepctl_connect.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"

namespace kvkeep::ctl {
namespace {

constexpr char kDefaultSocket[] = "./kvkeep-data/kvkeepd.sock";
constexpr char kDefaultTokenFile[] = "./kvkeep-data/admin.token";

// The flag's value, or nullptr when it was not given.
const std::string* Flag(const std::map<std::string, std::string>& flags, const std::string& name) {
  auto it = flags.find(name);
  return it == flags.end() ? nullptr : &it->second;
}

// The file's contents without surrounding white space; "" when it cannot be read.
std::string ReadTokenFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return "";
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(ss.str()));
}

}  // namespace

absl::StatusOr<Connection> ResolveConnection(const std::map<std::string, std::string>& flags) {
  Connection c;
  const char* env_socket = std::getenv("KVKEEP_SOCKET");
  const std::string* socket_flag = Flag(flags, "socket");
  const std::string socket = socket_flag != nullptr  ? *socket_flag
                             : env_socket != nullptr ? env_socket
                                                     : kDefaultSocket;
  const std::string* target = Flag(flags, "target");
  c.channel.target = target != nullptr ? *target : "unix:" + socket;

  const char* env_token = std::getenv("KVKEEP_ADMIN_TOKEN");
  if (const std::string* token = Flag(flags, "admin-token")) {
    c.token = *token;
  } else if (env_token != nullptr && *env_token != '\0') {
    c.token = env_token;
  } else {
    const std::string* file_flag = Flag(flags, "admin-token-file");
    const std::string file = file_flag != nullptr ? *file_flag : kDefaultTokenFile;
    c.token = ReadTokenFile(file);
    if (c.token.empty()) {
      return absl::FailedPreconditionError(
          "no admin token: cannot read " + file +
          " (give --admin-token-file, --admin-token or $KVKEEP_ADMIN_TOKEN)");
    }
  }
  return c;
}

}  // namespace kvkeep::ctl
