// The kvkeepd child process that `kvkeep-bench io` and `kvkeep-bench mem` measure, and the
// signal handling that stops it (and a RedisPeer) when the benchmark is interrupted.
//
//   InstallBenchSignalHandlers();
//   ASSIGN_OR_RETURN(std::unique_ptr<Daemon> d, Daemon::Start(FindDaemon(""), 1024, 4));
//   auto admin = AdminClient::Connect({.target = d->target()}, d->admin_token());
#ifndef KVKEEP_BENCH_BENCH_DAEMON_H_
#define KVKEEP_BENCH_BENCH_DAEMON_H_

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

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_BENCH_DAEMON_H_
