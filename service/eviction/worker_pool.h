// A small pool of persistent helper threads that the scorers share (service/eviction/scorers*.cc),
// so that a ScoreLayer call does not start and join threads of its own.
//
//   WorkerPool& pool = WorkerPool::Shared();
//   pool.Run(kv_heads, /*max_slots=*/workspace.threads(), [&](int head, int slot) {
//     ScoreHead(head, workspace.scratch(slot));
//   });
//
// Run(count, max_slots, fn) calls fn(index, slot) once for every index in [0, count) and returns
// when all calls have returned. The calling thread takes part as slot 0; up to max_slots - 1 idle
// helpers join it as slots 1, 2, ... . Indices are claimed one at a time from a shared counter, so a
// participant that is descheduled (a loaded machine) does not hold the others up, and a Run whose
// helpers are all busy with other callers' jobs simply runs every index on the caller. Guarantees:
//  * within one Run, no two concurrent calls of fn share a slot, and every slot is < max_slots
//    (each slot can own scratch memory);
//  * Run never waits for another caller's job: it cannot deadlock, also when called from inside fn
//    or from many threads at once, or in a forked child that has no helper threads;
//  * an exception thrown by fn stops the indices not yet claimed from starting and is rethrown by
//    Run in the caller once every call in flight has returned (the first one, when several throw);
//  * Shutdown (also run by the destructor, and for Shared() at process exit, through atexit) lets
//    each helper finish the job it is in, joins every helper, and leaves a pool whose Runs run on
//    their callers alone: no helper thread outlives it, and a Run in progress or started later still
//    completes. In a child process forked from the pool's process, Run never touches the pool's
//    state (its helpers do not exist there) and runs on the caller alone.
//
// Thread-safe: any number of threads may call Run (and Shutdown) at once. mu_ protects the queue of
// jobs waiting for helpers and the stop flag; a job's claim counter and its in-flight count are
// atomics (the latter is only changed under mu_, so that the caller can wait for it on done_).
// shutdown_mu_ serialises Shutdown calls and is held while they join; it is never taken with mu_
// held (order: shutdown_mu_ before mu_).
#ifndef KVKEEP_SERVICE_EVICTION_WORKER_POOL_H_
#define KVKEEP_SERVICE_EVICTION_WORKER_POOL_H_

#include <atomic>
#include <deque>
#include <exception>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/synchronization/mutex.h"

namespace kvkeep::eviction {

class WorkerPool {
 public:
  // Starts `helpers` threads (>= 0; 0: Run always runs on the caller alone).
  explicit WorkerPool(int helpers);
  // Shutdown(). Runs in progress on other threads must have returned before the pool's memory
  // goes, and a pool must not be destroyed in a forked child (Shared() never is).
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // The process-wide pool the scorers use: hardware threads - 1 helpers, at least 1. Started on
  // first use (its helpers sleep on a condition variable while idle), shut down at process exit
  // (atexit: before the static objects constructed earlier are destroyed), never deleted.
  static WorkerPool& Shared();

  // Helper threads started by the constructor (Shutdown does not change it).
  int helpers() const { return static_cast<int>(threads_.size()); }

  // See the file comment. count <= 0 returns at once; max_slots <= 1 runs on the caller alone.
  void Run(int count, int max_slots, absl::FunctionRef<void(int index, int slot)> fn);

  // Joins the helpers once each has left its current job; idempotent, and safe while other threads
  // are in Run. Called from inside fn on a helper (exit() in a task), that helper is detached
  // instead of joined. In a forked child it does nothing.
  void Shutdown();

 private:
  // One Run call; lives on the caller's stack until every participant has left it.
  struct Job {
    Job(int count, int max_slots, absl::FunctionRef<void(int, int)> fn)
        : count(count), max_slots(max_slots), fn(fn) {}
    const int count;
    const int max_slots;
    const absl::FunctionRef<void(int, int)> fn;
    std::atomic<int> next_index{0};  // next index to claim
    std::atomic<int> next_slot{1};   // slot of the next helper to join (the caller is 0)
    std::atomic<int> in_flight{0};   // helpers inside Work(); changed only under mu_
    std::atomic<bool> failed{false};
    // Written once, by the participant that set `failed`; read by the caller after every helper
    // has left (ordered by mu_, which a helper takes after its last access to the job).
    std::exception_ptr error;
  };

  // Claims and runs indices of `job` as `slot` until none are left or one has thrown.
  static void Work(Job& job, int slot);
  // Waits for a queued job that still has indices and a free slot and joins it (its in-flight
  // count raised, *slot set); nullptr once stopped with no job queued.
  Job* JoinNextLocked(int* slot) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void HelperLoop();

  // True in a child forked from the process that constructed the pool.
  bool InForkedChild() const;

  const int owner_pid_;               // getpid() at construction
  std::vector<std::thread> threads_;  // constant after construction, until Shutdown joins them
  absl::Mutex shutdown_mu_;           // serialises Shutdown calls (held while joining)
  bool joined_ ABSL_GUARDED_BY(shutdown_mu_) = false;

  absl::Mutex mu_;
  absl::CondVar work_;  // signalled when a job is queued, and on stop
  absl::CondVar done_;  // signalled when a helper leaves a job
  std::deque<Job*> queue_ ABSL_GUARDED_BY(mu_);  // jobs that helpers may still join
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace kvkeep::eviction

#endif  // KVKEEP_SERVICE_EVICTION_WORKER_POOL_H_
