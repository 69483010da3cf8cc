// CacheEngine: ReadKV cursors (sequence ranges and raw pages).
#include "service/engine/cache_engine.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "service/engine/cache_engine_internal.h"

namespace kvkeep {


// ---- Reads ---------------------------------------------------------------------------------

namespace {

uint64_t ChunkBudget(uint32_t requested, uint64_t max_message_bytes) {
  // Leave room for the message envelope under the gRPC limit.
  const uint64_t cap = max_message_bytes > (64 << 10) ? max_message_bytes - (64 << 10) : 4096;
  const uint64_t want = requested == 0 ? (1 << 20) : requested;
  return std::min(want, cap);
}

}  // namespace

absl::StatusOr<bool> CacheEngine::ReadCursor::NextReferenced(ReadChunk* chunk) {
  // The copy: the bytes Next read move into strings the chunk owns (no further copy).
  v1::KvChunk full;
  ASSIGN_OR_RETURN(bool more, Next(&full));
  chunk->Clear();
  if (!more) return false;
  auto owned = std::make_shared<std::pair<std::string, std::string>>(
      std::move(*full.mutable_keys()), std::move(*full.mutable_values()));
  full.clear_keys();
  full.clear_values();
  chunk->header = std::move(full);
  chunk->keys.assign(1, owned->first);
  chunk->values.assign(1, owned->second);
  chunk->hold = std::move(owned);
  return true;
}

absl::StatusOr<size_t> CacheEngine::ReadCursor::NextReferencedBatch(
    std::vector<ReadChunk>* chunks, uint64_t /*budget*/) {
  if (chunks->empty()) chunks->emplace_back();
  ASSIGN_OR_RETURN(bool more, NextReferenced(&(*chunks)[0]));
  return more ? 1 : 0;
}

class SequenceReadCursor final : public CacheEngine::ReadCursor {
 public:
  SequenceReadCursor(std::shared_ptr<CacheEngine::Sequence> seq, Backend* backend,
                     PagePool* pool, std::vector<uint32_t> heads, uint32_t token_begin,
                     uint32_t token_end, uint64_t chunk_bytes)
      : seq_(std::move(seq)), backend_(backend), pool_(pool), heads_(std::move(heads)),
        token_begin_(token_begin), token_end_(token_end), chunk_bytes_(chunk_bytes),
        next_token_(token_begin) {}

  absl::StatusOr<bool> Next(v1::KvChunk* chunk) override {
    absl::ReaderMutexLock lock(&seq_->mu);
    RETURN_IF_ERROR(StillReadable());
    uint32_t h = 0, n = 0;
    if (!NextRange(&h, &n)) return false;
    chunk->Clear();
    FillHeader(h, n, chunk);
    const uint64_t token_bytes = seq_->model->geometry().token_bytes;
    std::string* keys = chunk->mutable_keys();
    std::string* values = chunk->mutable_values();
    keys->resize(n * token_bytes);
    values->resize(n * token_bytes);
    RETURN_IF_ERROR(CopyRange(h, n, keys->data(), values->data()));
    next_token_ += n;
    return true;
  }

  // Views into the pages, pinned until the reply is gone; the copy when the backend cannot
  // reference its memory from the host.
  absl::StatusOr<bool> NextReferenced(ReadChunk* chunk) override {
    absl::ReaderMutexLock lock(&seq_->mu);
    RETURN_IF_ERROR(StillReadable());
    uint32_t h = 0, n = 0;
    if (!NextRange(&h, &n)) return false;
    RETURN_IF_ERROR(FillReferenced(h, n, chunk));
    return true;
  }

  absl::StatusOr<size_t> NextReferencedBatch(std::vector<ReadChunk>* chunks,
                                             uint64_t budget) override {
    absl::ReaderMutexLock lock(&seq_->mu);
    RETURN_IF_ERROR(StillReadable());
    const uint64_t token_bytes = seq_->model->geometry().token_bytes;
    size_t count = 0;
    uint64_t total = 0;
    uint32_t h = 0, n = 0;
    while (NextRange(&h, &n)) {
      // Keys, values and positions (a varint of at most 5 bytes each), and the other fields.
      const uint64_t bytes = uint64_t{n} * (2 * token_bytes + 5) + 64;
      if (count > 0 && total + bytes > budget) break;
      if (count == chunks->size()) chunks->emplace_back();
      RETURN_IF_ERROR(FillReferenced(h, n, &(*chunks)[count]));
      ++count;
      total += bytes;
    }
    return count;
  }

