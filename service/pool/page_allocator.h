// Fixed-size page allocator for one arena: O(1) allocate and free, no heap allocation per page.
//
// The free list is a stack of page indices preallocated at construction; a byte per page records
// whether it is in use, so a double free or a foreign index is caught instead of corrupting the
// stack. Metadata: 5 bytes per page.
//
//   PageAllocator alloc(1024);
//   std::optional<uint32_t> page = alloc.Allocate();
//   RETURN_IF_ERROR(alloc.Free(*page));
//
// Not thread-safe: the owner (PagePool) serialises access.
#ifndef KVKEEP_SERVICE_POOL_PAGE_ALLOCATOR_H_
#define KVKEEP_SERVICE_POOL_PAGE_ALLOCATOR_H_

#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/status.h"

namespace kvkeep {

class PageAllocator {
 public:
  explicit PageAllocator(uint32_t capacity);

  // A free page index, or nullopt when every page is in use. Lowest indices are handed out first
  // on a fresh allocator.
  std::optional<uint32_t> Allocate();

  // OUT_OF_RANGE for an index >= capacity; FAILED_PRECONDITION when the page is not in use.
  absl::Status Free(uint32_t index);

  bool InUse(uint32_t index) const { return index < capacity_ && in_use_[index] != 0; }
  uint32_t capacity() const { return capacity_; }
  uint32_t free_count() const { return static_cast<uint32_t>(free_top_); }
  uint32_t used_count() const { return capacity_ - free_count(); }

 private:
  const uint32_t capacity_;
  std::vector<uint32_t> free_;   // free_[0, free_top_) are free page indices
  std::size_t free_top_;
  std::vector<uint8_t> in_use_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_POOL_PAGE_ALLOCATOR_H_
