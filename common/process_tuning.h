// Process-wide settings kvkeepd makes once at start, before any thread exists, and that a worker
// process can make the same way (TuneWorkerProcess below; docs/api.md "Worker process settings").
//
// Allocator. The bytes path (WriteKV/ReadKV, the fleet tier, spill and restore) allocates and frees
// megabytes per call: gRPC's receive and send slices, reply buffers. With glibc's defaults a free
// that leaves more than a few hundred KiB at the top of a heap returns it to the kernel, and the
// next call faults every page back in; in a VM a page fault costs microseconds, and
// `kvkeep-bench io` measured WriteKV at a third of its speed for it (docs/benchmarks.md,
// "Allocator retention"). TuneAllocator keeps up to `retain_bytes` of freed heap for reuse
// (M_TRIM_THRESHOLD) and serves allocations below 32 MiB from the heap instead of fresh mmaps
// (M_MMAP_THRESHOLD, glibc's maximum). Memory above that is still returned.
//
// Mutexes. Debian's Abseil is built without NDEBUG, which leaves absl::Mutex's deadlock detection
// on: every Lock() then updates a global lock-order graph under a global lock. The daemon's locks
// are ordered by design (docs/architecture.md §3) and checked by clang's thread-safety analysis and
// the test suite, which keep detection on; the daemon turns it off unless asked to keep it.
#pragma once

#include <cstdint>

#include "absl/status/status.h"

namespace kvkeep {

// The largest allocation glibc can be told to serve from the heap (M_MMAP_THRESHOLD's maximum on
// 64-bit systems).
inline constexpr uint64_t kHeapServedBelowBytes = 32ull << 20;

// Keeps up to `retain_bytes` of freed heap memory for reuse. 0 leaves glibc's defaults. Errors:
// INVALID_ARGUMENT for a value mallopt cannot take (over 2 GiB), INTERNAL if mallopt refuses.
absl::Status TuneAllocator(uint64_t retain_bytes);

// Turns absl::Mutex's deadlock detection off (keep = false) or leaves it as built (keep = true).
void SetMutexDeadlockDetection(bool keep);

// What a worker reading or writing through the bytes path should keep of freed heap: gRPC's
// receive buffers of a few messages in flight (up to the 4 MiB default limit), with room to spare.
inline constexpr uint64_t kWorkerRetainBytes = 256ull << 20;

// kvkeepd's settings for a worker process: TuneAllocator(kWorkerRetainBytes) and mutex deadlock
// detection off. Call it once, early in main, before the first thread. The client library never
// calls it itself: the settings are process-wide (they cost up to 256 MiB of freed heap kept
// mapped). A worker that reads back to back through ReadKV got 2.6-6x the throughput with
// them on a VM (docs/benchmarks.md, "Reads back to back").
absl::Status TuneWorkerProcess();

}  // namespace kvkeep
