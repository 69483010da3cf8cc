#include "service/rpc/kv_wire.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"

namespace kvkeep {
namespace {

// A read position over a list of slices.
class SliceCursor {
 public:
  explicit SliceCursor(const std::vector<grpc::Slice>& slices) : slices_(slices) { Skip(); }

  // At the end of the slices, or of the current limit.
  bool done() const { return index_ == slices_.size() || limit_ == 0; }

  // Reads stop after `n` more bytes (a nested message) until RestoreLimit; returns what is left
  // of the outer limit after those `n` bytes, or false when `n` is beyond it.
  bool PushLimit(uint64_t n, uint64_t* outer_left) {
    if (n > limit_) return false;
    *outer_left = limit_ == kNoLimit ? kNoLimit : limit_ - n;
    limit_ = n;
    return true;
  }
  // The nested message ended (every byte of it read): the outer limit again.
  bool PopLimit(uint64_t outer_left) {
    if (limit_ != 0) return false;  // the slices ended before the nested message did
    limit_ = outer_left;
    return true;
  }

  bool ReadByte(uint8_t* b) {
    if (done()) return false;
    *b = slices_[index_].begin()[offset_];
    Advance(1);
    return true;
  }

  bool ReadVarint(uint64_t* v) {
    *v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
      uint8_t b;
      if (!ReadByte(&b)) return false;
      *v |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }

  // `n` bytes as views into the slices, one per slice they cross (no copy).
  bool ReadPieces(uint64_t n, std::vector<absl::string_view>* out) {
    if (n > limit_) return false;
    while (n > 0) {
      if (done()) return false;
      const grpc::Slice& s = slices_[index_];
      const uint64_t take = std::min<uint64_t>(n, s.size() - offset_);
      out->emplace_back(reinterpret_cast<const char*>(s.begin()) + offset_, take);
      Advance(take);
      n -= take;
    }
    return true;
  }

  // `n` bytes as one view: into the slice when they lie in it, else copied into `scratch`.
  bool ReadBytes(uint64_t n, std::string* scratch, absl::string_view* out) {
    pieces_.clear();
    if (!ReadPieces(n, &pieces_)) return false;
    if (pieces_.size() <= 1) {
      *out = pieces_.empty() ? absl::string_view() : pieces_[0];
      return true;
    }
    scratch->resize(n);
    CopyPieces(pieces_, scratch->data());
    *out = *scratch;
    return true;
  }

  bool SkipBytes(uint64_t n) {
    if (n > limit_) return false;
    while (n > 0) {
      if (done()) return false;
      const uint64_t take = std::min<uint64_t>(n, slices_[index_].size() - offset_);
      Advance(take);
      n -= take;
    }
    return true;
  }

 private:
  static constexpr uint64_t kNoLimit = UINT64_MAX;

  void Advance(uint64_t n) {
    offset_ += n;
    if (limit_ != kNoLimit) limit_ -= n;
    Skip();
  }
  // Moves past exhausted (and empty) slices.
  void Skip() {
    while (index_ < slices_.size() && offset_ >= slices_[index_].size()) {
      ++index_;
      offset_ = 0;
    }
  }

