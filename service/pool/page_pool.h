// The page pool: every arena the daemon owns, carved into fixed-size pages.
//
// Arenas are created lazily through the Backend, one owner (tenant) and one page geometry each,
// so an exported handle never exposes another tenant's pages. Total arena bytes never exceed the
// pool capacity; when a new arena is needed and the capacity is reached, empty arenas (of any
// owner) are destroyed first.
//
//   PagePool pool(backend.get(), {.capacity_bytes = 1 << 30, .arena_bytes = 64 << 20});
//   std::vector<uint64_t> pages;
//   RETURN_IF_ERROR(pool.Allocate("team-a", geometry, 32, &pages, &new_arenas));
//   pool.Free(pages);
//
// Reply pins (ReadKV replies whose slices reference page memory, service/engine/reply_pins.h):
// a pinned page is never handed back to its arena's free list. Free() of a pinned page retires
// it: it leaves its owner at once but returns to the free list only when its last pin goes, so
// its bytes stay as they were and its arena stays mapped while a reply references them. The pin
// counts and the retired set are under mu_, like the rest.
//
// Thread-safe. Destroy the pool only after every pin is gone (the server is destroyed first).
#ifndef KVKEEP_SERVICE_POOL_PAGE_POOL_H_
#define KVKEEP_SERVICE_POOL_PAGE_POOL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/types/span.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/time/time.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "gpu/backend.h"
#include "service/engine/model_layout.h"
#include "service/pool/page_allocator.h"

namespace kvkeep {

// A page reference: (arena_id << 32) | page_index, as on the wire.
struct PageRef {
  uint32_t arena = 0;
  uint32_t index = 0;
  uint64_t packed() const { return (uint64_t{arena} << 32) | index; }
  static PageRef Unpack(uint64_t p) {
    return {static_cast<uint32_t>(p >> 32), static_cast<uint32_t>(p & 0xffffffffu)};
  }
};

// What is known of an arena outside the pool (copied out, safe to keep).
struct ArenaInfo {
  uint32_t id = 0;
  std::string owner;
  PageGeometry geometry;
  uint32_t page_count = 0;
  ArenaHandle handle;
};

struct PoolOptions {
  uint64_t capacity_bytes = 1ull << 30;  // Default: 1 GiB of arenas in all
  uint64_t arena_bytes = 64ull << 20;    // Default: 64 MiB per arena (rounded down to whole pages)
};

struct PoolStats {
  uint64_t capacity_bytes = 0;
  uint64_t arena_bytes = 0;   // bytes of arenas created
  uint64_t used_bytes = 0;    // bytes of pages in use
  uint64_t used_pages = 0;
  uint32_t arenas = 0;
  uint64_t largest_free_run_pages = 0;  // most free pages in one arena
  uint64_t pinned_pages = 0;   // pages a ReadKV reply references (reply_pins.h)
  uint64_t retired_pages = 0;  // freed while pinned: in use until their last pin goes
};

class PagePool {
 public:
  // `backend` must outlive the pool.
  PagePool(Backend* backend, PoolOptions options);
  ~PagePool();
  PagePool(const PagePool&) = delete;
  PagePool& operator=(const PagePool&) = delete;

  // Allocates `count` pages of `geometry` for `owner`, all or nothing. Appends the page references
  // to *pages and the arenas created on the way to *new_arenas. RESOURCE_EXHAUSTED (with the
  // pool's figures, FailureReason::kBackendExhausted) when the capacity or the backend cannot hold
  // them; nothing is allocated then.
  absl::Status Allocate(const std::string& owner, const PageGeometry& geometry, uint64_t count,
                        std::vector<uint64_t>* pages, std::vector<ArenaInfo>* new_arenas);

  // Returns pages to their arenas. Pages that are unknown or already free are skipped: callers
  // free only pages they hold, so this only guards the pool's counters. A pinned page is retired
  // instead: it returns to its arena when its last pin goes.
  void Free(const std::vector<uint64_t>& pages);

