#include "common/table_chunks.h"

#include <algorithm>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvkeep {
namespace {

using Heads = google::protobuf::RepeatedPtrField<v1::HeadTable>;

// Bytes a message field adds around a HeadTable (tag and length) plus slack for a nested table.
constexpr uint64_t kEntryOverhead = 16;
// Encoded bytes per page reference (fixed64) and, at worst, per position (a negative int32 varint).
constexpr uint64_t kPageBytes = 8;
constexpr uint64_t kPositionBytes = 10;

// The pieces of one head, each encoding to at most `room` bytes.
std::vector<v1::HeadTable> CutHead(v1::HeadTable head, uint64_t room) {
  const uint64_t usable = room > 512 ? room - 256 : 256;
  const int pages_per_piece = static_cast<int>(std::max<uint64_t>(1, usable / 2 / kPageBytes));
  const int positions_per_piece =
      static_cast<int>(std::max<uint64_t>(1, usable / 2 / kPositionBytes));
  std::vector<v1::HeadTable> pieces;
  int page = 0;
  int position = 0;
  do {
    v1::HeadTable piece;
    piece.set_layer(head.layer());
    piece.set_kv_head(head.kv_head());
    piece.set_token_count(head.token_count());
    piece.set_capacity(head.capacity());
    piece.set_shared_pages(head.shared_pages());
    piece.set_continued(!pieces.empty());
    const int page_end = std::min(head.pages_size(), page + pages_per_piece);
    piece.mutable_pages()->Add(head.pages().begin() + page, head.pages().begin() + page_end);
    const int position_end = std::min(head.positions_size(), position + positions_per_piece);
    piece.mutable_positions()->Add(head.positions().begin() + position,
                                   head.positions().begin() + position_end);
    page = page_end;
    position = position_end;
    pieces.push_back(std::move(piece));
  } while (page < head.pages_size() || position < head.positions_size());
  return pieces;
}

// Splits `message` (whose heads `heads_of` names) into messages of at most `budget` bytes: the
// first keeps every other field, later ones only heads.
template <typename Msg, typename HeadsOf>
std::vector<Msg> Split(Msg message, uint64_t budget, HeadsOf heads_of) {
  budget = std::max<uint64_t>(budget, 4096);
  std::vector<Msg> out;
  if (message.ByteSizeLong() <= budget) {
    out.push_back(std::move(message));
    return out;
  }
  Heads all = std::move(*heads_of(&message));
  heads_of(&message)->Clear();
  out.push_back(std::move(message));
  uint64_t used = out.back().ByteSizeLong() + kEntryOverhead;
  const uint64_t room = budget - kEntryOverhead;
  auto start_message = [&] {
    out.emplace_back();
    used = kEntryOverhead;
  };
  auto add = [&](v1::HeadTable&& head, uint64_t size) {
    if (used + size > budget) start_message();
    *heads_of(&out.back())->Add() = std::move(head);
    used += size;
  };
  for (v1::HeadTable& head : all) {
    const uint64_t size = head.ByteSizeLong() + kEntryOverhead;
    if (size <= room) {
      add(std::move(head), size);
      continue;
    }
    for (v1::HeadTable& piece : CutHead(std::move(head), room)) {
      const uint64_t piece_size = piece.ByteSizeLong() + kEntryOverhead;
      add(std::move(piece), piece_size);
    }
  }
  return out;
}

// Appends `heads` to `merged`, joining `continued` pieces to the entry before them.
absl::Status AppendHeads(Heads* heads, Heads* merged) {
  for (v1::HeadTable& head : *heads) {
    if (!head.continued()) {
      *merged->Add() = std::move(head);
      continue;
    }
    if (merged->empty()) {
      return absl::InvalidArgumentError("a continued head piece with no head before it");
    }
    v1::HeadTable& last = *merged->Mutable(merged->size() - 1);
    if (last.layer() != head.layer() || last.kv_head() != head.kv_head()) {
      return absl::InvalidArgumentError(
          absl::StrCat("head piece (", head.layer(), ", ", head.kv_head(), ") continues head (",
                       last.layer(), ", ", last.kv_head(), ")"));
    }
    last.mutable_pages()->Add(head.pages().begin(), head.pages().end());
    last.mutable_positions()->Add(head.positions().begin(), head.positions().end());
  }
  return absl::OkStatus();
}

template <typename Msg, typename HeadsOf>
absl::StatusOr<Msg> Merge(std::vector<Msg> chunks, HeadsOf heads_of) {
  if (chunks.empty()) return absl::InvalidArgumentError("a chunked reply with no message");
  Msg merged = std::move(chunks[0]);
  Heads first = std::move(*heads_of(&merged));
  heads_of(&merged)->Clear();
  absl::Status status = AppendHeads(&first, heads_of(&merged));
  for (size_t i = 1; i < chunks.size() && status.ok(); ++i) {
    status = AppendHeads(heads_of(&chunks[i]), heads_of(&merged));
  }
  if (!status.ok()) return status;
  return merged;
}

Heads* TableHeads(v1::PageTable* t) { return t->mutable_heads(); }
Heads* DeltaHeads(v1::PageTableDelta* d) { return d->mutable_heads(); }
Heads* CompressHeads(v1::CompressReply* r) { return r->mutable_table()->mutable_heads(); }

}  // namespace

uint64_t ReplyBudget(uint64_t max_message_bytes) {
  const uint64_t reserve = std::min<uint64_t>(max_message_bytes / 2, 64 << 10);
  return std::max<uint64_t>(max_message_bytes - reserve, 4096);
}

std::vector<v1::PageTable> SplitPageTable(v1::PageTable table, uint64_t budget) {
  return Split(std::move(table), budget, TableHeads);
}
std::vector<v1::PageTableDelta> SplitPageTableDelta(v1::PageTableDelta delta, uint64_t budget) {
  return Split(std::move(delta), budget, DeltaHeads);
}
std::vector<v1::CompressReply> SplitCompressReply(v1::CompressReply reply, uint64_t budget) {
  return Split(std::move(reply), budget, CompressHeads);
}

absl::StatusOr<v1::PageTable> MergePageTable(std::vector<v1::PageTable> chunks) {
  return Merge(std::move(chunks), TableHeads);
}
absl::StatusOr<v1::PageTableDelta> MergePageTableDelta(std::vector<v1::PageTableDelta> chunks) {
  return Merge(std::move(chunks), DeltaHeads);
}
absl::StatusOr<v1::CompressReply> MergeCompressReply(std::vector<v1::CompressReply> chunks) {
  return Merge(std::move(chunks), CompressHeads);
}

}  // namespace kvkeep