  const std::vector<grpc::Slice>& slices_;
  size_t index_ = 0;
  uint64_t offset_ = 0;
  uint64_t limit_ = kNoLimit;
  std::vector<absl::string_view> pieces_;
};

absl::Status Malformed(uint32_t field) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed KvChunk encoding (field ", field, ")"));
}

// Packed positions (field 9, wire type 2): varints filling `n` bytes.
bool ReadPackedPositions(SliceCursor& in, uint64_t n, v1::KvChunk* h) {
  std::vector<absl::string_view> pieces;
  if (!in.ReadPieces(n, &pieces)) return false;
  uint64_t v = 0;
  int shift = 0;
  for (absl::string_view piece : pieces) {
    for (char c : piece) {
      const uint8_t b = static_cast<uint8_t>(c);
      if (shift >= 70) return false;
      v |= uint64_t{b & 0x7fu} << shift;
      shift += 7;
      if ((b & 0x80) == 0) {
        h->add_positions(static_cast<int32_t>(v));
        v = 0;
        shift = 0;
      }
    }
  }
  return shift == 0;  // no varint cut off at the end
}

// One field of the header (every field but keys and values, which the caller handles).
bool ParseHeaderField(SliceCursor& in, uint32_t field, uint32_t wire, v1::KvChunk* h,
                      std::string* scratch) {
  uint64_t v = 0;
  absl::string_view bytes;
  switch (wire) {
    case 0:
      if (!in.ReadVarint(&v)) return false;
      switch (field) {
        case 3: h->set_layer(static_cast<uint32_t>(v)); break;
        case 4: h->set_kv_head(static_cast<uint32_t>(v)); break;
        case 5: h->set_token_offset(static_cast<uint32_t>(v)); break;
        case 6: h->set_token_count(static_cast<uint32_t>(v)); break;
        case 9: h->add_positions(static_cast<int32_t>(v)); break;
        default: break;  // unknown: skipped
      }
      return true;
    case 1: {
      uint64_t fixed = 0;
      for (int i = 0; i < 8; ++i) {
        uint8_t b;
        if (!in.ReadByte(&b)) return false;
        fixed |= uint64_t{b} << (8 * i);
      }
      if (field == 10) h->set_page(fixed);
      return true;
    }
    case 2:
      if (!in.ReadVarint(&v)) return false;
      if (field == 9) return ReadPackedPositions(in, v, h);
      if (!in.ReadBytes(v, scratch, &bytes)) return false;
      if (field == 1) h->set_session_id(std::string(bytes));
      if (field == 2) h->set_sequence_id(std::string(bytes));
      return true;
    case 5:
      return in.SkipBytes(4);
    default:
      return false;  // groups (3, 4) and reserved wire types
  }
}

// The fields of one KvChunk, up to the cursor's end (or limit).
absl::Status ParseChunkFields(SliceCursor& in, KvChunkPieces* out) {
  out->header.Clear();
  out->keys.clear();
  out->values.clear();
  out->key_bytes = out->value_bytes = 0;
  std::string field_scratch;
  while (!in.done()) {
    uint64_t tag = 0;
    if (!in.ReadVarint(&tag) || tag > UINT32_MAX) return Malformed(0);
    const uint32_t field = static_cast<uint32_t>(tag >> 3);
    const uint32_t wire = static_cast<uint32_t>(tag & 7);
    if ((field == 7 || field == 8) && wire == 2) {
      uint64_t n = 0;
      const bool keys = field == 7;
      // A repeated singular field: the last one wins, as in protobuf.
      std::vector<absl::string_view>& pieces = keys ? out->keys : out->values;
      pieces.clear();
      if (!in.ReadVarint(&n) || !in.ReadPieces(n, &pieces)) return Malformed(field);
      (keys ? out->key_bytes : out->value_bytes) = n;
      continue;
    }
    if (field == 0 || !ParseHeaderField(in, field, wire, &out->header, &field_scratch)) {
      return Malformed(field);
    }
  }
  return absl::OkStatus();
}

absl::Status MalformedBatch(uint32_t field, size_t items) {
  return absl::InvalidArgumentError(absl::StrCat("malformed KvChunkBatch encoding (field ", field,
                                                 ", after ", items, " items)"));
}

void DeleteString(void* p) { delete static_cast<std::string*>(p); }

// A slice that owns `bytes` (moved), freed when gRPC is done with it.
grpc::Slice OwningSlice(std::string&& bytes) {
  auto* owned = new std::string(std::move(bytes));
  return grpc::Slice(owned->data(), owned->size(), DeleteString, owned);
}

// The referencing slices of one message share one reference on the holder: the last slice
// released drops it.
struct SliceGroup {
  std::shared_ptr<const void> hold;
  std::atomic<size_t> live;
};

void ReleaseFromGroup(void* p) {
  auto* group = static_cast<SliceGroup*>(p);
  if (group->live.fetch_sub(1, std::memory_order_acq_rel) == 1) delete group;
}

void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

void AppendTag(uint32_t field, uint32_t wire, std::string* out) {
  AppendVarint((uint64_t{field} << 3) | wire, out);
}

void AppendStringField(uint32_t field, const std::string& s, std::string* out) {
  if (s.empty()) return;
  AppendTag(field, 2, out);
  AppendVarint(s.size(), out);
  out->append(s);
}

void AppendVarintField(uint32_t field, uint64_t v, std::string* out) {
  if (v == 0) return;
  AppendTag(field, 0, out);
  AppendVarint(v, out);
}

// Every field of `h` but keys and values, as protobuf encodes them (positions packed).
std::string EncodeHeader(const v1::KvChunk& h) {
  std::string out;
  out.reserve(32 + h.session_id().size() + h.sequence_id().size() + 5 * h.positions_size());
  AppendStringField(1, h.session_id(), &out);
  AppendStringField(2, h.sequence_id(), &out);
  AppendVarintField(3, h.layer(), &out);
  AppendVarintField(4, h.kv_head(), &out);
  AppendVarintField(5, h.token_offset(), &out);
  AppendVarintField(6, h.token_count(), &out);
  if (h.positions_size() > 0) {
    std::string packed;
    // int32 varints are sign-extended to 64 bits, as protobuf writes them.
    for (int32_t p : h.positions()) AppendVarint(static_cast<uint64_t>(int64_t{p}), &packed);
    AppendTag(9, 2, &out);
    AppendVarint(packed.size(), &out);
    out.append(packed);
  }
  if (h.page() != 0) {
    AppendTag(10, 1, &out);
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((h.page() >> (8 * i)) & 0xff));
  }
  return out;
}