 private:
  // Chunk `chunk` with tokens [next_token_, + n) of head `h`, and moves past them.
  absl::Status FillReferenced(uint32_t h, uint32_t n, ReadChunk* chunk)
      ABSL_SHARED_LOCKS_REQUIRED(seq_->mu) {
    chunk->Clear();
    FillHeader(h, n, &chunk->header);
    std::vector<uint64_t> pages;
    ASSIGN_OR_RETURN(bool referenced, ReferenceRange(h, n, chunk, &pages));
    if (referenced) {
      chunk->hold = PinPages(pool_, std::move(pages));
    } else {
      const uint64_t bytes = uint64_t{n} * seq_->model->geometry().token_bytes;
      auto owned = std::make_shared<std::pair<std::string, std::string>>();
      owned->first.resize(bytes);
      owned->second.resize(bytes);
      RETURN_IF_ERROR(CopyRange(h, n, owned->first.data(), owned->second.data()));
      chunk->keys.assign(1, owned->first);
      chunk->values.assign(1, owned->second);
      chunk->hold = std::move(owned);
    }
    next_token_ += n;
    return absl::OkStatus();
  }

  // Also records, at the first chunk, how often the sequence was compacted: chunks of one stream
  // all come from the same token order, never from both sides of a Compress.
  absl::Status StillReadable() ABSL_SHARED_LOCKS_REQUIRED(seq_->mu) {
    if (seq_->dropped || seq_->spilled) {
      return absl::AbortedError("sequence was dropped or spilled during the read");
    }
    if (!compactions_seen_.has_value()) compactions_seen_ = seq_->compactions;
    if (*compactions_seen_ != seq_->compactions) {
      return absl::AbortedError(
          "sequence was compressed during the read (its tokens moved); the chunks already sent "
          "are intact, read the rest again");
    }
    return absl::OkStatus();
  }

  // The next head and token count to send (from next_token_); false at the end.
  bool NextRange(uint32_t* h, uint32_t* n) ABSL_SHARED_LOCKS_REQUIRED(seq_->mu) {
    const PageGeometry& g = seq_->model->geometry();
    const uint32_t per_chunk =
        static_cast<uint32_t>(std::max<uint64_t>(1, chunk_bytes_ / (2 * g.token_bytes)));
    while (head_index_ < heads_.size()) {
      *h = heads_[head_index_];
      const uint32_t end = std::min(token_end_, seq_->table.head(*h).count);
      if (next_token_ >= end) {
        ++head_index_;
        next_token_ = token_begin_;
        continue;
      }
      *n = std::min(per_chunk, end - next_token_);
      return true;
    }
    return false;
  }

  void FillHeader(uint32_t h, uint32_t n, v1::KvChunk* chunk) const
      ABSL_SHARED_LOCKS_REQUIRED(seq_->mu) {
    const auto& head = seq_->table.head(h);
    chunk->set_sequence_id(seq_->id);
    chunk->set_layer(h / seq_->model->kv_heads());
    chunk->set_kv_head(h % seq_->model->kv_heads());
    chunk->set_token_offset(next_token_);
    chunk->set_token_count(n);
    chunk->mutable_positions()->Add(head.positions.begin() + next_token_,
                                    head.positions.begin() + next_token_ + n);
  }

