#include "service/pool/page_allocator.h"

#include "absl/strings/str_cat.h"

namespace kvkeep {

PageAllocator::PageAllocator(uint32_t capacity)
    : capacity_(capacity), free_(capacity), free_top_(capacity), in_use_(capacity, 0) {
  // Stack top is the end: push indices in reverse so page 0 is handed out first.
  for (uint32_t i = 0; i < capacity; ++i) free_[i] = capacity - 1 - i;
}

std::optional<uint32_t> PageAllocator::Allocate() {
  if (free_top_ == 0) return std::nullopt;
  uint32_t index = free_[--free_top_];
  in_use_[index] = 1;
  return index;
}

absl::Status PageAllocator::Free(uint32_t index) {
  if (index >= capacity_) {
    return absl::OutOfRangeError(
        absl::StrCat("page index ", index, " outside arena of ", capacity_, " pages"));
  }
  if (!in_use_[index]) {
    return absl::FailedPreconditionError(absl::StrCat("page ", index, " is not in use"));
  }
  in_use_[index] = 0;
  free_[free_top_++] = index;
  return absl::OkStatus();
}

}  // namespace kvkeep
