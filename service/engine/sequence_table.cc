#include "service/engine/sequence_table.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"

namespace kvkeep {

SequenceTable::SequenceTable(uint32_t heads, uint32_t tokens_per_page)
    : tokens_per_page_(tokens_per_page), heads_(heads) {}

std::vector<uint32_t> SequenceTable::PagesNeeded(uint32_t tokens, uint64_t* total) const {
  std::vector<uint32_t> need(heads_.size());
  *total = 0;
  for (size_t h = 0; h < heads_.size(); ++h) {
    uint64_t want = uint64_t{heads_[h].count} + tokens;
    uint64_t have = capacity(static_cast<uint32_t>(h));
    if (want > have) {
      uint64_t pages = (want - have + tokens_per_page_ - 1) / tokens_per_page_;
      need[h] = static_cast<uint32_t>(pages);
      *total += pages;
    }
  }
  return need;
}

void SequenceTable::AppendPages(uint32_t head, absl::Span<const uint64_t> pages) {
  auto& v = heads_[head].pages;
  v.insert(v.end(), pages.begin(), pages.end());
}

absl::Status SequenceTable::Commit(uint32_t tokens, absl::Span<const int32_t> positions) {
  if (!positions.empty() && positions.size() != tokens) {
    return absl::InvalidArgumentError(absl::StrCat("commit of ", tokens, " tokens carries ",
                                                   positions.size(), " positions"));
  }
  int64_t last = next_position_ - 1;
  for (int32_t p : positions) {
    if (p <= last) {
      return absl::InvalidArgumentError(
          absl::StrCat("positions must increase above ", last, "; got ", p));
    }
    last = p;
  }
  if (positions.empty() &&
      next_position_ + tokens > int64_t{std::numeric_limits<int32_t>::max()}) {
    return absl::InvalidArgumentError("positions would pass the int32 range");
  }
  for (uint32_t h = 0; h < heads_.size(); ++h) {
    if (uint64_t{heads_[h].count} + tokens > capacity(h)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "commit of ", tokens, " tokens: head ", h, " has ", heads_[h].count,
          " committed tokens and room for ", capacity(h), "; call AllocatePages first"));
    }
  }
  for (auto& head : heads_) {
    head.count += tokens;
    if (positions.empty()) {
      for (uint32_t i = 0; i < tokens; ++i) {
        head.positions.push_back(static_cast<int32_t>(next_position_ + i));
      }
    } else {
      head.positions.insert(head.positions.end(), positions.begin(), positions.end());
    }
  }
  next_position_ = positions.empty() ? next_position_ + tokens : int64_t{positions.back()} + 1;
  return absl::OkStatus();
}

absl::Status SequenceTable::ForEachSegment(
    uint32_t head, uint64_t offset, uint64_t count,
    const std::function<void(uint64_t, uint32_t, uint32_t, uint64_t)>& fn) const {
  const uint64_t cap = capacity(head);
  if (offset > cap || count > cap - offset) {
    return absl::OutOfRangeError(absl::StrCat("slots [", offset, ", ", offset + count, ") of head ",
                                              head, " pass its allocated room of ", cap,
                                              " tokens"));
  }
  uint64_t done = 0;
  while (done < count) {
    uint64_t slot = offset + done;
    uint64_t page_index = slot / tokens_per_page_;
    uint32_t in_page = static_cast<uint32_t>(slot % tokens_per_page_);
    uint32_t n = static_cast<uint32_t>(
        std::min<uint64_t>(tokens_per_page_ - in_page, count - done));
    fn(heads_[head].pages[page_index], in_page, n, done);
    done += n;
  }
  return absl::OkStatus();
}

