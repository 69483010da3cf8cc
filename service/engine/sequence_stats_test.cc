#include "service/engine/sequence_stats.h"

#include <cmath>
#include <functional>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using absl::StatusCode;
using eviction::ScorerKind;
using ::kvkeep::testing::StatusIs;

constexpr uint32_t kLayers = 2, kQHeads = 4, kKvHeads = 2, kDim = 4, kTpp = 4;

Model MakeModel(double theta = 5e5) {
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

// A table whose heads hold `n` committed tokens (page ids are fake: no bytes are touched here).
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

// Every stored value, for "nothing changed" checks.
std::string Dump(const SequenceStats& s) {
  std::string out = absl::StrCat(s.layers.size(), ";");
  for (const LayerStatistics& l : s.layers) {
    absl::StrAppend(&out, "w", l.window, "@", l.window_next_position, ":");
    for (float x : l.window_queries) absl::StrAppend(&out, x, ",");
    absl::StrAppend(&out, "q", l.query_count, ":");
    for (double x : l.query_sum) absl::StrAppend(&out, x, ",");
    absl::StrAppend(&out, "sq:");
    for (double x : l.query_sq_sum) absl::StrAppend(&out, x, ",");
    absl::StrAppend(&out, "m", l.attention_mass.size(), ":");
    for (const auto& m : l.attention_mass) {
      for (float x : m) absl::StrAppend(&out, x, ",");
      absl::StrAppend(&out, "|");
    }
  }
  return out;
}

v1::LayerStats Window(uint32_t layer, uint32_t window, float base) {
  v1::LayerStats s;
  s.set_layer(layer);
  s.set_window(window);
  for (uint32_t i = 0; i < kQHeads * window * kDim; ++i) s.add_window_queries(base + i);
  return s;
}

v1::LayerStats Moments(uint32_t layer, uint64_t count, double base, bool with_sq) {
  v1::LayerStats s;
  s.set_layer(layer);
  s.set_query_count(count);
  for (uint32_t i = 0; i < kQHeads * kDim; ++i) {
    s.add_query_sum(base + i);
    if (with_sq) s.add_query_sq_sum(base * base + i);
  }
  return s;
}

// Mass of query head h for token j: 100 h + j.
v1::LayerStats Mass(const SequenceTable& table, uint32_t layer, uint32_t extra = 0) {
  v1::LayerStats s;
  s.set_layer(layer);
  for (uint32_t h = 0; h < kQHeads; ++h) {
    const uint32_t n = table.head(layer * kKvHeads + h / (kQHeads / kKvHeads)).count + extra;
    for (uint32_t j = 0; j < n; ++j) s.add_attention_mass(100.0f * h + j);
  }
  return s;
}

TEST(SequenceStatsTest, WindowReplacesAndRecordsThePosition) {
  Model model = MakeModel();
  SequenceTable table = MakeTable(6);
  SequenceStats stats;
  ASSERT_OK(ApplyLayerStats(model, table, Window(1, 2, 0.5f), &stats));
  ASSERT_EQ(stats.layers.size(), kLayers);
  EXPECT_EQ(stats.layers[1].window, 2u);
  EXPECT_EQ(stats.layers[1].window_next_position, 6);
  ASSERT_OK(ApplyLayerStats(model, table, Window(1, 3, 7.0f), &stats));
  EXPECT_EQ(stats.layers[1].window, 3u);
  ASSERT_EQ(stats.layers[1].window_queries.size(), kQHeads * 3 * kDim);
  EXPECT_EQ(stats.layers[1].window_queries[0], 7.0f);
  EXPECT_EQ(stats.layers[1].window_queries.back(), 7.0f + kQHeads * 3 * kDim - 1);
  EXPECT_EQ(stats.layers[0].window, 0u);  // other layers untouched
  EXPECT_GT(stats.bytes(), 0u);
}

TEST(SequenceStatsTest, MomentsAccumulate) {
  Model model = MakeModel();
  SequenceTable table = MakeTable(6);
  SequenceStats stats;
  ASSERT_OK(ApplyLayerStats(model, table, Moments(0, 3, 1.0, true), &stats));
  ASSERT_OK(ApplyLayerStats(model, table, Moments(0, 5, 2.0, true), &stats));
  const LayerStatistics& l = stats.layers[0];
  EXPECT_EQ(l.query_count, 8u);
  ASSERT_EQ(l.query_sum.size(), kQHeads * kDim);
  ASSERT_EQ(l.query_sq_sum.size(), kQHeads * kDim);
  for (uint32_t i = 0; i < kQHeads * kDim; ++i) {
    EXPECT_DOUBLE_EQ(l.query_sum[i], 3.0 + 2 * i);
    EXPECT_DOUBLE_EQ(l.query_sq_sum[i], 5.0 + 2 * i);
  }
  // Without second moments throughout: none stored.
  ASSERT_OK(ApplyLayerStats(model, table, Moments(1, 2, 1.0, false), &stats));
  ASSERT_OK(ApplyLayerStats(model, table, Moments(1, 2, 1.0, false), &stats));
  EXPECT_EQ(stats.layers[1].query_count, 4u);
  EXPECT_TRUE(stats.layers[1].query_sq_sum.empty());
}

TEST(SequenceStatsTest, AttentionMassReplacesAndFollowsPerHeadCounts) {
  Model model = MakeModel();
  SequenceTable table = MakeTable(7);
  // After an ada-like eviction, KV head 1 of layer 0 holds 5 tokens while KV head 0 holds 7.
  std::vector<uint64_t> freed;
  ASSERT_OK(table.Compact(1, std::vector<int32_t>{0, 1, 3, 5, 6}, &freed));
  SequenceStats stats;
  ASSERT_OK(ApplyLayerStats(model, table, Mass(table, 0), &stats));
  const auto& mass = stats.layers[0].attention_mass;
  ASSERT_EQ(mass.size(), kQHeads);
  EXPECT_EQ(mass[0].size(), 7u);
  EXPECT_EQ(mass[1].size(), 7u);
  EXPECT_EQ(mass[2].size(), 5u);
  EXPECT_EQ(mass[3].size(), 5u);
  EXPECT_EQ(mass[3][4], 304.0f);
  // The old flat length (every head 7) no longer matches.
  v1::LayerStats wrong;
  wrong.set_layer(0);
  for (int i = 0; i < 4 * 7; ++i) wrong.add_attention_mass(1.0f);
  EXPECT_THAT(ApplyLayerStats(model, table, wrong, &stats),
              StatusIs(StatusCode::kInvalidArgument, "LayerStats.attention_mass has 28 floats"));
  // Replacing.
  v1::LayerStats again = Mass(table, 0);
  again.set_attention_mass(0, -1.0f);
  ASSERT_OK(ApplyLayerStats(model, table, again, &stats));
  EXPECT_EQ(stats.layers[0].attention_mass[0][0], -1.0f);
}

TEST(SequenceStatsTest, BadStatsAreRejectedAndChangeNothing) {
  Model model = MakeModel();
  SequenceTable table = MakeTable(6);
  SequenceStats stats;
  ASSERT_OK(ApplyLayerStats(model, table, Window(0, 2, 1.0f), &stats));
  ASSERT_OK(ApplyLayerStats(model, table, Moments(0, 2, 1.0, true), &stats));
  ASSERT_OK(ApplyLayerStats(model, table, Mass(table, 0), &stats));
  const std::string before = Dump(stats);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();

  struct Case {
    v1::LayerStats s;
    const char* message;
  };
  std::vector<Case> cases;
  auto add = [&](v1::LayerStats s, const char* message) {
    cases.push_back({std::move(s), message});
  };
  {
    v1::LayerStats s = Window(0, 2, 0);
    s.set_layer(kLayers);
    add(s, "LayerStats.layer = 2 is out of range");
  }
  {
    v1::LayerStats s = Window(0, 2, 0);
    s.mutable_window_queries()->RemoveLast();
    add(s, "LayerStats.window_queries has 31 floats, expected");
  }
  {
    v1::LayerStats s = Window(0, 2, 0);
    s.set_window(0);
    add(s, "LayerStats.window is 0");
  }
  add(Window(0, 7, 0), "LayerStats.window = 7 exceeds");
  {
    v1::LayerStats s = Window(1, 2, 0);
    s.set_window_queries(5, nan);
    add(s, "LayerStats.window_queries holds a non-finite value (nan) at index 5");
  }
  {
    v1::LayerStats s = Window(1, 2, 0);
    s.set_window_queries(0, -inf);
    add(s, "LayerStats.window_queries holds a non-finite value");
  }
  {
    v1::LayerStats s = Moments(0, 2, 1.0, true);
    s.set_query_sum(3, std::numeric_limits<double>::quiet_NaN());
    add(s, "LayerStats.query_sum holds a non-finite value (nan) at index 3");
  }
  {
    v1::LayerStats s = Moments(0, 2, 1.0, true);
    s.set_query_sq_sum(2, std::numeric_limits<double>::infinity());
    add(s, "LayerStats.query_sq_sum holds a non-finite value");
  }
  {
    v1::LayerStats s = Moments(0, 2, 1.0, true);
    s.set_query_sq_sum(2, -1.0);
    add(s, "LayerStats.query_sq_sum holds a negative value");
  }
  {
    v1::LayerStats s = Moments(0, 2, 1.0, true);
    s.set_query_count(0);
    add(s, "LayerStats.query_count must be > 0");
  }
  {
    v1::LayerStats s;
    s.set_query_count(3);
    add(s, "LayerStats.query_count = 3 without LayerStats.query_sum");
  }
  {
    v1::LayerStats s = Moments(0, 2, 1.0, true);
    s.clear_query_sum();
    s.set_query_count(0);
    add(s, "LayerStats.query_sq_sum was sent without LayerStats.query_sum");
  }
  {
    v1::LayerStats s = Moments(0, 2, 1.0, true);
    s.add_query_sum(0);
    add(s, "LayerStats.query_sum has 17 entries, expected q_heads * head_dim = 16");
  }
  {
    v1::LayerStats s = Moments(0, 2, 1.0, true);
    s.mutable_query_sq_sum()->RemoveLast();
    add(s, "LayerStats.query_sq_sum has 15 entries");
  }
  // Layer 0 accumulated second moments: an update without them would corrupt the variance.
  add(Moments(0, 2, 1.0, false), "LayerStats.query_sq_sum must come with every");
  {
    v1::LayerStats s = Moments(0, std::numeric_limits<uint64_t>::max() / 2, 1.0, true);
    add(s, "LayerStats.query_count");
  }
  {
    v1::LayerStats s = Mass(table, 0);
    s.set_attention_mass(3, nan);
    add(s, "LayerStats.attention_mass holds a non-finite value (nan) at index 3");
  }
  add(Mass(table, 1, 1), "LayerStats.attention_mass has 28 floats");
  for (const Case& c : cases) {
    EXPECT_THAT(ApplyLayerStats(model, table, c.s, &stats),
                StatusIs(StatusCode::kInvalidArgument, c.message))
        << c.s.ShortDebugString();
    EXPECT_EQ(Dump(stats), before) << c.s.ShortDebugString();
  }
}

TEST(SequenceStatsTest, AccumulatedMomentOverflowIsRejected) {
  Model model = MakeModel();
  SequenceTable table = MakeTable(6);
  SequenceStats stats;
  v1::LayerStats big = Moments(0, 1, 1.0, false);
  big.set_query_sum(4, 1.5e308);
  ASSERT_OK(ApplyLayerStats(model, table, big, &stats));
  const std::string before = Dump(stats);
  EXPECT_THAT(ApplyLayerStats(model, table, big, &stats),
              StatusIs(StatusCode::kInvalidArgument, "overflow at index 4"));
  EXPECT_EQ(Dump(stats), before);
}

TEST(SequenceStatsTest, ValidationCanCountTokensAboutToBeCommitted) {
  Model model = MakeModel();
  SequenceTable table = MakeTable(6);
  SequenceStats stats;
  const v1::LayerStats mass = Mass(table, 0, /*extra=*/2);
  const v1::LayerStats window = Window(0, 8, 0);
  EXPECT_THAT(ValidateLayerStats(model, table, stats, mass),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateLayerStats(model, table, stats, window),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_OK(ValidateLayerStats(model, table, stats, mass, /*pending_tokens=*/2));
  EXPECT_OK(ValidateLayerStats(model, table, stats, window, /*pending_tokens=*/2));
  EXPECT_TRUE(stats.layers.empty());  // validation stores nothing
}

TEST(SequenceStatsTest, CheckStatsForNamesWhatIsMissingOrStale) {
  Model model = MakeModel();
  SequenceTable table = MakeTable(6);
  SequenceStats stats;
  EXPECT_OK(CheckStatsFor(model, table, stats, ScorerKind::kStreaming));
  EXPECT_OK(CheckStatsFor(model, table, stats, ScorerKind::kKnorm));
  EXPECT_THAT(CheckStatsFor(model, table, stats, ScorerKind::kCapKv),
              StatusIs(StatusCode::kFailedPrecondition,
                       "capkv needs query moments (LayerStats.query_sum); layer 0 has none; send "
                       "them with CommitTokens or PutStats"));
  EXPECT_THAT(CheckStatsFor(model, table, stats, ScorerKind::kSnapKv),
              StatusIs(StatusCode::kFailedPrecondition,
                       "snapkv needs window queries (LayerStats.window_queries); layer 0"));
  EXPECT_THAT(CheckStatsFor(model, table, stats, ScorerKind::kH2o),
              StatusIs(StatusCode::kFailedPrecondition,
                       "h2o needs attention mass (LayerStats.attention_mass)"));

  // Layer 0 only: layer 1 is named.
  ASSERT_OK(ApplyLayerStats(model, table, Moments(0, 2, 1.0, false), &stats));
  EXPECT_THAT(CheckStatsFor(model, table, stats, ScorerKind::kExpected),
              StatusIs(StatusCode::kFailedPrecondition, "layer 1 has none"));
  ASSERT_OK(ApplyLayerStats(model, table, Moments(1, 2, 1.0, false), &stats));
  EXPECT_OK(CheckStatsFor(model, table, stats, ScorerKind::kExpected));

  for (uint32_t l = 0; l < kLayers; ++l) {
    ASSERT_OK(ApplyLayerStats(model, table, Window(l, 2, 0), &stats));
    ASSERT_OK(ApplyLayerStats(model, table, Mass(table, l), &stats));
  }
  EXPECT_OK(CheckStatsFor(model, table, stats, ScorerKind::kSnapKv));
  EXPECT_OK(CheckStatsFor(model, table, stats, ScorerKind::kLaProx));
  EXPECT_OK(CheckStatsFor(model, table, stats, ScorerKind::kObserved));

  // One more committed token: the window and the mass are stale; the moments stay valid.
  for (uint32_t h = 0; h < table.heads(); ++h) table.AppendPages(h, {1000 + h});
  ASSERT_OK(table.Commit(1, {}));
  EXPECT_THAT(CheckStatsFor(model, table, stats, ScorerKind::kTova),
              StatusIs(StatusCode::kFailedPrecondition, "but the sequence is at 7"));
  EXPECT_THAT(CheckStatsFor(model, table, stats, ScorerKind::kH2o),
              StatusIs(StatusCode::kFailedPrecondition, "has it for 6 tokens"));
  EXPECT_OK(CheckStatsFor(model, table, stats, ScorerKind::kCapKvDot));
}

TEST(SequenceStatsTest, CompactStatsKeepsTheMassOfKeptTokens) {
  Model model = MakeModel();
  SequenceTable table = MakeTable(6);
  SequenceStats stats;
  ASSERT_OK(ApplyLayerStats(model, table, Mass(table, 1), &stats));
  const std::vector<int32_t> kept = {0, 2, 5};
  CompactStats(model, 1, 1, 6, kept, &stats);
  const auto& mass = stats.layers[1].attention_mass;
  EXPECT_EQ(mass[0], (std::vector<float>{0, 1, 2, 3, 4, 5}));  // KV head 0 untouched
  EXPECT_EQ(mass[2], (std::vector<float>{200, 202, 205}));
  EXPECT_EQ(mass[3], (std::vector<float>{300, 302, 305}));
  // Mass that does not cover the old count is stale and dropped.
  CompactStats(model, 1, 0, 9, kept, &stats);
  EXPECT_TRUE(mass[0].empty());
  EXPECT_TRUE(mass[1].empty());
}

TEST(SequenceStatsTest, BuildLayerInputsCopiesWhatTheScorerNeeds) {
  v1::ModelLayout layout = MakeModel().layout();
  layout.mutable_rope()->set_rotary_dim(2);
  layout.mutable_rope()->set_interleaved(true);
  ASSERT_OK_AND_ASSIGN(Model model, Model::FromLayout(layout));
  v1::WoGram gram;
  gram.set_layer(1);
  gram.set_q_head(2);
  for (uint32_t i = 0; i < kDim * kDim; ++i) gram.add_values(static_cast<float>(i));
  ASSERT_OK(model.AddWoGram(gram));

  SequenceTable table = MakeTable(6);
  std::vector<uint64_t> freed;
  ASSERT_OK(table.Compact(3, std::vector<int32_t>{1, 4}, &freed));  // layer 1, KV head 1
  SequenceStats stats;
  ASSERT_OK(ApplyLayerStats(model, table, Window(1, 2, 0), &stats));
  ASSERT_OK(ApplyLayerStats(model, table, Moments(1, 2, 1.0, true), &stats));
  ASSERT_OK(ApplyLayerStats(model, table, Mass(table, 1), &stats));

  std::vector<float> k0(6 * kDim), k1(2 * kDim);
  const std::vector<const float*> keys = {k0.data(), k1.data()};
  eviction::LayerInputs in;
  eviction::Policy snap{.scorer = ScorerKind::kSnapKv};
  BuildLayerInputs(model, table, stats, snap, 1, keys, {}, &in);
  EXPECT_EQ(in.q_heads, 4);
  EXPECT_EQ(in.kv_heads, 2);
  EXPECT_EQ(in.head_dim, 4);
  EXPECT_EQ(in.layer_index, 1);
  ASSERT_EQ(in.heads.size(), 2u);
  EXPECT_EQ(in.heads[0].n, 6);
  EXPECT_EQ(in.heads[1].n, 2);
  EXPECT_EQ(in.heads[1].keys, k1.data());
  EXPECT_EQ(in.heads[1].values, nullptr);
  EXPECT_EQ(in.heads[1].positions[0], 1);
  EXPECT_EQ(in.heads[1].positions[1], 4);
  EXPECT_EQ(in.next_position, 6);
  EXPECT_EQ(in.rope.theta, 5e5);
  EXPECT_EQ(in.rope.rotary_dim, 2);
  EXPECT_TRUE(in.rope.interleaved);
  EXPECT_TRUE(in.rope.inv_freq.empty());
  EXPECT_EQ(in.window, 2);
  EXPECT_EQ(in.window_queries.size(), kQHeads * 2 * kDim);
  EXPECT_TRUE(in.query_sum.empty());  // snapkv reads no moments
  EXPECT_TRUE(in.attention_mass.empty());
  EXPECT_TRUE(in.wo_gram.empty());
  EXPECT_OK(eviction::ValidateLayerInputs(in, snap));

  eviction::Policy capkv{.scorer = ScorerKind::kCapKv};
  BuildLayerInputs(model, table, stats, capkv, 1, keys, keys, &in);
  EXPECT_EQ(in.window, 0);
  EXPECT_TRUE(in.window_queries.empty());
  EXPECT_EQ(in.query_count, 2);
  EXPECT_EQ(in.query_sum.size(), kQHeads * kDim);
  EXPECT_EQ(in.query_sq_sum.size(), kQHeads * kDim);

  eviction::Policy h2o{.scorer = ScorerKind::kH2o};
  BuildLayerInputs(model, table, stats, h2o, 1, {}, {}, &in);
  ASSERT_EQ(in.attention_mass.size(), kQHeads);
  EXPECT_EQ(in.attention_mass[3], (std::vector<float>{300, 301}));
  EXPECT_OK(eviction::ValidateLayerInputs(in, h2o));

  // laprox: the registered Gram for q head 2, identity for the others.
  eviction::Policy laprox{.scorer = ScorerKind::kLaProx};
  BuildLayerInputs(model, table, stats, laprox, 1, keys, keys, &in);
  ASSERT_EQ(in.wo_gram.size(), kQHeads * kDim * kDim);
  EXPECT_EQ(in.wo_gram[2 * kDim * kDim + 5], 5.0f);
  EXPECT_EQ(in.wo_gram[0], 1.0f);
  EXPECT_EQ(in.wo_gram[1], 0.0f);
  EXPECT_EQ(in.wo_gram[3 * kDim * kDim + kDim + 1], 1.0f);
  // Layer 0 has no Gram at all: none passed.
  ASSERT_OK(ApplyLayerStats(model, table, Window(0, 2, 0), &stats));
  BuildLayerInputs(model, table, stats, laprox, 0, {k0.data(), k0.data()}, {k0.data(), k0.data()},
                   &in);
  EXPECT_TRUE(in.wo_gram.empty());
}

TEST(SequenceStatsTest, ModelWithoutRopeGetsZeroFrequencies) {
  Model model = MakeModel(/*theta=*/0);
  SequenceTable table = MakeTable(3);
  eviction::LayerInputs in;
  BuildLayerInputs(model, table, SequenceStats(),
                   eviction::Policy{.scorer = ScorerKind::kStreaming}, 0, {}, {}, &in);
  EXPECT_EQ(in.rope.inv_freq, std::vector<float>(kDim / 2, 0.0f));
  EXPECT_OK(eviction::ValidateLayerInputs(in, eviction::Policy{.scorer = ScorerKind::kStreaming}));

  v1::ModelLayout layout = MakeModel().layout();
  layout.mutable_rope()->add_inv_freq(0.5f);
  layout.mutable_rope()->add_inv_freq(0.25f);
  ASSERT_OK_AND_ASSIGN(Model with_table, Model::FromLayout(layout));
  BuildLayerInputs(with_table, table, SequenceStats(),
                   eviction::Policy{.scorer = ScorerKind::kStreaming}, 0, {}, {}, &in);
  EXPECT_EQ(in.rope.inv_freq, (std::vector<float>{0.5f, 0.25f}));
}

}  // namespace
}  // namespace kvkeep
