#include "bench/eval/prefix_stats.h"

#include <cmath>
#include <filesystem>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "bench/eval/dataset.h"
#include "common/status_matchers.h"
#include "service/eviction/policy.h"

namespace kvkeep::eval {
namespace {

using ::kvkeep::testing::StatusIs;

struct Fixture {
  DatasetMeta meta;
  LayerData layer;
};

// 4 q heads, 2 KV heads, d = 8, 300 cached tokens (more than one GEMM block), 5 future queries.
Fixture Random(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n;
  Fixture f;
  f.meta.layers = 1;
  f.meta.q_heads = 4;
  f.meta.kv_heads = 2;
  f.meta.head_dim = 8;
  f.meta.prefix = 300;
  f.meta.rope_theta = 5e5;
  f.layer.total = 305;
  f.layer.kv_len = 305;
  f.layer.q.resize(4 * 305 * 8);
  f.layer.qpre.resize(4 * 305 * 8);
  f.layer.k.resize(2 * 305 * 8);
  f.layer.v.resize(2 * 305 * 8);
  for (float& x : f.layer.q) x = 2 * n(rng);
  for (float& x : f.layer.qpre) x = n(rng);
  for (float& x : f.layer.k) x = n(rng);
  for (float& x : f.layer.v) x = n(rng);
  f.layer.wo_hidden = 6;
  f.layer.wo.resize(6 * 32);
  for (float& x : f.layer.wo) x = n(rng);
  return f;
}


// `kvkeep-eval synth` writes the sketch a worker would send; read back, it is what `run` scores
// qsketch with (a changed stored sketch changes the inputs), unless another K or the window
// variant is asked for (then it is computed from the queries).
TEST(PrefixStatsTest, AWrittenWorkerSketchIsReadBackAndUsed) {
  Fixture f = Random(6);
  const PrefixStatsOptions o{.window = 8, .sinks = 4, .sketch_k = 5};
  std::vector<LayerData> layers = {f.layer};
  AttachWorkerSketches(f.meta, o, &layers);
  ASSERT_EQ(layers[0].sketch_k, 5);
  eviction::LayerInputs computed;
  SetQuerySketch(f.meta, f.layer, o, /*post_rope=*/false, &computed);
  EXPECT_EQ(layers[0].sketch_centroids, computed.sketch_centroids);
  EXPECT_EQ(layers[0].sketch_weights, computed.sketch_weights);

  const std::string dir = ::testing::TempDir() + "/worker_sketch";
  std::filesystem::create_directories(dir);
  ASSERT_OK(WriteMeta(dir, f.meta));
  ASSERT_OK(WriteLayer(dir, f.meta, 0, layers[0]));
  ASSERT_OK_AND_ASSIGN(LayerData read, ReadLayer(dir, f.meta, 0));
  ASSERT_EQ(read.sketch_k, 5);
  EXPECT_EQ(read.sketch_centroids, layers[0].sketch_centroids);
  EXPECT_EQ(read.sketch_weights, layers[0].sketch_weights);

  read.sketch_weights[0] += 7.0f;  // a worker's sketch that differs from the recomputation
  eviction::LayerInputs in;
  SetQuerySketch(f.meta, read, o, /*post_rope=*/false, &in);
  EXPECT_EQ(in.sketch_weights, read.sketch_weights);
  PrefixStatsOptions other_k = o;
  other_k.sketch_k = 6;
  SetQuerySketch(f.meta, read, other_k, /*post_rope=*/false, &in);
  EXPECT_EQ(in.sketch_k, 6);
  EXPECT_NE(in.sketch_weights[0], read.sketch_weights[0]);

  std::filesystem::remove(dir + "/L0.sketch_weights.npy");
  EXPECT_THAT(ReadLayer(dir, f.meta, 0).status(),
              StatusIs(absl::StatusCode::kInvalidArgument, "both files"));
}

// The sketch stands for every prefix query (weights sum to P per head) of the side of RoPE asked
// for, and the window variant adds the window queries themselves carrying the requested share.
TEST(PrefixStatsTest, QuerySketchCoversThePrefixAndTheWindowVariantAddsTheWindow) {
  const Fixture f = Random(4);
  PrefixStatsOptions o{.window = 8, .sinks = 4, .sketch_k = 5};
  ASSERT_OK_AND_ASSIGN(eviction::LayerInputs in, BuildLayerInputs(f.meta, f.layer, 0, o));
  EXPECT_FALSE(in.sketch_post_rope);
  ASSERT_EQ(in.sketch_k, 5);
  for (int h = 0; h < 4; ++h) {
    double w = 0;
    for (int c = 0; c < 5; ++c) w += in.sketch_weights[h * 5 + c];
    EXPECT_DOUBLE_EQ(w, 300.0) << h;
  }
  SetQuerySketch(f.meta, f.layer, o, /*post_rope=*/true, &in);
  EXPECT_TRUE(in.sketch_post_rope);
  o.sketch_window_share = 0.25;
  SetQuerySketch(f.meta, f.layer, o, /*post_rope=*/false, &in);
  ASSERT_EQ(in.sketch_k, 5 + 8);
  for (int h = 0; h < 4; ++h) {
    double sketch = 0, window = 0;
    for (int c = 0; c < 5; ++c) sketch += in.sketch_weights[h * 13 + c];
    for (int c = 5; c < 13; ++c) window += in.sketch_weights[h * 13 + c];
    EXPECT_NEAR(window / (sketch + window), 0.25, 1e-6) << h;
    for (int i = 0; i < 8; ++i) {
      for (int c = 0; c < 8; ++c) {
        EXPECT_EQ(in.sketch_centroids[(static_cast<size_t>(h) * 13 + 5 + i) * 8 + c],
                  f.layer.qpre[(static_cast<size_t>(h) * 305 + 300 - 8 + i) * 8 + c]);
      }
    }
  }
}

TEST(PrefixStatsTest, AttentionMassMatchesNaiveCausalSoftmax) {
  const Fixture f = Random(1);
  ASSERT_OK_AND_ASSIGN(eviction::LayerInputs in, BuildLayerInputs(f.meta, f.layer, 0, {}));
  ASSERT_EQ(in.attention_mass.size(), 4u);
  for (int h = 0; h < 4; ++h) {
    std::vector<double> mass(300, 0.0);
    for (int i = 0; i < 300; ++i) {
      std::vector<double> w(i + 1);
      double sum = 0;
      for (int j = 0; j <= i; ++j) {
        double dot = 0;
        for (int c = 0; c < 8; ++c) {
          dot += static_cast<double>(f.layer.q[(h * 305 + i) * 8 + c]) *
                 f.layer.k[((h / 2) * 305 + j) * 8 + c];
        }
        sum += (w[j] = std::exp(dot / std::sqrt(8.0)));
      }
      for (int j = 0; j <= i; ++j) mass[j] += w[j] / sum;
    }
    double total = 0;
    for (int j = 0; j < 300; ++j) {
      EXPECT_NEAR(in.attention_mass[h][j], mass[j], 1e-4 * (1 + mass[j])) << h << " " << j;
      total += in.attention_mass[h][j];
    }
    EXPECT_NEAR(total, 300.0, 1e-2);  // each prefix query contributes 1
  }
}

TEST(PrefixStatsTest, WindowMomentsAndGramComeFromThePrefixOnly) {
  const Fixture f = Random(2);
  ASSERT_OK_AND_ASSIGN(eviction::LayerInputs in,
                       BuildLayerInputs(f.meta, f.layer, 3, {.window = 16, .sinks = 4}));
  EXPECT_EQ(in.layer_index, 3);
  EXPECT_EQ(in.next_position, 300);
  EXPECT_EQ(in.rope.theta, 5e5);
  ASSERT_EQ(in.heads.size(), 2u);
  EXPECT_EQ(in.heads[1].n, 300);
  EXPECT_EQ(in.heads[1].keys, f.layer.k.data() + 305 * 8);
  // Window: q rows 284..299 of each head, post-RoPE.
  ASSERT_EQ(in.window_queries.size(), 4u * 16 * 8);
  EXPECT_EQ(in.window_queries[(2 * 16 + 0) * 8 + 3], f.layer.q[(2 * 305 + 284) * 8 + 3]);
  EXPECT_EQ(in.window_queries[(2 * 16 + 15) * 8 + 7], f.layer.q[(2 * 305 + 299) * 8 + 7]);
  // Moments: pre-RoPE rows 4..299 (sinks and future excluded).
  EXPECT_EQ(in.query_count, 296);
  double sum = 0, sq = 0;
  for (int t = 4; t < 300; ++t) {
    sum += f.layer.qpre[(1 * 305 + t) * 8 + 5];
    sq += std::pow(f.layer.qpre[(1 * 305 + t) * 8 + 5], 2);
  }
  EXPECT_NEAR(in.query_sum[1 * 8 + 5], sum, 1e-9);
  EXPECT_NEAR(in.query_sq_sum[1 * 8 + 5], sq, 1e-9);
  // Gram of head 3: M[a][b] = Σ_r W[r, 24 + a] W[r, 24 + b].
  double m = 0;
  for (int r = 0; r < 6; ++r) m += static_cast<double>(f.layer.wo[r * 32 + 24 + 1]) * f.layer.wo[r * 32 + 24 + 6];
  EXPECT_NEAR(in.wo_gram[(3 * 8 + 1) * 8 + 6], m, 1e-5);
  EXPECT_OK(eviction::ValidateLayerInputs(in, eviction::Policy{}));
}

TEST(PrefixStatsTest, RejectsWindowLargerThanPrefix) {
  const Fixture f = Random(3);
  EXPECT_THAT(BuildLayerInputs(f.meta, f.layer, 0, {.window = 301}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvkeep::eval