absl::Status SequenceTable::Compact(uint32_t head, absl::Span<const int32_t> kept_indices,
                                    std::vector<uint64_t>* freed_pages) {
  if (head >= heads_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("head ", head, " out of range (", heads_.size(), " heads)"));
  }
  Head& h = heads_[head];
  int64_t last = -1;
  for (size_t k = 0; k < kept_indices.size(); ++k) {
    const int32_t j = kept_indices[k];
    if (j <= last || j >= static_cast<int64_t>(h.count)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "kept index ", j, " at ", k, " of head ", head, " is not ascending in [0, ", h.count,
          ")"));
    }
    last = j;
  }
  const uint32_t kept = static_cast<uint32_t>(kept_indices.size());
  for (uint32_t k = 0; k < kept; ++k) h.positions[k] = h.positions[kept_indices[k]];
  h.positions.resize(kept);
  const size_t used_before = (size_t{h.count} + tokens_per_page_ - 1) / tokens_per_page_;
  const size_t used_after = (size_t{kept} + tokens_per_page_ - 1) / tokens_per_page_;
  freed_pages->insert(freed_pages->end(), h.pages.begin() + used_after,
                      h.pages.begin() + used_before);
  h.pages.erase(h.pages.begin() + used_after, h.pages.begin() + used_before);
  h.count = kept;
  return absl::OkStatus();
}

std::vector<uint64_t> SequenceTable::AllPages() const {
  std::vector<uint64_t> out;
  out.reserve(page_count());
  for (const auto& h : heads_) out.insert(out.end(), h.pages.begin(), h.pages.end());
  return out;
}

std::vector<uint64_t> SequenceTable::PagesFrom(uint32_t first) const {
  std::vector<uint64_t> out;
  for (const auto& h : heads_) {
    if (h.pages.size() > first) out.insert(out.end(), h.pages.begin() + first, h.pages.end());
  }
  return out;
}

std::vector<uint64_t> SequenceTable::Release() {
  std::vector<uint64_t> pages = AllPages();
  for (auto& h : heads_) {
    std::vector<uint64_t>().swap(h.pages);
    h.count = 0;
    std::vector<int32_t>().swap(h.positions);
  }
  return pages;
}

uint64_t SequenceTable::HeldBytes() const {
  uint64_t bytes = 0;
  for (const Head& h : heads_) {
    bytes += h.pages.capacity() * sizeof(uint64_t) + h.positions.capacity() * sizeof(int32_t);
  }
  return bytes;
}

void SequenceTable::ShrinkToFit() {
  for (Head& h : heads_) {
    h.pages.shrink_to_fit();
    h.positions.shrink_to_fit();
  }
}

absl::Status SequenceTable::RestoreHead(uint32_t head, std::vector<uint64_t> pages, uint32_t count,
                                        std::vector<int32_t> positions) {
  if (head >= heads_.size()) return absl::InvalidArgumentError("head out of range");
  if (positions.size() != count ||
      pages.size() != (uint64_t{count} + tokens_per_page_ - 1) / tokens_per_page_) {
    return absl::InvalidArgumentError(absl::StrCat("restored head ", head, ": ", count,
                                                   " tokens need ", positions.size(),
                                                   " positions and matching pages"));
  }
  heads_[head].pages = std::move(pages);
  heads_[head].count = count;
  heads_[head].positions = std::move(positions);
  return absl::OkStatus();
}

uint32_t SequenceTable::max_count() const {
  uint32_t m = 0;
  for (const auto& h : heads_) m = std::max(m, h.count);
  return m;
}

uint64_t SequenceTable::page_count() const {
  uint64_t n = 0;
  for (const auto& h : heads_) n += h.pages.size();
  return n;
}

absl::Status SequenceTable::RemoveFullPage(uint32_t head, uint32_t page_index,
                                           std::vector<uint64_t>* freed_pages) {
  if (head >= heads_.size()) {
    return absl::OutOfRangeError(absl::StrCat("head ", head, " of ", heads_.size()));
  }
  Head& h = heads_[head];
  const uint64_t end = (uint64_t{page_index} + 1) * tokens_per_page_;
  if (page_index >= h.pages.size() || end > h.count) {
    return absl::OutOfRangeError(absl::StrCat("page ", page_index, " of head ", head,
                                              " is not full of committed tokens (", h.count,
                                              " tokens, ", h.pages.size(), " pages)"));
  }
  freed_pages->push_back(h.pages[page_index]);
  h.pages.erase(h.pages.begin() + page_index);
  const auto first = h.positions.begin() + static_cast<ptrdiff_t>(end - tokens_per_page_);
  h.positions.erase(first, first + tokens_per_page_);
  h.count -= tokens_per_page_;
  return absl::OkStatus();
}

}  // namespace kvkeep
