// Tests of the scorers' per-token formulas (gpu/math/scoring_math.h), compiled for the host: each
// against a plain double-precision re-computation on fixed seeds.
#include "gpu/math/scoring_math.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace kvkeep::gpu_math {
namespace {

TEST(ScoringMath, VisibleCountAndFindPositionFollowTheAscendingPositions) {
  const std::vector<int32_t> pos = {0, 3, 4, 9, 20};
  for (int64_t p = -2; p < 25; ++p) {
    const int want = static_cast<int>(std::upper_bound(pos.begin(), pos.end(), p) - pos.begin());
    EXPECT_EQ(VisibleCount(pos.data(), 5, p), want) << p;
    const auto it = std::find(pos.begin(), pos.end(), p);
    EXPECT_EQ(FindPosition(pos.data(), 5, p), it == pos.end() ? -1 : it - pos.begin()) << p;
  }
  // nullptr positions are 0..n-1.
  EXPECT_EQ(VisibleCount(nullptr, 6, -1), 0);
  EXPECT_EQ(VisibleCount(nullptr, 6, 2), 3);
  EXPECT_EQ(VisibleCount(nullptr, 6, 100), 6);
  EXPECT_EQ(FindPosition(nullptr, 6, 4), 4);
  EXPECT_EQ(FindPosition(nullptr, 6, 6), -1);
  EXPECT_EQ(VisibleCount(pos.data(), 0, 5), 0);
}

TEST(ScoringMath, ObservedScoreDividesByTheQueriesThatSawTheToken) {
  EXPECT_FLOAT_EQ(ObservedScore(6.0f, 10, 7), 2.0f);
  EXPECT_FLOAT_EQ(ObservedScore(1.0f, 100, 0), 0.01f);
}

// R̄ᵀ k per pair equals the rotation by the transposed 2x2 block, for both layouts and a partial
// rotary dimension (the channels past it copied).
TEST(ScoringMath, RotateTransposedIsTheTransposeOfTheAveragedRotation) {
  std::mt19937 rng(3);
  std::normal_distribution<double> normal;
  for (bool interleaved : {false, true}) {
    for (int rd : {16, 12}) {
      const int d = 16;
      std::vector<float> k(d), c(rd / 2), ms(rd / 2), kt(d);
      for (float& x : k) x = static_cast<float>(normal(rng));
      for (int i = 0; i < rd / 2; ++i) {
        c[i] = static_cast<float>(0.5 * normal(rng));
        ms[i] = static_cast<float>(0.5 * normal(rng));
      }
      RotateTransposed(k.data(), c.data(), ms.data(), d, rd, interleaved, kt.data());
      std::vector<double> want(k.begin(), k.end());
      for (int i = 0; i < rd / 2; ++i) {
        const int a = interleaved ? 2 * i : i, b = interleaved ? 2 * i + 1 : i + rd / 2;
        const double s = -double{ms[i]};  // the mean sine; R̄ᵀ rotates by (c, -s)
        want[a] = c[i] * double{k[a]} + s * k[b];
        want[b] = -s * double{k[a]} + c[i] * double{k[b]};
      }
      for (int i = 0; i < d; ++i) EXPECT_NEAR(kt[i], want[i], 1e-5) << interleaved << rd << i;
    }
  }
}

TEST(ScoringMath, ExpectedQueryTermsAreScaledMeanAndClampedVariance) {
  const int d = 4;
  const double sum[d] = {4, -8, 2, 0}, sq[d] = {10, 20, 0.5, 3};
  float mu[d], var[d];
  ExpectedQueryTerms(sum, sq, 0.5, d, mu, var);
  for (int i = 0; i < d; ++i) {
    const double mean = sum[i] * 0.5;
    EXPECT_NEAR(mu[i], mean / 2.0, 1e-6);
    EXPECT_NEAR(var[i], std::max(0.0, sq[i] * 0.5 - mean * mean) / 8.0, 1e-6);
  }
  ExpectedQueryTerms(sum, nullptr, 0.5, d, mu, var);
  for (int i = 0; i < d; ++i) EXPECT_EQ(var[i], 0.0f);
}

TEST(ScoringMath, AnchorQueryRotatesTheMeanQueryByTheAveragedRotation) {
  const int d = 6, rd = 4;
  const double sum[d] = {2, 4, 6, 8, 10, 12}, cs[2] = {0.6, -0.2}, sn[2] = {0.8, 0.5};
  double out[d];
  AnchorQuery(sum, 0.5, cs, sn, d, rd, /*interleaved=*/false, out);
  // Half-split pairs (0, 2) and (1, 3); mean = sum / 2.
  EXPECT_NEAR(out[0], 1 * 0.6 - 3 * 0.8, 1e-12);
  EXPECT_NEAR(out[2], 3 * 0.6 + 1 * 0.8, 1e-12);
  EXPECT_NEAR(out[1], 2 * -0.2 - 4 * 0.5, 1e-12);
  EXPECT_NEAR(out[3], 4 * -0.2 + 2 * 0.5, 1e-12);
  EXPECT_EQ(out[4], 5);
  EXPECT_EQ(out[5], 6);
}

TEST(ScoringMath, CapLogitIsTauCosineOrScaledDot) {
  std::mt19937 rng(9);
  std::normal_distribution<double> normal;
  const int d = 24;
  std::vector<float> a(d), k(d);
  for (int i = 0; i < d; ++i) {
    a[i] = static_cast<float>(normal(rng));
    k[i] = static_cast<float>(normal(rng));
  }
  double dot = 0, na = 0, nk = 0;
  for (int i = 0; i < d; ++i) {
    dot += double{a[i]} * k[i];
    na += double{a[i]} * a[i];
    nk += double{k[i]} * k[i];
  }
  const float norm_a = static_cast<float>(std::sqrt(na));
  EXPECT_NEAR(CapLogit(a.data(), norm_a, k.data(), d, false, 5.0f, 0.2f),
              5.0 * dot / std::sqrt(na * nk), 1e-5);
  EXPECT_NEAR(CapLogit(a.data(), norm_a, k.data(), d, true, 5.0f, 0.2f), 0.2 * dot, 1e-5);
  // The cosine of a vector with itself is clamped to 1.
  EXPECT_FLOAT_EQ(CapLogit(a.data(), norm_a, a.data(), d, false, 5.0f, 0.2f), 5.0f);
}

TEST(ScoringMath, GreedyGainIsTheGroupMeanLogGainWithNegativeResidualsClamped) {
  // Two q heads, row stride 3.
  const double q[6] = {0.5, -1e-9, 2.0, 1.0, 3.0, 0.0};
  const float w[6] = {2.0f, 1.0f, 0.5f, 1.0f, 0.25f, 4.0f};
  EXPECT_NEAR(GreedyGain(q, w, 2, 3, 0), (std::log1p(1.0) + std::log1p(1.0)) / 2, 1e-15);
  EXPECT_NEAR(GreedyGain(q, w, 2, 3, 1), (0.0 + std::log1p(0.75)) / 2, 1e-15);
  EXPECT_NEAR(GreedyGain(q, w, 2, 3, 2), (std::log1p(1.0) + 0.0) / 2, 1e-15);
}

}  // namespace
}  // namespace kvkeep::gpu_math
