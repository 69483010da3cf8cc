#include "service/eviction/selection.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <set>

#include "common/status_matchers.h"

namespace kvkeep::eviction {
namespace {

using ::kvkeep::testing::StatusIs;

std::vector<HeadScores> RandomScores(const std::vector<std::vector<int>>& lengths, uint32_t seed,
                                     std::vector<float> layer_scale = {}) {
  std::mt19937 rng(seed);
  std::exponential_distribution<float> expo(1.0f);
  std::vector<HeadScores> out(lengths.size());
  for (size_t l = 0; l < lengths.size(); ++l) {
    const float scale = layer_scale.empty() ? 1.0f : layer_scale[l];
    for (int n : lengths[l]) {
      std::vector<float> s(n);
      for (float& v : s) v = expo(rng) * scale;
      out[l].per_head.push_back(std::move(s));
    }
  }
  return out;
}

std::vector<std::vector<int>> Equal(int layers, int heads, int n) {
  return std::vector<std::vector<int>>(layers, std::vector<int>(heads, n));
}

Policy MakePolicy(Allocation a) {
  Policy p;
  p.allocation = a;
  p.sinks = 4;
  p.window = 8;
  return p;
}

// Indices of the k best candidates of s (ties to the lower index), computed by a full sort.
std::vector<int32_t> NaiveTop(const std::vector<float>& s, int begin, int end, int64_t k) {
  std::vector<int32_t> idx(end - begin);
  std::iota(idx.begin(), idx.end(), begin);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return s[a] > s[b]; });
  idx.resize(std::min<int64_t>(k, idx.size()));
  std::sort(idx.begin(), idx.end());
  return idx;
}

// Checks what every selection must satisfy and returns the kept count per (layer, head).
std::vector<std::vector<int64_t>> CheckInvariants(const Policy& p, const Selection& sel,
                                                  const std::vector<HeadScores>& layers) {
  std::vector<std::vector<int64_t>> counts;
  EXPECT_EQ(sel.kept.size(), layers.size());
  for (size_t l = 0; l < layers.size(); ++l) {
    counts.emplace_back();
    EXPECT_EQ(sel.kept[l].size(), layers[l].per_head.size());
    for (size_t g = 0; g < layers[l].per_head.size(); ++g) {
      const int n = static_cast<int>(layers[l].per_head[g].size());
      const std::vector<int32_t>& k = sel.kept[l][g];
      EXPECT_TRUE(std::is_sorted(k.begin(), k.end())) << l << "/" << g;
      EXPECT_EQ(std::set<int32_t>(k.begin(), k.end()).size(), k.size()) << "duplicates";
      for (int32_t j : k) {
        EXPECT_GE(j, 0);
        EXPECT_LT(j, n);
      }
      const std::set<int32_t> kept(k.begin(), k.end());
      for (int j = 0; j < std::min(p.sinks, n); ++j) EXPECT_TRUE(kept.count(j)) << "sink " << j;
      for (int j = std::max(0, n - p.window); j < n; ++j) {
        EXPECT_TRUE(kept.count(j)) << "window " << j;
      }
      counts.back().push_back(static_cast<int64_t>(k.size()));
    }
  }
  return counts;
}

int64_t Sum(const std::vector<std::vector<int64_t>>& c) {
  int64_t s = 0;
  for (const auto& row : c) {
    for (int64_t v : row) s += v;
  }
  return s;
}

TEST(SelectUniform, EveryHeadKeepsItsShareOfTopScores) {
  const auto layers = RandomScores(Equal(3, 2, 100), 1);
  const Policy p = MakePolicy(Allocation::kUniform);
  ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 30}, layers, 4));
  const auto counts = CheckInvariants(p, sel, layers);
  for (size_t l = 0; l < 3; ++l) {
    for (size_t g = 0; g < 2; ++g) {
      EXPECT_EQ(counts[l][g], 30);
      std::vector<int32_t> want = {0, 1, 2, 3};
      for (int32_t j : NaiveTop(layers[l].per_head[g], 4, 92, 18)) want.push_back(j);
      for (int j = 92; j < 100; ++j) want.push_back(j);
      EXPECT_EQ(sel.kept[l][g], want);
    }
  }
}

