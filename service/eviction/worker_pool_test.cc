#include "service/eviction/worker_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
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

TEST(ScorerWorkerPool, ExceptionOnTheCallerIsRethrownAndThePoolStaysUsable) {
  WorkerPool pool(2);
  std::atomic<int> started{0};
  EXPECT_THROW(pool.Run(1000, 3,
                        [&](int index, int) {
                          started.fetch_add(1);
                          if (index == 3) throw std::runtime_error("index 3");
                        }),
               std::runtime_error);
  // Indices not claimed when the exception was seen never start.
  EXPECT_LT(started.load(), 1000);
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

}  // namespace
}  // namespace kvkeep::eviction
