#include "service/engine/model_layout.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "google/protobuf/util/message_differencer.h"

namespace kvkeep {

// Limits that keep every product below in uint64 range and reject absurd layouts early.
constexpr uint32_t kMaxLayers = 1024;
constexpr uint32_t kMaxHeads = 1024;
constexpr uint32_t kMaxHeadDim = 1024;
constexpr uint32_t kMaxTokensPerPage = 65536;

uint32_t DTypeSize(v1::DType dtype) {
  switch (dtype) {
    case v1::DTYPE_FP16:
    case v1::DTYPE_BF16:
      return 2;
    case v1::DTYPE_FP32:
      return 4;
    default:
      return 0;
  }
}

PageGeometry PageGeometry::Of(uint32_t tokens_per_page, uint32_t head_dim, v1::DType dtype) {
  PageGeometry g;
  g.tokens_per_page = tokens_per_page;
  g.head_dim = head_dim;
  g.dtype = dtype;
  g.token_bytes = uint64_t{head_dim} * DTypeSize(dtype);
  g.value_offset = uint64_t{tokens_per_page} * g.token_bytes;
  g.page_bytes = 2 * g.value_offset;
  return g;
}

void PageGeometry::ToProto(v1::PageGeometry* out) const {
  out->set_tokens_per_page(tokens_per_page);
  out->set_head_dim(head_dim);
  out->set_dtype(dtype);
  out->set_page_bytes(page_bytes);
  out->set_value_offset(value_offset);
}

bool ValidModelName(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

absl::StatusOr<Model> Model::FromLayout(const v1::ModelLayout& layout) {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (!ValidModelName(layout.name())) {
    return bad("model name \"", layout.name(), "\" must match [A-Za-z0-9._-]{1,64}");
  }
  if (layout.layers() == 0 || layout.layers() > kMaxLayers) {
    return bad("layers = ", layout.layers(), " (must be 1..", kMaxLayers, ")");
  }
  if (layout.q_heads() == 0 || layout.q_heads() > kMaxHeads) {
    return bad("q_heads = ", layout.q_heads(), " (must be 1..", kMaxHeads, ")");
  }
  if (layout.kv_heads() == 0 || layout.kv_heads() > layout.q_heads() ||
      layout.q_heads() % layout.kv_heads() != 0) {
    return bad("kv_heads = ", layout.kv_heads(), " must divide q_heads = ", layout.q_heads());
  }
  if (layout.head_dim() == 0 || layout.head_dim() > kMaxHeadDim || layout.head_dim() % 2 != 0) {
    return bad("head_dim = ", layout.head_dim(), " (must be even, 2..", kMaxHeadDim, ")");
  }
  if (DTypeSize(layout.dtype()) == 0) {
    return bad("dtype ", static_cast<int>(layout.dtype()), " is not one of fp16, bf16, fp32");
  }
  if (layout.tokens_per_page() == 0 || layout.tokens_per_page() > kMaxTokensPerPage) {
    return bad("tokens_per_page = ", layout.tokens_per_page(), " (must be 1..", kMaxTokensPerPage,
               ")");
  }
  const auto& rope = layout.rope();
  if (!std::isfinite(rope.theta()) || rope.theta() < 0) {
    return bad("rope.theta must be a finite number >= 0");
  }
  uint32_t rotary = rope.rotary_dim() == 0 ? layout.head_dim() : rope.rotary_dim();
  if (rotary > layout.head_dim() || rotary % 2 != 0) {
    return bad("rope.rotary_dim = ", rope.rotary_dim(), " must be even and <= head_dim");
  }
  if (rope.inv_freq_size() != 0 && static_cast<uint32_t>(rope.inv_freq_size()) != rotary / 2) {
    return bad("rope.inv_freq has ", rope.inv_freq_size(), " entries, expected rotary_dim/2 = ",
               rotary / 2);
  }
  for (float f : rope.inv_freq()) {
    if (!std::isfinite(f)) return bad("rope.inv_freq holds a non-finite value");
  }
  Model model;
  model.layout_ = layout;
  model.geometry_ =
      PageGeometry::Of(layout.tokens_per_page(), layout.head_dim(), layout.dtype());
  return model;
}

absl::Status Model::AddWoGram(const v1::WoGram& gram) {
  if (gram.layer() >= layers() || gram.q_head() >= q_heads()) {
    return absl::InvalidArgumentError(absl::StrCat("W_O Gram for layer ", gram.layer(), ", q_head ",
                                                   gram.q_head(), " is outside the model (",
                                                   layers(), " layers, ", q_heads(), " q heads)"));
  }
  const uint64_t want = uint64_t{head_dim()} * head_dim();
  if (static_cast<uint64_t>(gram.values_size()) != want) {
    return absl::InvalidArgumentError(absl::StrCat("W_O Gram for layer ", gram.layer(), ", q_head ",
                                                   gram.q_head(), " has ", gram.values_size(),
                                                   " values, expected head_dim² = ", want));
  }
  for (float v : gram.values()) {
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat("W_O Gram for layer ", gram.layer(),
                                                     " holds NaN or Inf"));
    }
  }
  grams_[{gram.layer(), gram.q_head()}].assign(gram.values().begin(), gram.values().end());
  return absl::OkStatus();
}

const std::vector<float>* Model::Gram(uint32_t layer, uint32_t q_head) const {
  auto it = grams_.find({layer, q_head});
  return it == grams_.end() ? nullptr : &it->second;
}

bool Model::SameLayout(const v1::ModelLayout& other) const {
  return google::protobuf::util::MessageDifferencer::Equals(layout_, other);
}

uint64_t Model::HeldBytes() const {
  // Each map node: the key, the vector, and the tree links (four pointers and a color, rounded).
  constexpr uint64_t kNode = 64;
  uint64_t bytes = layout_.SpaceUsedLong();
  for (const auto& [key, gram] : grams_) bytes += kNode + gram.capacity() * sizeof(float);
  return bytes;
}

}  // namespace kvkeep
