#include "service/eviction/sequence_allocation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <numeric>
#include <random>

#include "common/status_matchers.h"
#include "service/eviction/selection.h"

namespace kvkeep::eviction {
namespace {

using ::kvkeep::testing::StatusIs;

std::vector<HeadScores> RandomScores(int layers, int heads, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::exponential_distribution<float> expo(1.0f);
  std::vector<HeadScores> out(layers);
  for (int l = 0; l < layers; ++l) {
    for (int g = 0; g < heads; ++g) {
      std::vector<float> s(n);
      // Layers on very different scales: the per-head normalisation must cancel them.
      for (float& v : s) v = expo(rng) * static_cast<float>(1 + 100 * l);
      out[l].per_head.push_back(std::move(s));
    }
  }
  return out;
}

Policy SequencePolicy() {
  Policy p;
  p.allocation = Allocation::kSequence;
  p.sinks = 4;
  p.window = 8;
  return p;
}

// The specification, computed the slow way: per-head normalised scores averaged in double, then a
// full stable sort of the candidates.
std::vector<int32_t> NaiveKept(const Policy& p, const std::vector<HeadScores>& layers,
                               int64_t per_head) {
  const int n = static_cast<int>(layers[0].per_head[0].size());
  const int b = std::min(p.sinks, n), e = std::max(b, n - p.window);
  std::vector<double> c(n, 0.0);
  const double pairs = static_cast<double>(layers.size() * layers[0].per_head.size());
  for (const HeadScores& layer : layers) {
    for (const std::vector<float>& s : layer.per_head) {
      double z = 0;
      for (int j = b; j < e; ++j) z += std::abs(s[j]);
      for (int j = b; j < e && z > 0; ++j) c[j] += s[j] / z / pairs;
    }
  }
  std::vector<int32_t> idx(e - b);
  std::iota(idx.begin(), idx.end(), b);
  std::stable_sort(idx.begin(), idx.end(), [&](int x, int y) { return c[x] > c[y]; });
  idx.resize(std::clamp<int64_t>(per_head - (n - (e - b)), 0, e - b));
  std::vector<int32_t> kept;
  for (int j = 0; j < b; ++j) kept.push_back(j);
  std::sort(idx.begin(), idx.end());
  kept.insert(kept.end(), idx.begin(), idx.end());
  for (int j = e; j < n; ++j) kept.push_back(j);
  return kept;
}

TEST(SequenceAllocation, EveryLayerAndHeadKeepsTheSameSetAsTheSpecification) {
  const Policy p = SequencePolicy();
  for (uint32_t seed : {1u, 2u, 3u}) {
    const std::vector<HeadScores> layers = RandomScores(3, 2, 100, seed);
    for (double ratio : {0.05, 0.2, 0.5, 1.0}) {
      ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.keep_ratio = ratio}, layers, 4));
      const std::vector<int32_t> want = NaiveKept(p, layers, std::llround(ratio * 100));
      ASSERT_EQ(sel.kept.size(), 3u);
      for (const auto& layer : sel.kept) {
        ASSERT_EQ(layer.size(), 2u);
        for (const auto& head : layer)
          EXPECT_EQ(head, want) << "seed " << seed << " ratio " << ratio;
      }
    }
  }
}

TEST(SequenceAllocation, KeptCountIsTheBudgetAndForcedTokensStay) {
  const Policy p = SequencePolicy();
  const std::vector<HeadScores> layers = RandomScores(2, 2, 64, 9);
  ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 20}, layers, 1));
  const std::vector<int32_t>& kept = sel.kept[0][0];
  EXPECT_EQ(kept.size(), 20u);
  EXPECT_TRUE(std::is_sorted(kept.begin(), kept.end()));
  for (int j : {0, 1, 2, 3, 56, 57, 63}) EXPECT_THAT(kept, ::testing::Contains(j));
  // A budget below sinks + window keeps exactly the forced tokens.
  ASSERT_OK_AND_ASSIGN(Selection small, SelectTokens(p, Budget{.tokens = 3}, layers, 1));
  EXPECT_EQ(small.kept[1][1].size(), 12u);
}

TEST(SequenceAllocation, EveryHeadHasTheSameSayWhateverItsScale) {
  // Layer 0 (scale 1) wants token 10, layer 1 (scale 1000) wants token 20 just as much: their
  // combined scores are equal. Once layer 1 also likes token 10 a little, token 10 wins the one
  // pick although layer 1's raw scores are a thousand times larger.
  Policy p = SequencePolicy();
  std::vector<HeadScores> layers(2);
  std::vector<float> a(40, 1.0f), b(40, 1000.0f);
  a[10] = 40;
  b[20] = 40000;
  layers[0].per_head = {a};
  layers[1].per_head = {b};
  ASSERT_OK_AND_ASSIGN(std::vector<double> c, CombinedSequenceScores(p, layers));
  EXPECT_NEAR(c[10], c[20], 1e-12);
  EXPECT_EQ(c[0], 0.0);  // a sink
  layers[1].per_head[0][10] = 2000;
  ASSERT_OK_AND_ASSIGN(Selection sel, SelectTokens(p, Budget{.tokens = 13}, layers, 1));
  EXPECT_THAT(sel.kept[0][0], ::testing::Contains(10));
  EXPECT_THAT(sel.kept[0][0], ::testing::Not(::testing::Contains(20)));
  EXPECT_EQ(sel.kept[0][0], sel.kept[1][0]);
}

TEST(SequenceAllocation, UnequalHeadsAndBadScoresAreRefused) {
  const Policy p = SequencePolicy();
  std::vector<HeadScores> layers = RandomScores(2, 2, 50, 4);
  layers[1].per_head[1].resize(49);
  EXPECT_THAT(SelectTokens(p, Budget{.keep_ratio = 0.5}, layers, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, "same tokens"));
  layers = RandomScores(2, 2, 50, 4);
  layers[0].per_head[1][7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(SelectTokens(p, Budget{.keep_ratio = 0.5}, layers, 1),
              StatusIs(absl::StatusCode::kInvalidArgument, "not finite"));
  EXPECT_THAT(SelectTokens(p, Budget{.keep_ratio = 1.5}, RandomScores(1, 1, 50, 4), 1),
              StatusIs(absl::StatusCode::kInvalidArgument, "keep_ratio"));
}

TEST(SequenceAllocation, ParsesByName) {
  ASSERT_OK_AND_ASSIGN(Allocation a, ParseAllocation("sequence"));
  EXPECT_EQ(a, Allocation::kSequence);
  EXPECT_EQ(AllocationName(Allocation::kSequence), "sequence");
}

}  // namespace
}  // namespace kvkeep::eviction