uint64_t SumSizes(absl::Span<const absl::string_view> pieces) {
  uint64_t n = 0;
  for (absl::string_view p : pieces) n += p.size();
  return n;
}

}  // namespace

absl::Status ParseKvChunkPieces(const grpc::ByteBuffer& buffer, KvChunkPieces* out) {
  out->slices.clear();
  grpc::Status dumped = buffer.Dump(&out->slices);
  if (!dumped.ok()) return absl::InternalError("cannot read the received message");
  SliceCursor in(out->slices);
  return ParseChunkFields(in, out);
}

absl::Status ParseKvChunkBatch(const grpc::ByteBuffer& buffer, KvChunkBatchPieces* out) {
  out->count = 0;
  out->slices.clear();
  grpc::Status dumped = buffer.Dump(&out->slices);
  if (!dumped.ok()) return absl::InternalError("cannot read the received message");
  SliceCursor in(out->slices);
  while (!in.done()) {
    uint64_t tag = 0;
    if (!in.ReadVarint(&tag) || tag > UINT32_MAX) return MalformedBatch(0, out->count);
    const uint32_t field = static_cast<uint32_t>(tag >> 3);
    const uint32_t wire = static_cast<uint32_t>(tag & 7);
    if (field != 1 || wire != 2) {  // unknown fields are skipped, as protobuf does
      std::string scratch;
      v1::KvChunk ignored;
      if (field == 0 || field == 1 || !ParseHeaderField(in, field, wire, &ignored, &scratch)) {
        return MalformedBatch(field, out->count);
      }
      continue;
    }
    uint64_t n = 0, outer_left = 0;
    if (!in.ReadVarint(&n) || !in.PushLimit(n, &outer_left)) return MalformedBatch(1, out->count);
    if (out->count == out->chunks.size()) out->chunks.emplace_back();
    absl::Status parsed = ParseChunkFields(in, &out->chunks[out->count]);
    if (!parsed.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("item ", out->count, ": ", parsed.message()));
    }
    if (!in.PopLimit(outer_left)) return MalformedBatch(1, out->count);
    ++out->count;
  }
  return absl::OkStatus();
}

absl::Status ParseKvChunk(const grpc::ByteBuffer& buffer, ParsedKvChunk* out) {
  KvChunkPieces pieces;
  pieces.slices = std::move(out->slices);  // reuse the vector's capacity
  out->keys = out->values = absl::string_view();
  absl::Status parsed = ParseKvChunkPieces(buffer, &pieces);
  out->header = std::move(pieces.header);
  out->slices = std::move(pieces.slices);
  if (!parsed.ok()) return parsed;
  auto one_view = [](const std::vector<absl::string_view>& p, uint64_t n, std::string* scratch) {
    if (p.size() <= 1) return p.empty() ? absl::string_view() : p[0];
    scratch->resize(n);
    CopyPieces(p, scratch->data());
    return absl::string_view(*scratch);
  };
  out->keys = one_view(pieces.keys, pieces.key_bytes, &out->scratch_keys);
  out->values = one_view(pieces.values, pieces.value_bytes, &out->scratch_values);
  return absl::OkStatus();
}

void CopyPieces(absl::Span<const absl::string_view> pieces, char* dst) {
  for (absl::string_view p : pieces) {
    if (p.empty()) continue;
    std::memcpy(dst, p.data(), p.size());
    dst += p.size();
  }
}

