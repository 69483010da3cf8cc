#include "service/engine/reply_pins.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "service/pool/late_unpin.h"

namespace kvkeep {

std::shared_ptr<const void> PinPages(PagePool* pool, std::vector<uint64_t> pages) {
  pool->Pin(pages);
  auto* held = new std::vector<uint64_t>(std::move(pages));
  return std::shared_ptr<const void>(held, [pool](const void* p) {
    auto* list = static_cast<const std::vector<uint64_t>*>(p);
    UnpinIfLive(pool, *list);  // the pool may be gone at shutdown (late_unpin.h)
    delete list;
  });
}

absl::Status AwaitNoReplyPins(const PagePool& pool, Sequence& seq, absl::Duration timeout) {
  const std::vector<uint64_t> own = seq.table.PagesFrom(static_cast<uint32_t>(seq.shared.size()));
  if (pool.AwaitUnpinned(own, timeout)) return absl::OkStatus();
  return absl::UnavailableError(absl::StrCat(
      "ReadKV replies still reference pages of sequence ", seq.id, " after ",
      absl::FormatDuration(timeout),
      " (a reader is not consuming its stream); nothing was compressed: retry when the reads "
      "are done"));
}

}  // namespace kvkeep
