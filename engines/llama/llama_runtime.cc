#include "engines/llama/llama_runtime.h"

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "ggml-backend.h"
#include "llama.h"

namespace kvkeep::llama {
namespace {

void QuietLog(ggml_log_level level, const char* text, void*) {
  if (level == GGML_LOG_LEVEL_ERROR && std::getenv("KVKEEP_LLAMA_QUIET") == nullptr) {
    fputs(text, stderr);
  }
}

std::string Meta(const llama_model* model, const std::string& key) {
  char buf[256];
  const int n = llama_model_meta_val_str(model, key.c_str(), buf, sizeof(buf));
  return n < 0 ? "" : std::string(buf);
}

// The folder of the ggml CPU backends (libggml-cpu-*.so): KVKEEP_LLAMA_LIB_DIR, else the one
// CMake found.
std::string BackendDir() {
  const char* env = std::getenv("KVKEEP_LLAMA_LIB_DIR");
  return env != nullptr ? env : KVKEEP_LLAMA_LIB_DIR;
}

}  // namespace

int32_t ArgMax(const std::vector<float>& logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

absl::StatusOr<std::unique_ptr<LlamaRuntime>> LlamaRuntime::Load(const RuntimeOptions& options) {
  static const bool backends_loaded = [] {
    llama_log_set(QuietLog, nullptr);
    ggml_backend_load_all_from_path(BackendDir().c_str());
    llama_backend_init();
    return true;
  }();
  (void)backends_loaded;
  RETURN_IF_ERROR(CheckLlamaVersion(llama_version()));
  if (ggml_backend_dev_count() == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no ggml backend could be loaded from ", BackendDir(), " (libggml-cpu-*.so)"));
  }
  if (!std::filesystem::exists(options.model_path)) {
    return absl::NotFoundError(absl::StrCat("model file ", options.model_path, " does not exist"));
  }
  std::unique_ptr<LlamaRuntime> rt(new LlamaRuntime());
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  rt->model_ = llama_model_load_from_file(options.model_path.c_str(), mp);
  if (rt->model_ == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("llama.cpp could not load ", options.model_path, " (not a GGUF model?)"));
  }
  const std::string arch = Meta(rt->model_, "general.architecture");
  if (arch != "llama") {
    return absl::InvalidArgumentError(absl::StrCat(
        "model architecture is \"", arch, "\"; kvkeep-llama runs Llama-architecture models"));
  }
  ModelShape& s = rt->shape_;
  s.layers = static_cast<uint32_t>(llama_model_n_layer(rt->model_));
  s.q_heads = static_cast<uint32_t>(llama_model_n_head(rt->model_));
  s.kv_heads = static_cast<uint32_t>(llama_model_n_head_kv(rt->model_));
  const std::string key_length = Meta(rt->model_, "llama.attention.key_length");
  s.head_dim = key_length.empty()
                   ? static_cast<uint32_t>(llama_model_n_embd(rt->model_)) / s.q_heads
                   : static_cast<uint32_t>(std::stoul(key_length));
  const std::string theta = Meta(rt->model_, "llama.rope.freq_base");
  if (!theta.empty()) s.rope_theta = std::stod(theta);
  s.rope_interleaved = llama_model_rope_type(rt->model_) == LLAMA_ROPE_TYPE_NORM;
  s.vocab = static_cast<uint32_t>(llama_vocab_n_tokens(llama_model_get_vocab(rt->model_)));

  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = options.context;
  cp.n_batch = options.context;
  cp.n_ubatch = options.context;
  cp.n_seq_max = 1;
  cp.n_threads = options.threads;
  cp.n_threads_batch = options.threads;
  cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  cp.type_k = GGML_TYPE_F16;
  cp.type_v = GGML_TYPE_F16;
  cp.no_perf = true;
  if (options.capture) {
    rt->capture_.Configure(s.layers, s.q_heads, s.head_dim);
    cp.cb_eval = &QueryCapture::EvalCallback;
    cp.cb_eval_user_data = &rt->capture_;
  }
  rt->ctx_ = llama_init_from_model(rt->model_, cp);
  if (rt->ctx_ == nullptr) return absl::InternalError("llama.cpp could not create a context");
  return rt;
}

LlamaRuntime::~LlamaRuntime() {
  if (ctx_ != nullptr) llama_free(ctx_);
  if (model_ != nullptr) llama_model_free(model_);
}

absl::StatusOr<std::vector<int32_t>> LlamaRuntime::Tokenize(const std::string& text,
                                                            bool add_bos) const {
  const llama_vocab* vocab = llama_model_get_vocab(model_);
  std::vector<llama_token> out(text.size() + 8);
  int n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), out.data(),
                         static_cast<int32_t>(out.size()), add_bos, false);
  if (n < 0) {
    out.resize(-n);
    n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), out.data(),
                       static_cast<int32_t>(out.size()), add_bos, false);
  }
  if (n < 0) return absl::InvalidArgumentError("llama.cpp could not tokenise the prompt");
  out.resize(n);
  return std::vector<int32_t>(out.begin(), out.end());
}