void SerializeKvChunkRefs(const v1::KvChunk& header, absl::Span<const absl::string_view> keys,
                          absl::Span<const absl::string_view> values,
                          const std::shared_ptr<const void>& hold, grpc::ByteBuffer* out) {
  std::string head = EncodeHeader(header);
  std::vector<grpc::Slice> slices;
  slices.reserve(2 + keys.size() + values.size());
  size_t referencing = 0;
  for (auto pieces : {keys, values}) {
    for (absl::string_view p : pieces) referencing += p.empty() ? 0 : 1;
  }
  SliceGroup* group = referencing == 0 ? nullptr : new SliceGroup{hold, {referencing}};
  auto append_field = [&](uint32_t field, absl::Span<const absl::string_view> pieces) {
    const uint64_t n = SumSizes(pieces);
    if (n == 0) return;
    AppendTag(field, 2, &head);
    AppendVarint(n, &head);
    slices.push_back(OwningSlice(std::move(head)));
    head.clear();
    for (absl::string_view p : pieces) {
      if (p.empty()) continue;
      slices.emplace_back(const_cast<char*>(p.data()), p.size(), ReleaseFromGroup, group);
    }
  };
  append_field(7, keys);
  append_field(8, values);
  if (!head.empty() || slices.empty()) slices.push_back(grpc::Slice(head));
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  out->Swap(&buffer);
}

void SerializeKvChunk(v1::KvChunk* chunk, grpc::ByteBuffer* out) {
  // The strings move into one owner that every slice references.
  auto owned = std::make_shared<std::pair<std::string, std::string>>(
      std::move(*chunk->mutable_keys()), std::move(*chunk->mutable_values()));
  chunk->clear_keys();
  chunk->clear_values();
  const absl::string_view keys[] = {owned->first};
  const absl::string_view values[] = {owned->second};
  SerializeKvChunkRefs(*chunk, keys, values, owned, out);
}

namespace {

uint64_t VarintSize(uint64_t v) {
  uint64_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// The slices of one batch message share one group: it owns the framing bytes (outer tags,
// headers, field prefixes) and one reference on each chunk's holder; the last slice released
// deletes it.
struct BatchGroup {
  std::string framing;
  std::vector<std::shared_ptr<const void>> holds;
  std::atomic<size_t> live{0};
};

void ReleaseFromBatchGroup(void* p) {
  auto* group = static_cast<BatchGroup*>(p);
  if (group->live.fetch_sub(1, std::memory_order_acq_rel) == 1) delete group;
}

}  // namespace

uint64_t KvChunkRefBytes(const KvChunkRef& chunk) {
  return SumSizes(chunk.keys) + SumSizes(chunk.values);
}

void SerializeKvChunkBatchRefs(absl::Span<const KvChunkRef> chunks, grpc::ByteBuffer* out) {
  auto* group = new BatchGroup;
  std::string& f = group->framing;
  f.reserve(chunks.size() * 96);
  // Ranges of `f` (data == nullptr) and referenced pieces, in wire order.
  struct Piece {
    const char* data;
    uint64_t begin;
    uint64_t size;
  };
  std::vector<Piece> pieces;
  pieces.reserve(chunks.size() * 4 + 1);
  uint64_t framed = 0;  // f[0, framed) is in `pieces` already
  auto flush_framing = [&] {
    if (f.size() > framed) pieces.push_back({nullptr, framed, f.size() - framed});
    framed = f.size();
  };
  auto append_field = [&](uint32_t field, uint64_t n, absl::Span<const absl::string_view> data) {
    if (n == 0) return;
    AppendTag(field, 2, &f);
    AppendVarint(n, &f);
    flush_framing();
    for (absl::string_view p : data) {
      if (!p.empty()) pieces.push_back({p.data(), 0, p.size()});
    }
  };
  for (const KvChunkRef& c : chunks) {
    const std::string head = EncodeHeader(*c.header);
    const uint64_t kn = SumSizes(c.keys);
    const uint64_t vn = SumSizes(c.values);
    const uint64_t inner = head.size() + (kn == 0 ? 0 : 1 + VarintSize(kn) + kn) +
                           (vn == 0 ? 0 : 1 + VarintSize(vn) + vn);
    AppendTag(1, 2, &f);
    AppendVarint(inner, &f);
    f.append(head);
    append_field(7, kn, c.keys);
    append_field(8, vn, c.values);
    if (c.hold != nullptr && (group->holds.empty() || group->holds.back() != c.hold)) {
      group->holds.push_back(c.hold);
    }
  }
  flush_framing();
  if (pieces.empty()) {
    delete group;
    grpc::ByteBuffer empty;
    out->Swap(&empty);
    return;
  }
  group->live.store(pieces.size(), std::memory_order_relaxed);
  std::vector<grpc::Slice> slices;
  slices.reserve(pieces.size());
  for (const Piece& p : pieces) {
    char* data = p.data == nullptr ? f.data() + p.begin : const_cast<char*>(p.data);
    slices.emplace_back(data, p.size, ReleaseFromBatchGroup, group);
  }
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  out->Swap(&buffer);
}

}  // namespace kvkeep
