// Unpinning that is safe whatever outlives what (service/engine/reply_pins.h): a ReadKV reply's
// pins are released by gRPC when it lets go of the reply's slices, which at shutdown may be after
// the pool is gone. UnpinIfLive reaches the pool while it lives and does nothing after.
//
// Every live PagePool is in a process-wide set under its own mutex (taken before PagePool::mu_);
// the pool enters it when built and leaves it in its destructor, before it is torn down.
#ifndef KVKEEP_SERVICE_POOL_LATE_UNPIN_H_
#define KVKEEP_SERVICE_POOL_LATE_UNPIN_H_

#include <cstdint>

#include "absl/types/span.h"

namespace kvkeep {

class PagePool;

// pool->Unpin(pages) if `pool` is still alive; nothing otherwise.
void UnpinIfLive(PagePool* pool, absl::Span<const uint64_t> pages);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_POOL_LATE_UNPIN_H_
