// Query statistics of a prefill, captured through llama.cpp's eval callback
// (llama_context_params::cb_eval): per layer, the post-RoPE queries ("Qcur-<layer>", the ROPE
// node), the pre-RoPE queries (the "Qcur-<layer>" matmul) and the attention weights
// ("kq_soft_max-<layer>", flash attention off). Stats() turns them into the LayerStats kvkeep's
// scorers read (proto/kvkeep/v1/common.proto): window queries, query moments (sinks excluded) and
// the attention mass each key cell received.
//
// Cells are read as positions: valid for a prefill into an empty sequence of a fresh context,
// where llama.cpp puts position p in cell p. Not thread-safe: the callback runs on the thread that
// calls llama_decode, which is the thread that owns the runtime.
#ifndef KVKEEP_ENGINES_LLAMA_QUERY_CAPTURE_H_
#define KVKEEP_ENGINES_LLAMA_QUERY_CAPTURE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kvkeep/v1/common.pb.h"

struct ggml_tensor;

namespace kvkeep::llama {

class QueryCapture {
 public:
  void Configure(uint32_t layers, uint32_t q_heads, uint32_t head_dim);
  // Starts capturing (Reset drops what was captured); Stop leaves the data for Stats().
  void Start();
  void Stop() { active_ = false; }
  bool active() const { return active_; }
  // Called by the runtime before each llama_decode.
  void BeginBatch(int32_t first_pos, int32_t tokens);
  // OK unless a captured tensor had an unexpected shape.
  absl::Status status() const { return status_; }

  // Statistics for a sequence of `tokens` cells: the last min(window, tokens) post-RoPE queries,
  // the pre-RoPE moments of positions >= sinks, and the attention mass when it was captured.
  std::vector<v1::LayerStats> Stats(uint32_t tokens, uint32_t sinks, uint32_t window) const;
  bool has_attention_mass() const { return has_mass_; }

  static bool EvalCallback(ggml_tensor* t, bool ask, void* user);

 private:
  void OnTensor(ggml_tensor* t, int kind, uint32_t layer);

  uint32_t layers_ = 0, q_heads_ = 0, head_dim_ = 0;
  bool active_ = false;
  bool has_mass_ = false;
  int32_t batch_first_pos_ = 0;
  absl::Status status_;
  // Per layer: post-RoPE queries by position [pos][q_heads][head_dim]; pre-RoPE likewise;
  // attention mass [q_heads][cells] (grown as needed).
  std::vector<std::vector<float>> post_, pre_, mass_;
  std::vector<float> scratch_;
};

}  // namespace kvkeep::llama

#endif  // KVKEEP_ENGINES_LLAMA_QUERY_CAPTURE_H_
