// A fixed pool of threads for work that must not run on gRPC callback threads (scoring and
// compaction now; RocksDB and device work later).
//
//   Executor executor(2);
//   executor.Schedule([reactor] { ...; reactor->Finish(status); });
//
// Thread-safe. The destructor runs what is queued, then joins.
#ifndef KVKEEP_SERVICE_EXECUTOR_H_
#define KVKEEP_SERVICE_EXECUTOR_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kvkeep {

class Executor {
 public:
  explicit Executor(int threads);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  void Schedule(std::function<void()> work);

 private:
  void Loop();

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_EXECUTOR_H_
