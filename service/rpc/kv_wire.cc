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

  bool done() const { return index_ == slices_.size(); }

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
    while (n > 0) {
      if (done()) return false;
      const uint64_t take = std::min<uint64_t>(n, slices_[index_].size() - offset_);
      Advance(take);
      n -= take;
    }
    return true;
  }

 private:
  void Advance(uint64_t n) {
    offset_ += n;
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
  out->header.Clear();
  out->keys.clear();
  out->values.clear();
  out->key_bytes = out->value_bytes = 0;
  out->slices.clear();
  grpc::Status dumped = buffer.Dump(&out->slices);
  if (!dumped.ok()) return absl::InternalError("cannot read the received message");
  SliceCursor in(out->slices);
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

}  // namespace kvkeep
