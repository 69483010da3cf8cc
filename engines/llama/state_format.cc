#include "engines/llama/state_format.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvkeep::llama {
namespace {

// Sequential reader over the state bytes; every read checks the remaining size.
class Reader {
 public:
  explicit Reader(absl::Span<const uint8_t> b) : b_(b) {}
  template <typename T>
  absl::StatusOr<T> Get(absl::string_view what) {
    if (b_.size() - at_ < sizeof(T)) return Short(what, sizeof(T));
    T v;
    std::memcpy(&v, b_.data() + at_, sizeof(T));
    at_ += sizeof(T);
    return v;
  }
  absl::StatusOr<const uint8_t*> Take(uint64_t n, absl::string_view what) {
    if (b_.size() - at_ < n) return Short(what, n);
    const uint8_t* p = b_.data() + at_;
    at_ += n;
    return p;
  }
  size_t left() const { return b_.size() - at_; }

 private:
  absl::Status Short(absl::string_view what, uint64_t n) const {
    return absl::InvalidArgumentError(absl::StrCat("llama.cpp sequence state ends inside ", what,
                                                   " (needs ", n, " bytes at offset ", at_,
                                                   ", has ", b_.size() - at_, ")"));
  }
  absl::Span<const uint8_t> b_;
  size_t at_ = 0;
};

absl::Status Mismatch(absl::string_view field, uint64_t got, uint64_t want) {
  return absl::InvalidArgumentError(absl::StrCat("llama.cpp sequence state: ", field, " is ", got,
                                                 ", the model's cache needs ", want));
}

}  // namespace

absl::Status CheckLlamaVersion(absl::string_view version) {
  if (version == kPinnedLlamaVersion) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      "libllama is version ", version,
      "; kvkeep-llama reads the sequence state format of llama.cpp ", kPinnedLlamaVersion,
      " (node-llama-cpp 3.21.1) only: reinstall with deploy/install-deps"));
}

absl::StatusOr<SeqState> SeqState::Parse(absl::Span<const uint8_t> bytes, const CacheShape& shape) {
  Reader r(bytes);
  SeqState s;
  s.shape_ = shape;
  ASSIGN_OR_RETURN(const auto magic, r.Get<uint32_t>("magic"));
  if (magic != kStateMagic) {
    return absl::FailedPreconditionError(absl::StrCat(
        "llama.cpp sequence state starts with magic 0x", absl::Hex(magic), ", not 0x",
        absl::Hex(kStateMagic), ": not a sequence state of llama.cpp ", kPinnedLlamaVersion));
  }
  ASSIGN_OR_RETURN(const auto state_seq, r.Get<int32_t>("seq_id"));
  (void)state_seq;
  ASSIGN_OR_RETURN(const auto n_stream, r.Get<uint32_t>("n_stream"));
  if (n_stream != 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("llama.cpp sequence state has ", n_stream,
                     " streams; kvkeep-llama runs one (n_seq_max 1)"));
  }
  ASSIGN_OR_RETURN(const auto cells, r.Get<uint32_t>("cell_count"));
  if (cells == 0) return absl::InvalidArgumentError("llama.cpp sequence state holds no cells");
  s.positions_.reserve(cells);
  for (uint32_t i = 0; i < cells; ++i) {
    ASSIGN_OR_RETURN(const auto pos, r.Get<int32_t>("a cell's position"));
    ASSIGN_OR_RETURN(const auto n_seq, r.Get<uint32_t>("a cell's n_seq_id"));
    if (n_seq != 1) return Mismatch(absl::StrCat("n_seq_id of cell ", i), n_seq, 1);
    ASSIGN_OR_RETURN(const auto seq_id, r.Get<int32_t>("a cell's seq_id"));
    (void)seq_id;
    if (!s.positions_.empty() && pos <= s.positions_.back()) {
      return absl::InvalidArgumentError(
          absl::StrCat("llama.cpp sequence state: positions are not ascending at cell ", i, " (",
                       pos, " after ", s.positions_.back(), ")"));
    }
    s.positions_.push_back(pos);
  }
  ASSIGN_OR_RETURN(const auto v_trans, r.Get<uint32_t>("v_trans"));
  if (v_trans > 1) return Mismatch("v_trans", v_trans, 1);
  s.v_trans_ = v_trans == 1;
  ASSIGN_OR_RETURN(const auto n_layer, r.Get<uint32_t>("n_layer"));
  if (n_layer != shape.layers) return Mismatch("n_layer", n_layer, shape.layers);
  const uint64_t row = shape.row_bytes();
  for (uint32_t l = 0; l < n_layer; ++l) {
    ASSIGN_OR_RETURN(const auto k_type, r.Get<int32_t>("k_type"));
    if (k_type != kGgmlTypeF16)
      return Mismatch(absl::StrCat("k_type of layer ", l), k_type, kGgmlTypeF16);
    ASSIGN_OR_RETURN(const auto k_row, r.Get<uint64_t>("k_row_bytes"));
    if (k_row != row) return Mismatch(absl::StrCat("key row bytes of layer ", l), k_row, row);
    ASSIGN_OR_RETURN(const auto k, r.Take(row * cells, "keys"));
    s.keys_.push_back(k);
  }
  for (uint32_t l = 0; l < n_layer; ++l) {
    ASSIGN_OR_RETURN(const auto v_type, r.Get<int32_t>("v_type"));
    if (v_type != kGgmlTypeF16)
      return Mismatch(absl::StrCat("v_type of layer ", l), v_type, kGgmlTypeF16);
    if (!s.v_trans_) {
      ASSIGN_OR_RETURN(const auto v_row, r.Get<uint64_t>("v_row_bytes"));
      if (v_row != row) return Mismatch(absl::StrCat("value row bytes of layer ", l), v_row, row);
    } else {
      ASSIGN_OR_RETURN(const auto el, r.Get<uint32_t>("v_elem_bytes"));
      if (el != shape.elem_bytes)
        return Mismatch(absl::StrCat("value element bytes of layer ", l), el, shape.elem_bytes);
      ASSIGN_OR_RETURN(const auto n_embd, r.Get<uint32_t>("n_embd_v_gqa"));
      const uint64_t want = uint64_t{shape.kv_heads} * shape.head_dim;
      if (n_embd != want) return Mismatch(absl::StrCat("n_embd_v_gqa of layer ", l), n_embd, want);
    }
    ASSIGN_OR_RETURN(const auto v, r.Take(row * cells, "values"));
    s.values_.push_back(v);
  }
  if (r.left() != 0) {
    return absl::InvalidArgumentError(absl::StrCat("llama.cpp sequence state has ", r.left(),
                                                   " bytes after the last layer's values"));
  }
  return s;
}

