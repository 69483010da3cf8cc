#include "service/engine/sequence_sketch.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "gpu/math/rope_math.h"

namespace kvkeep {
namespace {

absl::Status Bad(const v1::LayerStats& s, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("LayerStats (layer ", s.layer(), "): LayerStats.sketch.", what));
}

}  // namespace

size_t LayerSketch::bytes() const {
  size_t n = heads.capacity() * sizeof(sketch::HeadSketch);
  for (const sketch::HeadSketch& h : heads) {
    n += (h.centroids.capacity() + h.weights.capacity()) * sizeof(float);
  }
  return n;
}

absl::Status ValidateQuerySketch(const Model& model, int64_t positions, const v1::LayerStats& s) {
  if (!s.has_sketch()) return absl::OkStatus();
  const v1::QuerySketch& q = s.sketch();
  if (q.k() == 0 || q.k() > kMaxSketchK) {
    return Bad(s, absl::StrCat("k = ", q.k(), " is outside 1..", kMaxSketchK));
  }
  if (q.head_dim() != model.head_dim()) {
    return Bad(s, absl::StrCat("head_dim = ", q.head_dim(), " but the model's head_dim is ",
                               model.head_dim()));
  }
  if (static_cast<uint32_t>(q.head_counts_size()) != model.q_heads()) {
    return Bad(s, absl::StrCat("head_counts has ", q.head_counts_size(),
                               " entries, expected one per query head (", model.q_heads(), ")"));
  }
  uint64_t rows = 0;
  for (int h = 0; h < q.head_counts_size(); ++h) {
    if (q.head_counts(h) == 0 || q.head_counts(h) > q.k()) {
      return Bad(s, absl::StrCat("head_counts[", h, "] = ", q.head_counts(h), " is outside 1..k (",
                                 q.k(), ")"));
    }
    rows += q.head_counts(h);
  }
  if (static_cast<uint64_t>(q.centroids_size()) != rows * model.head_dim()) {
    return Bad(s, absl::StrCat("centroids has ", q.centroids_size(),
                               " floats, expected sum(head_counts) * head_dim = ", rows, " * ",
                               model.head_dim(), " = ", rows * model.head_dim()));
  }
  if (static_cast<uint64_t>(q.weights_size()) != rows) {
    return Bad(s, absl::StrCat("weights has ", q.weights_size(),
                               " entries, expected sum(head_counts) = ", rows));
  }
  for (int i = 0; i < q.centroids_size(); ++i) {
    if (!std::isfinite(q.centroids(i))) {
      return Bad(s, absl::StrCat("centroids holds a non-finite value (", q.centroids(i),
                                 ") at index ", i));
    }
  }
  for (int i = 0; i < q.weights_size(); ++i) {
    if (!std::isfinite(q.weights(i)) || !(q.weights(i) > 0)) {
      return Bad(s, absl::StrCat("weights[", i, "] = ", q.weights(i),
                                 "; every weight must be finite and > 0"));
    }
  }
  if (q.first_position() < 0 || q.last_position() < q.first_position() ||
      q.last_position() >= positions) {
    return Bad(s, absl::StrCat("first_position = ", q.first_position(), ", last_position = ",
                               q.last_position(), " must satisfy 0 <= first <= last < ", positions,
                               " (the sequence's positions)"));
  }
  const uint64_t span = static_cast<uint64_t>(q.last_position() - q.first_position()) + 1;
  if (q.query_count() == 0 || q.query_count() > span) {
    return Bad(s, absl::StrCat("query_count = ", q.query_count(), " is outside 1..",
                               span, " (the positions first_position..last_position)"));
  }
  return absl::OkStatus();
}

