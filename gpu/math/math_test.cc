// Tests of the host/device maths, compiled for the host.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "gpu/math/attention_math.h"
#include "gpu/math/rope_math.h"

namespace kvkeep::gpu_math {
namespace {

TEST(RopeMath, AveragedCosSinMatchesDirectSummation) {
  for (double f : {1.0, 0.3, 1e-2, 1e-4, 2e-6, 0.0, 2 * M_PI, 4 * M_PI + 1e-9}) {
    for (double p0 : {0.0, 17.0, 4096.0, 131072.0}) {
      for (int count : {1, 7, 512}) {
        double c, s;
        AveragedCosSin(p0, count, f, &c, &s);
        long double rc = 0, rs = 0;
        for (int m = 0; m < count; ++m) {
          rc += std::cos(static_cast<long double>(p0 + m) * f);
          rs += std::sin(static_cast<long double>(p0 + m) * f);
        }
        EXPECT_NEAR(c, static_cast<double>(rc / count), 1e-9) << f << " " << p0 << " " << count;
        EXPECT_NEAR(s, static_cast<double>(rs / count), 1e-9) << f << " " << p0 << " " << count;
      }
    }
  }
}

TEST(RopeMath, RotatingByPositionMatchesComplexMultiplication) {
  // RoPE on a pair is multiplication by e^{i p f}: (xa + i xb) e^{i θ}.
  const double xa = 0.7, xb = -1.3, theta = 0.9;
  double ya, yb;
  RotatePair(xa, xb, std::cos(theta), std::sin(theta), &ya, &yb);
  EXPECT_NEAR(ya, xa * std::cos(theta) - xb * std::sin(theta), 1e-15);
  EXPECT_NEAR(yb, xa * std::sin(theta) + xb * std::cos(theta), 1e-15);
  // Rotating back with -sin restores the input (orthogonal).
  double za, zb;
  RotatePair(ya, yb, std::cos(theta), -std::sin(theta), &za, &zb);
  EXPECT_NEAR(za, xa, 1e-14);
  EXPECT_NEAR(zb, xb, 1e-14);
}

TEST(RopeMath, PairLayouts) {
  int a, b;
  RopePair(3, 16, /*interleaved=*/false, &a, &b);
  EXPECT_EQ(a, 3);
  EXPECT_EQ(b, 11);
  RopePair(3, 16, /*interleaved=*/true, &a, &b);
  EXPECT_EQ(a, 6);
  EXPECT_EQ(b, 7);
  EXPECT_DOUBLE_EQ(RopeInvFreq(10000.0, 0, 128), 1.0);
  EXPECT_NEAR(RopeInvFreq(10000.0, 32, 128), 0.01, 1e-15);
}

TEST(AttentionMath, DotMatchesPlainSumForAllTailLengths) {
  std::mt19937 rng(3);
  std::normal_distribution<float> normal;
  for (int d : {1, 7, 8, 9, 64, 131}) {
    std::vector<float> x(d), y(d);
    for (int i = 0; i < d; ++i) {
      x[i] = normal(rng);
      y[i] = normal(rng);
    }
    double want = 0;
    for (int i = 0; i < d; ++i) want += double(x[i]) * y[i];
    EXPECT_NEAR(Dot(x.data(), y.data(), d), want, 1e-5 * d) << d;
  }
}

TEST(AttentionMath, ExpFastIsWithinAFewUlpOfExp) {
  double worst = 0;
  for (double x = -87.0; x <= 88.0; x += 0.001953125 * 3.1) {
    const double want = std::exp(x);
    const double got = ExpFast(static_cast<float>(x));
    // Compare against exp of the float-rounded input.
    const double want_f = std::exp(static_cast<double>(static_cast<float>(x)));
    worst = std::max(worst, std::fabs(got - want_f) / want_f);
    (void)want;
  }
  EXPECT_LT(worst, 4e-7);
  EXPECT_EQ(ExpFast(0.0f), 1.0f);
  EXPECT_GT(ExpFast(-1000.0f), 0.0f);
  EXPECT_LT(ExpFast(-1000.0f), 2e-38f);
}

TEST(AttentionMath, CosineIsClampedAndZeroForZeroVectors) {
  EXPECT_EQ(ClampedCosine(2.0000002f, 1.0f, 2.0f), 1.0f);
  EXPECT_EQ(ClampedCosine(-3.0f, 1.0f, 2.0f), -1.0f);
  EXPECT_FLOAT_EQ(ClampedCosine(1.0f, 1.0f, 2.0f), 0.5f);
  EXPECT_EQ(ClampedCosine(1.0f, 0.0f, 2.0f), 0.0f);
}

TEST(AttentionMath, SoftmaxPiecesAndOnlineMergeAgree) {
  std::vector<float> x = {0.5f, -2.0f, 3.0f, 1.0f};
  float running_max = -INFINITY, running_sum = 0;
  for (float v : x) OnlineSoftmaxAdd(v, &running_max, &running_sum);
  const float m = RowMax(x.data(), 4);
  EXPECT_EQ(m, 3.0f);
  std::vector<float> e = x;
  const double z = ExpShiftInPlace(e.data(), 4, m);
  double want = 0;
  for (float v : x) want += std::exp(double(v) - 3.0);
  EXPECT_NEAR(z, want, 1e-6);
  EXPECT_EQ(running_max, 3.0f);
  EXPECT_NEAR(running_sum, want, 1e-6);
  EXPECT_NEAR(e[0], std::exp(0.5 - 3.0), 1e-7);
}

TEST(AttentionMath, PoolingFollowsPyTorchPaddingRules) {
  const float x[] = {1, 5, 2, 0, 3};
  // max, kernel 3: out-of-range taps ignored.
  EXPECT_EQ(PoolAt(x, 5, 0, 3, true), 5.0f);
  EXPECT_EQ(PoolAt(x, 5, 3, 3, true), 3.0f);
  EXPECT_EQ(PoolAt(x, 5, 4, 3, true), 3.0f);
  // avg, kernel 3: zero padding, divide by 3 always.
  EXPECT_FLOAT_EQ(PoolAt(x, 5, 0, 3, false), 6.0f / 3);
  EXPECT_FLOAT_EQ(PoolAt(x, 5, 2, 3, false), 7.0f / 3);
  EXPECT_FLOAT_EQ(PoolAt(x, 5, 4, 3, false), 3.0f / 3);
  // kernel 1 is the identity.
  EXPECT_EQ(PoolAt(x, 5, 1, 1, false), 5.0f);
}

TEST(AttentionMath, CounterUniformIsDeterministicAndSpread) {
  EXPECT_EQ(CounterUniform(1, 2, 3, 4), CounterUniform(1, 2, 3, 4));
  EXPECT_NE(CounterUniform(1, 2, 3, 4), CounterUniform(1, 2, 3, 5));
  EXPECT_NE(CounterUniform(1, 2, 3, 4), CounterUniform(2, 2, 3, 4));
  // SplitMix64 reference value (seed 0 first output: 0xE220A8397B1DCDAF).
  EXPECT_EQ(SplitMix64(0), 0xE220A8397B1DCDAFull);
  int buckets[10] = {};
  for (int i = 0; i < 10000; ++i) {
    const float u = CounterUniform(7, 0, 0, i);
    ASSERT_GE(u, 0.0f);
    ASSERT_LT(u, 1.0f);
    ++buckets[static_cast<int>(u * 10)];
  }
  for (int b : buckets) EXPECT_NEAR(b, 1000, 150);
}

}  // namespace
}  // namespace kvkeep::gpu_math
