#include "service/eviction/attention_mass.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace kvkeep::eviction::internal {
namespace {

// The unfused loops GroupAttentionMass replaced (scorers.cc before it): zero fill, the rows added
// in order, the finite check of the sums, then the mean and observed's division per token. out
// keeps the sums when a sum is not finite.
bool Reference(const std::vector<std::vector<float>>& rows, int n, const int32_t* positions,
               int64_t next, bool observed, std::vector<float>& out) {
  out.assign(n, 0.0f);
  for (const std::vector<float>& row : rows) {
    for (int j = 0; j < n; ++j) out[j] += row[j];
  }
  for (int j = 0; j < n; ++j) {
    if (!std::isfinite(out[j])) return false;
  }
  const float inv_g = 1.0f / static_cast<float>(rows.size());
  for (int j = 0; j < n; ++j) {
    const float v = out[j] * inv_g;
    const int64_t pos = positions ? positions[j] : j;
    out[j] = observed ? v / static_cast<float>(next - pos) : v;
  }
  return true;
}

std::vector<std::vector<float>> Mass(int group, int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<std::vector<float>> rows(group, std::vector<float>(n));
  for (auto& row : rows) {
    for (float& x : row) x = std::fabs(normal(rng)) * (rng() % 3 == 0 ? 1e-3f : 7.0f);
  }
  return rows;
}

// Ascending positions with gaps (after an eviction), below next.
std::vector<int32_t> Positions(int n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> p(n);
  int32_t at = static_cast<int32_t>(rng() % 5);
  for (int j = 0; j < n; ++j) {
    p[j] = at;
    at += 1 + static_cast<int32_t>(rng() % 9);
  }
  return p;
}

bool SameBits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

void ExpectSameBits(const std::vector<float>& got, const std::vector<float>& want,
                    const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t j = 0; j < got.size(); ++j) {
    ASSERT_TRUE(SameBits(got[j], want[j]))
        << what << " j " << j << ": " << got[j] << " vs " << want[j];
  }
}

// Odd sizes (vector blocks and tails), every group size and both position forms, h2o and observed:
// the fused pass gives the reference's bits.
TEST(AttentionMass, FusedPassIsBitForBitTheUnfusedLoops) {
  for (int n : {0, 1, 7, 8, 9, 31, 1000, 4099}) {
    for (int group : {1, 2, 3, 4, 5, 8}) {
      const auto rows = Mass(group, n, 11 + n * 7 + group);
      const std::vector<int32_t> pos = Positions(n, 3 + n);
      for (bool with_positions : {false, true}) {
        const int32_t* p = with_positions ? pos.data() : nullptr;
        const int64_t last = n == 0 ? -1 : (with_positions ? pos.back() : n - 1);
        for (int64_t next : {last + 1, last + 12345, int64_t{16777217} + 3 * n}) {
          for (bool observed : {false, true}) {
            std::vector<float> want;
            ASSERT_TRUE(Reference(rows, n, p, next, observed, want));
            std::vector<float> got(n, -1.0f);
            ASSERT_TRUE(GroupAttentionMass(rows.data(), group, n, p, next, observed, got.data()));
            ExpectSameBits(got, want,
                           "n " + std::to_string(n) + " group " + std::to_string(group) +
                               " positions " + std::to_string(with_positions) + " next " +
                               std::to_string(next) + " observed " + std::to_string(observed));
          }
        }
      }
    }
  }
}

// A next position beyond INT32_MAX (the pass's int32 lanes do not apply): still the reference's
// bits, which round float(next - pos) from int64.
TEST(AttentionMass, HugeNextPositionRoundsAsTheInt64Conversion) {
  const int n = 37;
  const auto rows = Mass(4, n, 5);
  for (int64_t next : {int64_t{2147483647}, int64_t{2147483648}, (int64_t{1} << 53) + 1,
                       (int64_t{1} << 60) + 12345}) {
    std::vector<float> want, got(n);
    ASSERT_TRUE(Reference(rows, n, nullptr, next, true, want));
    ASSERT_TRUE(GroupAttentionMass(rows.data(), 4, n, nullptr, next, true, got.data()));
    ExpectSameBits(got, want, "next " + std::to_string(next));
  }
}

// Negative zeros: 0.0f + (-0.0f) is +0, so an all -0 column scores +0 (as the zero fill gave).
TEST(AttentionMass, NegativeZeroMassScoresPositiveZero) {
  const int n = 19;
  std::vector<std::vector<float>> rows(2, std::vector<float>(n, -0.0f));
  for (bool observed : {false, true}) {
    std::vector<float> want, got(n, 1.0f);
    ASSERT_TRUE(Reference(rows, n, nullptr, n, observed, want));
    ASSERT_TRUE(GroupAttentionMass(rows.data(), 2, n, nullptr, n, observed, got.data()));
    ExpectSameBits(got, want, "observed " + std::to_string(observed));
    EXPECT_FALSE(std::signbit(got[3]));
  }
}

// A NaN or Inf entry, or finite entries whose sum overflows, anywhere (vector block or tail):
// false, and out holds the group sums, as the unfused scorer left it.
TEST(AttentionMass, NonFiniteSumIsReportedAndLeavesTheSums) {
  const int n = 45;
  const float big = std::numeric_limits<float>::max();
  struct Case {
    int row, j;
    float a, b;  // rows[row][j] = a, rows[row + 1][j] = b
  };
  const Case cases[] = {
      {0, 0, std::numeric_limits<float>::quiet_NaN(), 1.0f},
      {1, 17, std::numeric_limits<float>::infinity(), 1.0f},
      {0, 44, -std::numeric_limits<float>::infinity(), 1.0f},
      {1, 40, big, big},  // finite, the sum overflows
      {0, 8, big, big},
  };
  for (const Case& k : cases) {
    for (bool observed : {false, true}) {
      auto rows = Mass(3, n, 9);
      rows[k.row][k.j] = k.a;
      rows[k.row + 1][k.j] = k.b;
      std::vector<float> want;
      ASSERT_FALSE(Reference(rows, n, nullptr, n, observed, want));
      std::vector<float> got(n, -1.0f);
      EXPECT_FALSE(GroupAttentionMass(rows.data(), 3, n, nullptr, n, observed, got.data()));
      for (int j = 0; j < n; ++j) {
        if (std::isnan(want[j])) {
          EXPECT_TRUE(std::isnan(got[j])) << "j " << j;
        } else {
          EXPECT_TRUE(SameBits(got[j], want[j])) << "j " << j << " " << got[j] << " " << want[j];
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvkeep::eviction::internal
