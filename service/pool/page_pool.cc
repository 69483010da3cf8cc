#include "service/pool/page_pool.h"

#include <fcntl.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/failure_reason.h"
#include "common/status_macros.h"
#include "service/pool/late_unpin.h"

namespace kvkeep {

namespace {

// The live pools (late_unpin.h).
absl::Mutex live_pools_mu(absl::kConstInit);
absl::flat_hash_set<const PagePool*>& LivePools() ABSL_EXCLUSIVE_LOCKS_REQUIRED(live_pools_mu) {
  static auto* pools = new absl::flat_hash_set<const PagePool*>();
  return *pools;
}

}  // namespace

void UnpinIfLive(PagePool* pool, absl::Span<const uint64_t> pages) {
  absl::MutexLock lock(&live_pools_mu);
  if (LivePools().contains(pool)) pool->Unpin(pages);
}

PagePool::PagePool(Backend* backend, PoolOptions options)
    : backend_(backend), options_(options) {
  absl::MutexLock lock(&live_pools_mu);
  LivePools().insert(this);
}

PagePool::~PagePool() {
  // Replies still in flight reference page memory: give them a moment (the server, destroyed
  // first, normally released them all).
  {
    absl::MutexLock lock(&mu_);
    if (!mu_.AwaitWithTimeout(
            absl::Condition(+[](uint64_t* pins) { return *pins == 0; }, &pin_total_),
            absl::Seconds(1))) {
      // Still pinned (gRPC may release a call's last slices only when its transport goes): those
      // arenas stay mapped (the process is ending), so such a slice never points into unmapped
      // memory.
      for (const auto& [page, count] : pins_) {
        auto it = arenas_.find(PageRef::Unpack(page).arena);
        if (it != arenas_.end()) (void)it->second->arena.release();
      }
    }
  }
  absl::MutexLock lock(&live_pools_mu);
  LivePools().erase(this);  // later unpins find no pool
}

absl::Status PagePool::Allocate(const std::string& owner, const PageGeometry& geometry,
                                uint64_t count, std::vector<uint64_t>* pages,
                                std::vector<ArenaInfo>* new_arenas) {
  if (count == 0) return absl::OkStatus();
  if (geometry.page_bytes == 0) return absl::InvalidArgumentError("page geometry is empty");
  absl::MutexLock lock(&mu_);
  // Free pages already in this owner's arenas of this geometry.
  std::vector<PoolArena*> candidates;
  uint64_t available = 0;
  for (auto& [id, a] : arenas_) {
    if (a->info.owner == owner && a->info.geometry == geometry && a->allocator.free_count() > 0) {
      candidates.push_back(a.get());
      available += a->allocator.free_count();
    }
  }
  // Grow until the request fits; roll back the arenas created here if it cannot.
  std::vector<PoolArena*> grown;
  while (available < count) {
    auto grown_or = GrowLocked(owner, geometry);
    if (!grown_or.ok()) {
      for (PoolArena* a : grown) {
        const uint32_t id = a->info.id;
        arena_bytes_ -= a->arena->size();
        arenas_.erase(id);
      }
      return WithReason(
          absl::ResourceExhaustedError(absl::StrCat(
              "page pool exhausted: ", count, " pages of ", geometry.page_bytes,
              " bytes requested and no room for another arena (",
              grown_or.status().message(), ")")),
          FailureReason::kBackendExhausted);
    }
    grown.push_back(*grown_or);
    candidates.push_back(*grown_or);
    available += (*grown_or)->allocator.free_count();
  }
  // Fill fuller arenas first so empty ones can be given back.
  std::sort(candidates.begin(), candidates.end(), [](PoolArena* a, PoolArena* b) {
    return a->allocator.free_count() < b->allocator.free_count();
  });
  pages->reserve(pages->size() + count);
  uint64_t left = count;
  for (PoolArena* a : candidates) {
    while (left > 0) {
      std::optional<uint32_t> index = a->allocator.Allocate();
      if (!index) break;
      pages->push_back(PageRef{a->info.id, *index}.packed());
      --left;
    }
    if (left == 0) break;
  }
  used_pages_ += count;
  used_bytes_ += count * geometry.page_bytes;
  for (PoolArena* a : grown) new_arenas->push_back(a->info);
  return absl::OkStatus();
}

absl::StatusOr<PagePool::PoolArena*> PagePool::GrowLocked(const std::string& owner,
                                                          const PageGeometry& geometry) {
  uint64_t room = options_.capacity_bytes - std::min(options_.capacity_bytes, arena_bytes_);
  if (room < geometry.page_bytes) {
    // Give back empty arenas of other owners or geometries until a page fits (this owner's
    // empty arenas of this geometry are the caller's candidates).
    for (auto it = arenas_.begin(); it != arenas_.end() && room < geometry.page_bytes;) {
      auto cur = it++;
      const ArenaInfo& info = cur->second->info;
      const bool candidate = info.owner == owner && info.geometry == geometry;
      if (!candidate && cur->second->allocator.used_count() == 0) {
        arena_bytes_ -= cur->second->arena->size();
        arenas_.erase(cur);
        room = options_.capacity_bytes - std::min(options_.capacity_bytes, arena_bytes_);
      }
    }
  }
  if (room < geometry.page_bytes) {
    // The pool-wide figures (arena bytes) are not named: the message reaches a tenant.
    return absl::ResourceExhaustedError("the pool's arenas fill its capacity");
  }
  uint64_t want = std::min(std::max(options_.arena_bytes, geometry.page_bytes), room);
  uint64_t page_count = std::min<uint64_t>(want / geometry.page_bytes, 0xffffffffu);
  ASSIGN_OR_RETURN(std::unique_ptr<Arena> arena,
                   backend_->CreateArena(page_count * geometry.page_bytes));
  ArenaInfo info;
  info.id = next_arena_id_++;
  info.owner = owner;
  info.geometry = geometry;
  info.page_count = static_cast<uint32_t>(page_count);
  info.handle = arena->handle();
  arena_bytes_ += arena->size();
  auto pa = std::make_unique<PoolArena>(std::move(info), std::move(arena));
  PoolArena* raw = pa.get();
  arenas_[raw->info.id] = std::move(pa);
  return raw;
}

void PagePool::Free(const std::vector<uint64_t>& pages) {
  absl::MutexLock lock(&mu_);
  for (uint64_t p : pages) {
    if (pins_.contains(p)) {
      retired_.insert(p);  // freed by its last Unpin
    } else {
      FreeLocked(p);
    }
  }
}

void PagePool::Pin(absl::Span<const uint64_t> pages) {
  absl::MutexLock lock(&mu_);
  for (uint64_t p : pages) ++pins_[p];
  pin_total_ += pages.size();
}

void PagePool::Unpin(absl::Span<const uint64_t> pages) {
  absl::MutexLock lock(&mu_);
  for (uint64_t p : pages) {
    auto it = pins_.find(p);
    if (it == pins_.end()) continue;  // not pinned: a caller's bug; the counts stay right
    --pin_total_;
    if (--it->second > 0) continue;
    pins_.erase(it);
    if (retired_.erase(p) > 0) FreeLocked(p);
  }
}

bool PagePool::AnyPinnedLocked(absl::Span<const uint64_t> pages) const {
  if (pins_.empty()) return false;
  for (uint64_t p : pages) {
    if (pins_.contains(p)) return true;
  }
  return false;
}

bool PagePool::AwaitUnpinned(absl::Span<const uint64_t> pages, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  if (!AnyPinnedLocked(pages)) return true;
  if (timeout <= absl::ZeroDuration()) return false;
  // Evaluated by Await with mu_ held.
  struct NonePinned {
    const PagePool* pool;
    absl::Span<const uint64_t> pages;
    bool Done() const ABSL_NO_THREAD_SAFETY_ANALYSIS { return !pool->AnyPinnedLocked(pages); }
  } none_pinned{this, pages};
  return mu_.AwaitWithTimeout(absl::Condition(&none_pinned, &NonePinned::Done), timeout);
}

PagePool::PinStats PagePool::Pins() const {
  absl::MutexLock lock(&mu_);
  return {pin_total_, pins_.size(), retired_.size()};
}

void PagePool::FreeLocked(uint64_t page) {
  PageRef ref = PageRef::Unpack(page);
  auto it = arenas_.find(ref.arena);
  if (it == arenas_.end()) return;
  if (it->second->allocator.Free(ref.index).ok()) {
    --used_pages_;
    used_bytes_ -= it->second->info.geometry.page_bytes;
  }
  if (it->second->info.owner == kReleasedOwner && it->second->allocator.used_count() == 0) {
    arena_bytes_ -= it->second->arena->size();
    arenas_.erase(it);
  }
}

absl::StatusOr<PagePool::Location> PagePool::Locate(const std::string& owner,
                                                    uint64_t page) const {
  PageRef ref = PageRef::Unpack(page);
  absl::MutexLock lock(&mu_);
  auto it = arenas_.find(ref.arena);
  if (it == arenas_.end()) {
    return absl::NotFoundError(absl::StrCat("page ", page, ": no arena ", ref.arena));
  }
  const PoolArena& a = *it->second;
  if (a.info.owner != owner) {
    return absl::PermissionDeniedError(
        absl::StrCat("page ", page, ": arena ", ref.arena, " does not belong to this tenant"));
  }
  if (ref.index >= a.info.page_count) {
    return absl::OutOfRangeError(absl::StrCat("page ", page, ": index ", ref.index,
                                              " past arena of ", a.info.page_count, " pages"));
  }
  if (!a.allocator.InUse(ref.index) || retired_.contains(page)) {
    return absl::FailedPreconditionError(absl::StrCat("page ", page, " is not allocated"));
  }
  return Location{a.arena.get(), uint64_t{ref.index} * a.info.geometry.page_bytes,
                  a.info.geometry};
}

Arena* PagePool::ArenaOf(uint64_t page) const {
  absl::MutexLock lock(&mu_);
  auto it = arenas_.find(PageRef::Unpack(page).arena);
  return it == arenas_.end() ? nullptr : it->second->arena.get();
}

absl::StatusOr<ArenaInfo> PagePool::GetArena(const std::string& owner, uint32_t arena_id) const {
  absl::MutexLock lock(&mu_);
  auto it = arenas_.find(arena_id);
  if (it == arenas_.end()) return absl::NotFoundError(absl::StrCat("no arena ", arena_id));
  if (it->second->info.owner != owner) {
    return absl::PermissionDeniedError(
        absl::StrCat("arena ", arena_id, " does not belong to this tenant"));
  }
  return it->second->info;
}

absl::StatusOr<int> PagePool::DupExportFd(const std::string& owner, uint32_t arena_id,
                                          bool read_only) const {
  absl::MutexLock lock(&mu_);
  auto it = arenas_.find(arena_id);
  if (it == arenas_.end()) return absl::NotFoundError(absl::StrCat("no arena ", arena_id));
  if (it->second->info.owner != owner) {
    return absl::PermissionDeniedError(
        absl::StrCat("arena ", arena_id, " does not belong to this tenant"));
  }
  const int source = it->second->arena->export_fd();
  if (source < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("arena ", arena_id, " is exported by handle, not as a file descriptor"));
  }
  int fd = -1;
  if (read_only && it->second->arena->handle().kind == ArenaExportKind::kCudaVmmFd) {
    // A CUDA shareable handle cannot be reopened read-only (reopening it through /proc would
    // give a fresh driver fd with no allocation behind it): the member's worker maps it with
    // read access only (client/arena_mapping.h), which the daemon cannot enforce
    // (docs/deploy.md, "Arena isolation").
    fd = fcntl(source, F_DUPFD_CLOEXEC, 0);
  } else if (read_only) {
    // A new open file description with read access only: mmap(PROT_WRITE) and mprotect to
    // writable both fail on it, whatever the receiver tries.
    fd = open(absl::StrCat("/proc/self/fd/", source).c_str(), O_RDONLY | O_CLOEXEC);
  } else {
    fd = fcntl(source, F_DUPFD_CLOEXEC, 0);
  }
  if (fd < 0) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot open a file descriptor of arena ",
                                                     arena_id, ": ", std::strerror(errno)));
  }
  return fd;
}

