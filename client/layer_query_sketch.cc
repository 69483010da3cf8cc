#include "client/layer_query_sketch.h"

#include <cmath>

#include "absl/strings/str_cat.h"

namespace kvkeep {
namespace {

absl::Status CheckFinite(const float* x, size_t count, absl::string_view what) {
  for (size_t i = 0; i < count; ++i) {
    if (!std::isfinite(x[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " hold a non-finite value (", x[i], ") at index ", i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LayerQuerySketch> LayerQuerySketch::Build(uint32_t layer, int q_heads,
                                                         int head_dim, const float* queries,
                                                         int n, int64_t first_position,
                                                         const Options& options) {
  if (q_heads <= 0 || head_dim <= 0 || n <= 0 || queries == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a query sketch needs q_heads, head_dim and n > 0 and queries; got q_heads = ", q_heads,
        ", head_dim = ", head_dim, ", n = ", n));
  }
  if (options.k < 1 || options.k > 256 || options.iterations < 0 || first_position < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "query sketch options: k = ", options.k, " must be 1..256, iterations = ",
        options.iterations, " >= 0, first_position = ", first_position, " >= 0"));
  }
  const size_t per_head = size_t{1} * static_cast<size_t>(n) * head_dim;
  if (absl::Status st = CheckFinite(queries, per_head * q_heads, "queries"); !st.ok()) return st;
  LayerQuerySketch s;
  s.layer_ = layer;
  s.head_dim_ = head_dim;
  s.options_ = options;
  s.first_position_ = first_position;
  s.last_position_ = first_position + n - 1;
  s.query_count_ = static_cast<uint64_t>(n);
  for (int h = 0; h < q_heads; ++h) {
    sketch::SketchOptions o{.k = options.k, .iterations = options.iterations,
                            .seed = options.seed + static_cast<uint64_t>(h)};
    s.heads_.push_back(sketch::BuildHeadSketch(queries + per_head * h, n, head_dim, o));
  }
  return s;
}

absl::Status LayerQuerySketch::Fold(const float* queries, int64_t position) {
  if (position <= last_position_) {
    return absl::InvalidArgumentError(absl::StrCat("position ", position,
                                                   " is not after the sketch's last position ",
                                                   last_position_));
  }
  const size_t d = static_cast<size_t>(head_dim_);
  if (absl::Status st = CheckFinite(queries, d * heads_.size(), "queries"); !st.ok()) return st;
  for (size_t h = 0; h < heads_.size(); ++h) {
    sketch::FoldQuery(queries + h * d, options_.k, &heads_[h]);
  }
  last_position_ = position;
  ++query_count_;
  return absl::OkStatus();
}

void LayerQuerySketch::WriteTo(v1::QuerySketch* out) const {
  out->Clear();
  out->set_post_rope(options_.post_rope);
  out->set_k(static_cast<uint32_t>(options_.k));
  out->set_head_dim(static_cast<uint32_t>(head_dim_));
  for (const sketch::HeadSketch& h : heads_) {
    out->add_head_counts(static_cast<uint32_t>(h.size()));
    out->mutable_centroids()->Add(h.centroids.begin(), h.centroids.end());
    out->mutable_weights()->Add(h.weights.begin(), h.weights.end());
  }
  out->set_first_position(first_position_);
  out->set_last_position(last_position_);
  out->set_query_count(query_count_);
}

v1::LayerStats LayerQuerySketch::ToLayerStats() const {
  v1::LayerStats s;
  s.set_layer(layer_);
  WriteTo(s.mutable_sketch());
  return s;
}

}  // namespace kvkeep
