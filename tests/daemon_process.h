// A real kvkeepd process for end-to-end tests: its own temp data dir, its own socket.
//
//   DaemonProcess daemon;
//   ASSERT_OK(daemon.Start());
//   auto admin = daemon.Admin();
//   ...
//   daemon.Kill(SIGKILL);  ASSERT_OK(daemon.Start());   // restart on the same data dir
#ifndef KVKEEP_TESTS_DAEMON_PROCESS_H_
#define KVKEEP_TESTS_DAEMON_PROCESS_H_

#include <signal.h>
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/admin_client.h"
#include "client/client.h"

namespace kvkeep::testing {

class DaemonProcess {
 public:
  // Creates a fresh data dir under $TEST_TMPDIR or /tmp.
  DaemonProcess();
  ~DaemonProcess();  // SIGKILLs a running daemon, removes the data dir

  // Starts kvkeepd with `extra_flags` and waits until it answers the admin API.
  absl::Status Start(std::vector<std::string> extra_flags = {});
  // Sends `signal` and waits for the process; returns its exit status (as waitpid's).
  int Stop(int signal = SIGTERM);
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  std::string target() const { return "unix:" + dir_ + "/kvkeepd.sock"; }
  ChannelOptions channel() const;
  const std::string& dir() const { return dir_; }
  std::string admin_token() const;
  std::unique_ptr<AdminClient> Admin() const;
  // Creates a tenant and returns its token.
  absl::StatusOr<std::string> CreateTenant(const std::string& name, uint64_t quota = 0,
                                           uint64_t max = 0);

  static std::string BinaryDir();  // where kvkeepd and the test worker binary are

 private:
  std::string dir_;
  pid_t pid_ = -1;
  std::vector<std::string> last_flags_;
};

// The model every end-to-end test registers: 2 layers, 4 q / 2 KV heads, head_dim 8, fp16,
// 4 tokens per page (small pages so sequences span many of them).
// A process run to its exit: its exit status (-1 when it had to be killed after the time limit)
// and what it wrote to stdout and stderr.
struct ProcessExit {
  int code = -1;
  std::string out;
  std::string err;
};
// Runs args[0] with args[1..] until it exits (killed after `limit_seconds`), capturing its output.
ProcessExit RunToExit(const std::vector<std::string>& args, int limit_seconds = 20);

v1::ModelLayout TestLayout(const std::string& name = "test-model");

// Deterministic bytes for (seed, n).
std::string PatternBytes(uint64_t seed, size_t n);

}  // namespace kvkeep::testing

#endif  // KVKEEP_TESTS_DAEMON_PROCESS_H_
