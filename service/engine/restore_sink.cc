#include "service/engine/restore_sink.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvkeep {

RestoreSink::RestoreSink(const PageGeometry& geometry, uint32_t heads,
                         const std::vector<uint64_t>& pages, const PagePool* pool,
                         Backend* backend, std::string sequence)
    : geometry_(geometry), heads_(heads), pages_(pages), pool_(pool), backend_(backend),
      sequence_(std::move(sequence)) {}

absl::Status RestoreSink::Begin(SpillLayout& layout) {
  if (layout.counts.size() != heads_ || layout.positions.size() != heads_ ||
      layout.page_sizes.size() != heads_) {
    return absl::DataLossError(absl::StrCat("spilled sequence ", sequence_, " has ",
                                            layout.counts.size(), " heads, its model ", heads_));
  }
  uint64_t total = 0;
  for (uint32_t h = 0; h < heads_; ++h) {
    const uint64_t count = layout.counts[h];
    const uint64_t need = (count + geometry_.tokens_per_page - 1) / geometry_.tokens_per_page;
    if (layout.page_sizes[h].size() != need || layout.positions[h].size() != count) {
      return absl::DataLossError(absl::StrCat(
          "spilled sequence ", sequence_, ": head ", h, " holds ", count, " tokens in ",
          layout.page_sizes[h].size(), " pages with ", layout.positions[h].size(),
          " positions; ", need, " pages and ", count, " positions expected"));
    }
    for (uint32_t size : layout.page_sizes[h]) {
      if (size != geometry_.page_bytes) {
        return absl::DataLossError(absl::StrCat("spilled sequence ", sequence_,
                                                " holds a page of ", size,
                                                " bytes; its model's pages have ",
                                                geometry_.page_bytes));
      }
    }
    total += need;
  }
  if (total != pages_.size()) {
    return absl::DataLossError(absl::StrCat("spilled sequence ", sequence_, " holds ", total,
                                            " pages; ", pages_.size(), " were recorded at spill"));
  }
  destinations_.assign(heads_, {});
  size_t next = 0;
  for (uint32_t h = 0; h < heads_; ++h) {
    destinations_[h].resize(layout.page_sizes[h].size());
    for (Destination& d : destinations_[h]) {
      const uint64_t page = pages_[next++];
      d.arena = pool_->ArenaOf(page);
      if (d.arena == nullptr) {
        return absl::InternalError(absl::StrCat("restore of ", sequence_, ": page ", page,
                                                " allocated for it has no arena"));
      }
      d.offset = uint64_t{PageRef::Unpack(page).index} * geometry_.page_bytes;
    }
  }
  counts_ = std::move(layout.counts);
  positions_ = std::move(layout.positions);
  next_position_ = layout.next_position;
  begun_ = true;
  return absl::OkStatus();
}

absl::Status RestoreSink::Page(uint32_t head, uint32_t page, absl::string_view bytes) {
  if (!begun_ || head >= destinations_.size() || page >= destinations_[head].size()) {
    return absl::InternalError(absl::StrCat("restore of ", sequence_, ": page ", page,
                                            " of head ", head, " is not in the layout"));
  }
  if (bytes.size() != geometry_.page_bytes) {
    return absl::DataLossError(absl::StrCat("spilled sequence ", sequence_, ": page ", page,
                                            " of head ", head, " has ", bytes.size(),
                                            " bytes, ", geometry_.page_bytes, " expected"));
  }
  const Destination& d = destinations_[head][page];
  return backend_->Write(*d.arena, d.offset, bytes.data(), bytes.size());
}

absl::Status RestoreSink::Install(SequenceTable* table) {
  if (!begun_) return absl::InternalError("restore installed before its read began");
  size_t next = 0;
  for (uint32_t h = 0; h < heads_; ++h) {
    const size_t n = destinations_[h].size();
    std::vector<uint64_t> mine(pages_.begin() + next, pages_.begin() + next + n);
    next += n;
    RETURN_IF_ERROR(table->RestoreHead(h, std::move(mine), counts_[h], std::move(positions_[h])));
  }
  table->set_next_position(next_position_);
  return absl::OkStatus();
}

}  // namespace kvkeep
