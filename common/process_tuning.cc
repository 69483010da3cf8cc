#include "common/process_tuning.h"

#include <malloc.h>

#include <climits>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace kvkeep {

absl::Status TuneAllocator(uint64_t retain_bytes) {
  if (retain_bytes == 0) return absl::OkStatus();
  if (retain_bytes > static_cast<uint64_t>(INT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("allocator retention of ", retain_bytes, " bytes is over the 2 GiB glibc takes"));
  }
  // Setting either disables glibc's dynamic thresholds, so both are set.
  if (mallopt(M_MMAP_THRESHOLD, static_cast<int>(kHeapServedBelowBytes)) != 1 ||
      mallopt(M_TRIM_THRESHOLD, static_cast<int>(retain_bytes)) != 1) {
    return absl::InternalError("mallopt refused M_MMAP_THRESHOLD / M_TRIM_THRESHOLD");
  }
  return absl::OkStatus();
}

void SetMutexDeadlockDetection(bool keep) {
  if (!keep) absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
}

absl::Status TuneWorkerProcess() {
  if (absl::Status tuned = TuneAllocator(kWorkerRetainBytes); !tuned.ok()) return tuned;
  SetMutexDeadlockDetection(false);
  return absl::OkStatus();
}

}  // namespace kvkeep
