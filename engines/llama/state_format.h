// The sequence state of the pinned llama.cpp (0.4.0-dev, node-llama-cpp 3.21.1): the bytes that
// llama_state_seq_get_data writes and llama_state_seq_set_data reads, for a plain KV cache
// (llama_context::state_seq_get_data in src/llama-context.cpp, then llama_kv_cache::state_write /
// state_read in src/llama-kv-cache.cpp of that release).
//
//   u32 magic 0xaf143cd8, i32 seq_id
//   u32 n_stream (1 here)
//   u32 cell_count
//   cell_count × { i32 pos, u32 n_seq_id (1), i32 seq_id }
//   u32 v_trans, u32 n_layer
//   n_layer × { i32 k_type, u64 k_row_bytes, cell_count rows of k_row_bytes }
//   v_trans = 0: n_layer × { i32 v_type, u64 v_row_bytes, cell_count rows }
//   v_trans = 1: n_layer × { i32 v_type, u32 v_elem_bytes, u32 n_embd_v,
//                            n_embd_v runs of cell_count elements (the transposed V) }
//
// A key row of a cell is [kv_heads][head_dim]; so is a value row. The format carries no version,
// so the library's llama_version() is checked against the pinned one and every field is checked
// against the model's shape; anything else is refused with an error that says what differs.
// Plain functions and values: thread-compatible.
#ifndef KVKEEP_ENGINES_LLAMA_STATE_FORMAT_H_
#define KVKEEP_ENGINES_LLAMA_STATE_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

namespace kvkeep::llama {

// The llama.cpp release whose state format this module reads, as its llama_version() says.
inline constexpr absl::string_view kPinnedLlamaVersion = "0.4.0-dev";
inline constexpr int32_t kGgmlTypeF16 = 1;           // ggml_type GGML_TYPE_F16
inline constexpr uint32_t kStateMagic = 0xaf143cd8;  // io_magic of llama-context.cpp

// FAILED_PRECONDITION naming both versions unless `version` is the pinned one.
absl::Status CheckLlamaVersion(absl::string_view version);

// What the model says the cache holds. Only F16 keys and values are supported.
struct CacheShape {
  uint32_t layers = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t elem_bytes = 2;  // F16
  uint64_t row_bytes() const { return uint64_t{kv_heads} * head_dim * elem_bytes; }
};

// A parsed state: views into the caller's bytes (valid while they are).
class SeqState {
 public:
  // INVALID_ARGUMENT (or FAILED_PRECONDITION for what this release does not write) naming the
  // first field that does not match `shape`, or a size that does not add up.
  static absl::StatusOr<SeqState> Parse(absl::Span<const uint8_t> bytes, const CacheShape& shape);

  uint32_t cells() const { return static_cast<uint32_t>(positions_.size()); }
  const std::vector<int32_t>& positions() const { return positions_; }
  bool v_trans() const { return v_trans_; }
  // Keys / values of one (layer, KV head) for every cell: [cells][head_dim] into `out`
  // (cells() * head_dim * elem_bytes bytes).
  void CopyHeadKeys(uint32_t layer, uint32_t head, uint8_t* out) const;
  void CopyHeadValues(uint32_t layer, uint32_t head, uint8_t* out) const;

 private:
  CacheShape shape_;
  std::vector<int32_t> positions_;
  bool v_trans_ = false;
  std::vector<const uint8_t*> keys_;    // per layer: cells rows of row_bytes
  std::vector<const uint8_t*> values_;  // per layer: rows, or n_embd_v runs of cells elements
};

// Builds the bytes llama_state_seq_set_data reads, head by head.
class SeqStateWriter {
 public:
  SeqStateWriter(const CacheShape& shape, std::vector<int32_t> positions, int32_t seq_id,
                 bool v_trans);
  uint32_t cells() const { return cells_; }
  // Keys / values of one (layer, KV head): [cells][head_dim].
  void SetHead(uint32_t layer, uint32_t head, const uint8_t* keys, const uint8_t* values);
  const std::string& bytes() const { return bytes_; }

 private:
  CacheShape shape_;
  uint32_t cells_;
  bool v_trans_;
  std::string bytes_;
  std::vector<size_t> key_offset_;    // per layer, into bytes_
  std::vector<size_t> value_offset_;  // per layer
};

}  // namespace kvkeep::llama

#endif  // KVKEEP_ENGINES_LLAMA_STATE_FORMAT_H_
