#include "bench/redis_peer.h"

#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "bench/child_process.h"
#include "common/status_macros.h"

namespace kvkeep::bench {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// For the signal handler: the running peer's pid and directory (0 / empty when none).
volatile sig_atomic_t g_redis_pid = 0;
char g_redis_dir[64];

std::string ReadLog(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  if (s.size() > 4000) s = "..." + s.substr(s.size() - 4000);
  return s;
}

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using Reply = std::unique_ptr<redisReply, ReplyDeleter>;

absl::Status ContextError(redisContext* c, const char* what) {
  return absl::UnavailableError(
      absl::StrCat("redis ", what, ": ", c != nullptr ? c->errstr : "no context"));
}

}  // namespace

void RedisPeerCleanupFromSignal() {
  const pid_t pid = g_redis_pid;
  if (pid > 0) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  if (g_redis_dir[0] != '\0') {
    // Only the files this peer's configuration can create (persistence is off).
    const int fd = open(g_redis_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
      for (const char* name : {"redis.sock", "redis.log", "dump.rdb", "temp.rdb"}) {
        unlinkat(fd, name, 0);
      }
      close(fd);
    }
    rmdir(g_redis_dir);
  }
}

std::string RedisPeer::FindServer(const std::string& flag) {
  if (!flag.empty()) return access(flag.c_str(), X_OK) == 0 ? flag : "";
  const char* env = getenv("PATH");
  std::stringstream path(env != nullptr ? env : "/usr/local/bin:/usr/bin:/bin");
  for (std::string dir; std::getline(path, dir, ':');) {
    if (dir.empty()) continue;
    std::string candidate = dir + "/redis-server";
    if (access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  for (const char* fixed : {"/usr/bin/redis-server", "/usr/sbin/redis-server"}) {
    if (access(fixed, X_OK) == 0) return fixed;
  }
  return "";
}

RedisPeer::RedisPeer(std::string dir) : dir_(std::move(dir)), socket_(dir_ + "/redis.sock") {}

RedisPeer::~RedisPeer() { Stop(); }

absl::StatusOr<std::unique_ptr<RedisPeer>> RedisPeer::Start(const std::string& binary) {
  if (binary.empty() || access(binary.c_str(), X_OK) != 0) {
    return absl::NotFoundError("no redis-server (apt-get install redis-server, or --redis PATH)");
  }
  char dir_template[] = "/tmp/kvkeep-redis-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  std::unique_ptr<RedisPeer> peer(new RedisPeer(dir_template));
  static_assert(sizeof dir_template <= sizeof g_redis_dir);
  std::memcpy(g_redis_dir, dir_template, sizeof dir_template);
  const std::string log = peer->dir_ + "/redis.log";
  // No TCP listener, a private socket, no persistence, no eviction, no memory limit.
  std::vector<std::string> args = {binary,
                                   "--port", "0",
                                   "--unixsocket", peer->socket_,
                                   "--unixsocketperm", "700",
                                   "--dir", peer->dir_,
                                   "--save", "",
                                   "--appendonly", "no",
                                   "--daemonize", "no",
                                   "--supervised", "no",
                                   "--maxmemory", "0",
                                   "--logfile", "",
                                   "--databases", "1"};
  ASSIGN_OR_RETURN(const pid_t pid, SpawnLogged(std::move(args), log));
  peer->pid_ = pid;
  g_redis_pid = pid;
  const auto t0 = Clock::now();
  while (true) {
    int wstatus = 0;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      peer->pid_ = 0;
      g_redis_pid = 0;
      return absl::UnavailableError(
          absl::StrCat("redis-server exited during start-up; its log:\n", ReadLog(log)));
    }
    if (access(peer->socket_.c_str(), F_OK) == 0 && peer->Connect().ok()) {
      Reply pong(static_cast<redisReply*>(redisCommand(peer->ctx_, "PING")));
      if (pong != nullptr && pong->type == REDIS_REPLY_STATUS) return peer;
    }
    if (SecondsSince(t0) > 20) {
      return absl::DeadlineExceededError(
          absl::StrCat("redis-server did not answer within 20 s; its log:\n", ReadLog(log)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

absl::Status RedisPeer::Connect() {
  if (ctx_ != nullptr) {
    redisFree(ctx_);
    ctx_ = nullptr;
  }
  ctx_ = redisConnectUnixWithTimeout(socket_.c_str(), timeval{5, 0});
  if (ctx_ == nullptr || ctx_->err != 0) return ContextError(ctx_, "connect");
  // Replies of several MiB: keep the reader's buffer instead of freeing it when idle.
  ctx_->reader->maxbuf = 0;
  if (redisSetTimeout(ctx_, timeval{120, 0}) != REDIS_OK) return ContextError(ctx_, "timeout");
  return absl::OkStatus();
}

absl::Status RedisPeer::SetMany(const std::vector<std::string>& keys,
                                const std::vector<std::string_view>& values, size_t pipeline) {
  if (keys.size() != values.size()) return absl::InvalidArgumentError("keys and values differ");
  if (pipeline == 0) pipeline = 1;
  static constexpr char kSet[] = "SET";
  for (size_t first = 0; first < keys.size(); first += pipeline) {
    const size_t end = std::min(keys.size(), first + pipeline);
    for (size_t i = first; i < end; ++i) {
      const char* argv[3] = {kSet, keys[i].data(), values[i].data()};
      const size_t len[3] = {3, keys[i].size(), values[i].size()};
      if (redisAppendCommandArgv(ctx_, 3, argv, len) != REDIS_OK) {
        return ContextError(ctx_, "append SET");
      }
    }
    for (size_t i = first; i < end; ++i) {
      void* raw = nullptr;
      if (redisGetReply(ctx_, &raw) != REDIS_OK) return ContextError(ctx_, "SET reply");
      Reply r(static_cast<redisReply*>(raw));
      if (r->type != REDIS_REPLY_STATUS) {
        return absl::InternalError(absl::StrCat(
            "SET ", keys[i], ": ", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status RedisPeer::GetMany(const std::vector<std::string>& keys, size_t pipeline,
                                const std::function<void(size_t, std::string_view)>& on_value) {
  if (pipeline == 0) pipeline = 1;
  static constexpr char kGet[] = "GET";
  for (size_t first = 0; first < keys.size(); first += pipeline) {
    const size_t end = std::min(keys.size(), first + pipeline);
    for (size_t i = first; i < end; ++i) {
      const char* argv[2] = {kGet, keys[i].data()};
      const size_t len[2] = {3, keys[i].size()};
      if (redisAppendCommandArgv(ctx_, 2, argv, len) != REDIS_OK) {
        return ContextError(ctx_, "append GET");
      }
    }
    for (size_t i = first; i < end; ++i) {
      void* raw = nullptr;
      if (redisGetReply(ctx_, &raw) != REDIS_OK) return ContextError(ctx_, "GET reply");
      Reply r(static_cast<redisReply*>(raw));
      if (r->type == REDIS_REPLY_NIL) return absl::NotFoundError(absl::StrCat("GET ", keys[i]));
      if (r->type != REDIS_REPLY_STRING) {
        return absl::InternalError(absl::StrCat(
            "GET ", keys[i], ": ", r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply"));
      }
      on_value(i, std::string_view(r->str, r->len));
    }
  }
  return absl::OkStatus();
}

absl::Status RedisPeer::FlushAll() {
  Reply r(static_cast<redisReply*>(redisCommand(ctx_, "FLUSHALL SYNC")));
  if (r == nullptr) return ContextError(ctx_, "FLUSHALL");
  if (r->type == REDIS_REPLY_ERROR) return absl::InternalError(r->str);
  return absl::OkStatus();
}

namespace {

std::string InfoField(redisContext* ctx, const char* section, std::string_view field) {
  Reply r(static_cast<redisReply*>(redisCommand(ctx, "INFO %s", section)));
  if (r == nullptr || r->type != REDIS_REPLY_STRING) return "";
  std::stringstream text(std::string(r->str, r->len));
  for (std::string line; std::getline(text, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.size() > field.size() && std::string_view(line).substr(0, field.size()) == field &&
        line[field.size()] == ':') {
      return line.substr(field.size() + 1);
    }
  }
  return "";
}

}  // namespace

uint64_t RedisPeer::UsedMemory() {
  const std::string v = InfoField(ctx_, "memory", "used_memory");
  return v.empty() ? 0 : std::strtoull(v.c_str(), nullptr, 10);
}

std::string RedisPeer::Version() {
  const std::string v = InfoField(ctx_, "server", "redis_version");
  return v.empty() ? "redis-server" : "redis-server " + v;
}

bool RedisPeer::Stop() {
  bool clean = true;
  if (pid_ > 0) {
    if (ctx_ != nullptr) {
      // No reply comes when the shutdown succeeds: the connection closes.
      Reply r(static_cast<redisReply*>(redisCommand(ctx_, "SHUTDOWN NOSAVE")));
    }
    int wstatus = 0;
    auto t0 = Clock::now();
    bool termed = false;
    while (waitpid(pid_, &wstatus, WNOHANG) == 0) {
      if (!termed && SecondsSince(t0) > 2) {
        kill(pid_, SIGTERM);
        termed = true;
        t0 = Clock::now();
      } else if (termed && SecondsSince(t0) > 10) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &wstatus, 0);
        clean = false;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    pid_ = 0;
    g_redis_pid = 0;
  }
  if (ctx_ != nullptr) {
    redisFree(ctx_);
    ctx_ = nullptr;
  }
  if (!dir_.empty()) {
    std::error_code ec;
    g_redis_dir[0] = '\0';
    std::filesystem::remove_all(dir_, ec);
    dir_.clear();
  }
  return clean;
}

}  // namespace kvkeep::bench
