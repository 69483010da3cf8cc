#include "tests/daemon_process.h"

#include <signal.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "gpu/cpu/cpu_backend.h"
#include "service/token_auth.h"

extern char** environ;

namespace kvkeep::testing {

std::string DaemonProcess::BinaryDir() { return KVKEEP_BIN_DIR; }

DaemonProcess::DaemonProcess() {
  const char* base = std::getenv("TEST_TMPDIR");
  std::string root = base != nullptr ? base : "/tmp";
  std::random_device rd;
  dir_ = absl::StrCat(root, "/kvkeep-e2e-", getpid(), "-", rd());
  std::filesystem::create_directories(dir_);
  // kvkeepd refuses a data dir that group or others may write (whatever this process's umask).
  std::filesystem::permissions(dir_, std::filesystem::perms::owner_all);
}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) {
    Stop(SIGKILL);
    // A killed daemon leaves its arenas in /dev/shm (a restart on this dir would remove them).
    char resolved[PATH_MAX];
    if (realpath(dir_.c_str(), resolved) != nullptr) {
      RemoveStaleArenas("kvkeep-" + HashToken(resolved).substr(0, 12));
    }
  }
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

ChannelOptions DaemonProcess::channel() const {
  ChannelOptions options;
  options.target = target();
  return options;
}

absl::Status DaemonProcess::Start(std::vector<std::string> extra_flags) {
  if (pid_ > 0) return absl::FailedPreconditionError("already running");
  if (extra_flags.empty()) extra_flags = last_flags_;
  last_flags_ = extra_flags;
  std::vector<std::string> args = {BinaryDir() + "/kvkeepd", "--data_dir=" + dir_,
                                    "--pool_mib=64", "--arena_mib=1", "--keepalive_seconds=1",
                                    // Tests keep Abseil's run-time lock-order checking on.
                                    "--mutex_deadlock_detection"};
  args.insert(args.end(), extra_flags.begin(), extra_flags.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  std::string log = dir_ + "/kvkeepd.log";
  posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  int rc = posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    pid_ = -1;
    return absl::InternalError(absl::StrCat("cannot spawn ", argv[0], ": ", rc));
  }
  // Ready when the admin API answers (the token file exists before the socket listens).
  for (int i = 0; i < 200; ++i) {
    int status = 0;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      std::ifstream in(log);
      std::stringstream ss;
      ss << in.rdbuf();
      return absl::InternalError("kvkeepd exited during start: " + ss.str());
    }
    if (std::filesystem::exists(dir_ + "/kvkeepd.sock")) {
      auto admin = Admin();
      if (admin->GetStatus().ok()) return absl::OkStatus();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return absl::DeadlineExceededError("kvkeepd did not become ready in 10 s");
}

int DaemonProcess::Stop(int signal) {
  if (pid_ <= 0) return -1;
  kill(pid_, signal);
  int status = 0;
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

std::string DaemonProcess::admin_token() const {
  std::ifstream in(dir_ + "/admin.token");
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripAsciiWhitespace(ss.str()));
}

std::unique_ptr<AdminClient> DaemonProcess::Admin() const {
  return AdminClient::Connect(channel(), admin_token());
}

absl::StatusOr<std::string> DaemonProcess::CreateTenant(const std::string& name, uint64_t quota,
                                                        uint64_t max) {
  v1::CreateTenantRequest request;
  request.set_name(name);
  request.set_quota_bytes(quota);
  request.set_max_bytes(max);
  auto reply = Admin()->CreateTenant(request);
  if (!reply.ok()) return reply.status();
  return reply->token();
}

v1::ModelLayout TestLayout(const std::string& name) {
  v1::ModelLayout layout;
  layout.set_name(name);
  layout.set_layers(2);
  layout.set_q_heads(4);
  layout.set_kv_heads(2);
  layout.set_head_dim(8);
  layout.set_dtype(v1::DTYPE_FP16);
  layout.set_tokens_per_page(4);
  layout.mutable_rope()->set_theta(10000);
  return layout;
}

std::string PatternBytes(uint64_t seed, size_t n) {
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + 1);
  std::string out(n, '\0');
  for (auto& c : out) c = static_cast<char>(rng());
  return out;
}

ProcessExit RunToExit(const std::vector<std::string>& args, int limit_seconds) {
  const std::string dir = absl::StrCat(std::filesystem::temp_directory_path().string(),
                                       "/kvkeep-run-", getpid(), "-",
                                       std::chrono::steady_clock::now().time_since_epoch().count());
  std::filesystem::create_directories(dir);
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string out = dir + "/stdout", err = dir + "/stderr";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = -1;
  ProcessExit run;
  if (posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) == 0) {
    int status = 0;
    bool exited = false;
    for (int i = 0; i < limit_seconds * 20 && !exited; ++i) {
      exited = waitpid(pid, &status, WNOHANG) == pid;
      if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!exited) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    } else if (WIFEXITED(status)) {
      run.code = WEXITSTATUS(status);
    }
  }
  posix_spawn_file_actions_destroy(&actions);
  auto read_all = [](const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  };
  run.out = read_all(out);
  run.err = read_all(err);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return run;
}

}  // namespace kvkeep::testing
