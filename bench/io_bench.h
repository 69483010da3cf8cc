// `kvkeep-bench io`: the data path of a real kvkeepd (shared/docs/benchmarks.md §2), always as a
// ratio to a bound measured in the same run.
//
//   * Zero-copy control path: AllocatePages + CommitTokens against an empty unary RPC (Ping) on the
//     same server, the floor of the gRPC stack: RPCs/s and p50/p99 latency at 1, 8, 64 workers
//     (threads, each its own Client session).
//   * Bytes path: WriteKV / ReadKV GB/s against a raw AF_UNIX stream copy of the same bytes in
//     the same chunk sizes (one page per chunk by default), pages of 16, 64 and 256 tokens.
//
// The benchmark starts its own kvkeepd (a separate process) in a fresh temporary data dir,
// creates a tenant through the Admin API, and stops the daemon with SIGTERM at the end - on
// failure and on Ctrl-C as well.
//
//   kvkeep-bench io                                   # small shape, 5 reps, table on stdout
//   kvkeep-bench io --shape llama3-8b --mib 256 --json
//   kvkeep-bench io --smoke                           # CI: a few seconds, exit code only
//
// Run `kvkeep-bench io --help` for every flag. Progress goes to stderr; the table (or JSON) to
// stdout.
#ifndef KVKEEP_BENCH_IO_BENCH_H_
#define KVKEEP_BENCH_IO_BENCH_H_

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvkeep::bench {

// A kvkeepd child process in its own temporary data dir (Unix socket, --backend=cpu); the
// destructor stops it (SIGTERM, then SIGKILL after 10 s) and removes the dir. The child also gets
// SIGTERM if this process dies (PR_SET_PDEATHSIG), and InstallBenchSignalHandlers() stops it (and
// a RedisPeer) on Ctrl-C. Also used by `kvkeep-bench mem`. Start and stop it from the main thread.
class Daemon {
 public:
  static absl::StatusOr<std::unique_ptr<Daemon>> Start(const std::string& binary,
                                                       uint64_t pool_mib,
                                                       uint64_t max_message_mib,
                                                       std::vector<std::string> extra_args = {});
  ~Daemon();
  Daemon(const Daemon&) = delete;
  Daemon& operator=(const Daemon&) = delete;

  // Idempotent. Returns false when the daemon had to be killed or exited with an error.
  bool Stop();

  const std::string& target() const { return target_; }
  const std::string& admin_token() const { return admin_token_; }
  pid_t pid() const { return pid_; }

 private:
  explicit Daemon(std::string dir) : dir_(std::move(dir)) {}
  std::string dir_;
  pid_t pid_ = 0;
  std::string target_;
  std::string admin_token_;
};

// The kvkeepd binary: `flag` when set, else next to this binary (or ../bin/).
std::string FindDaemon(const std::string& flag);

// SIGINT/SIGTERM stop a running Daemon and RedisPeer, remove their dirs and exit; SIGPIPE ignored.
void InstallBenchSignalHandlers();

// argv[0] is the subcommand name ("io") and is skipped. Returns a process exit code: 0 ok,
// 2 bad flags, 1 the daemon could not be started or a measured call failed.
int RunIoBench(int argc, char** argv);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_IO_BENCH_H_