TEST(SelectUniform, RatioSharesSumExactlyWithUnequalHeads) {
  const auto layers = RandomScores({{300, 211}, {257, 300}, {190, 299}}, 2);
  const Policy p = MakePolicy(Allocation::kUniform);
  int64_t total_n = 0;
  for (const auto& l : layers) {
    for (const auto& h : l.per_head) total_n += h.size();
  }
  for (double ratio : {0.1, 0.237, 0.5}) {
    ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.keep_ratio = ratio}, layers, 4));
    const auto counts = CheckInvariants(p, sel, layers);
    EXPECT_EQ(Sum(counts), std::llround(ratio * total_n)) << ratio;
    // Shares follow the head lengths.
    EXPECT_NEAR(counts[0][1], ratio * 211, 1.0);
    EXPECT_NEAR(counts[2][0], ratio * 190, 1.0);
  }
}

TEST(SelectAllAllocations, BudgetAtOrAboveLengthKeepsEverything) {
  const auto layers = RandomScores({{50, 60}, {55, 40}}, 3);
  for (Allocation a : {Allocation::kUniform, Allocation::kAda, Allocation::kPyramid,
                       Allocation::kGlobal}) {
    const Policy p = MakePolicy(a);
    for (Budget b : {Budget{.tokens = 60}, Budget{.tokens = 1000}, Budget{.keep_ratio = 1.0}}) {
      ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, b, layers, 4));
      const auto counts = CheckInvariants(p, sel, layers);
      EXPECT_EQ(counts, (std::vector<std::vector<int64_t>>{{50, 60}, {55, 40}}))
          << AllocationName(a);
    }
  }
}

TEST(SelectAllAllocations, ForcedTokensSurviveTinyBudgetsAndShortHeads) {
  const auto layers = RandomScores({{100, 10}, {7, 100}}, 4);
  for (Allocation a : {Allocation::kUniform, Allocation::kAda, Allocation::kPyramid,
                       Allocation::kGlobal}) {
    const Policy p = MakePolicy(a);
    ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 1}, layers, 1));
    const auto counts = CheckInvariants(p, sel, layers);
    EXPECT_EQ(counts[0][0], 12) << AllocationName(a);  // only sinks + window
    EXPECT_EQ(counts[0][1], 10);
    EXPECT_EQ(counts[1][0], 7);
  }
}

TEST(SelectAllAllocations, TiesGoToTheLowerIndex) {
  std::vector<HeadScores> layers(1);
  layers[0].per_head.push_back(std::vector<float>(40, 1.0f));
  for (Allocation a : {Allocation::kUniform, Allocation::kAda, Allocation::kGlobal}) {
    const Policy p = MakePolicy(a);
    ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 15}, layers, 1));
    std::vector<int32_t> want = {0, 1, 2, 3, 4, 5, 6};
    for (int j = 32; j < 40; ++j) want.push_back(j);
    EXPECT_EQ(sel.kept[0][0], want) << AllocationName(a);
  }
}

// Ada-KV: B_h = round((1 - α) c_h + ⌊α b⌋), re-computed here from a full sort of the layer.
TEST(SelectAda, FollowsTheAdaFormulaAndSumsExactly) {
  // Head 0 has much larger scores than head 1, head 2 in between.
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> u(0, 1);
  std::vector<HeadScores> layers(2);
  for (int l = 0; l < 2; ++l) {
    for (float scale : {10.0f, 1.0f, 3.0f, 0.5f}) {
      std::vector<float> s(120);
      for (float& v : s) v = u(rng) * scale;
      layers[l].per_head.push_back(s);
    }
  }
  for (int group : {1, 4}) {
    const Policy p = MakePolicy(Allocation::kAda);
    const double alpha = group > 1 ? 0.2 : 0.5;
    ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 40}, layers, group));
    const auto counts = CheckInvariants(p, sel, layers);
    for (int l = 0; l < 2; ++l) {
      // Candidates of each head are [4, 112); b = 40 - 12 = 28 per head; K = 4 * 28 = 112.
      struct Item {
        float s;
        int h, j;
      };
      std::vector<Item> items;
      for (int h = 0; h < 4; ++h) {
        for (int j = 4; j < 112; ++j) items.push_back({layers[l].per_head[h][j], h, j});
      }
      std::stable_sort(items.begin(), items.end(),
                       [](const Item& a, const Item& b) { return a.s > b.s; });
      std::vector<int> c(4, 0);
      for (int t = 0; t < 112; ++t) ++c[items[t].h];
      int64_t sum = 0;
      const double floor_ab = std::floor(alpha * 28);
      for (int h = 0; h < 4; ++h) {
        const int64_t picks = counts[l][h] - 12;
        const double raw = (1 - alpha) * c[h] + floor_ab;
        EXPECT_GE(picks, static_cast<int64_t>(floor_ab)) << "floor, head " << h;
        EXPECT_LE(std::fabs(picks - raw), 1.0 + 1e-9) << "group " << group << " head " << h;
        sum += picks;
        // Each head keeps its own top B_h.
        std::vector<int32_t> want = {0, 1, 2, 3};
        for (int32_t j : NaiveTop(layers[l].per_head[h], 4, 112, picks)) want.push_back(j);
        for (int j = 112; j < 120; ++j) want.push_back(j);
        EXPECT_EQ(sel.kept[l][h], want);
      }
      EXPECT_EQ(sum, 112);
      // The formula moves budget towards the high-scoring head.
      EXPECT_GT(counts[l][0], counts[l][1]);
    }
  }
}

