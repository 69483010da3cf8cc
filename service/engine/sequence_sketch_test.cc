// LayerStats.sketch through SequenceStats: validation (nothing stored on error), replacement,
// the daemon's folding of window queries (un-rotated for pre-RoPE sketches), the bytes it holds,
// and what BuildLayerInputs hands the scorers.
#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "service/engine/sequence_stats.h"

namespace kvkeep {
namespace {

using absl::StatusCode;
using ::kvkeep::testing::StatusIs;

constexpr uint32_t kLayers = 2, kQHeads = 4, kKvHeads = 2, kDim = 4, kTpp = 4;
constexpr double kTheta = 10000;

Model MakeModel(double theta = kTheta) {
  v1::ModelLayout layout;
  layout.set_name("m");
  layout.set_layers(kLayers);
  layout.set_q_heads(kQHeads);
  layout.set_kv_heads(kKvHeads);
  layout.set_head_dim(kDim);
  layout.set_dtype(v1::DTYPE_FP32);
  layout.set_tokens_per_page(kTpp);
  layout.mutable_rope()->set_theta(theta);
  absl::StatusOr<Model> model = Model::FromLayout(layout);
  EXPECT_TRUE(model.ok()) << model.status();
  return *std::move(model);
}

SequenceTable MakeTable(uint32_t n) {
  SequenceTable t(kLayers * kKvHeads, kTpp);
  uint64_t total = 0;
  std::vector<uint32_t> need = t.PagesNeeded(n, &total);
  uint64_t next = 1;
  for (uint32_t h = 0; h < t.heads(); ++h) {
    std::vector<uint64_t> pages;
    for (uint32_t i = 0; i < need[h]; ++i) pages.push_back(next++);
    t.AppendPages(h, pages);
  }
  EXPECT_TRUE(t.Commit(n, {}).ok());
  return t;
}

// A sketch of `per_head` centroids per query head; centroid c of head h is (h, c, base, 1).
v1::LayerStats Sketch(uint32_t layer, uint32_t k, uint32_t per_head, float base,
                      int64_t last_position = 9) {
  v1::LayerStats s;
  s.set_layer(layer);
  v1::QuerySketch* q = s.mutable_sketch();
  q->set_k(k);
  q->set_head_dim(kDim);
  for (uint32_t h = 0; h < kQHeads; ++h) {
    q->add_head_counts(per_head);
    for (uint32_t c = 0; c < per_head; ++c) {
      for (float x : {float(h), float(c), base, 1.0f}) q->add_centroids(x);
      q->add_weights(2.0f + c);
    }
  }
  q->set_first_position(0);
  q->set_last_position(last_position);
  q->set_query_count(static_cast<uint64_t>(last_position) + 1);
  return s;
}

std::string Dump(const SequenceStats& s) {
  std::string out = absl::StrCat(s.layers.size(), ";");
  for (const LayerStatistics& l : s.layers) {
    const LayerSketch& k = l.sketch;
    absl::StrAppend(&out, "k", k.k, k.post_rope ? "post" : "pre", k.first_position, "-",
                    k.last_position, "#", k.query_count, ":");
    for (const auto& h : k.heads) {
      for (float x : h.centroids) absl::StrAppend(&out, x, ",");
      for (float x : h.weights) absl::StrAppend(&out, "w", x, ",");
      absl::StrAppend(&out, "|");
    }
  }
  return out;
}

// Independent RoPE (half-split, default frequencies) of one head vector at `position`.
std::vector<float> Rotate(std::vector<float> x, int64_t position) {
  const int half = kDim / 2;
  std::vector<float> y = x;
  for (int i = 0; i < half; ++i) {
    const double angle = position * std::pow(kTheta, -2.0 * i / kDim);
    y[i] = static_cast<float>(x[i] * std::cos(angle) - x[i + half] * std::sin(angle));
    y[i + half] = static_cast<float>(x[i + half] * std::cos(angle) + x[i] * std::sin(angle));
  }
  return y;
}

TEST(SequenceSketchTest, StoredReplacedAndCounted) {
  const Model model = MakeModel();
  const SequenceTable table = MakeTable(16);
  SequenceStats stats;
  const size_t empty_bytes = stats.HeldBytes();
  ASSERT_OK(ApplyLayerStats(model, table, Sketch(1, 8, 3, 0.5f), &stats));
  const LayerSketch& s = stats.layers[1].sketch;
  ASSERT_EQ(s.k, 8u);
  ASSERT_EQ(s.heads.size(), kQHeads);
  EXPECT_EQ(s.heads[2].size(), 3);
  EXPECT_EQ(s.heads[2].centroids[4], 2.0f);  // head 2, centroid 1: (2, 1, 0.5, 1)
  EXPECT_EQ(s.heads[2].centroids[5], 1.0f);
  EXPECT_EQ(s.heads[2].weights[1], 3.0f);
  EXPECT_TRUE(stats.layers[0].sketch.empty());
  EXPECT_GE(stats.HeldBytes() - empty_bytes, size_t{kQHeads} * 3 * (kDim + 1) * sizeof(float));
  EXPECT_EQ(stats.bytes(), stats.HeldBytes());
  // A later sketch replaces the stored one.
  ASSERT_OK(ApplyLayerStats(model, table, Sketch(1, 4, 1, 7.0f, 12), &stats));
  EXPECT_EQ(stats.layers[1].sketch.k, 4u);
  EXPECT_EQ(stats.layers[1].sketch.heads[0].size(), 1);
  EXPECT_EQ(stats.layers[1].sketch.heads[0].centroids[2], 7.0f);
  EXPECT_EQ(stats.layers[1].sketch.last_position, 12);
}

TEST(SequenceSketchTest, BadSketchesAreNamedAndChangeNothing) {
  const Model model = MakeModel();
  const SequenceTable table = MakeTable(16);
  SequenceStats stats;
  ASSERT_OK(ApplyLayerStats(model, table, Sketch(0, 8, 2, 0.5f), &stats));
  const std::string before = Dump(stats);
  struct Case {
    const char* name;
    void (*spoil)(v1::QuerySketch*);
    const char* message;
  };
  const Case cases[] = {
      {"nan centroid", [](v1::QuerySketch* q) { q->set_centroids(3, std::nanf("")); },
       "sketch.centroids holds a non-finite value"},
      {"inf centroid", [](v1::QuerySketch* q) { q->set_centroids(0, INFINITY); },
       "sketch.centroids holds a non-finite value"},
      {"zero weight", [](v1::QuerySketch* q) { q->set_weights(1, 0.0f); }, "sketch.weights[1] = 0"},
      {"negative weight", [](v1::QuerySketch* q) { q->set_weights(0, -1.0f); },
       "must be finite and > 0"},
      {"nan weight", [](v1::QuerySketch* q) { q->set_weights(0, std::nanf("")); },
       "must be finite and > 0"},
      {"k too large", [](v1::QuerySketch* q) { q->set_k(kMaxSketchK + 1); },
       "sketch.k = 257 is outside 1..256"},
      {"k zero", [](v1::QuerySketch* q) { q->set_k(0); }, "sketch.k = 0"},
      {"head_dim", [](v1::QuerySketch* q) { q->set_head_dim(kDim * 2); },
       "sketch.head_dim = 8 but the model's head_dim is 4"},
      {"head count over k", [](v1::QuerySketch* q) { q->set_k(1); }, "head_counts[0] = 2"},
      {"missing head", [](v1::QuerySketch* q) { q->mutable_head_counts()->RemoveLast(); },
       "head_counts has 3 entries"},
      {"short centroids", [](v1::QuerySketch* q) { q->mutable_centroids()->RemoveLast(); },
       "sketch.centroids has 31 floats"},
      {"short weights", [](v1::QuerySketch* q) { q->mutable_weights()->RemoveLast(); },
       "sketch.weights has 7 entries"},
      {"future position", [](v1::QuerySketch* q) { q->set_last_position(16); },
       "last_position = 16"},
      {"too many queries", [](v1::QuerySketch* q) { q->set_query_count(11); },
       "query_count = 11"},
      {"no queries", [](v1::QuerySketch* q) { q->set_query_count(0); }, "query_count = 0"},
  };
  for (const Case& c : cases) {
    v1::LayerStats bad = Sketch(0, 8, 2, 9.0f);
    c.spoil(bad.mutable_sketch());
    EXPECT_THAT(ApplyLayerStats(model, table, bad, &stats),
                StatusIs(StatusCode::kInvalidArgument, c.message))
        << c.name;
    EXPECT_EQ(Dump(stats), before) << c.name;
  }
  // Positions up to the pending tokens are allowed while validating a commit.
  v1::LayerStats ahead = Sketch(0, 8, 2, 9.0f, 17);
  EXPECT_OK(ValidateLayerStats(model, table, stats, ahead, /*pending_tokens=*/2));
  EXPECT_THAT(ValidateLayerStats(model, table, stats, ahead, 1),
              StatusIs(StatusCode::kInvalidArgument, "last_position = 17"));
}

// Window queries after the sketch's last position are un-rotated and folded, once.
TEST(SequenceSketchTest, WindowQueriesAreUnrotatedAndFoldedOnce) {
  const Model model = MakeModel();
  const SequenceTable table = MakeTable(16);
  SequenceStats stats;
  // Pre-RoPE sketch of positions 0..13 with 1 of 8 slots used per head.
  ASSERT_OK(ApplyLayerStats(model, table, Sketch(0, 8, 1, 0.5f, 13), &stats));
  // Window of the last 4 positions (12..15): 14 and 15 are new.
  const uint32_t window = 4;
  std::vector<std::vector<float>> pre(kQHeads * window);
  v1::LayerStats w;
  w.set_layer(0);
  w.set_window(window);
  for (uint32_t h = 0; h < kQHeads; ++h) {
    for (uint32_t i = 0; i < window; ++i) {
      pre[h * window + i] = {0.3f * h + 1, -0.2f * i, 0.7f, 0.1f * h - i};
      for (float x : Rotate(pre[h * window + i], 12 + i)) w.add_window_queries(x);
    }
  }
  ASSERT_OK(ApplyLayerStats(model, table, w, &stats));
  const LayerSketch& s = stats.layers[0].sketch;
  EXPECT_EQ(s.last_position, 15);
  EXPECT_EQ(s.query_count, 16u);
  for (uint32_t h = 0; h < kQHeads; ++h) {
    ASSERT_EQ(s.heads[h].size(), 3) << "head " << h;  // the stored centroid + positions 14, 15
    for (uint32_t c = 1; c < 3; ++c) {
      EXPECT_EQ(s.heads[h].weights[c], 1.0f);
      for (uint32_t x = 0; x < kDim; ++x) {
        EXPECT_NEAR(s.heads[h].centroids[c * kDim + x], pre[h * window + 1 + c][x], 1e-5)
            << "head " << h << " centroid " << c << " channel " << x;
      }
    }
  }
  // Applying other statistics (or the same window again) folds nothing twice.
  const std::string once = Dump(stats);
  ASSERT_OK(ApplyLayerStats(model, table, w, &stats));
  v1::LayerStats moments;
  moments.set_layer(0);
  moments.set_query_count(1);
  for (uint32_t i = 0; i < kQHeads * kDim; ++i) moments.add_query_sum(0.5);
  ASSERT_OK(ApplyLayerStats(model, table, moments, &stats));
  EXPECT_EQ(Dump(stats), once);
}

// A post-RoPE sketch folds the window queries as they are; a full sketch moves the nearest
// centroid to the running mean.
TEST(SequenceSketchTest, PostRopeSketchFoldsIntoNearestCentroid) {
  const Model model = MakeModel();
  const SequenceTable table = MakeTable(8);
  SequenceStats stats;
  v1::LayerStats s = Sketch(1, 2, 2, 0.0f, 6);  // full: 2 of 2 slots
  s.mutable_sketch()->set_post_rope(true);
  ASSERT_OK(ApplyLayerStats(model, table, s, &stats));
  v1::LayerStats w;
  w.set_layer(1);
  w.set_window(1);  // position 7
  for (uint32_t h = 0; h < kQHeads; ++h) {
    // Near centroid 1 = (h, 1, 0, 1) of weight 3.
    for (float x : {float(h), 1.0f, 4.0f, 1.0f}) w.add_window_queries(x);
  }
  ASSERT_OK(ApplyLayerStats(model, table, w, &stats));
  const LayerSketch& k = stats.layers[1].sketch;
  EXPECT_TRUE(k.post_rope);
  for (uint32_t h = 0; h < kQHeads; ++h) {
    ASSERT_EQ(k.heads[h].size(), 2);
    EXPECT_EQ(k.heads[h].weights[1], 4.0f);
    EXPECT_FLOAT_EQ(k.heads[h].centroids[kDim + 2], 1.0f);  // 0 + (4 - 0) / 4
    EXPECT_EQ(k.heads[h].weights[0], 2.0f);                 // untouched
  }
}

TEST(SequenceSketchTest, LayerInputsGetPaddedSlots) {
  const Model model = MakeModel();
  const SequenceTable table = MakeTable(8);
  SequenceStats stats;
  ASSERT_OK(ApplyLayerStats(model, table, Sketch(0, 4, 2, 0.25f, 7), &stats));
  eviction::Policy policy;
  policy.scorer = eviction::ScorerKind::kQSketch;
  eviction::LayerInputs in;
  BuildLayerInputs(model, table, stats, policy, 0, {}, {}, &in);
  ASSERT_EQ(in.sketch_k, 4);
  ASSERT_EQ(in.sketch_centroids.size(), size_t{kQHeads} * 4 * kDim);
  ASSERT_EQ(in.sketch_weights.size(), size_t{kQHeads} * 4);
  EXPECT_FALSE(in.sketch_post_rope);
  for (uint32_t h = 0; h < kQHeads; ++h) {
    EXPECT_EQ(in.sketch_weights[h * 4 + 0], 2.0f);
    EXPECT_EQ(in.sketch_weights[h * 4 + 1], 3.0f);
    EXPECT_EQ(in.sketch_weights[h * 4 + 2], 0.0f);
    EXPECT_EQ(in.sketch_weights[h * 4 + 3], 0.0f);
    EXPECT_EQ(in.sketch_centroids[(h * 4 + 1) * kDim + 0], float(h));
    EXPECT_EQ(in.sketch_centroids[(h * 4 + 1) * kDim + 2], 0.25f);
  }
  BuildLayerInputs(model, table, stats, policy, 1, {}, {}, &in);  // layer 1 has none
  EXPECT_EQ(in.sketch_k, 0);
  EXPECT_TRUE(in.sketch_weights.empty());
  // Scorers that do not read it do not get it.
  policy.scorer = eviction::ScorerKind::kKnorm;
  BuildLayerInputs(model, table, stats, policy, 0, {}, {}, &in);
  EXPECT_EQ(in.sketch_k, 0);
}

TEST(SequenceSketchTest, ScorersNameAMissingOrWrongSideSketch) {
  const Model model = MakeModel();
  const SequenceTable table = MakeTable(8);
  SequenceStats stats;
  EXPECT_THAT(CheckStatsFor(model, table, stats, eviction::ScorerKind::kQSketch),
              StatusIs(StatusCode::kFailedPrecondition,
                       "qsketch needs a query sketch (LayerStats.sketch); layer 0 has none"));
  ASSERT_OK(ApplyLayerStats(model, table, Sketch(0, 4, 2, 0.25f, 7), &stats));
  EXPECT_THAT(CheckStatsFor(model, table, stats, eviction::ScorerKind::kQSketch),
              StatusIs(StatusCode::kFailedPrecondition, "layer 1 has none"));
  ASSERT_OK(ApplyLayerStats(model, table, Sketch(1, 4, 2, 0.25f, 7), &stats));
  EXPECT_OK(CheckStatsFor(model, table, stats, eviction::ScorerKind::kQSketch));
  EXPECT_THAT(CheckStatsFor(model, table, stats, eviction::ScorerKind::kQSketchPost),
              StatusIs(StatusCode::kFailedPrecondition,
                       "qsketch-post needs a sketch of post-RoPE queries "
                       "(LayerStats.sketch.post_rope); layer 0 has one of pre-RoPE queries"));
}

}  // namespace
}  // namespace kvkeep
