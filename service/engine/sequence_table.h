// The page table of one sequence: for every (layer, KV head) an ordered list of pages, the number
// of committed tokens, and each committed token's original position (positions survive eviction so
// RoPE stays right).
//
// Heads are stored layer-major: head index = layer * kv_heads + kv_head. All heads receive the same
// new tokens; they differ only after per-head eviction.
//
//   SequenceTable table(layers * kv_heads, tokens_per_page);
//   std::vector<uint32_t> need = table.PagesNeeded(n);   // per head
//   ... allocate, then table.AppendPages(h, pages) for each head
//   RETURN_IF_ERROR(table.Commit(n, positions));
//
// Not thread-safe: the owning Sequence's mutex protects it.
#ifndef KVKEEP_SERVICE_ENGINE_SEQUENCE_TABLE_H_
#define KVKEEP_SERVICE_ENGINE_SEQUENCE_TABLE_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace kvkeep {

class SequenceTable {
 public:
  struct Head {
    std::vector<uint64_t> pages;     // packed PageRefs
    uint32_t count = 0;              // committed tokens
    std::vector<int32_t> positions;  // size == count
  };

  SequenceTable(uint32_t heads, uint32_t tokens_per_page);

  // Pages each head needs so that it has room for `tokens` more tokens after its committed ones.
  // Returns the total in *total (uint64: never overflows for validated inputs).
  std::vector<uint32_t> PagesNeeded(uint32_t tokens, uint64_t* total) const;
  void AppendPages(uint32_t head, absl::Span<const uint64_t> pages);

  // Marks `tokens` more tokens committed in every head. `positions` is empty (consecutive from
  // next_position()) or holds `tokens` strictly increasing positions above the last one.
  // FAILED_PRECONDITION when a head lacks room (nothing changes); INVALID_ARGUMENT for positions.
  absl::Status Commit(uint32_t tokens, absl::Span<const int32_t> positions);

  // Visits the slots [offset, offset + count) of `head` page by page:
  // fn(page, first_slot_in_page, slots, index_of_first_slot_in_range).
  // OUT_OF_RANGE when the range passes the head's capacity.
  absl::Status ForEachSegment(
      uint32_t head, uint64_t offset, uint64_t count,
      const std::function<void(uint64_t page, uint32_t slot, uint32_t n, uint64_t done)>& fn) const;

  // Keeps only the committed tokens `kept` (ascending, unique indices into [0, count)) of `head`:
  // their positions move to the first slots in order, the count becomes kept.size(), and the pages
  // that held committed tokens before but hold none now (the emptied pages, [ceil(kept/tpp),
  // ceil(count/tpp))) leave the page list and are appended to *freed_pages. Pages past the old
  // committed ones (room reserved by AllocatePages) stay, moved up behind the kept tokens.
  // Only the table changes: the caller moves the page bytes (compressor.h) and frees the pages.
  // INVALID_ARGUMENT (nothing changes) when `kept` is not ascending, unique and in range.
  absl::Status Compact(uint32_t head, absl::Span<const int32_t> kept_indices,
                       std::vector<uint64_t>* freed_pages);

  // Pool-pressure eviction of one whole page (docs/architecture.md, pool allocation): the
  // committed tokens in slots [page_index * tpp, (page_index + 1) * tpp) of `head` leave it with
  // their page; the later pages keep their bytes and simply move up one place in the list, so no
  // byte moves. The page must be full of committed tokens. Appends the page to *freed_pages.
  // OUT_OF_RANGE (nothing changes) otherwise.
  absl::Status RemoveFullPage(uint32_t head, uint32_t page_index,
                              std::vector<uint64_t>* freed_pages);

  // Every page of every head (to free them).
  std::vector<uint64_t> AllPages() const;
  // Every head's pages from index `first` on (the pages past a shared prefix of `first` pages).
  std::vector<uint64_t> PagesFrom(uint32_t first) const;
  // Replaces page `index` of `head` (publishing or un-sharing a prefix page; bytes moved by the
  // caller). The index must be inside the head's page list.
  void SetPage(uint32_t head, size_t index, uint64_t page) { heads_[head].pages[index] = page; }

  uint32_t heads() const { return static_cast<uint32_t>(heads_.size()); }
  uint32_t tokens_per_page() const { return tokens_per_page_; }
  const Head& head(uint32_t h) const { return heads_[h]; }
  uint64_t capacity(uint32_t h) const {
    return static_cast<uint64_t>(heads_[h].pages.size()) * tokens_per_page_;
  }
  uint32_t max_count() const;
  uint64_t page_count() const;
  int64_t next_position() const { return next_position_; }
  // Heap of the heads' page and position vectors (their capacities; the Head structs themselves
  // are counted by metadata_charge.h's EmptySequenceBytes).
  uint64_t HeldBytes() const;
  // Gives the vectors' unused capacity back to the heap, so that HeldBytes() is what the table
  // still holds: after pages or tokens left it without a call of its owner that would refill them
  // (pressure relief dropped or compressed them).
  void ShrinkToFit();

  // Spill and restore: Release() empties every head (returning all its pages, freeing the
  // vectors' memory) and keeps next_position;
  // RestoreHead() sets a head of an empty table from a spilled copy (`pages` must
  // hold ceil(count / tokens_per_page) pages, `positions` `count` entries).
  std::vector<uint64_t> Release();
  absl::Status RestoreHead(uint32_t head, std::vector<uint64_t> pages, uint32_t count,
                           std::vector<int32_t> positions);
  void set_next_position(int64_t p) { next_position_ = p; }

 private:
  const uint32_t tokens_per_page_;
  std::vector<Head> heads_;
  int64_t next_position_ = 0;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_SEQUENCE_TABLE_H_