TEST(SelectAda, ExactFormulaWhenNoRoundingIsNeeded) {
  // alpha = 0.5, b = 10, floor = 5; counts (20, 0) -> B = (15, 5).
  std::vector<HeadScores> layers(1);
  std::vector<float> hi(32), lo(32);
  for (int j = 0; j < 32; ++j) {
    hi[j] = 100.0f + j;
    lo[j] = static_cast<float>(j) * 0.01f;
  }
  layers[0].per_head = {hi, lo};
  Policy p = MakePolicy(Allocation::kAda);
  ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 22}, layers, 1));
  EXPECT_EQ(sel.kept[0][0].size(), 12u + 15u);
  EXPECT_EQ(sel.kept[0][1].size(), 12u + 5u);
  p.ada_alpha = 1.0;  // alpha = 1: all floor, i.e. uniform
  ASSERT_OK_AND_ASSIGN(Selection uni, SelectTokens(p, Budget{.tokens = 22}, layers, 1));
  EXPECT_EQ(uni.kept[0][0].size(), 22u);
  EXPECT_EQ(uni.kept[0][1].size(), 22u);
}

TEST(SelectPyramid, LayerBudgetsDescendAndAverageToUniform) {
  const int L = 8;
  const auto layers = RandomScores(Equal(L, 2, 1000), 6);
  Policy p = MakePolicy(Allocation::kPyramid);
  p.pyramid_beta = 10;  // min = 20 >= sinks + window
  ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 200}, layers, 4));
  const auto counts = CheckInvariants(p, sel, layers);
  EXPECT_EQ(Sum(counts), 200 * L * 2);
  for (int l = 0; l + 1 < L; ++l) EXPECT_GT(counts[l][0], counts[l + 1][0]);
  // max = 2u - u/β = 380, min = 20; layer l = 380 - l * 360 / 7.
  for (int l = 0; l < L; ++l) {
    EXPECT_NEAR(counts[l][0], 380.0 - l * 360.0 / 7, 1.0) << l;
  }
}

TEST(SelectPyramid, ClipsTheTopLayerToTheLengthLessWindow) {
  const int L = 4;
  const auto layers = RandomScores(Equal(L, 1, 1000), 7);
  const Policy p = MakePolicy(Allocation::kPyramid);
  ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 700}, layers, 4));
  const auto counts = CheckInvariants(p, sel, layers);
  // max = 2*700 - 35 >= 992 -> max = 992, min = 1400 - 992 = 408.
  EXPECT_EQ(counts[0][0], 992);
  EXPECT_EQ(counts[L - 1][0], 408);
  EXPECT_EQ(Sum(counts), 700 * L);
}

TEST(SelectPyramid, FallsBackToUniformBelowTheForcedFloor) {
  const auto layers = RandomScores(Equal(4, 2, 1000), 8);
  const Policy p = MakePolicy(Allocation::kPyramid);  // beta 20: min = 10 < 12
  ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 200}, layers, 4));
  const auto counts = CheckInvariants(p, sel, layers);
  for (const auto& row : counts) {
    for (int64_t c : row) EXPECT_EQ(c, 200);
  }
}

