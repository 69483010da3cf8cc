#include "service/eviction/worker_pool.h"

#include <algorithm>

namespace kvkeep::eviction {

WorkerPool::WorkerPool(int helpers) {
  threads_.reserve(std::max(0, helpers));
  for (int t = 0; t < helpers; ++t) threads_.emplace_back([this] { HelperLoop(); });
}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    work_.SignalAll();
  }
  for (std::thread& t : threads_) t.join();
}

WorkerPool& WorkerPool::Shared() {
  static WorkerPool* const pool = [] {
    const unsigned hw = std::thread::hardware_concurrency();
    return new WorkerPool(std::max(1, static_cast<int>(hw) - 1));
  }();
  return *pool;
}

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
    if (queue_.empty()) return nullptr;  // stop_, and no job left to help with
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
  if (wanted_helpers <= 0) {
    for (int i = 0; i < count; ++i) fn(i, 0);
    return;
  }
  Job job(count, max_slots, fn);
  {
    absl::MutexLock lock(&mu_);
    queue_.push_back(&job);
    for (int h = 0; h < wanted_helpers; ++h) work_.Signal();
  }
  Work(job, 0);
  {
    absl::MutexLock lock(&mu_);
    // No helper joins once the job has left the queue; wait for those that did.
    const auto it = std::find(queue_.begin(), queue_.end(), &job);
    if (it != queue_.end()) queue_.erase(it);
    while (job.in_flight.load(std::memory_order_relaxed) > 0) done_.Wait(&mu_);
  }
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace kvkeep::eviction
