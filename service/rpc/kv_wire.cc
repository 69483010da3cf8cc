#include "service/rpc/kv_wire.h"

#include <algorithm>
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
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!ReadByte(&b)) return false;
      *v |= uint64_t{b & 0x7fu} << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;
  }

  // `n` bytes as one view: into the slice when they lie in it, else copied into `scratch`.
  bool ReadBytes(uint64_t n, std::string* scratch, absl::string_view* out) {
    if (n == 0) {
      *out = absl::string_view();
      return true;
    }
    if (done()) return false;
    const grpc::Slice& s = slices_[index_];
    if (s.size() - offset_ >= n) {
      *out = absl::string_view(reinterpret_cast<const char*>(s.begin()) + offset_, n);
      Advance(n);
      return true;
    }
    scratch->resize(n);
    uint64_t got = 0;
    while (got < n) {
      if (done()) return false;
      const grpc::Slice& piece = slices_[index_];
      const uint64_t take = std::min<uint64_t>(n - got, piece.size() - offset_);
      std::memcpy(scratch->data() + got, piece.begin() + offset_, take);
      got += take;
      Advance(take);
    }
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
};

absl::Status Malformed(uint32_t field) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed KvChunk encoding (field ", field, ")"));
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
      if (!in.ReadVarint(&v) || !in.ReadBytes(v, scratch, &bytes)) return false;
      if (field == 1) h->set_session_id(std::string(bytes));
      if (field == 2) h->set_sequence_id(std::string(bytes));
      if (field == 9) h->add_positions(0);  // packed positions: a ReadKV field, refused later
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

void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

}  // namespace

absl::Status ParseKvChunk(const grpc::ByteBuffer& buffer, ParsedKvChunk* out) {
  out->header.Clear();
  out->keys = out->values = absl::string_view();
  out->slices.clear();
  grpc::Status dumped = buffer.Dump(&out->slices);
  if (!dumped.ok()) return absl::InternalError("cannot read the received message");
  SliceCursor in(out->slices);
  std::string field_scratch;
  while (!in.done()) {
    uint64_t tag = 0;
    if (!in.ReadVarint(&tag)) return Malformed(0);
    const uint32_t field = static_cast<uint32_t>(tag >> 3);
    const uint32_t wire = static_cast<uint32_t>(tag & 7);
    if ((field == 7 || field == 8) && wire == 2) {
      uint64_t n = 0;
      const bool keys = field == 7;
      if (!in.ReadVarint(&n) ||
          !in.ReadBytes(n, keys ? &out->scratch_keys : &out->scratch_values,
                        keys ? &out->keys : &out->values)) {
        return Malformed(field);
      }
      continue;
    }
    if (field == 0 || !ParseHeaderField(in, field, wire, &out->header, &field_scratch)) {
      return Malformed(field);
    }
  }
  return absl::OkStatus();
}

void SerializeKvChunk(v1::KvChunk* chunk, grpc::ByteBuffer* out) {
  std::string keys = std::move(*chunk->mutable_keys());
  std::string values = std::move(*chunk->mutable_values());
  chunk->clear_keys();
  chunk->clear_values();
  std::string head = chunk->SerializeAsString();
  std::vector<grpc::Slice> slices;
  slices.reserve(4);
  auto append_field = [&](uint32_t field, std::string&& bytes) {
    if (bytes.empty()) return;
    head.push_back(static_cast<char>((field << 3) | 2));
    AppendVarint(bytes.size(), &head);
    slices.push_back(OwningSlice(std::move(head)));
    head.clear();
    slices.push_back(OwningSlice(std::move(bytes)));
  };
  append_field(7, std::move(keys));
  append_field(8, std::move(values));
  if (!head.empty() || slices.empty()) slices.push_back(grpc::Slice(head));
  grpc::ByteBuffer buffer(slices.data(), slices.size());
  out->Swap(&buffer);
}

}  // namespace kvkeep
