// kvkeepd --backend=auto|cpu|cuda, end to end: the real daemon process. On a machine without a
// CUDA device (this one, CI) --backend=cuda must refuse to start with FAILED_PRECONDITION and
// auto must fall back to the CPU; on a GPU machine the device branches run instead.
#include <signal.h>
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

// Whether this process can create CUDA_VMM_FD arenas (CUDA built, a device, and its support).
bool CudaVmmArenasAvailable() {
  BackendOptions options;
  options.kind = BackendKind::kCuda;
  options.cuda_arena_kind = CudaArenaKind::kVmm;
  return CreateBackend(options).ok();
}

// Runs kvkeepd with `flags` on a fresh data dir until it exits (at most 20 s).
ProcessExit RunDaemonToExit(const std::vector<std::string>& flags) {
  const std::string dir = absl::StrCat("/tmp/kvkeep-backend-selection-", getpid(), "-",
                                       std::chrono::steady_clock::now().time_since_epoch().count());
  std::vector<std::string> args = {DaemonProcess::BinaryDir() + "/kvkeepd", "--data_dir=" + dir,
                                   "--pool_mib=16", "--arena_mib=1", "--metrics_address="};
  args.insert(args.end(), flags.begin(), flags.end());
  ProcessExit run = RunToExit(args);
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  return run;
}

std::string DaemonLog(const DaemonProcess& daemon) {
  std::ifstream in(daemon.dir() + "/kvkeepd.log");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST(BackendSelectionTest, CudaWithoutDeviceRefusesToStart) {
  if (CudaDevicePresent()) GTEST_SKIP() << "a CUDA device is present: kvkeepd --backend=cuda starts";
  ProcessExit run = RunDaemonToExit({"--backend=cuda"});
  EXPECT_EQ(run.code, 1) << run.err;
  if (CudaBackendCompiled()) {
    EXPECT_NE(run.err.find("FAILED_PRECONDITION"), std::string::npos) << run.err;
    EXPECT_NE(run.err.find("no CUDA device"), std::string::npos) << run.err;
    // The CUDA runtime's own reason is in the message.
    EXPECT_NE(run.err.find("cudaGetDeviceCount"), std::string::npos) << run.err;
  } else {
    EXPECT_NE(run.err.find("UNIMPLEMENTED"), std::string::npos) << run.err;
    EXPECT_NE(run.err.find("built without the CUDA backend"), std::string::npos)
        << run.err;
  }
}

TEST(BackendSelectionTest, BadCudaDeviceOrdinalRefusesToStart) {
  ProcessExit run = RunDaemonToExit({"--backend=cuda", "--cuda_device=97"});
  EXPECT_EQ(run.code, 1) << run.err;
  if (!CudaBackendCompiled()) {
    EXPECT_NE(run.err.find("UNIMPLEMENTED"), std::string::npos) << run.err;
  } else if (CudaDevicePresent()) {
    EXPECT_NE(run.err.find("INVALID_ARGUMENT"), std::string::npos) << run.err;
    EXPECT_NE(run.err.find("--cuda_device=97"), std::string::npos) << run.err;
  } else {
    // No device at all: that is the first thing said.
    EXPECT_NE(run.err.find("FAILED_PRECONDITION"), std::string::npos) << run.err;
  }
}

TEST(BackendSelectionTest, UnknownBackendIsAUsageError) {
  ProcessExit run = RunDaemonToExit({"--backend=tpu"});
  EXPECT_EQ(run.code, 2) << run.err;
  EXPECT_NE(run.err.find("unknown backend \"tpu\""), std::string::npos)
      << run.err;
}

// The session-limit flags, checked with this file's start-up helper: bad values are usage errors
// (exit 2) that name the flags; the daemon never starts. (--pressure_policy: pool_pressure_e2e_test.)
TEST(BackendSelectionTest, BadSessionLimitFlagsAreUsageErrors) {
  for (const std::vector<std::string>& flags :
       {std::vector<std::string>{"--session_calls_per_second=-1"},
        std::vector<std::string>{"--session_bytes_per_second=100", "--session_byte_burst=0"},
        std::vector<std::string>{"--max_tokens_per_request=0"}}) {
    ProcessExit run = RunDaemonToExit(flags);
    EXPECT_EQ(run.code, 2) << flags[0] << ": " << run.err;
    EXPECT_NE(run.err.find("--session_calls_per_second"), std::string::npos)
        << run.err;
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

TEST(BackendSelectionTest, UnknownCudaArenaKindIsAUsageError) {
  ProcessExit run = RunDaemonToExit({"--cuda_arena_kind=shm"});
  EXPECT_EQ(run.code, 2) << run.err;
  EXPECT_NE(run.err.find("--cuda_arena_kind: unknown CUDA arena kind \"shm\""), std::string::npos)
      << run.err;
  EXPECT_NE(run.err.find("use auto, vmm or ipc"), std::string::npos) << run.err;
}

// --cuda_arena_kind=vmm where VMM arenas cannot be had: the daemon refuses to start and says why
// (without CUDA: not built; without a device: no device; a device without the VMM API or POSIX-fd
// handles: what it lacks).
TEST(BackendSelectionTest, ForcedVmmArenasWithoutSupportRefuseToStart) {
  if (CudaVmmArenasAvailable()) GTEST_SKIP() << "this machine has CUDA_VMM_FD arenas";
  ProcessExit run = RunDaemonToExit({"--backend=cuda", "--cuda_arena_kind=vmm"});
  EXPECT_EQ(run.code, 1) << run.err;
  if (!CudaBackendCompiled()) {
    EXPECT_NE(run.err.find("built without the CUDA backend"), std::string::npos) << run.err;
  } else if (!CudaDevicePresent()) {
    EXPECT_NE(run.err.find("no CUDA device"), std::string::npos) << run.err;
  } else {
    EXPECT_NE(run.err.find("--cuda_arena_kind=vmm: cuda:0"), std::string::npos) << run.err;
    // Not silently moved to host memory either.
    ProcessExit auto_run = RunDaemonToExit({"--backend=auto", "--cuda_arena_kind=vmm"});
    EXPECT_EQ(auto_run.code, 1) << auto_run.err;
  }
}

// The host backend has no CUDA arenas: the flag changes nothing there, and auto without a device
// still falls back to the CPU whatever arena kind was asked for.
TEST(BackendSelectionTest, CudaArenaKindDoesNotStopTheHostBackend) {
  for (const char* backend : {"--backend=cpu", "--backend=auto"}) {
    if (std::string(backend) == "--backend=auto" && CudaDevicePresent()) continue;
    DaemonProcess daemon;
    ASSERT_OK(daemon.Start({backend, "--cuda_arena_kind=vmm"})) << backend;
    ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, daemon.Admin()->GetStatus());
    EXPECT_EQ(status.backend(), "cpu") << backend;
  }
}

}  // namespace
}  // namespace kvkeep::testing
