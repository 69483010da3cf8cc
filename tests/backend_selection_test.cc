// kvkeepd --backend=auto|cpu|cuda, end to end: the real daemon process. On a machine without a
// CUDA device (this one, CI) --backend=cuda must refuse to start with FAILED_PRECONDITION and
// auto must fall back to the CPU; on a GPU machine the device branches run instead.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gpu/backend.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

extern char** environ;

namespace kvkeep::testing {
namespace {

// Whether this process can create the CUDA backend (compiled in and a device present).
bool CudaDevicePresent() {
  BackendOptions options;
  options.kind = BackendKind::kCuda;
  return CreateBackend(options).ok();
}

struct Exit {
  int code = -1;       // exit status, or -1 when it did not exit in time (then it was killed)
  std::string stderr_text;
};

// Runs kvkeepd with `flags` on a fresh data dir until it exits (at most 20 s).
Exit RunDaemonToExit(const std::vector<std::string>& flags) {
  const std::string dir = absl::StrCat("/tmp/kvkeep-backend-selection-", getpid(), "-",
                                       std::chrono::steady_clock::now().time_since_epoch().count());
  std::filesystem::create_directories(dir);
  std::vector<std::string> args = {DaemonProcess::BinaryDir() + "/kvkeepd", "--data_dir=" + dir,
                                   "--pool_mib=16", "--arena_mib=1", "--metrics_address="};
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const std::string log = dir + "/stderr.log";
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid = -1;
  Exit result;
  if (posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) == 0) {
    int status = 0;
    bool exited = false;
    for (int i = 0; i < 400 && !exited; ++i) {
      exited = waitpid(pid, &status, WNOHANG) == pid;
      if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    if (!exited) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
    } else if (WIFEXITED(status)) {
      result.code = WEXITSTATUS(status);
    }
  }
  posix_spawn_file_actions_destroy(&actions);
  std::ifstream in(log);
  std::stringstream ss;
  ss << in.rdbuf();
  result.stderr_text = ss.str();
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return result;
}

std::string DaemonLog(const DaemonProcess& daemon) {
  std::ifstream in(daemon.dir() + "/kvkeepd.log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(BackendSelectionTest, CudaWithoutDeviceRefusesToStart) {
  if (CudaDevicePresent()) GTEST_SKIP() << "a CUDA device is present: kvkeepd --backend=cuda starts";
  Exit run = RunDaemonToExit({"--backend=cuda"});
  EXPECT_EQ(run.code, 1) << run.stderr_text;
  if (CudaBackendCompiled()) {
    EXPECT_NE(run.stderr_text.find("FAILED_PRECONDITION"), std::string::npos) << run.stderr_text;
    EXPECT_NE(run.stderr_text.find("no CUDA device"), std::string::npos) << run.stderr_text;
    // The CUDA runtime's own reason is in the message.
    EXPECT_NE(run.stderr_text.find("cudaGetDeviceCount"), std::string::npos) << run.stderr_text;
  } else {
    EXPECT_NE(run.stderr_text.find("UNIMPLEMENTED"), std::string::npos) << run.stderr_text;
    EXPECT_NE(run.stderr_text.find("built without the CUDA backend"), std::string::npos)
        << run.stderr_text;
  }
}

TEST(BackendSelectionTest, BadCudaDeviceOrdinalRefusesToStart) {
  Exit run = RunDaemonToExit({"--backend=cuda", "--cuda_device=97"});
  EXPECT_EQ(run.code, 1) << run.stderr_text;
  if (!CudaBackendCompiled()) {
    EXPECT_NE(run.stderr_text.find("UNIMPLEMENTED"), std::string::npos) << run.stderr_text;
  } else if (CudaDevicePresent()) {
    EXPECT_NE(run.stderr_text.find("INVALID_ARGUMENT"), std::string::npos) << run.stderr_text;
    EXPECT_NE(run.stderr_text.find("--cuda_device=97"), std::string::npos) << run.stderr_text;
  } else {
    // No device at all: that is the first thing said.
    EXPECT_NE(run.stderr_text.find("FAILED_PRECONDITION"), std::string::npos) << run.stderr_text;
  }
}

TEST(BackendSelectionTest, UnknownBackendIsAUsageError) {
  Exit run = RunDaemonToExit({"--backend=tpu"});
  EXPECT_EQ(run.code, 2) << run.stderr_text;
  EXPECT_NE(run.stderr_text.find("unknown backend \"tpu\""), std::string::npos)
      << run.stderr_text;
}

// The session-limit flags, checked with this file's start-up helper: bad values are usage errors
// (exit 2) that name the flags; the daemon never starts. (--pressure_policy: pool_pressure_e2e_test.)
TEST(BackendSelectionTest, BadSessionLimitFlagsAreUsageErrors) {
  for (const std::vector<std::string>& flags :
       {std::vector<std::string>{"--session_calls_per_second=-1"},
        std::vector<std::string>{"--session_bytes_per_second=100", "--session_byte_burst=0"},
        std::vector<std::string>{"--max_tokens_per_request=0"}}) {
    Exit run = RunDaemonToExit(flags);
    EXPECT_EQ(run.code, 2) << flags[0] << ": " << run.stderr_text;
    EXPECT_NE(run.stderr_text.find("--session_calls_per_second"), std::string::npos)
        << run.stderr_text;
  }
}

TEST(BackendSelectionTest, AutoUsesCudaWhenPresentElseCpu) {
  DaemonProcess daemon;
  ASSERT_OK(daemon.Start({"--backend=auto"}));
  ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, daemon.Admin()->GetStatus());
  const std::string log = DaemonLog(daemon);
  if (CudaDevicePresent()) {
    EXPECT_EQ(status.backend(), "cuda");
    EXPECT_NE(status.backend_device().find("GPU-"), std::string::npos) << status.backend_device();
  } else {
    EXPECT_EQ(status.backend(), "cpu");
    EXPECT_EQ(status.backend_device(), "host shared memory");
    // One line says why.
    EXPECT_NE(log.find("WARN backend.fallback requested=auto backend=cpu reason="),
              std::string::npos) << log;
    EXPECT_NE(log.find("backend=cpu device=\"host shared memory\""), std::string::npos) << log;
  }
}

TEST(BackendSelectionTest, CpuIsUsedWhenAskedWithoutComment) {
  DaemonProcess daemon;
  ASSERT_OK(daemon.Start({"--backend=cpu"}));
  ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, daemon.Admin()->GetStatus());
  EXPECT_EQ(status.backend(), "cpu");
  EXPECT_EQ(status.backend_device(), "host shared memory");
  EXPECT_EQ(DaemonLog(daemon).find("backend auto"), std::string::npos);
}

}  // namespace
}  // namespace kvkeep::testing