void SeqState::CopyHeadKeys(uint32_t layer, uint32_t head, uint8_t* out) const {
  const uint64_t row = shape_.row_bytes();
  const uint64_t head_bytes = uint64_t{shape_.head_dim} * shape_.elem_bytes;
  const uint8_t* src = keys_[layer] + head * head_bytes;
  for (uint32_t c = 0; c < cells(); ++c)
    std::memcpy(out + c * head_bytes, src + c * row, head_bytes);
}

void SeqState::CopyHeadValues(uint32_t layer, uint32_t head, uint8_t* out) const {
  const uint32_t el = shape_.elem_bytes;
  const uint64_t head_bytes = uint64_t{shape_.head_dim} * el;
  if (!v_trans_) {
    const uint64_t row = shape_.row_bytes();
    const uint8_t* src = values_[layer] + head * head_bytes;
    for (uint32_t c = 0; c < cells(); ++c)
      std::memcpy(out + c * head_bytes, src + c * row, head_bytes);
    return;
  }
  // Transposed: element e of every cell is one run of cells() elements.
  const uint32_t n = cells();
  for (uint32_t d = 0; d < shape_.head_dim; ++d) {
    const uint8_t* run = values_[layer] + (uint64_t{head} * shape_.head_dim + d) * n * el;
    for (uint32_t c = 0; c < n; ++c) std::memcpy(out + c * head_bytes + d * el, run + c * el, el);
  }
}

SeqStateWriter::SeqStateWriter(const CacheShape& shape, std::vector<int32_t> positions,
                               int32_t seq_id, bool v_trans)
    : shape_(shape), cells_(static_cast<uint32_t>(positions.size())), v_trans_(v_trans) {
  auto put = [&](const auto& v) { bytes_.append(reinterpret_cast<const char*>(&v), sizeof(v)); };
  const uint64_t data = shape.row_bytes() * cells_;
  bytes_.reserve(24 + positions.size() * 12 + shape.layers * (2 * data + 40));
  put(kStateMagic);
  put(seq_id);
  put(uint32_t{1});
  put(cells_);
  for (int32_t p : positions) {
    put(p);
    put(uint32_t{1});
    put(seq_id);
  }
  put(uint32_t{v_trans ? 1u : 0u});
  put(shape.layers);
  for (uint32_t l = 0; l < shape.layers; ++l) {
    put(kGgmlTypeF16);
    put(shape.row_bytes());
    key_offset_.push_back(bytes_.size());
    bytes_.append(data, '\0');
  }
  for (uint32_t l = 0; l < shape.layers; ++l) {
    put(kGgmlTypeF16);
    if (!v_trans) {
      put(shape.row_bytes());
    } else {
      put(shape.elem_bytes);
      put(static_cast<uint32_t>(shape.kv_heads * shape.head_dim));
    }
    value_offset_.push_back(bytes_.size());
    bytes_.append(data, '\0');
  }
}

void SeqStateWriter::SetHead(uint32_t layer, uint32_t head, const uint8_t* keys,
                             const uint8_t* values) {
  const uint32_t el = shape_.elem_bytes;
  const uint64_t row = shape_.row_bytes();
  const uint64_t head_bytes = uint64_t{shape_.head_dim} * el;
  uint8_t* k = reinterpret_cast<uint8_t*>(bytes_.data()) + key_offset_[layer] + head * head_bytes;
  for (uint32_t c = 0; c < cells_; ++c) std::memcpy(k + c * row, keys + c * head_bytes, head_bytes);
  uint8_t* v = reinterpret_cast<uint8_t*>(bytes_.data()) + value_offset_[layer];
  if (!v_trans_) {
    v += head * head_bytes;
    for (uint32_t c = 0; c < cells_; ++c)
      std::memcpy(v + c * row, values + c * head_bytes, head_bytes);
    return;
  }
  for (uint32_t d = 0; d < shape_.head_dim; ++d) {
    uint8_t* run = v + (uint64_t{head} * shape_.head_dim + d) * cells_ * el;
    for (uint32_t c = 0; c < cells_; ++c)
      std::memcpy(run + c * el, values + c * head_bytes + d * el, el);
  }
}

}  // namespace kvkeep::llama
