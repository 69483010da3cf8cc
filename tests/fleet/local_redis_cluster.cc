#include "tests/fleet/local_redis_cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kvkeep::fleet::testing {
namespace {

std::string Script() { return std::string(KVKEEP_SOURCE_DIR) + "/deploy/redis-cluster"; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

CommandResult RunCommand(const std::string& command) {
  CommandResult result;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return result;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) result.output.append(buffer, n);
  const int status = pclose(pipe);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

bool LocalRedisCluster::Available() {
  return RunCommand("command -v redis-server && command -v redis-cli").exit_code == 0;
}

absl::StatusOr<std::unique_ptr<LocalRedisCluster>> LocalRedisCluster::Start(
    absl::Duration node_timeout) {
  char pattern[] = "/tmp/kvkeep-fleet-XXXXXX";
  if (mkdtemp(pattern) == nullptr) return absl::InternalError("mkdtemp failed");
  const std::string dir = pattern;
  std::string output;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int base = 20000 + static_cast<int>((getpid() * 7 + attempt * 1543) % 3000) * 10;
    CommandResult started =
        RunCommand(absl::StrCat(Script(), " start ", dir, " --base-port ", base, " --node-timeout ",
                                absl::ToInt64Milliseconds(node_timeout)));
    if (started.exit_code == 0) {
      std::vector<NodeAddress> seeds;
      for (absl::string_view line : absl::StrSplit(started.output, '\n')) {
        if (absl::ConsumePrefix(&line, "seeds=")) {
          absl::StatusOr<std::vector<NodeAddress>> parsed = ParseSeedList(line);
          if (parsed.ok()) seeds = *std::move(parsed);
        }
      }
      std::string password = ReadFile(dir + "/kvkeep.password");
      if (seeds.size() != 6 || password.empty()) {
        return absl::InternalError(absl::StrCat("unexpected script output: ", started.output));
      }
      return std::unique_ptr<LocalRedisCluster>(
          new LocalRedisCluster(dir, std::move(seeds), std::move(password)));
    }
    output = started.output;
    RunCommand(absl::StrCat(Script(), " stop ", dir));
  }
  std::filesystem::remove_all(dir);
  return absl::UnavailableError(absl::StrCat("deploy/redis-cluster start failed:\n", output));
}

LocalRedisCluster::LocalRedisCluster(std::string dir, std::vector<NodeAddress> seeds,
                                     std::string password)
    : dir_(std::move(dir)), seeds_(std::move(seeds)), password_(std::move(password)) {}

LocalRedisCluster::~LocalRedisCluster() {
  RunCommand(absl::StrCat(Script(), " stop ", dir_));
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

ConnectionOptions LocalRedisCluster::KvkeepUser() const {
  ConnectionOptions options;
  options.user = "kvkeep";
  options.password = password_;
  return options;
}

ConnectionOptions LocalRedisCluster::Admin() const { return ConnectionOptions(); }

pid_t LocalRedisCluster::PidOf(int port) const {
  const std::string text = ReadFile(absl::StrCat(dir_, "/", port, "/redis.pid"));
  return static_cast<pid_t>(atoi(text.c_str()));
}

}  // namespace kvkeep::fleet::testing
