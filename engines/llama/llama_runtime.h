// One llama.cpp model and context, as kvkeep-llama drives it: tokenise, decode, read the logits,
// export and import a sequence's state, drop cells, and capture the query statistics of a prefill
// through the eval callback (query_capture.h).
//
//   ASSIGN_OR_RETURN(auto rt, LlamaRuntime::Load({.model_path = "m.gguf"}));
//   ASSIGN_OR_RETURN(auto tokens, rt->Tokenize("Hello"));
//   RETURN_IF_ERROR(rt->Decode(tokens, 0));           // positions 0..n-1 of sequence 0
//   std::vector<float> logits = rt->LastLogits();
//
// Runs one sequence (id 0) on the CPU, F16 keys and values, flash attention off (so the eval
// callback sees the attention weights). Not thread-safe: one thread drives a runtime.
#ifndef KVKEEP_ENGINES_LLAMA_LLAMA_RUNTIME_H_
#define KVKEEP_ENGINES_LLAMA_LLAMA_RUNTIME_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engines/llama/query_capture.h"
#include "engines/llama/state_format.h"

struct llama_model;
struct llama_context;

namespace kvkeep::llama {

struct ModelShape {
  uint32_t layers = 0, q_heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
  double rope_theta = 10000;
  bool rope_interleaved = true;  // llama.cpp's "norm" rope rotates pairs (2i, 2i+1)
  CacheShape cache() const { return {layers, kv_heads, head_dim, 2}; }
};

struct RuntimeOptions {
  std::string model_path;
  uint32_t context = 2048;  // cells; one prefill ubatch holds up to this many tokens
  int threads = 2;
  bool capture = false;  // install the eval callback (query statistics of each Decode)
};

class LlamaRuntime {
 public:
  // Loads the ggml CPU backends from the pinned library folder, checks llama_version(), loads the
  // model. FAILED_PRECONDITION (version), INVALID_ARGUMENT (a model that is not a plain
  // Llama-style decoder with F16-capable KV cache), NOT_FOUND (file).
  static absl::StatusOr<std::unique_ptr<LlamaRuntime>> Load(const RuntimeOptions& options);
  ~LlamaRuntime();

  const ModelShape& shape() const { return shape_; }
  QueryCapture& capture() { return capture_; }

  absl::StatusOr<std::vector<int32_t>> Tokenize(const std::string& text, bool add_bos = true) const;
  std::string Detokenize(const std::vector<int32_t>& tokens) const;

  // Decodes `tokens` at positions first_pos.. in sequence 0; logits of the last token only.
  absl::Status Decode(const std::vector<int32_t>& tokens, int32_t first_pos);
  // Logits of the last decoded token (vocab floats).
  std::vector<float> LastLogits() const;

  // The sequence's state (state_format.h) and back; SetState replaces the sequence.
  absl::StatusOr<std::string> GetState() const;
  absl::Status SetState(const std::string& bytes);
  // Removes the cells at positions [p0, p1).
  absl::Status RemoveCells(int32_t p0, int32_t p1);
  void Clear();

 private:
  LlamaRuntime() = default;
  llama_model* model_ = nullptr;
  llama_context* ctx_ = nullptr;
  ModelShape shape_;
  QueryCapture capture_;
};

// Index of the largest logit (lowest index on ties).
int32_t ArgMax(const std::vector<float>& logits);

}  // namespace kvkeep::llama

#endif  // KVKEEP_ENGINES_LLAMA_LLAMA_RUNTIME_H_
