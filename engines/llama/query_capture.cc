#include "engines/llama/query_capture.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "ggml-backend.h"
#include "ggml.h"

namespace kvkeep::llama {
namespace {

enum Kind { kNone = 0, kPostRope, kPreRope, kSoftMax };

Kind Classify(const ggml_tensor* t, uint32_t* layer) {
  const absl::string_view name = ggml_get_name(t);
  absl::string_view rest;
  Kind kind = kNone;
  if (name.substr(0, 5) == "Qcur-") {
    rest = name.substr(5);
    if (t->op == GGML_OP_ROPE) kind = kPostRope;
    if (t->op == GGML_OP_MUL_MAT) kind = kPreRope;
  } else if (name.substr(0, 12) == "kq_soft_max-" && t->op == GGML_OP_SOFT_MAX) {
    rest = name.substr(12);
    kind = kSoftMax;
  }
  if (kind == kNone || !absl::SimpleAtoi(rest, layer)) return kNone;
  return kind;
}

}  // namespace

void QueryCapture::Configure(uint32_t layers, uint32_t q_heads, uint32_t head_dim) {
  layers_ = layers;
  q_heads_ = q_heads;
  head_dim_ = head_dim;
}

void QueryCapture::Start() {
  post_.assign(layers_, {});
  pre_.assign(layers_, {});
  mass_.assign(layers_, {});
  has_mass_ = false;
  status_ = absl::OkStatus();
  active_ = true;
}

void QueryCapture::BeginBatch(int32_t first_pos, int32_t tokens) { batch_first_pos_ = first_pos; }

bool QueryCapture::EvalCallback(ggml_tensor* t, bool ask, void* user) {
  auto* self = static_cast<QueryCapture*>(user);
  if (!self->active_) return !ask;
  uint32_t layer = 0;
  const Kind kind = Classify(t, &layer);
  if (ask) return kind != kNone && layer < self->layers_;
  if (kind != kNone && layer < self->layers_) self->OnTensor(t, kind, layer);
  return true;
}

void QueryCapture::OnTensor(ggml_tensor* t, int kind, uint32_t layer) {
  if (t->type != GGML_TYPE_F32 || !ggml_is_contiguous(t)) {
    status_ = absl::FailedPreconditionError(
        absl::StrCat("eval callback: ", ggml_get_name(t), " is not a contiguous F32 tensor"));
    return;
  }
  scratch_.resize(ggml_nelements(t));
  ggml_backend_tensor_get(t, scratch_.data(), 0, ggml_nbytes(t));
  const size_t row = size_t{q_heads_} * head_dim_;
  if (kind == kPostRope || kind == kPreRope) {
    // [head_dim, q_heads, tokens] or [q_heads * head_dim, tokens]: token-major rows of `row`.
    if (scratch_.size() % row != 0) {
      status_ = absl::FailedPreconditionError(
          absl::StrCat("eval callback: ", ggml_get_name(t), " has ", scratch_.size(), " elements"));
      return;
    }
    std::vector<float>& dst = kind == kPostRope ? post_[layer] : pre_[layer];
    const size_t at = size_t(batch_first_pos_) * row;
    if (dst.size() < at + scratch_.size()) dst.resize(at + scratch_.size());
    std::memcpy(dst.data() + at, scratch_.data(), scratch_.size() * sizeof(float));
    return;
  }
  // kq_soft_max: [n_kv, n_tokens, n_head]; cell j of the view is cell j of the cache.
  const int64_t n_kv = t->ne[0], n_tok = t->ne[1], n_head = t->ne[2];
  if (n_head != q_heads_) {
    status_ = absl::FailedPreconditionError(
        absl::StrCat("eval callback: kq_soft_max has ", n_head, " heads, the model ", q_heads_));
    return;
  }
  std::vector<float>& m = mass_[layer];
  // Stored as [q_heads][n_kv_max]; regrow keeping rows when a later batch sees more cells.
  const size_t old_kv = m.empty() ? 0 : m.size() / q_heads_;
  if (size_t(n_kv) > old_kv) {
    std::vector<float> grown(size_t(q_heads_) * n_kv, 0.0f);
    for (uint32_t h = 0; h < q_heads_; ++h) {
      std::copy(m.begin() + h * old_kv, m.begin() + (h + 1) * old_kv, grown.begin() + h * n_kv);
    }
    m.swap(grown);
  }
  const size_t kv = m.size() / q_heads_;
  for (int64_t h = 0; h < n_head; ++h) {
    float* dst = m.data() + h * kv;
    for (int64_t q = 0; q < n_tok; ++q) {
      const float* src = scratch_.data() + (h * n_tok + q) * n_kv;
      for (int64_t j = 0; j < n_kv; ++j) dst[j] += src[j];
    }
  }
  has_mass_ = true;
}

std::vector<v1::LayerStats> QueryCapture::Stats(uint32_t tokens, uint32_t sinks,
                                                uint32_t window) const {
  std::vector<v1::LayerStats> out;
  const size_t row = size_t{q_heads_} * head_dim_;
  for (uint32_t l = 0; l < layers_; ++l) {
    v1::LayerStats s;
    s.set_layer(l);
    const uint32_t have = static_cast<uint32_t>(std::min<size_t>(post_[l].size() / row, tokens));
    const uint32_t w = std::min(window, have);
    if (w > 0) {
      s.set_window(w);
      auto* wq = s.mutable_window_queries();
      wq->Reserve(static_cast<int>(w * row));
      for (uint32_t h = 0; h < q_heads_; ++h) {
        for (uint32_t p = have - w; p < have; ++p) {
          const float* q = post_[l].data() + p * row + h * head_dim_;
          wq->Add(q, q + head_dim_);
        }
      }
    }
    const uint32_t have_pre = static_cast<uint32_t>(std::min<size_t>(pre_[l].size() / row, tokens));
    if (have_pre > sinks) {
      std::vector<double> sum(row, 0.0), sq(row, 0.0);
      for (uint32_t p = sinks; p < have_pre; ++p) {
        const float* q = pre_[l].data() + p * row;
        for (size_t i = 0; i < row; ++i) {
          sum[i] += q[i];
          sq[i] += double{q[i]} * q[i];
        }
      }
      s.mutable_query_sum()->Add(sum.begin(), sum.end());
      s.mutable_query_sq_sum()->Add(sq.begin(), sq.end());
      s.set_query_count(have_pre - sinks);
    }
    if (has_mass_ && !mass_[l].empty()) {
      const size_t kv = mass_[l].size() / q_heads_;
      if (kv >= tokens) {
        auto* m = s.mutable_attention_mass();
        m->Reserve(static_cast<int>(q_heads_ * tokens));
        for (uint32_t h = 0; h < q_heads_; ++h) {
          const float* src = mass_[l].data() + h * kv;
          m->Add(src, src + tokens);
        }
      }
    }
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace kvkeep::llama
