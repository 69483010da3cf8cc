#include "bench/eval/prefix_stats.h"

#include <algorithm>
#include <cmath>

#include <cblas.h>

#include "absl/strings/str_cat.h"
#include "common/query_sketch.h"
#include "gpu/math/policy_defaults.h"

namespace kvkeep::eval {
namespace {

constexpr int64_t kBlock = 128;  // query rows per GEMM block of the attention-mass pass

// Σ_i A[i, j] over the prefix queries i (causal: j <= i) of one q head.
void AccumulateAttentionMass(const float* q, const float* k, int64_t prefix, int d,
                             std::vector<float>& mass) {
  std::vector<double> acc(prefix, 0.0);
  std::vector<float> logits(static_cast<size_t>(kBlock) * prefix);
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  for (int64_t i0 = 0; i0 < prefix; i0 += kBlock) {
    const int64_t rows = std::min(kBlock, prefix - i0);
    const int64_t cols = i0 + rows;  // keys any row of the block can see
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, d, scale, q + i0 * d, d, k, d,
                0.0f, logits.data(), cols);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t i = i0 + r;
      const float* row = logits.data() + r * cols;
      const float mx = *std::max_element(row, row + i + 1);
      double sum = 0;
      for (int64_t j = 0; j <= i; ++j) sum += std::exp(static_cast<double>(row[j] - mx));
      const double inv = 1.0 / sum;
      for (int64_t j = 0; j <= i; ++j) acc[j] += std::exp(static_cast<double>(row[j] - mx)) * inv;
    }
  }
  mass.assign(acc.begin(), acc.end());
}

}  // namespace

void SetQuerySketch(const DatasetMeta& meta, const LayerData& layer,
                    const PrefixStatsOptions& options, bool post_rope, eviction::LayerInputs* in) {
  const int H = meta.q_heads, d = meta.head_dim, K0 = options.sketch_k;
  const int64_t P = meta.prefix, T = layer.total;
  const bool with_window = options.sketch_window_share > 0;
  if (layer.sketch_k > 0 && !post_rope && !with_window && layer.sketch_k == K0) {
    in->sketch_k = layer.sketch_k;
    in->sketch_post_rope = false;
    in->sketch_centroids = layer.sketch_centroids;
    in->sketch_weights = layer.sketch_weights;
    return;
  }
  const int K = K0 + (with_window ? options.window : 0);
  in->sketch_k = K;
  in->sketch_post_rope = post_rope;
  in->sketch_centroids.assign(static_cast<size_t>(H) * K * d, 0.0f);
  in->sketch_weights.assign(static_cast<size_t>(H) * K, 0.0f);
  const std::vector<float>& q = post_rope ? layer.q : layer.qpre;
  for (int h = 0; h < H; ++h) {
    const sketch::HeadSketch s = sketch::BuildHeadSketch(
        q.data() + static_cast<size_t>(h) * T * d, static_cast<int>(P), d,
        {.k = K0, .iterations = options.sketch_iterations,
         .seed = options.sketch_seed + static_cast<uint64_t>(h)});
    std::copy(s.centroids.begin(), s.centroids.end(),
              in->sketch_centroids.begin() + static_cast<size_t>(h) * K * d);
    std::copy(s.weights.begin(), s.weights.end(),
              in->sketch_weights.begin() + static_cast<size_t>(h) * K);
    if (!with_window) continue;
    // share = W_win / (W_sketch + W_win), split evenly over the window queries.
    const double share = std::min(options.sketch_window_share, 0.99);
    const double each = s.total_weight() * share / (1 - share) / options.window;
    for (int i = 0; i < options.window; ++i) {
      const float* src = q.data() + (static_cast<size_t>(h) * T + P - options.window + i) * d;
      std::copy_n(src, d, in->sketch_centroids.begin() + (static_cast<size_t>(h) * K + K0 + i) * d);
      in->sketch_weights[static_cast<size_t>(h) * K + K0 + i] = static_cast<float>(each);
    }
  }
}

