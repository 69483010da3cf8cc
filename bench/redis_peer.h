// A private Redis server as the peer of kvkeep's data path (shared/docs/benchmarks.md §2: the
// backend LMCache users pick), driven with hiredis.
//
// RedisPeer::Start() runs `redis-server` (Debian's, found on $PATH unless a path is given) as a
// child process listening only on a Unix socket in a fresh temporary directory, with persistence
// off (no RDB snapshots, no AOF), and connects to it. The destructor (or Stop()) shuts it down
// and removes the directory - also when the benchmark fails; the child gets SIGTERM if this
// process dies (PR_SET_PDEATHSIG), and RedisPeerCleanupFromSignal() does the same from a signal
// handler.
//
//   ASSIGN_OR_RETURN(auto redis, RedisPeer::Start());
//   RETURN_IF_ERROR(redis->SetMany(keys, blobs, /*pipeline=*/64));
//   RETURN_IF_ERROR(redis->GetMany(keys, 64, [&](size_t i, std::string_view v) { ... }));
//
// Not thread-safe: one connection, used from one thread.
#ifndef KVKEEP_BENCH_REDIS_PEER_H_
#define KVKEEP_BENCH_REDIS_PEER_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

struct redisContext;

namespace kvkeep::bench {

class RedisPeer {
 public:
  // The redis-server binary: `flag` when set, else the first redis-server on $PATH; empty when
  // there is none.
  static std::string FindServer(const std::string& flag = "");

  // Starts the server and connects (up to 20 s). UNAVAILABLE with the server's log when it
  // exits or does not answer PING.
  static absl::StatusOr<std::unique_ptr<RedisPeer>> Start(const std::string& binary);

  ~RedisPeer();
  RedisPeer(const RedisPeer&) = delete;
  RedisPeer& operator=(const RedisPeer&) = delete;

  // SET keys[i] values[i] for every i, pipelined: `pipeline` commands are appended to the
  // connection's buffer, sent, and their replies read before the next batch.
  absl::Status SetMany(const std::vector<std::string>& keys,
                       const std::vector<std::string_view>& values, size_t pipeline);
  // GET keys[i], pipelined the same way; `on_value(i, bytes)` sees each reply (valid only during
  // the call). NOT_FOUND when a key is missing.
  absl::Status GetMany(const std::vector<std::string>& keys, size_t pipeline,
                       const std::function<void(size_t, std::string_view)>& on_value);
  // FLUSHALL (synchronous).
  absl::Status FlushAll();
  // used_memory of INFO memory, bytes (0 when unknown).
  uint64_t UsedMemory();
  // "redis-server 7.0.15" from INFO server.
  std::string Version();

  // Idempotent: SHUTDOWN NOSAVE, then SIGTERM, SIGKILL after 10 s; removes the directory.
  // Returns false when the server had to be killed.
  bool Stop();

  pid_t pid() const { return pid_; }
  const std::string& socket_path() const { return socket_; }

 private:
  explicit RedisPeer(std::string dir);
  absl::Status Connect();

  std::string dir_;
  std::string socket_;
  pid_t pid_ = 0;
  redisContext* ctx_ = nullptr;
};

// Async-signal-safe: kills a running peer and removes its directory (for SIGINT/SIGTERM handlers).
void RedisPeerCleanupFromSignal();

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_REDIS_PEER_H_