  // One more pin on each of `pages` (pages the caller holds: allocated, not retired; a page may
  // be listed several times, each counts). Unpin gives them back; the last pin of a retired page
  // frees it.
  void Pin(absl::Span<const uint64_t> pages);
  void Unpin(absl::Span<const uint64_t> pages);
  // Waits up to `timeout` (0: no wait) until none of `pages` is pinned; false when some still is.
  bool AwaitUnpinned(absl::Span<const uint64_t> pages, absl::Duration timeout) const;
  // Pins held, and retired pages waiting for their last pin (for tests and status).
  struct PinStats {
    uint64_t pins = 0;
    uint64_t pinned_pages = 0;
    uint64_t retired_pages = 0;
  };
  PinStats Pins() const;

  // Where a page's bytes are, checked against `owner`: NOT_FOUND (no such arena),
  // PERMISSION_DENIED (the arena belongs to another owner), OUT_OF_RANGE (index past the arena),
  // FAILED_PRECONDITION (the page is not allocated). The arena pointer stays valid while the page
  // stays allocated.
  struct Location {
    Arena* arena = nullptr;
    uint64_t offset = 0;  // byte offset of the page in the arena
    PageGeometry geometry;
  };
  absl::StatusOr<Location> Locate(const std::string& owner, uint64_t page) const;

  // Unchecked fast path for pages the caller holds: arena of a page it allocated.
  Arena* ArenaOf(uint64_t page) const;

  // Copies whole pages of `page_bytes` through the backend: from[i] to to[i], in order, stopping
  // at the first error (which it returns). The caller holds every page (sizes must match).
  absl::Status CopyPages(absl::Span<const uint64_t> from, absl::Span<const uint64_t> to,
                         uint64_t page_bytes) const;

  absl::StatusOr<ArenaInfo> GetArena(const std::string& owner, uint32_t arena_id) const;
  // A new fd (the caller closes it) of `owner`'s arena `arena_id`, for the arena channel: a dup of
  // the arena's export fd, or, `read_only`, the same memory re-opened O_RDONLY (through
  // /proc/self/fd) so the receiver cannot map it writable; a CUDA_VMM_FD arena's driver fd cannot
  // be re-opened, so it is dup'ed either way (read-only is then the receiver's mapping). Taken
  // under mu_, so the arena cannot be destroyed meanwhile. Errors as GetArena;
  // FAILED_PRECONDITION for an arena exported by handle.
  absl::StatusOr<int> DupExportFd(const std::string& owner, uint32_t arena_id,
                                  bool read_only) const;
  std::vector<ArenaInfo> ArenasOf(const std::string& owner) const;

  // Destroys the owner's arenas; FAILED_PRECONDITION while any of their pages is in use. An arena
  // holding only retired pages is disowned instead (no owner reaches it again, a new owner of the
  // same name included) and destroyed with its last unpin.
  absl::Status ReleaseOwner(const std::string& owner);

  PoolStats Stats() const;
  Backend& backend() const { return *backend_; }
  const PoolOptions& options() const { return options_; }

 private:
  struct PoolArena {
    ArenaInfo info;
    std::unique_ptr<Arena> arena;
    PageAllocator allocator;
    PoolArena(ArenaInfo i, std::unique_ptr<Arena> a)
        : info(std::move(i)), arena(std::move(a)), allocator(info.page_count) {}
  };

  // Creates an arena for (owner, geometry) holding at least one page, destroying empty arenas when
  // the capacity requires it.
  absl::StatusOr<PoolArena*> GrowLocked(const std::string& owner, const PageGeometry& geometry)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The owner of arenas whose owner was released while a reply still pinned some of their pages
  // (not a valid tenant or group owner name).
  static constexpr char kReleasedOwner[] = "(released)";

  void FreeLocked(uint64_t page) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool AnyPinnedLocked(absl::Span<const uint64_t> pages) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  Backend* const backend_;
  const PoolOptions options_;

  mutable absl::Mutex mu_;
  // Protected by mu_.
  absl::flat_hash_map<uint32_t, std::unique_ptr<PoolArena>> arenas_ ABSL_GUARDED_BY(mu_);
  uint32_t next_arena_id_ ABSL_GUARDED_BY(mu_) = 1;
  uint64_t arena_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t used_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t used_pages_ ABSL_GUARDED_BY(mu_) = 0;
  // Reply pins: page -> pins held (no entry: none); pages freed while pinned.
  absl::flat_hash_map<uint64_t, uint32_t> pins_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<uint64_t> retired_ ABSL_GUARDED_BY(mu_);
  uint64_t pin_total_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_POOL_PAGE_POOL_H_