absl::StatusOr<eviction::LayerInputs> BuildLayerInputs(const DatasetMeta& meta,
                                                       const LayerData& layer, int layer_index,
                                                       const PrefixStatsOptions& options) {
  const int H = meta.q_heads, Hk = meta.kv_heads, d = meta.head_dim, G = H / Hk;
  const int64_t P = meta.prefix, T = layer.total;
  if (options.window < 1 || options.window > P || options.sinks < 0 || options.sinks >= P) {
    return absl::InvalidArgumentError(absl::StrCat("window ", options.window, " and sinks ",
                                                   options.sinks, " must fit in the prefix ", P));
  }
  if (options.sketch_k < 1 || options.sketch_k > policy_defaults::kMaxSketchCentroids ||
      options.sketch_iterations < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sketch_k ", options.sketch_k, " must be in [1, ",
                     policy_defaults::kMaxSketchCentroids, "] and sketch_iterations ",
                     options.sketch_iterations, " >= 0"));
  }
  eviction::LayerInputs in;
  in.q_heads = H;
  in.kv_heads = Hk;
  in.head_dim = d;
  in.layer_index = layer_index;
  in.rope.theta = meta.rope_theta;
  in.rope.rotary_dim = d;
  in.rope.interleaved = meta.rope_style == RopeStyle::kInterleaved;
  in.next_position = P;
  for (int g = 0; g < Hk; ++g) {
    in.heads.push_back(eviction::HeadKV{
        .n = static_cast<int>(P),
        .keys = layer.k.data() + static_cast<size_t>(g) * layer.kv_len * d,
        .values = layer.v.data() + static_cast<size_t>(g) * layer.kv_len * d,
        .positions = nullptr});
  }

  in.window = options.window;
  in.window_queries.resize(static_cast<size_t>(H) * options.window * d);
  for (int h = 0; h < H; ++h) {
    const float* src = layer.q.data() + (static_cast<size_t>(h) * T + P - options.window) * d;
    std::copy_n(src, static_cast<size_t>(options.window) * d,
                in.window_queries.data() + static_cast<size_t>(h) * options.window * d);
  }

  in.query_sum.assign(static_cast<size_t>(H) * d, 0.0);
  in.query_sq_sum.assign(static_cast<size_t>(H) * d, 0.0);
  in.query_count = P - options.sinks;
  for (int h = 0; h < H; ++h) {
    for (int64_t t = options.sinks; t < P; ++t) {
      const float* q = layer.qpre.data() + (static_cast<size_t>(h) * T + t) * d;
      for (int c = 0; c < d; ++c) {
        in.query_sum[h * d + c] += q[c];
        in.query_sq_sum[h * d + c] += static_cast<double>(q[c]) * q[c];
      }
    }
  }

  in.attention_mass.resize(H);
  for (int h = 0; h < H; ++h) {
    AccumulateAttentionMass(layer.q.data() + static_cast<size_t>(h) * T * d,
                            layer.k.data() + static_cast<size_t>(h / G) * layer.kv_len * d, P, d,
                            in.attention_mass[h]);
  }

  if (layer.wo_hidden > 0) {
    // M_h = W_O^h W_O^hᵀ where W_O^h (d x hidden) maps o_h to the output: the columns
    // h·d .. h·d + d - 1 of W as y = x·Wᵀ stores it.
    const int64_t hidden = layer.wo_hidden, width = int64_t{H} * d;
    in.wo_gram.assign(static_cast<size_t>(H) * d * d, 0.f);
    std::vector<double> gram(static_cast<size_t>(d) * d);
    for (int h = 0; h < H; ++h) {
      std::fill(gram.begin(), gram.end(), 0.0);
      for (int64_t r = 0; r < hidden; ++r) {
        const float* row = layer.wo.data() + r * width + h * d;
        for (int a = 0; a < d; ++a) {
          for (int b = 0; b < d; ++b) gram[a * d + b] += static_cast<double>(row[a]) * row[b];
        }
      }
      std::copy(gram.begin(), gram.end(), in.wo_gram.begin() + static_cast<size_t>(h) * d * d);
    }
  }
  SetQuerySketch(meta, layer, options, /*post_rope=*/false, &in);
  return in;
}

void AttachWorkerSketches(const DatasetMeta& meta, const PrefixStatsOptions& options,
                          std::vector<LayerData>* layers) {
  PrefixStatsOptions o = options;
  o.sketch_window_share = 0;
  for (LayerData& layer : *layers) {
    layer.sketch_k = 0;  // computed from the queries, never copied from an older sketch
    eviction::LayerInputs in;
    SetQuerySketch(meta, layer, o, /*post_rope=*/false, &in);
    layer.sketch_k = in.sketch_k;
    layer.sketch_centroids = std::move(in.sketch_centroids);
    layer.sketch_weights = std::move(in.sketch_weights);
  }
}

}  // namespace kvkeep::eval
