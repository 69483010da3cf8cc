// TuneAllocator keeps freed heap memory for reuse: a burst of allocations that is freed and
// allocated again stops faulting its pages back in. Measured in a child process (mallopt is
// process-wide and must not change the other tests of this binary).
#include "common/process_tuning.h"

#include <malloc.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

// Minor page faults taken by `rounds` bursts of 64 blocks of 64 KiB (4 MiB: what a gRPC stream
// with a 4 MiB window can hold in flight), each block written, then all freed.
long FaultsOfBursts(int rounds) {
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  for (int r = 0; r < rounds; ++r) {
    std::vector<char*> blocks;
    for (int i = 0; i < 64; ++i) {
      char* p = static_cast<char*>(std::malloc(64 << 10));
      std::memset(p, r + i, 64 << 10);
      blocks.push_back(p);
    }
    for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) std::free(*it);
  }
  getrusage(RUSAGE_SELF, &after);
  return after.ru_minflt - before.ru_minflt;
}

// glibc's starting thresholds (128 KiB), pinned: its dynamic ones move up after any large free,
// so the premise (the defaults refault) must not depend on what was freed before.
void PinGlibcStartingThresholds() {
  mallopt(M_MMAP_THRESHOLD, 128 << 10);
  mallopt(M_TRIM_THRESHOLD, 128 << 10);
}

// Runs `body` in a child; returns its exit status (0 = its checks passed).
template <typename Body>
int InChild(Body body) {
  const pid_t pid = fork();
  if (pid == 0) _exit(body());
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
}

TEST(ProcessTuningTest, RetainedHeapStopsRefaulting) {
  const int rc = InChild([] {
    PinGlibcStartingThresholds();
    FaultsOfBursts(2);  // warm up whatever the first allocations set up
    const long untuned = FaultsOfBursts(40);
    if (!TuneAllocator(256 << 20).ok()) return 1;
    FaultsOfBursts(2);
    const long tuned = FaultsOfBursts(40);
    // glibc's defaults return the 4 MiB to the kernel after every burst (~1,000 faults each);
    // retained, only the first burst after tuning can fault.
    if (untuned < 40 * 256) return 2;  // the premise: the defaults do refault
    return tuned * 10 < untuned ? 0 : 3;
  });
  EXPECT_EQ(rc, 0) << "1: TuneAllocator failed; 2: glibc's defaults did not refault (premise); "
                      "3: tuning did not cut the faults tenfold";
}

// A worker's one call does what kvkeepd does: the same retention (so bursts stop refaulting) and
// deadlock detection off (a lock-order inversion is then not reported).
TEST(ProcessTuningTest, TuneWorkerProcessRetainsHeapAndTurnsDeadlockDetectionOff) {
  const int rc = InChild([] {
    PinGlibcStartingThresholds();
    FaultsOfBursts(2);
    const long untuned = FaultsOfBursts(40);
    if (!TuneWorkerProcess().ok()) return 1;
    FaultsOfBursts(2);
    const long tuned = FaultsOfBursts(40);
    if (untuned < 40 * 256) return 2;
    if (tuned * 10 >= untuned) return 3;
    // Locks taken in both orders: with detection on (Debian's Abseil), the second order aborts
    // the child; off, it runs through.
    absl::Mutex a, b;
    { absl::MutexLock la(&a); absl::MutexLock lb(&b); }
    { absl::MutexLock lb(&b); absl::MutexLock la(&a); }
    return 0;
  });
  EXPECT_EQ(rc, 0) << "1: TuneWorkerProcess failed; 2: glibc's defaults did not refault "
                      "(premise); 3: retention did not cut the faults tenfold; 100: the child "
                      "died (deadlock detection still on?)";
}

TEST(ProcessTuningTest, ZeroLeavesDefaultsAndHugeIsRefused) {
  EXPECT_TRUE(TuneAllocator(0).ok());
  const absl::Status huge = TuneAllocator(uint64_t{4} << 30);
  EXPECT_EQ(huge.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(huge.message().find("2 GiB"), std::string::npos) << huge;
}

}  // namespace
}  // namespace kvkeep
