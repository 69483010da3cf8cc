// AdoptLock: the RAII end of a successful TryLock, so that code which must never wait on a busy
// mutex (pressure relief skips a sequence another thread holds) still unlocks on every path and
// the clang thread-safety analysis sees the lock held:
//
//   if (!seq->mu.TryLock()) continue;   // busy: skip it
//   AdoptLock held(&seq->mu);           // held until the end of the scope
//
// The constructor requires `mu` held by the caller and takes over its release.
#ifndef KVKEEP_SERVICE_ENGINE_ADOPT_LOCK_H_
#define KVKEEP_SERVICE_ENGINE_ADOPT_LOCK_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kvkeep {

class ABSL_SCOPED_LOCKABLE AdoptLock {
 public:
  explicit AdoptLock(absl::Mutex* mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) : mu_(mu) {}
  AdoptLock(const AdoptLock&) = delete;
  AdoptLock& operator=(const AdoptLock&) = delete;
  ~AdoptLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }

 private:
  absl::Mutex* const mu_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_ADOPT_LOCK_H_
