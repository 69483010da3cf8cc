#include "service/page_costs.h"

#include <cmath>
#include <random>

#include "gtest/gtest.h"

namespace kvkeep {
namespace {

// Plain re-computation: A = I + Σ v vᵀ by Gauss-Jordan inverse, s_j = v_jᵀ A⁻¹ v_j.
std::vector<double> NaiveLeverage(const std::vector<float>& v, int n, int d) {
  std::vector<double> a(d * d, 0.0), inv(d * d, 0.0);
  for (int j = 0; j < n; ++j)
    for (int r = 0; r < d; ++r)
      for (int c = 0; c < d; ++c) a[r * d + c] += double(v[j * d + r]) * v[j * d + c];
  for (int r = 0; r < d; ++r) {
    a[r * d + r] += 1;
    inv[r * d + r] = 1;
  }
  for (int c = 0; c < d; ++c) {
    const double p = a[c * d + c];
    for (int k = 0; k < d; ++k) {
      a[c * d + k] /= p;
      inv[c * d + k] /= p;
    }
    for (int r = 0; r < d; ++r) {
      if (r == c) continue;
      const double f = a[r * d + c];
      for (int k = 0; k < d; ++k) {
        a[r * d + k] -= f * a[c * d + k];
        inv[r * d + k] -= f * inv[c * d + k];
      }
    }
  }
  std::vector<double> s(n, 0.0);
  for (int j = 0; j < n; ++j)
    for (int r = 0; r < d; ++r)
      for (int c = 0; c < d; ++c) s[j] += v[j * d + r] * inv[r * d + c] * v[j * d + c];
  return s;
}

TEST(UnweightedLeverage, MatchesANaiveInverse) {
  const int n = 40, d = 8;
  std::mt19937 rng(3);
  std::normal_distribution<float> g;
  std::vector<float> v(n * d);
  for (float& x : v) x = g(rng);
  std::vector<double> gram, s;
  UnweightedLeverage(v.data(), n, d, &gram, &s);
  std::vector<double> want = NaiveLeverage(v, n, d);
  double sum = 0;
  for (int j = 0; j < n; ++j) {
    EXPECT_NEAR(s[j], want[j], 1e-9);
    EXPECT_GE(s[j], 0);
    EXPECT_LT(s[j], 1);
    sum += s[j];
  }
  // Σ_j s_j = tr(A⁻¹ Σ v vᵀ) = d − tr(A⁻¹) < d.
  EXPECT_LT(sum, d);
}

TEST(TokenCapacityCost, IsTheLogDetDropOfOneToken) {
  EXPECT_DOUBLE_EQ(TokenCapacityCost(0), 0);
  EXPECT_NEAR(TokenCapacityCost(0.5), std::log(2.0), 1e-12);
  EXPECT_TRUE(std::isfinite(TokenCapacityCost(1.0)));
  EXPECT_DOUBLE_EQ(TokenCapacityCost(-0.1), 0);
  // log det(I + Σ v vᵀ) − log det(I + Σ_{k≠j} v vᵀ) = −log(1 − s_j): checked with d = 1.
  const double v1 = 0.7, v2 = 1.3;
  const double s2 = v2 * v2 / (1 + v1 * v1 + v2 * v2);
  EXPECT_NEAR(TokenCapacityCost(s2), std::log(1 + v1 * v1 + v2 * v2) - std::log(1 + v1 * v1),
              1e-12);
}

TEST(PageCosts, GrownHeadsKeepOldCostsAndEstimateNewPages) {
  SequenceTable table(1, 4);
  table.AppendPages(0, std::vector<uint64_t>{1, 2, 3});
  ASSERT_TRUE(table.Commit(8, {}).ok());
  PageCosts c;
  c.computed = true;
  c.per_head = {{2.0, 6.0}};
  c.counts = {8};
  EXPECT_TRUE(c.FreshFor(table));
  EXPECT_DOUBLE_EQ(c.Cost(table, 0, 1), 6.0);
  ASSERT_TRUE(table.Commit(2, {}).ok());
  EXPECT_FALSE(c.FreshFor(table));
  EXPECT_DOUBLE_EQ(c.Cost(table, 0, 0), 2.0);
  EXPECT_DOUBLE_EQ(c.Cost(table, 0, 2), 1.0 * 2);  // mean 1 per token, 2 tokens so far
  std::vector<uint64_t> freed;
  ASSERT_TRUE(table.RemoveFullPage(0, 0, &freed).ok());
  c.RemovePage(0, 0, 4);
  EXPECT_EQ(freed, std::vector<uint64_t>{1});
  EXPECT_DOUBLE_EQ(c.Cost(table, 0, 0), 6.0);
  EXPECT_EQ(c.counts[0], 4u);
}

TEST(SequenceTableRemoveFullPage, DropsThePagesTokensAndKeepsTheRestInOrder) {
  SequenceTable table(2, 4);
  table.AppendPages(0, std::vector<uint64_t>{10, 11, 12});
  table.AppendPages(1, std::vector<uint64_t>{20, 21, 22});
  ASSERT_TRUE(table.Commit(10, {}).ok());
  std::vector<uint64_t> freed;
  ASSERT_TRUE(table.RemoveFullPage(0, 1, &freed).ok());
  EXPECT_EQ(freed, std::vector<uint64_t>{11});
  EXPECT_EQ(table.head(0).pages, (std::vector<uint64_t>{10, 12}));
  EXPECT_EQ(table.head(0).count, 6u);
  EXPECT_EQ(table.head(0).positions, (std::vector<int32_t>{0, 1, 2, 3, 8, 9}));
  EXPECT_EQ(table.head(1).count, 10u);  // other heads untouched
  // The partial last page and pages past the end are refused; nothing changes.
  EXPECT_EQ(table.RemoveFullPage(0, 1, &freed).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(table.RemoveFullPage(0, 5, &freed).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(table.RemoveFullPage(7, 0, &freed).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(table.head(0).count, 6u);
  EXPECT_EQ(freed.size(), 1u);
}

}  // namespace
}  // namespace kvkeep
