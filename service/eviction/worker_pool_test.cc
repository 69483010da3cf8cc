#include "service/eviction/worker_pool.h"

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <atomic>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace kvkeep::eviction {
namespace {

// Threads of this process (entries of /proc/self/task).
int ThreadCount() {
  int n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
  return n;
}

// Runs `count` indices with `max_slots` and checks the contract: every index exactly once, every
// slot below max_slots and never used by two calls at the same time. Returns the slots seen.
std::vector<int> RunAndCheck(WorkerPool& pool, int count, int max_slots) {
  std::vector<std::atomic<int>> calls(count);
  std::vector<std::atomic<int>> busy(std::max(1, max_slots));
  std::vector<std::atomic<int>> used(std::max(1, max_slots));
  std::atomic<int> bad_slot{0}, overlap{0};
  pool.Run(count, max_slots, [&](int index, int slot) {
    if (slot < 0 || slot >= std::max(1, max_slots)) {
      bad_slot.fetch_add(1);
      return;
    }
    if (busy[slot].exchange(1) != 0) overlap.fetch_add(1);
    calls[index].fetch_add(1);
    used[slot].store(1);
    std::this_thread::yield();
    busy[slot].store(0);
  });
  EXPECT_EQ(bad_slot.load(), 0);
  EXPECT_EQ(overlap.load(), 0);
  for (int i = 0; i < count; ++i) EXPECT_EQ(calls[i].load(), 1) << "index " << i;
  std::vector<int> slots;
  for (int s = 0; s < static_cast<int>(used.size()); ++s) {
    if (used[s].load()) slots.push_back(s);
  }
  return slots;
}

TEST(ScorerWorkerPool, RunsEveryIndexOnceWithDistinctSlotsBelowTheMaximum) {
  WorkerPool pool(3);
  EXPECT_EQ(pool.helpers(), 3);
  for (int max_slots : {1, 2, 3, 4, 8}) {
    for (int count : {0, 1, 2, 7, 500}) RunAndCheck(pool, count, max_slots);
  }
}

TEST(ScorerWorkerPool, HelpersJoinTheCaller) {
  WorkerPool pool(1);
  // Index 0 holds slot 0 until another slot has started an index: only a helper can release it.
  std::atomic<bool> other_slot_ran{false};
  pool.Run(2, 2, [&](int, int slot) {
    if (slot != 0) {
      other_slot_ran.store(true);
      return;
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!other_slot_ran.load() && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
  });
  EXPECT_TRUE(other_slot_ran.load());
}

TEST(ScorerWorkerPool, WithoutHelpersEverythingRunsOnTheCaller) {
  WorkerPool pool(0);
  const std::thread::id caller = std::this_thread::get_id();
  std::atomic<int> elsewhere{0};
  pool.Run(50, 4, [&](int, int slot) {
    if (slot != 0 || std::this_thread::get_id() != caller) elsewhere.fetch_add(1);
  });
  EXPECT_EQ(elsewhere.load(), 0);
}

TEST(ScorerWorkerPool, ManyConcurrentCallersEachGetTheirOwnResults) {
  WorkerPool pool(2);
  constexpr int kCallers = 8, kRuns = 150, kCount = 37;
  std::atomic<int> wrong{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&, c] {
      for (int r = 0; r < kRuns; ++r) {
        std::vector<int> out(kCount, -1);
        std::vector<std::atomic<int>> busy(3);
        pool.Run(kCount, 3, [&](int index, int slot) {
          if (busy[slot].exchange(1) != 0) wrong.fetch_add(1);
          out[index] = c * 1000 + index;
          busy[slot].store(0);
        });
        for (int i = 0; i < kCount; ++i) {
          if (out[i] != c * 1000 + i) wrong.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(wrong.load(), 0);
}

TEST(ScorerWorkerPool, RunInsideRunDoesNotDeadlock) {
  WorkerPool pool(1);
  std::atomic<int> inner{0};
  pool.Run(4, 2, [&](int, int) { pool.Run(5, 2, [&](int, int) { inner.fetch_add(1); }); });
  EXPECT_EQ(inner.load(), 20);
}

TEST(ScorerWorkerPool, ExceptionIsRethrownAndThePoolStaysUsable) {
  WorkerPool pool(2);
  std::atomic<int> started{0};
  // Every other index takes 1 ms: running all 300 takes ~100 ms on three threads, far longer than
  // the throw takes to be seen (the first index goes to the caller, which starts at once).
  EXPECT_THROW(pool.Run(300, 3,
                        [&](int index, int) {
                          started.fetch_add(1);
                          if (index == 0) throw std::runtime_error("index 0");
                          std::this_thread::sleep_for(std::chrono::milliseconds(1));
                        }),
               std::runtime_error);
  // Indices not claimed when the exception was seen never start.
  EXPECT_LT(started.load(), 300);
  RunAndCheck(pool, 100, 3);
}

TEST(ScorerWorkerPool, ExceptionOnAHelperIsRethrownInTheCaller) {
  WorkerPool pool(1);
  absl::Notification helper_threw;
  try {
    pool.Run(2, 2, [&](int, int slot) {
      if (slot != 0) {
        helper_threw.Notify();
        throw std::out_of_range("from a helper");
      }
      // Keep slot 0 busy until the helper has taken the other index.
      helper_threw.WaitForNotificationWithTimeout(absl::Seconds(10));
    });
    ADD_FAILURE() << "Run returned normally";
  } catch (const std::out_of_range& e) {
    EXPECT_STREQ(e.what(), "from a helper");
  }
  EXPECT_TRUE(helper_threw.HasBeenNotified());
  RunAndCheck(pool, 10, 2);
}

TEST(ScorerWorkerPool, ShutdownJoinsHelpersAfterWork) {
  for (int helpers : {0, 1, 4}) {
    auto pool = std::make_unique<WorkerPool>(helpers);
    RunAndCheck(*pool, 64, helpers + 1);
    pool.reset();  // joins; a helper that did not stop would hang the test here
  }
}

TEST(ScorerWorkerPool, SharedPoolHasAHelper) {
  EXPECT_GE(WorkerPool::Shared().helpers(), 1);
  EXPECT_EQ(&WorkerPool::Shared(), &WorkerPool::Shared());
  RunAndCheck(WorkerPool::Shared(), 32, 2);
}

TEST(ScorerWorkerPool, NoThreadOutlivesThePool) {
  const int before = ThreadCount();
  {
    WorkerPool pool(4);
    EXPECT_EQ(ThreadCount(), before + 4);
    for (int r = 0; r < 50; ++r) RunAndCheck(pool, 16, 5);
    EXPECT_EQ(ThreadCount(), before + 4) << "Run started threads of its own";
  }
  EXPECT_EQ(ThreadCount(), before);
}

TEST(ScorerWorkerPool, ShutdownWhileOthersRunLetsEveryRunComplete) {
  const int before = ThreadCount();
  WorkerPool pool(2);
  constexpr int kCallers = 4, kCount = 29;
  std::atomic<int> wrong{0}, runs{0};
  std::atomic<bool> stop{false};
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&] {
      while (!stop.load()) {
        std::vector<std::atomic<int>> calls(kCount);
        pool.Run(kCount, 3, [&](int index, int) { calls[index].fetch_add(1); });
        for (int i = 0; i < kCount; ++i) {
          if (calls[i].load() != 1) wrong.fetch_add(1);
        }
        runs.fetch_add(1);
      }
    });
  }
  while (runs.load() < 200) std::this_thread::yield();
  pool.Shutdown();  // joins the helpers while the callers keep calling Run
  EXPECT_EQ(ThreadCount(), before + kCallers) << "helpers left after Shutdown";
  const int at_shutdown = runs.load();
  while (runs.load() < at_shutdown + 200) std::this_thread::yield();
  stop.store(true);
  for (std::thread& t : callers) t.join();
  EXPECT_EQ(wrong.load(), 0);
  pool.Shutdown();  // idempotent
  RunAndCheck(pool, 40, 3);
}

// Runs in a fresh process (the death test re-executes this binary): an exit handler registered
// before the shared pool starts runs after the pool's own, and must find the helpers gone.
// Without the pool's handler they would still be there at exit (status 10 + thread count).
void RunOnSharedPoolThenExit() {
  static int threads_before = 0;
  threads_before = ThreadCount();
  std::atexit([] { _exit(ThreadCount() == threads_before ? 0 : 10 + ThreadCount()); });
  std::atomic<int> sum{0};
  WorkerPool::Shared().Run(64, 8, [&](int index, int) { sum.fetch_add(index); });
  const int helpers = WorkerPool::Shared().helpers();
  if (sum.load() != 64 * 63 / 2 || helpers < 1 || ThreadCount() != threads_before + helpers) {
    _exit(2);
  }
  std::exit(0);
}

TEST(ScorerWorkerPoolDeathTest, SharedPoolIsJoinedAtExit) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(RunOnSharedPoolThenExit(), ::testing::ExitedWithCode(0), "");
}

TEST(ScorerWorkerPool, ForkedChildRunsOnTheCaller) {
  WorkerPool pool(2);
  RunAndCheck(pool, 8, 3);  // the helpers exist in this process, not in the child
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    std::atomic<int> calls{0}, off_caller{0};
    const std::thread::id caller = std::this_thread::get_id();
    pool.Run(100, 3, [&](int, int slot) {
      calls.fetch_add(1);
      if (slot != 0 || std::this_thread::get_id() != caller) off_caller.fetch_add(1);
    });
    _exit(calls.load() == 100 && off_caller.load() == 0 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  RunAndCheck(pool, 8, 3);
}

}  // namespace
}  // namespace kvkeep::eviction