std::string LlamaRuntime::Detokenize(const std::vector<int32_t>& tokens) const {
  const llama_vocab* vocab = llama_model_get_vocab(model_);
  std::string out(tokens.size() * 8 + 16, '\0');
  int n = llama_detokenize(vocab, tokens.data(), static_cast<int32_t>(tokens.size()), out.data(),
                           static_cast<int32_t>(out.size()), false, false);
  if (n < 0) return "";
  out.resize(n);
  return out;
}

absl::Status LlamaRuntime::Decode(const std::vector<int32_t>& tokens, int32_t first_pos) {
  if (tokens.empty()) return absl::InvalidArgumentError("nothing to decode");
  llama_batch batch = llama_batch_init(static_cast<int32_t>(tokens.size()), 0, 1);
  for (size_t i = 0; i < tokens.size(); ++i) {
    batch.token[i] = tokens[i];
    batch.pos[i] = first_pos + static_cast<int32_t>(i);
    batch.n_seq_id[i] = 1;
    batch.seq_id[i][0] = 0;
    batch.logits[i] = i + 1 == tokens.size();
  }
  batch.n_tokens = static_cast<int32_t>(tokens.size());
  capture_.BeginBatch(first_pos, static_cast<int32_t>(tokens.size()));
  const int rc = llama_decode(ctx_, batch);
  llama_batch_free(batch);
  if (rc != 0) return absl::InternalError(absl::StrCat("llama_decode failed (", rc, ")"));
  return capture_.status();
}

std::vector<float> LlamaRuntime::LastLogits() const {
  const float* l = llama_get_logits_ith(ctx_, -1);
  return std::vector<float>(l, l + shape_.vocab);
}

absl::StatusOr<std::string> LlamaRuntime::GetState() const {
  const size_t size = llama_state_seq_get_size(ctx_, 0);
  std::string bytes(size, '\0');
  const size_t n =
      llama_state_seq_get_data(ctx_, reinterpret_cast<uint8_t*>(bytes.data()), size, 0);
  if (n != size) return absl::InternalError("llama_state_seq_get_data wrote a different size");
  return bytes;
}

absl::Status LlamaRuntime::SetState(const std::string& bytes) {
  const size_t n = llama_state_seq_set_data(ctx_, reinterpret_cast<const uint8_t*>(bytes.data()),
                                            bytes.size(), 0);
  if (n != bytes.size()) {
    return absl::InvalidArgumentError(absl::StrCat("llama.cpp refused the sequence state (read ", n,
                                                   " of ", bytes.size(), " bytes)"));
  }
  return absl::OkStatus();
}

absl::Status LlamaRuntime::RemoveCells(int32_t p0, int32_t p1) {
  if (!llama_memory_seq_rm(llama_get_memory(ctx_), 0, p0, p1)) {
    return absl::InternalError(absl::StrCat("llama_memory_seq_rm refused [", p0, ", ", p1, ")"));
  }
  return absl::OkStatus();
}

void LlamaRuntime::Clear() { llama_memory_clear(llama_get_memory(ctx_), true); }

}  // namespace kvkeep::llama
