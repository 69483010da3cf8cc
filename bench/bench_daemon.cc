// The kvkeepd child process of the benchmarks and their signal handling (bench/bench_daemon.h).
#include "bench/bench_daemon.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "bench/child_process.h"
#include "bench/redis_peer.h"
#include "client/admin_client.h"
#include "common/status_macros.h"

namespace kvkeep::bench {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The daemon's pid and data dir for the signal handler (0 / empty when none runs).
volatile sig_atomic_t g_daemon_pid = 0;
char g_daemon_dir[64];

// Removes `name` under `parent` and everything below it, with async-signal-safe calls only
// (openat, getdents64, unlinkat), for the signal handler.
void RemoveTreeFromSignal(int parent, const char* name, int depth) {
  const int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    unlinkat(parent, name, 0);
    return;
  }
  alignas(8) char buf[4096];
  for (long n; (n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0;) {
    for (long at = 0; at < n;) {
      // struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
      unsigned short reclen;
      std::memcpy(&reclen, buf + at + 16, sizeof reclen);
      const unsigned char type = static_cast<unsigned char>(buf[at + 18]);
      const char* entry = buf + at + 19;
      at += reclen;
      if (std::strcmp(entry, ".") == 0 || std::strcmp(entry, "..") == 0) continue;
      if (type == DT_DIR && depth < 4) {
        RemoveTreeFromSignal(fd, entry, depth + 1);
      } else {
        unlinkat(fd, entry, 0);
      }
    }
  }
  close(fd);
  unlinkat(parent, name, AT_REMOVEDIR);
}

// Ctrl-C or SIGTERM: stop the daemon (and the Redis peer), remove their dirs and exit.
void OnSignal(int sig) {
  RedisPeerCleanupFromSignal();  // immediate (SIGKILL); the daemon may take seconds to drain
  const pid_t daemon = g_daemon_pid;
  if (daemon > 0) {
    kill(daemon, SIGTERM);
    waitpid(daemon, nullptr, 0);
  }
  if (g_daemon_dir[0] != '\0') RemoveTreeFromSignal(AT_FDCWD, g_daemon_dir, 0);
  _exit(128 + sig);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const std::string& binary,
                                                     uint64_t pool_mib, uint64_t max_message_mib,
                                                     std::vector<std::string> extra_args) {
  char dir_template[] = "/tmp/kvkeep-bench-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  std::unique_ptr<Daemon> d(new Daemon(dir_template));
  static_assert(sizeof dir_template <= sizeof g_daemon_dir);
  std::memcpy(g_daemon_dir, dir_template, sizeof dir_template);
  const std::string log = d->dir_ + "/kvkeepd.log";
  std::vector<std::string> args = {binary,
                                   "--data_dir=" + d->dir_,
                                   absl::StrCat("--pool_mib=", pool_mib),
                                   absl::StrCat("--max_message_mib=", max_message_mib),
                                   "--backend=cpu"};
  for (auto& a : extra_args) args.push_back(std::move(a));
  ASSIGN_OR_RETURN(const pid_t pid, SpawnLogged(std::move(args), log));
  d->pid_ = pid;
  g_daemon_pid = pid;
  d->target_ = "unix:" + d->dir_ + "/kvkeepd.sock";
  // Ready once the token is written and the Admin API answers.
  const auto t0 = Clock::now();
  while (true) {
    int wstatus = 0;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      d->pid_ = 0;
      g_daemon_pid = 0;
      return absl::UnavailableError(absl::StrCat("kvkeepd exited during start-up; its log:\n",
                                                 ReadFile(log)));
    }
    std::string token(absl::StripAsciiWhitespace(ReadFile(d->dir_ + "/admin.token")));
    if (!token.empty()) {
      auto admin = AdminClient::Connect({.target = d->target_}, token);
      if (admin->GetStatus().ok()) {
        d->admin_token_ = token;
        return d;
      }
    }
    if (SecondsSince(t0) > 20) {
      return absl::DeadlineExceededError(absl::StrCat(
          "kvkeepd did not answer within 20 s; its log:\n", ReadFile(log)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Daemon::~Daemon() { Stop(); }

bool Daemon::Stop() {
  bool clean = true;
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int wstatus = 0;
    const auto t0 = Clock::now();
    while (waitpid(pid_, &wstatus, WNOHANG) == 0) {
      if (SecondsSince(t0) > 10) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &wstatus, 0);
        clean = false;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    clean = clean && WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
    pid_ = 0;
    g_daemon_pid = 0;
  }
  if (!dir_.empty()) {
    std::error_code ec;
    g_daemon_dir[0] = '\0';
    std::filesystem::remove_all(dir_, ec);
    dir_.clear();
  }
  return clean;
}

std::string FindDaemon(const std::string& flag) {
  if (!flag.empty()) return flag;
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "kvkeepd";
  const std::filesystem::path dir = self.parent_path();
  for (const auto& candidate : {dir / "kvkeepd", dir / "bin" / "kvkeepd",
                                dir.parent_path() / "bin" / "kvkeepd"}) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return (dir / "kvkeepd").string();
}

void InstallBenchSignalHandlers() {
  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace kvkeep::bench
