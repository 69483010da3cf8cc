// A registered model: its KV layout, the page geometry it implies, and optional W_O Grams.
//
//   ASSIGN_OR_RETURN(Model model, Model::FromLayout(layout_proto));
//   uint64_t bytes = model.geometry().page_bytes;
//
// Immutable after registration (shared as shared_ptr<const Model>), except for Gram matrices,
// which RegisterModel adds before publishing.
#ifndef KVKEEP_SERVICE_ENGINE_MODEL_LAYOUT_H_
#define KVKEEP_SERVICE_ENGINE_MODEL_LAYOUT_H_

#include <cstdint>
#include <map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep {

// Bytes per element of a dtype; 0 for DTYPE_UNSPECIFIED or unknown values.
uint32_t DTypeSize(v1::DType dtype);

struct PageGeometry {
  uint32_t tokens_per_page = 0;
  uint32_t head_dim = 0;
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  uint64_t token_bytes = 0;   // head_dim * sizeof(dtype): one key (or one value)
  uint64_t value_offset = 0;  // tokens_per_page * token_bytes
  uint64_t page_bytes = 0;    // 2 * value_offset

  bool operator==(const PageGeometry& o) const {
    return tokens_per_page == o.tokens_per_page && head_dim == o.head_dim && dtype == o.dtype;
  }
  static PageGeometry Of(uint32_t tokens_per_page, uint32_t head_dim, v1::DType dtype);
  void ToProto(v1::PageGeometry* out) const;
};

class Model {
 public:
  // INVALID_ARGUMENT with the offending field for any inconsistent layout.
  static absl::StatusOr<Model> FromLayout(const v1::ModelLayout& layout);

  const v1::ModelLayout& layout() const { return layout_; }
  const std::string& name() const { return layout_.name(); }
  const PageGeometry& geometry() const { return geometry_; }
  uint32_t layers() const { return layout_.layers(); }
  uint32_t kv_heads() const { return layout_.kv_heads(); }
  uint32_t q_heads() const { return layout_.q_heads(); }
  uint32_t head_dim() const { return layout_.head_dim(); }
  uint32_t head_tables() const { return layers() * kv_heads(); }

  // Adds W_O^h W_O^hᵀ of (layer, q_head). INVALID_ARGUMENT for out-of-range indices, a wrong
  // element count (head_dim²) or non-finite values.
  absl::Status AddWoGram(const v1::WoGram& gram);
  // nullptr when no Gram was registered for (layer, q_head).
  const std::vector<float>* Gram(uint32_t layer, uint32_t q_head) const;
  std::size_t wo_gram_count() const { return grams_.size(); }
  // Heap the model holds beyond sizeof(Model): its layout message and its Grams
  // (metadata_charge.h).
  uint64_t HeldBytes() const;

  // Same layout (field by field, including RoPE), ignoring Grams.
  bool SameLayout(const v1::ModelLayout& other) const;

 private:
  v1::ModelLayout layout_;
  PageGeometry geometry_;
  std::map<std::pair<uint32_t, uint32_t>, std::vector<float>> grams_;
};

// [A-Za-z0-9._-]{1,64}
bool ValidModelName(const std::string& name);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_MODEL_LAYOUT_H_