std::vector<ArenaInfo> PagePool::ArenasOf(const std::string& owner) const {
  absl::MutexLock lock(&mu_);
  std::vector<ArenaInfo> out;
  for (const auto& [id, a] : arenas_) {
    if (a->info.owner == owner) out.push_back(a->info);
  }
  std::sort(out.begin(), out.end(), [](const ArenaInfo& a, const ArenaInfo& b) { return a.id < b.id; });
  return out;
}

absl::Status PagePool::ReleaseOwner(const std::string& owner) {
  absl::MutexLock lock(&mu_);
  absl::flat_hash_map<uint32_t, uint64_t> retired_in;  // arena id -> retired pages
  for (uint64_t page : retired_) ++retired_in[PageRef::Unpack(page).arena];
  for (const auto& [id, a] : arenas_) {
    if (a->info.owner != owner) continue;
    const uint64_t retired = retired_in.contains(id) ? retired_in[id] : 0;
    if (a->allocator.used_count() > retired) {
      return absl::FailedPreconditionError(
          absl::StrCat("arena ", id, " of ", owner, " still has ",
                       a->allocator.used_count() - retired, " pages in use"));
    }
  }
  for (auto it = arenas_.begin(); it != arenas_.end();) {
    auto cur = it++;
    if (cur->second->info.owner != owner) continue;
    if (cur->second->allocator.used_count() == 0) {
      arena_bytes_ -= cur->second->arena->size();
      arenas_.erase(cur);
    } else {
      // Only retired pages left (a ReadKV reply still references them): the arena belongs to
      // nobody from now on (no owner check passes; a later owner of the same name never sees
      // it) and goes with its last unpin.
      cur->second->info.owner = kReleasedOwner;
    }
  }
  return absl::OkStatus();
}

