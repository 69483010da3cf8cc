#include "service/eviction/scorer_kernels.h"

#include <gtest/gtest.h>

#include <random>
#include <vector>

#include "gpu/math/attention_math.h"

namespace kvkeep::eviction::internal {
namespace {

namespace gm = ::kvkeep::gpu_math;

std::vector<float> Random(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = normal(rng);
  return v;
}

// The blocked kernels change the schedule, not the arithmetic: every output is bit for bit the
// plain gm::Dot expression, for block and tail sizes of both the rows and the channels.
TEST(ScorerKernels, KeysDotQueriesIsBitForBitTheDotProduct) {
  const float scale = 0.0883883476f;
  for (int d : {8, 13, 64, 128}) {
    for (int G : {1, 2, 3, 4, 5, 7, 8}) {
      const std::vector<float> keys = Random(2 * static_cast<size_t>(d), 3 + d);
      const std::vector<float> q = Random(static_cast<size_t>(G) * d, 5 + G);
      const size_t stride = 3;  // out[r * stride + k]
      std::vector<float> two(G * stride, -1.0f), one(G * stride, -1.0f);
      KeysDotQueries<2>(keys.data(), q.data(), G, d, scale, two.data(), stride);
      KeysDotQueries<1>(keys.data() + d, q.data(), G, d, scale, one.data() + 1, stride);
      for (int r = 0; r < G; ++r) {
        for (int k = 0; k < 2; ++k) {
          const float want = gm::Dot(keys.data() + k * d, q.data() + r * d, d) * scale;
          EXPECT_EQ(two[r * stride + k], want) << "d " << d << " G " << G << " r " << r;
        }
        EXPECT_EQ(one[r * stride + 1], two[r * stride + 1]) << "d " << d << " G " << G;
        EXPECT_EQ(one[r * stride + 2], -1.0f) << "wrote outside its rows";
      }
    }
  }
}

TEST(ScorerKernels, ExpectedLogitsIsBitForBitBothDotProducts) {
  for (int d : {8, 20, 128}) {
    for (int G : {1, 3, 4, 6, 8}) {
      const std::vector<float> kt = Random(d, 11 + d);
      const std::vector<float> mu = Random(static_cast<size_t>(G) * d, 13 + G);
      std::vector<float> var = Random(static_cast<size_t>(G) * d, 17 + G);
      for (float& v : var) v = v * v * 0.01f;
      std::vector<float> kt2(d);
      for (int i = 0; i < d; ++i) kt2[i] = kt[i] * kt[i];
      const size_t stride = 5;
      std::vector<float> cov(G * stride, -1.0f), plain(G * stride, -1.0f);
      ExpectedLogits<true>(kt.data(), mu.data(), var.data(), G, d, cov.data(), stride);
      ExpectedLogits<false>(kt.data(), mu.data(), var.data(), G, d, plain.data(), stride);
      for (int r = 0; r < G; ++r) {
        const float lin = gm::Dot(kt.data(), mu.data() + r * d, d);
        const float quad = gm::Dot(kt2.data(), var.data() + r * d, d);
        EXPECT_EQ(cov[r * stride], lin + quad) << "d " << d << " G " << G << " r " << r;
        EXPECT_EQ(plain[r * stride], lin) << "d " << d << " G " << G << " r " << r;
        EXPECT_EQ(cov[r * stride + 1], -1.0f) << "wrote outside its rows";
      }
    }
  }
}

}  // namespace
}  // namespace kvkeep::eviction::internal