LayerSketch SketchFromProto(const v1::QuerySketch& q) {
  LayerSketch out;
  out.k = q.k();
  out.post_rope = q.post_rope();
  out.first_position = q.first_position();
  out.last_position = q.last_position();
  out.query_count = q.query_count();
  out.heads.resize(static_cast<size_t>(q.head_counts_size()));
  const size_t d = q.head_dim();
  size_t row = 0;
  for (size_t h = 0; h < out.heads.size(); ++h) {
    const size_t count = q.head_counts(static_cast<int>(h));
    sketch::HeadSketch& head = out.heads[h];
    head.head_dim = static_cast<int>(d);
    head.centroids.assign(q.centroids().begin() + static_cast<int>(row * d),
                          q.centroids().begin() + static_cast<int>((row + count) * d));
    head.weights.assign(q.weights().begin() + static_cast<int>(row),
                        q.weights().begin() + static_cast<int>(row + count));
    row += count;
  }
  return out;
}

void UnrotateQuery(const Model& model, int64_t position, float* x) {
  namespace gm = gpu_math;
  const v1::RopeConfig& rope = model.layout().rope();
  if (rope.theta() == 0 && rope.inv_freq_size() == 0) return;  // no RoPE
  const int rotary = rope.rotary_dim() == 0 ? static_cast<int>(model.head_dim())
                                            : static_cast<int>(rope.rotary_dim());
  for (int i = 0; i < rotary / 2; ++i) {
    const double f = rope.inv_freq_size() != 0 ? static_cast<double>(rope.inv_freq(i))
                                               : gm::RopeInvFreq(rope.theta(), i, rotary);
    const double angle = static_cast<double>(position) * f;
    int a, b;
    gm::RopePair(i, rotary, rope.interleaved(), &a, &b);
    double ya, yb;
    gm::RotatePair<double>(x[a], x[b], std::cos(angle), -std::sin(angle), &ya, &yb);
    x[a] = static_cast<float>(ya);
    x[b] = static_cast<float>(yb);
  }
}

uint32_t FoldWindowIntoSketch(const Model& model, uint32_t window,
                              const std::vector<float>& window_queries,
                              int64_t window_next_position, LayerSketch* sketch) {
  if (sketch->empty() || window == 0) return 0;
  const size_t d = model.head_dim();
  const int64_t first = window_next_position - window;
  uint32_t folded = 0;
  std::vector<float> q(d);
  for (uint32_t i = 0; i < window; ++i) {
    const int64_t position = first + i;
    if (position <= sketch->last_position) continue;
    for (size_t h = 0; h < sketch->heads.size(); ++h) {
      const float* src = window_queries.data() + (h * window + i) * d;
      std::copy(src, src + d, q.begin());
      if (!sketch->post_rope) UnrotateQuery(model, position, q.data());
      sketch::FoldQuery(q.data(), static_cast<int>(sketch->k), &sketch->heads[h]);
    }
    sketch->last_position = position;
    ++sketch->query_count;
    ++folded;
  }
  return folded;
}

void SketchToLayerInputs(const LayerSketch& sketch, uint32_t q_heads, uint32_t head_dim,
                         eviction::LayerInputs* in) {
  in->sketch_centroids.clear();
  in->sketch_weights.clear();
  in->sketch_post_rope = sketch.post_rope;
  if (sketch.empty()) {
    in->sketch_k = 0;
    return;
  }
  const size_t k = sketch.k, d = head_dim;
  in->sketch_k = static_cast<int>(k);
  in->sketch_centroids.assign(q_heads * k * d, 0.0f);
  in->sketch_weights.assign(q_heads * k, 0.0f);
  for (size_t h = 0; h < q_heads && h < sketch.heads.size(); ++h) {
    const sketch::HeadSketch& head = sketch.heads[h];
    std::copy(head.centroids.begin(), head.centroids.end(),
              in->sketch_centroids.begin() + static_cast<std::ptrdiff_t>(h * k * d));
    std::copy(head.weights.begin(), head.weights.end(),
              in->sketch_weights.begin() + static_cast<std::ptrdiff_t>(h * k));
  }
}

}  // namespace kvkeep