TEST(SelectGlobal, NormalisesPerLayerThenOneTopK) {
  // Layer 1's scores are 1000x larger; without normalisation it would take everything.
  const auto layers = RandomScores(Equal(2, 2, 80), 9, {1.0f, 1000.0f});
  const Policy p = MakePolicy(Allocation::kGlobal);
  ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 30}, layers, 4));
  const auto counts = CheckInvariants(p, sel, layers);
  EXPECT_EQ(Sum(counts), 30 * 4);
  // Re-compute: candidates [4, 72) of each head, divided by the layer's sum.
  struct Item {
    float s;
    int l, g, j;
  };
  std::vector<Item> items;
  for (int l = 0; l < 2; ++l) {
    double sum = 0;
    for (int g = 0; g < 2; ++g) {
      for (int j = 4; j < 72; ++j) sum += layers[l].per_head[g][j];
    }
    for (int g = 0; g < 2; ++g) {
      for (int j = 4; j < 72; ++j) {
        items.push_back({static_cast<float>(layers[l].per_head[g][j] / sum), l, g, j});
      }
    }
  }
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) { return a.s > b.s; });
  std::set<std::tuple<int, int, int>> want;
  for (int t = 0; t < 120 - 48; ++t) want.insert({items[t].l, items[t].g, items[t].j});
  for (int l = 0; l < 2; ++l) {
    for (int g = 0; g < 2; ++g) {
      for (int32_t j : sel.kept[l][g]) {
        if (j >= 4 && j < 72) {
          EXPECT_TRUE(want.count({l, g, j})) << l << " " << g << " " << j;
        }
      }
    }
  }
  EXPECT_GT(counts[0][0] + counts[0][1], 2 * 12);  // layer 0 is not starved
}

TEST(SelectGlobal, NegativeScoresKeepTheirOrderWithinALayer) {
  // knorm-like scores (all negative): the least negative must win.
  std::vector<HeadScores> layers(1);
  std::vector<float> s(50);
  for (int j = 0; j < 50; ++j) s[j] = -static_cast<float>((j * 37) % 50) - 1.0f;
  layers[0].per_head = {s};
  const Policy p = MakePolicy(Allocation::kGlobal);
  ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 20}, layers, 1));
  std::vector<int32_t> want = {0, 1, 2, 3};
  for (int32_t j : NaiveTop(s, 4, 42, 8)) want.push_back(j);
  for (int j = 42; j < 50; ++j) want.push_back(j);
  EXPECT_EQ(sel.kept[0][0], want);
}

TEST(SelectValidation, RejectsBadBudgetsAndScores) {
  const auto layers = RandomScores(Equal(2, 2, 50), 10);
  const Policy p = MakePolicy(Allocation::kUniform);
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  EXPECT_THAT(SelectTokens(p, Budget{}, layers, 1), StatusIs(kInvalid, "exactly one"));
  EXPECT_THAT(SelectTokens(p, Budget{.keep_ratio = 0.5, .tokens = 3}, layers, 1),
              StatusIs(kInvalid, "exactly one"));
  EXPECT_THAT(SelectTokens(p, Budget{.keep_ratio = 1.5}, layers, 1),
              StatusIs(kInvalid, "keep_ratio"));
  EXPECT_THAT(SelectTokens(p, Budget{.keep_ratio = std::nan("")}, layers, 1),
              StatusIs(kInvalid, "keep_ratio"));
  EXPECT_THAT(SelectTokens(p, Budget{.tokens = -5}, layers, 1), StatusIs(kInvalid, "tokens"));
  EXPECT_THAT(SelectTokens(p, Budget{.tokens = 5}, layers, 0),
              StatusIs(kInvalid, "q_heads_per_kv"));
  auto nan_scores = layers;
  nan_scores[1].per_head[0][7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(SelectTokens(p, Budget{.tokens = 5}, nan_scores, 1),
              StatusIs(kInvalid, "layer 1 head 0 token 7"));
  auto ragged = layers;
  ragged[1].per_head.pop_back();
  EXPECT_THAT(SelectTokens(p, Budget{.tokens = 5}, ragged, 1), StatusIs(kInvalid, "KV heads"));
  Policy bad = p;
  bad.window = -1;
  EXPECT_THAT(SelectTokens(bad, Budget{.tokens = 5}, layers, 1), StatusIs(kInvalid, "window"));
}

}  // namespace
}  // namespace kvkeep::eviction