  // Copies the keys and values of tokens [next_token_, + n) of head `h` out of the pages.
  absl::Status CopyRange(uint32_t h, uint32_t n, char* keys, char* values) const
      ABSL_SHARED_LOCKS_REQUIRED(seq_->mu) {
    const PageGeometry& g = seq_->model->geometry();
    absl::Status io;
    RETURN_IF_ERROR(seq_->table.ForEachSegment(
        h, next_token_, n, [&](uint64_t page, uint32_t slot, uint32_t k, uint64_t done) {
          if (!io.ok()) return;
          const Arena* arena = pool_->ArenaOf(page);
          const uint64_t base = uint64_t{PageRef::Unpack(page).index} * g.page_bytes;
          io = backend_->Read(*arena, base + slot * g.token_bytes,
                              keys + done * g.token_bytes, k * g.token_bytes);
          if (io.ok()) {
            io = backend_->Read(*arena, base + g.value_offset + slot * g.token_bytes,
                                values + done * g.token_bytes, k * g.token_bytes);
          }
        }));
    return io;
  }

  // Views of the keys and values of tokens [next_token_, + n) of head `h` in the pages' host
  // memory, and the pages they lie in (once each); false (nothing set) when some page's memory
  // cannot be read in place, or when the runs are so short (small pages) that a copy is cheaper.
  absl::StatusOr<bool> ReferenceRange(uint32_t h, uint32_t n, ReadChunk* chunk,
                                      std::vector<uint64_t>* pages) const
      ABSL_SHARED_LOCKS_REQUIRED(seq_->mu) {
    const PageGeometry& g = seq_->model->geometry();
    bool in_place = true;
    RETURN_IF_ERROR(seq_->table.ForEachSegment(
        h, next_token_, n, [&](uint64_t page, uint32_t slot, uint32_t k, uint64_t) {
          if (!in_place) return;
          const Arena* arena = pool_->ArenaOf(page);
          const char* host =
              arena == nullptr ? nullptr : static_cast<const char*>(backend_->HostAddress(*arena));
          const uint64_t base = uint64_t{PageRef::Unpack(page).index} * g.page_bytes;
          const uint64_t bytes = uint64_t{k} * g.token_bytes;
          if (host == nullptr ||
              !RangeInside(arena->size(), base + g.value_offset + slot * g.token_bytes, bytes)) {
            in_place = false;
            return;
          }
          chunk->keys.emplace_back(host + base + slot * g.token_bytes, bytes);
          chunk->values.emplace_back(host + base + g.value_offset + slot * g.token_bytes, bytes);
          pages->push_back(page);
        }));
    // Runs shorter than this cost more to reference (a slice and its release each) than to copy.
    constexpr uint64_t kMinReferencedRunBytes = 1024;
    if (in_place && !pages->empty() &&
        uint64_t{n} * g.token_bytes / pages->size() < kMinReferencedRunBytes) {
      in_place = false;
    }
    if (!in_place) {
      chunk->keys.clear();
      chunk->values.clear();
      pages->clear();
    }
    return in_place;
  }

  const std::shared_ptr<CacheEngine::Sequence> seq_;
  Backend* const backend_;
  PagePool* const pool_;
  const std::vector<uint32_t> heads_;
  const uint32_t token_begin_, token_end_;
  const uint64_t chunk_bytes_;
  size_t head_index_ = 0;
  uint32_t next_token_;
  std::optional<uint64_t> compactions_seen_;
};

class PageReadCursor final : public CacheEngine::ReadCursor {
 public:
  PageReadCursor(std::string tenant, std::vector<uint64_t> pages, Backend* backend,
                 const CacheEngine* engine)
      : tenant_(std::move(tenant)), pages_(std::move(pages)), backend_(backend), engine_(engine) {}

  absl::StatusOr<bool> Next(v1::KvChunk* chunk) override {
    if (next_ >= pages_.size()) return false;
    const uint64_t page = pages_[next_++];
    // Checked again at read time: the page must still be this tenant's (or its sharing group's)
    // and allocated.
    ASSIGN_OR_RETURN(PagePool::Location loc, engine_->LocatePage(tenant_, page));
    chunk->Clear();
    chunk->set_page(page);
    chunk->set_token_count(loc.geometry.tokens_per_page);
    std::string* keys = chunk->mutable_keys();
    std::string* values = chunk->mutable_values();
    keys->resize(loc.geometry.value_offset);
    values->resize(loc.geometry.value_offset);
    RETURN_IF_ERROR(backend_->Read(*loc.arena, loc.offset, keys->data(), keys->size()));
    RETURN_IF_ERROR(backend_->Read(*loc.arena, loc.offset + loc.geometry.value_offset,
                                   values->data(), values->size()));
    return true;
  }

