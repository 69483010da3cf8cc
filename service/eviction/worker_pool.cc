#include "service/eviction/worker_pool.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>

namespace kvkeep::eviction {

WorkerPool::WorkerPool(int helpers) : owner_pid_(static_cast<int>(getpid())) {
  threads_.reserve(std::max(0, helpers));
  for (int t = 0; t < helpers; ++t) threads_.emplace_back([this] { HelperLoop(); });
}

WorkerPool::~WorkerPool() { Shutdown(); }

void WorkerPool::Shutdown() {
  if (InForkedChild()) return;  // the helpers do not exist here
  absl::MutexLock shutdown_lock(&shutdown_mu_);
  if (joined_) return;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    work_.SignalAll();
  }
  const std::thread::id self = std::this_thread::get_id();
  for (std::thread& t : threads_) {
    if (t.get_id() == self) {
      t.detach();  // exit() from inside a task: this helper ends with the process
    } else {
      t.join();
    }
  }
  joined_ = true;
}

WorkerPool& WorkerPool::Shared() {
  static WorkerPool* const pool = [] {
    const unsigned hw = std::thread::hardware_concurrency();
    auto* p = new WorkerPool(std::max(1, static_cast<int>(hw) - 1));
    // Registered after every static object constructed so far: at exit the helpers are joined
    // before those are destroyed, so no task of theirs runs against a destroyed object.
    std::atexit([] { Shared().Shutdown(); });
    return p;
  }();
  return *pool;
}

bool WorkerPool::InForkedChild() const { return static_cast<int>(getpid()) != owner_pid_; }

void WorkerPool::Work(Job& job, int slot) {
  while (!job.failed.load(std::memory_order_relaxed)) {
    const int index = job.next_index.fetch_add(1, std::memory_order_relaxed);
    if (index >= job.count) return;
    try {
      job.fn(index, slot);
    } catch (...) {
      if (!job.failed.exchange(true)) job.error = std::current_exception();
      return;
    }
  }
}

WorkerPool::Job* WorkerPool::JoinNextLocked(int* slot) {
  while (true) {
    while (!stop_ && queue_.empty()) work_.Wait(&mu_);
    // Once stopped, queued jobs are left to their callers, which run every index not claimed.
    if (stop_) return nullptr;
    Job* job = queue_.front();
    *slot = job->next_slot.fetch_add(1, std::memory_order_relaxed);
    const bool exhausted = job->next_index.load(std::memory_order_relaxed) >= job->count ||
                           job->failed.load(std::memory_order_relaxed);
    if (*slot + 1 >= job->max_slots || exhausted) queue_.pop_front();
    if (exhausted) continue;
    job->in_flight.fetch_add(1, std::memory_order_relaxed);
    return job;
  }
}

void WorkerPool::HelperLoop() {
  while (true) {
    Job* job;
    int slot = 0;
    {
      absl::MutexLock lock(&mu_);
      job = JoinNextLocked(&slot);
    }
    if (job == nullptr) return;
    Work(*job, slot);
    absl::MutexLock lock(&mu_);
    // Under mu_: the caller, waiting on done_ under mu_, cannot see 0 and destroy the job before
    // this helper has stopped touching it.
    job->in_flight.fetch_sub(1, std::memory_order_relaxed);
    done_.SignalAll();
  }
}

void WorkerPool::Run(int count, int max_slots, absl::FunctionRef<void(int, int)> fn) {
  if (count <= 0) return;
  const int wanted_helpers = std::min({max_slots - 1, count - 1, helpers()});
  if (wanted_helpers <= 0 || InForkedChild()) {
    for (int i = 0; i < count; ++i) fn(i, 0);
    return;
  }
  Job job(count, max_slots, fn);
  bool queued = false;
  {
    absl::MutexLock lock(&mu_);
    if (!stop_) {
      queue_.push_back(&job);
      queued = true;
      for (int h = 0; h < wanted_helpers; ++h) work_.Signal();
    }
  }
  Work(job, 0);
  if (queued) {
    absl::MutexLock lock(&mu_);
    // No helper joins once the job has left the queue; wait for those that did.
    const auto it = std::find(queue_.begin(), queue_.end(), &job);
    if (it != queue_.end()) queue_.erase(it);
    while (job.in_flight.load(std::memory_order_relaxed) > 0) done_.Wait(&mu_);
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace kvkeep::eviction
