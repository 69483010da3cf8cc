#include "common/query_sketch.h"

#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvkeep::sketch {
namespace {

// n points around each of `centers` ([m][d]) with Gaussian noise of scale
// `noise`.
std::vector<float> Clusters(const std::vector<std::vector<float>> &centers,
                            int per, float noise, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> g(0.0f, noise);
  std::vector<float> out;
  for (int i = 0; i < per; ++i) {
    for (const auto &c : centers) {
      for (float x : c)
        out.push_back(x + g(rng));
    }
  }
  return out;
}

TEST(QuerySketch, FewQueriesAreTheirOwnCentroids) {
  const std::vector<float> q = {1, 2, 3, 4, 5, 6};
  HeadSketch s = BuildHeadSketch(q.data(), 3, 2, {.k = 4});
  ASSERT_EQ(s.size(), 3);
  EXPECT_EQ(s.centroids, q);
  EXPECT_EQ(s.weights, std::vector<float>({1, 1, 1}));
}

TEST(QuerySketch, RecoversSeparatedClustersAndCountsQueries) {
  const std::vector<std::vector<float>> centers = {
      {10, 0, 0}, {0, 10, 0}, {0, 0, 10}};
  const std::vector<float> q = Clusters(centers, 50, 0.1f, 1);
  HeadSketch s = BuildHeadSketch(q.data(), 150, 3, {.k = 3, .seed = 5});
  ASSERT_EQ(s.size(), 3);
  EXPECT_DOUBLE_EQ(s.total_weight(), 150.0);
  for (const auto &c : centers) {
    const int j = NearestCentroid(s, c.data());
    ASSERT_GE(j, 0);
    EXPECT_FLOAT_EQ(s.weights[j], 50.0f);
    for (int i = 0; i < 3; ++i)
      EXPECT_NEAR(s.centroids[j * 3 + i], c[i], 0.1);
  }
}

TEST(QuerySketch, DeterministicUnderSeedAndWeightsSumToN) {
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<float> q(400 * 8);
  for (float &x : q)
    x = g(rng);
  const HeadSketch a = BuildHeadSketch(q.data(), 400, 8, {.k = 16, .seed = 9});
  const HeadSketch b = BuildHeadSketch(q.data(), 400, 8, {.k = 16, .seed = 9});
  EXPECT_EQ(a.centroids, b.centroids);
  EXPECT_EQ(a.weights, b.weights);
  EXPECT_DOUBLE_EQ(a.total_weight(), 400.0);
  EXPECT_LE(a.size(), 16);
  for (float w : a.weights)
    EXPECT_GT(w, 0.0f);
}

TEST(QuerySketch, FoldAppendsThenMovesNearestToRunningMean) {
  HeadSketch s{.head_dim = 2};
  const float a[2] = {0, 0}, b[2] = {10, 10}, c[2] = {2, 0}, d[2] = {1, 3};
  FoldQuery(a, 2, &s);
  FoldQuery(b, 2, &s);
  ASSERT_EQ(s.size(), 2);
  FoldQuery(c, 2, &s); // nearest to (0, 0): mean (1, 0), weight 2
  FoldQuery(d, 2, &s); // nearest to (1, 0): mean (1, 1), weight 3
  EXPECT_FLOAT_EQ(s.centroids[0], 1.0f);
  EXPECT_FLOAT_EQ(s.centroids[1], 1.0f);
  EXPECT_FLOAT_EQ(s.weights[0], 3.0f);
  EXPECT_FLOAT_EQ(s.weights[1], 1.0f);
  EXPECT_DOUBLE_EQ(s.total_weight(), 4.0);
}

TEST(QuerySketch, CoincidentQueriesGiveOneCentroid) {
  const std::vector<float> q(20 * 4, 1.5f);
  HeadSketch s = BuildHeadSketch(q.data(), 20, 4, {.k = 8});
  ASSERT_EQ(s.size(), 1);
  EXPECT_FLOAT_EQ(s.weights[0], 20.0f);
}

} // namespace
} // namespace kvkeep::sketch