PoolStats PagePool::Stats() const {
  absl::MutexLock lock(&mu_);
  PoolStats s;
  s.capacity_bytes = options_.capacity_bytes;
  s.arena_bytes = arena_bytes_;
  s.used_bytes = used_bytes_;
  s.used_pages = used_pages_;
  s.arenas = static_cast<uint32_t>(arenas_.size());
  for (const auto& [id, a] : arenas_) {
    s.largest_free_run_pages =
        std::max<uint64_t>(s.largest_free_run_pages, a->allocator.free_count());
  }
  s.pinned_pages = pins_.size();
  s.retired_pages = retired_.size();
  return s;
}

absl::Status PagePool::CopyPages(absl::Span<const uint64_t> from, absl::Span<const uint64_t> to,
                                uint64_t page_bytes) const {
  if (from.size() != to.size()) {
    return absl::InvalidArgumentError(absl::StrCat("copying ", from.size(), " pages to ",
                                                   to.size()));
  }
  for (size_t i = 0; i < from.size(); ++i) {
    RETURN_IF_ERROR(backend_->Copy(*ArenaOf(from[i]),
                                   uint64_t{PageRef::Unpack(from[i]).index} * page_bytes,
                                   *ArenaOf(to[i]),
                                   uint64_t{PageRef::Unpack(to[i]).index} * page_bytes,
                                   page_bytes));
  }
  return absl::OkStatus();
}

}  // namespace kvkeep