 private:
  const std::string tenant_;
  const std::vector<uint64_t> pages_;
  Backend* const backend_;
  const CacheEngine* const engine_;
  size_t next_ = 0;
};

absl::StatusOr<std::unique_ptr<CacheEngine::ReadCursor>> CacheEngine::OpenRead(
    const std::string& tenant, const v1::ReadRequest& r) {
  if (r.pages_size() > 0) {
    if (!r.sequence_id().empty()) {
      return absl::InvalidArgumentError("give either sequence_id or pages, not both");
    }
    // Each page at most once: a request listing one page many times would make the daemon stream
    // far more than the tenant holds (the bytes read are bounded by its own pages).
    absl::flat_hash_map<uint64_t, int> first_index;
    for (int i = 0; i < r.pages_size(); ++i) {
      auto [it, inserted] = first_index.emplace(r.pages(i), i);
      if (!inserted) {
        return absl::InvalidArgumentError(absl::StrCat(
            "ReadRequest.pages lists page ", r.pages(i), " twice (at ", it->second, " and ", i,
            "); list each page at most once per request"));
      }
    }
    // Validate every page before streaming any.
    for (uint64_t page : r.pages()) {
      ASSIGN_OR_RETURN(PagePool::Location loc, LocatePage(tenant, page));
      if (2 * loc.geometry.value_offset + 1024 > options_.max_message_bytes) {
        return absl::InvalidArgumentError("a page does not fit one message; read by sequence");
      }
    }
    return std::unique_ptr<ReadCursor>(new PageReadCursor(
        tenant, std::vector<uint64_t>(r.pages().begin(), r.pages().end()), backend_, this));
  }
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, r.sequence_id()));
  const Model& model = *seq->model;
  const uint32_t layer_end = r.layer_end() == 0 ? model.layers() : r.layer_end();
  const uint32_t head_end = r.kv_head_end() == 0 ? model.kv_heads() : r.kv_head_end();
  if (r.layer_begin() >= layer_end || layer_end > model.layers()) {
    return absl::OutOfRangeError(absl::StrCat("layers [", r.layer_begin(), ", ", layer_end,
                                              ") outside 0..", model.layers()));
  }
  if (r.kv_head_begin() >= head_end || head_end > model.kv_heads()) {
    return absl::OutOfRangeError(absl::StrCat("KV heads [", r.kv_head_begin(), ", ", head_end,
                                              ") outside 0..", model.kv_heads()));
  }
  const uint32_t token_end = r.token_end() == 0 ? UINT32_MAX : r.token_end();
  if (r.token_begin() > token_end) {
    return absl::InvalidArgumentError("token_begin is after token_end");
  }
  {
    absl::ReaderMutexLock lock(&seq->mu);
    RETURN_IF_ERROR(OnDevice(*seq));
    if (r.token_begin() > seq->table.max_count()) {
      return absl::OutOfRangeError(absl::StrCat("token_begin ", r.token_begin(),
                                                " is past the ", seq->table.max_count(),
                                                " committed tokens"));
    }
  }
  const uint64_t budget = ChunkBudget(r.max_chunk_bytes(), options_.max_message_bytes);
  if (2 * model.geometry().token_bytes > budget) {
    return absl::InvalidArgumentError("max_chunk_bytes is smaller than one token's keys+values");
  }
  std::vector<uint32_t> heads;
  for (uint32_t l = r.layer_begin(); l < layer_end; ++l) {
    for (uint32_t k = r.kv_head_begin(); k < head_end; ++k) heads.push_back(l * model.kv_heads() + k);
  }
  return std::unique_ptr<ReadCursor>(new SequenceReadCursor(
      std::move(seq), backend_, &pool_, std::move(heads), r.token_begin(), token_end, budget));
}

}  // namespace kvkeep
