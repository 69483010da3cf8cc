#include "bench/eval/measures.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "bench/eval/oracle.h"
#include "common/status_matchers.h"

namespace kvkeep::eval {
namespace {

using ::kvkeep::testing::StatusIs;

struct Fixture {
  DatasetMeta meta;
  LayerData layer;
};

// Small random layer: 4 q heads, 2 KV heads, d = 8, 24 cached tokens, 6 future queries, W_O 10x32.
Fixture RandomLayer(uint64_t seed, bool with_wo = true) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.f, 1.f);
  Fixture f;
  f.meta.layers = 1;
  f.meta.q_heads = 4;
  f.meta.kv_heads = 2;
  f.meta.head_dim = 8;
  f.meta.prefix = 24;
  f.layer.total = 30;
  f.layer.kv_len = 30;
  f.layer.q.resize(4 * 30 * 8);
  f.layer.k.resize(2 * 30 * 8);
  f.layer.v.resize(2 * 30 * 8);
  for (float& x : f.layer.q) x = 1.5f * n(rng);
  for (float& x : f.layer.k) x = n(rng);
  for (float& x : f.layer.v) x = n(rng);
  if (with_wo) {
    f.layer.wo_hidden = 10;
    f.layer.wo.resize(10 * 32);
    for (float& x : f.layer.wo) x = n(rng);
  }
  return f;
}

struct Naive {
  double rel_error = 0, rel_error_wo = 0, mass = 0;
};

// Plain double re-computation of measures 1 and 2 straight from q, k, v: softmax over S itself.
Naive NaiveMeasures(const Fixture& f, const std::vector<std::vector<int32_t>>& kept) {
  const int H = f.meta.q_heads, G = H / f.meta.kv_heads, d = f.meta.head_dim;
  const int64_t P = f.meta.prefix, T = f.layer.total, F = T - P;
  Naive out;
  std::vector<std::vector<double>> o_full(F, std::vector<double>(H * d, 0.0));
  std::vector<std::vector<double>> o_kept = o_full;
  for (int h = 0; h < H; ++h) {
    const int g = h / G;
    for (int64_t t = 0; t < F; ++t) {
      std::vector<double> w(P);
      double all = 0, in_s = 0;
      for (int64_t j = 0; j < P; ++j) {
        double dot = 0;
        for (int c = 0; c < d; ++c) {
          dot += static_cast<double>(f.layer.q[(h * T + P + t) * d + c]) *
                 f.layer.k[(g * f.layer.kv_len + j) * d + c];
        }
        w[j] = std::exp(dot / std::sqrt(static_cast<double>(d)));
        all += w[j];
      }
      for (int32_t j : kept[g]) in_s += w[j];
      double num = 0, den = 0;
      for (int c = 0; c < d; ++c) {
        double full = 0, part = 0;
        for (int64_t j = 0; j < P; ++j) full += w[j] / all * f.layer.v[(g * f.layer.kv_len + j) * d + c];
        for (int32_t j : kept[g]) part += w[j] / in_s * f.layer.v[(g * f.layer.kv_len + j) * d + c];
        num += (part - full) * (part - full);
        den += full * full;
        o_full[t][h * d + c] = full;
        o_kept[t][h * d + c] = part;
      }
      out.rel_error += std::sqrt(num / den) / (H * F);
      out.mass += in_s / all / (H * F);
    }
  }
  for (int64_t t = 0; t < F; ++t) {
    double num = 0, den = 0;
    for (int64_t r = 0; r < f.layer.wo_hidden; ++r) {
      double y = 0, ys = 0;
      for (int x = 0; x < H * d; ++x) {
        y += f.layer.wo[r * H * d + x] * o_full[t][x];
        ys += f.layer.wo[r * H * d + x] * o_kept[t][x];
      }
      num += (ys - y) * (ys - y);
      den += y * y;
    }
    out.rel_error_wo += std::sqrt(num / den) / F;
  }
  return out;
}

// Plain double re-computation of the decode-time measure: future query t at position P + t attends
// S ∪ {P, ..., min(P + t, kv_len − 1)} (softmax over that set, straight from q, k, v) against the
// full causal attention over 0..min(P + t, kv_len − 1).
double NaiveDecodeError(const Fixture& f, const std::vector<std::vector<int32_t>>& kept) {
  const int H = f.meta.q_heads, G = H / f.meta.kv_heads, d = f.meta.head_dim;
  const int64_t P = f.meta.prefix, T = f.layer.total, F = T - P, KV = f.layer.kv_len;
  double total = 0;
  for (int h = 0; h < H; ++h) {
    const int g = h / G;
    for (int64_t t = 0; t < F; ++t) {
      const int64_t last = std::min(P + t, KV - 1);
      std::vector<int64_t> full_set, kept_set;
      for (int64_t j = 0; j <= last; ++j) full_set.push_back(j);
      for (int32_t j : kept[g]) kept_set.push_back(j);
      for (int64_t j = P; j <= last; ++j) kept_set.push_back(j);
      auto output = [&](const std::vector<int64_t>& set) {
        std::vector<double> w;
        double z = 0;
        for (int64_t j : set) {
          double dot = 0;
          for (int c = 0; c < d; ++c) {
            dot += static_cast<double>(f.layer.q[(h * T + P + t) * d + c]) * f.layer.k[(g * KV + j) * d + c];
          }
          w.push_back(std::exp(dot / std::sqrt(static_cast<double>(d))));
          z += w.back();
        }
        std::vector<double> o(d, 0.0);
        for (size_t i = 0; i < set.size(); ++i) {
          for (int c = 0; c < d; ++c) o[c] += w[i] / z * f.layer.v[(g * KV + set[i]) * d + c];
        }
        return o;
      };
      const std::vector<double> full = output(full_set), part = output(kept_set);
      double num = 0, den = 0;
      for (int c = 0; c < d; ++c) {
        num += (part[c] - full[c]) * (part[c] - full[c]);
        den += full[c] * full[c];
      }
      total += std::sqrt(num / den) / (H * F);
    }
  }
  return total;
}

TEST(MeasuresTest, DecodeMeasureMatchesNaiveRecomputation) {
  for (uint64_t seed : {5, 6, 7}) {
    for (int64_t kv_len : {30, 27, 24}) {  // every future key, some, none (prefix only)
      Fixture f = RandomLayer(seed, /*with_wo=*/false);
      f.layer.kv_len = kv_len;
      f.layer.k.resize(2 * kv_len * 8);
      f.layer.v.resize(2 * kv_len * 8);
      std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
      std::mt19937_64 rng(seed);
      std::vector<std::vector<int32_t>> kept(2);
      for (int g = 0; g < 2; ++g) {
        for (int32_t j = 0; j < 24; ++j) {
          if (rng() % 4 == 0) kept[g].push_back(j);
        }
        if (kept[g].empty()) kept[g].push_back(3);
      }
      ASSERT_OK_AND_ASSIGN(Metrics m, Measure(refs, KeptSets{kept}, {}));
      const double naive = NaiveDecodeError(f, kept);
      EXPECT_NEAR(m.rel_error_decode, naive, 1e-5 * (1 + naive)) << seed << " " << kv_len;
      EXPECT_GT(m.rel_error_decode, 0.005);
      if (kv_len == 24) {
        EXPECT_NEAR(m.rel_error_decode, m.rel_error, 1e-9);  // no generated key: same measure
      } else {
        EXPECT_LT(m.rel_error_decode, m.rel_error);  // exact recent tokens dilute the error
      }
    }
  }
}

TEST(MeasuresTest, KeepingEverythingIsExact) {
  Fixture f = RandomLayer(1);
  std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
  std::vector<int32_t> all(24);
  std::iota(all.begin(), all.end(), 0);
  ASSERT_OK_AND_ASSIGN(Metrics m, Measure(refs, KeptSets{{all, all}}, {}));
  EXPECT_NEAR(m.rel_error, 0.0, 1e-6);
  EXPECT_NEAR(m.rel_error_decode, 0.0, 1e-6);
  EXPECT_NEAR(m.rel_error_wo, 0.0, 1e-6);
  EXPECT_NEAR(m.retained_mass, 1.0, 1e-6);
  EXPECT_DOUBLE_EQ(m.oracle_recall, 1.0);
  EXPECT_DOUBLE_EQ(m.kept_fraction, 1.0);
  EXPECT_EQ(m.needle_recall, -1.0);
}

TEST(MeasuresTest, MatchesNaiveDoubleRecomputation) {
  for (uint64_t seed : {2, 3, 4}) {
    Fixture f = RandomLayer(seed);
    std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
    std::mt19937_64 rng(seed);
    std::vector<std::vector<int32_t>> kept(2);
    for (int g = 0; g < 2; ++g) {
      for (int32_t j = 0; j < 24; ++j) {
        if (rng() % 3 == 0) kept[g].push_back(j);
      }
      if (kept[g].empty()) kept[g].push_back(5);
    }
    ASSERT_OK_AND_ASSIGN(Metrics m, Measure(refs, KeptSets{kept}, {}));
    const Naive naive = NaiveMeasures(f, kept);
    EXPECT_NEAR(m.rel_error, naive.rel_error, 1e-5 * (1 + naive.rel_error)) << seed;
    EXPECT_NEAR(m.rel_error_wo, naive.rel_error_wo, 1e-5 * (1 + naive.rel_error_wo)) << seed;
    EXPECT_NEAR(m.retained_mass, naive.mass, 1e-6) << seed;
    EXPECT_GT(m.rel_error, 0.01);
  }
}

// One head, three tokens, a zero query: attention 1/3 each. v = (3,0), (0,3), (0,0); o = (1,1).
// Keeping {0} gives o_S = (3,0): error ‖(2,-1)‖/‖(1,1)‖ = sqrt(5/2), mass 1/3.
TEST(MeasuresTest, HandComputedCase) {
  Fixture f;
  f.meta.layers = 1;
  f.meta.q_heads = 1;
  f.meta.kv_heads = 1;
  f.meta.head_dim = 2;
  f.meta.prefix = 3;
  f.layer.total = 4;
  f.layer.kv_len = 3;
  f.layer.q = {0, 0, 0, 0, 0, 0, 0, 0};
  f.layer.k = {1, 0, 0, 1, 1, 1};
  f.layer.v = {3, 0, 0, 3, 0, 0};
  std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
  ASSERT_OK_AND_ASSIGN(Metrics m, Measure(refs, KeptSets{{{0}}}, {}));
  EXPECT_NEAR(m.rel_error, std::sqrt(2.5), 1e-6);
  EXPECT_NEAR(m.retained_mass, 1.0 / 3, 1e-6);
  EXPECT_EQ(m.rel_error_wo, -1.0);
  ASSERT_OK_AND_ASSIGN(Metrics both, Measure(refs, KeptSets{{{0, 1}}}, {}));
  // o_S = (1.5, 1.5): error ‖(0.5, 0.5)‖/‖(1,1)‖ = 0.5.
  EXPECT_NEAR(both.rel_error, 0.5, 1e-6);
  EXPECT_NEAR(both.retained_mass, 2.0 / 3, 1e-6);
}

TEST(MeasuresTest, OracleRecallCountsOverlapWithFutureTopK) {
  // One head, the single future query attends mostly to token 2, then 0, then 1.
  Fixture f;
  f.meta.layers = 1;
  f.meta.q_heads = 1;
  f.meta.kv_heads = 1;
  f.meta.head_dim = 2;
  f.meta.prefix = 3;
  f.layer.total = 4;
  f.layer.kv_len = 3;
  f.layer.q = {0, 0, 0, 0, 0, 0, 4, 0};  // future query (4, 0)
  f.layer.k = {1, 0, 0, 0, 2, 0};           // logits 4/√2·(1, 0, 2)
  f.layer.v = {1, 0, 0, 1, 1, 1};
  std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
  EXPECT_EQ(refs[0].oracle_order, (std::vector<int32_t>{2, 0, 1}));
  ASSERT_OK_AND_ASSIGN(Metrics top, Measure(refs, KeptSets{{{2}}}, {}));
  EXPECT_DOUBLE_EQ(top.oracle_recall, 1.0);
  ASSERT_OK_AND_ASSIGN(Metrics miss, Measure(refs, KeptSets{{{1}}}, {}));
  EXPECT_DOUBLE_EQ(miss.oracle_recall, 0.0);
  ASSERT_OK_AND_ASSIGN(Metrics half, Measure(refs, KeptSets{{{1, 2}}}, {}));
  EXPECT_DOUBLE_EQ(half.oracle_recall, 0.5);
}

TEST(MeasuresTest, NeedleRecallAndRetrievedAnswer) {
  Fixture f = RandomLayer(7, /*with_wo=*/false);
  // Plant a needle at token 9 of KV head 1 that future query 2 of q head 2 targets.
  const int d = 8;
  for (int c = 0; c < d; ++c) {
    f.layer.k[(1 * 30 + 9) * d + c] = c == 0 ? 6.f : 0.f;
    f.layer.q[(2 * 30 + 24 + 2) * d + c] = c == 0 ? 8.f : 0.f;
    f.layer.v[(1 * 30 + 9) * d + c] = c == 3 ? 5.f : 0.f;  // a distinctive answer
  }
  std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
  auto targets = FindNeedleTargets({{0, 1, 9}, {0, 0, 9}}, refs);
  ASSERT_EQ(targets.size(), 1u);  // the untargeted needle of head 0 is dropped
  ASSERT_FALSE(targets[0].queries.empty());
  EXPECT_EQ(targets[0].full_answer[0], 9);

  std::vector<int32_t> with(24), without;
  std::iota(with.begin(), with.end(), 0);
  for (int32_t j = 0; j < 24; ++j) {
    if (j != 9) without.push_back(j);
  }
  ASSERT_OK_AND_ASSIGN(Metrics kept, Measure(refs, KeptSets{{with, with}}, targets));
  EXPECT_EQ(kept.needles, 1);
  EXPECT_DOUBLE_EQ(kept.needle_recall, 1.0);
  EXPECT_DOUBLE_EQ(kept.needle_argmax, 1.0);
  ASSERT_OK_AND_ASSIGN(Metrics lost, Measure(refs, KeptSets{{with, without}}, targets));
  EXPECT_DOUBLE_EQ(lost.needle_recall, 0.0);
  EXPECT_DOUBLE_EQ(lost.needle_argmax, 0.0);
}

TEST(MeasuresTest, RejectsMalformedKeptSets) {
  Fixture f = RandomLayer(8);
  std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
  EXPECT_THAT(Measure(refs, KeptSets{{{1, 2}}}, {}), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Measure(refs, KeptSets{{{2, 1}, {0}}}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument, "ascending"));
  EXPECT_THAT(Measure(refs, KeptSets{{{0}, {24}}}, {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(Measure(refs, KeptSets{}, {}), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(OracleTest, MaximisesRetainedMassForItsBudget) {
  Fixture f = RandomLayer(9);
  std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
  ASSERT_OK_AND_ASSIGN(KeptSets oracle, OracleSelection(refs, "uniform", 0.25));
  ASSERT_EQ(oracle[0][0].size(), 6u);
  ASSERT_EQ(oracle[0][1].size(), 6u);
  ASSERT_OK_AND_ASSIGN(Metrics best, Measure(refs, oracle, {}));
  EXPECT_DOUBLE_EQ(best.oracle_recall, 1.0);
  std::mt19937_64 rng(9);
  for (int trial = 0; trial < 50; ++trial) {
    KeptSets random(1, std::vector<std::vector<int32_t>>(2));
    for (int g = 0; g < 2; ++g) {
      std::vector<int32_t> all(24);
      std::iota(all.begin(), all.end(), 0);
      std::shuffle(all.begin(), all.end(), rng);
      random[0][g].assign(all.begin(), all.begin() + 6);
      std::sort(random[0][g].begin(), random[0][g].end());
    }
    ASSERT_OK_AND_ASSIGN(Metrics m, Measure(refs, random, {}));
    EXPECT_LE(m.retained_mass, best.retained_mass + 1e-9);
  }
}

TEST(OracleTest, OutputOracleRanksByFirstOrderOutputChange) {
  Fixture f = RandomLayer(13, /*with_wo=*/false);
  std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
  const int d = 8;
  const int64_t P = 24, T = 30;
  for (int g = 0; g < 2; ++g) {
    for (int64_t j = 0; j < P; j += 5) {
      double naive = 0;
      for (int h = 2 * g; h < 2 * g + 2; ++h) {
        for (int64_t t = P; t < T; ++t) {
          std::vector<double> w(P);
          double sum = 0;
          for (int64_t i = 0; i < P; ++i) {
            double dot = 0;
            for (int c = 0; c < d; ++c) {
              dot += static_cast<double>(f.layer.q[(h * T + t) * d + c]) * f.layer.k[(g * T + i) * d + c];
            }
            sum += (w[i] = std::exp(dot / std::sqrt(8.0)));
          }
          std::vector<double> o(d, 0.0);
          for (int64_t i = 0; i < P; ++i) {
            for (int c = 0; c < d; ++c) o[c] += w[i] / sum * f.layer.v[(g * T + i) * d + c];
          }
          double dist = 0, norm = 0;
          for (int c = 0; c < d; ++c) {
            dist += std::pow(f.layer.v[(g * T + j) * d + c] - o[c], 2);
            norm += o[c] * o[c];
          }
          naive += w[j] / sum * std::sqrt(dist / norm) / (1 - w[j] / sum);
        }
      }
      EXPECT_NEAR(refs[0].future_output[g * P + j], naive, 1e-5 * (1 + naive)) << g << " " << j;
    }
  }
}

// A token whose value equals the output tops the mass oracle, yet evicting it alone changes
// nothing: oracle-out ranks it last.
TEST(OracleTest, OutputOracleIgnoresTokensThatMatchTheOutput) {
  Fixture f;
  f.meta.layers = 1;
  f.meta.q_heads = 1;
  f.meta.kv_heads = 1;
  f.meta.head_dim = 2;
  f.meta.prefix = 3;
  f.layer.total = 4;
  f.layer.kv_len = 3;
  f.layer.q = {0, 0, 0, 0, 0, 0, static_cast<float>(std::sqrt(2.0)), 0};
  // Attention 0.5, 0.3, 0.2; values (0,1), (2,1), (-3,1): o = (0, 1) = v_0.
  f.layer.k = {static_cast<float>(std::log(0.5)), 0, static_cast<float>(std::log(0.3)), 0,
               static_cast<float>(std::log(0.2)), 0};
  f.layer.v = {0, 1, 2, 1, -3, 1};
  std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
  ASSERT_OK_AND_ASSIGN(KeptSets mass, OracleSelection(refs, "uniform", 1.0 / 3, OracleKind::kMass));
  ASSERT_OK_AND_ASSIGN(KeptSets out, OracleSelection(refs, "uniform", 1.0 / 3, OracleKind::kOutput));
  EXPECT_EQ(mass[0][0], (std::vector<int32_t>{0}));
  EXPECT_EQ(out[0][0], (std::vector<int32_t>{1}));
  EXPECT_NEAR(refs[0].future_output[0], 0.0, 1e-6);
  EXPECT_NEAR(refs[0].future_output[1], 0.3 * 2 / 0.7, 1e-5);  // a‖v − o‖/((1 − a)‖o‖)
  EXPECT_NEAR(refs[0].future_output[2], 0.2 * 3 / 0.8, 1e-5);
}

TEST(OracleTest, AllocationsSpendTheSameTotalBudget) {
  Fixture a = RandomLayer(10), b = RandomLayer(11);
  std::vector<LayerReference> refs = {BuildReference(a.meta, a.layer),
                                      BuildReference(b.meta, b.layer)};
  for (const char* alloc : {"uniform", "ada", "global", "pyramid", "sequence"}) {
    ASSERT_OK_AND_ASSIGN(KeptSets kept, OracleSelection(refs, alloc, 0.25, OracleKind::kOutput));
    size_t total = 0;
    for (const auto& layer : kept) {
      for (const auto& head : layer) {
        total += head.size();
        EXPECT_TRUE(std::is_sorted(head.begin(), head.end()));
      }
    }
    EXPECT_EQ(total, 4u * 6u) << alloc;
  }
  EXPECT_THAT(OracleSelection(refs, "lru", 0.25), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(OracleSelection(refs, "uniform", 0.0), StatusIs(absl::StatusCode::kInvalidArgument));
}

// The sequence oracle keeps one set everywhere: the top tokens by the per-head-normalised future
// mass summed over layers and heads, re-derived here by brute force.
TEST(OracleTest, SequenceOracleKeepsOneSetByNormalisedSummedMass) {
  Fixture a = RandomLayer(13), b = RandomLayer(14);
  std::vector<LayerReference> refs = {BuildReference(a.meta, a.layer),
                                      BuildReference(b.meta, b.layer)};
  ASSERT_OK_AND_ASSIGN(KeptSets kept, OracleSelection(refs, "sequence", 0.25));
  std::vector<std::pair<double, int32_t>> combined;
  for (int32_t j = 0; j < 24; ++j) {
    double c = 0;
    for (const LayerReference& r : refs) {
      for (int g = 0; g < 2; ++g) {
        double total = 0;
        for (int32_t i = 0; i < 24; ++i) total += r.future_mass[g * 24 + i];
        c += r.future_mass[g * 24 + j] / total;
      }
    }
    combined.push_back({-c, j});
  }
  std::sort(combined.begin(), combined.end());
  std::vector<int32_t> want;
  for (int i = 0; i < 6; ++i) want.push_back(combined[i].second);
  std::sort(want.begin(), want.end());
  for (const auto& layer : kept) {
    for (const auto& head : layer) EXPECT_EQ(head, want);
  }
}

TEST(SparsityTest, UniformAttentionHasFivePercentMass) {
  Fixture f = RandomLayer(12, false);
  std::fill(f.layer.q.begin(), f.layer.q.end(), 0.f);  // zero queries: uniform attention
  f.meta.prefix = 20;
  std::vector<LayerReference> refs = {BuildReference(f.meta, f.layer)};
  const Sparsity s = MeasureSparsity(refs);
  EXPECT_NEAR(s.top5_mass, 1.0 / 20, 1e-6);  // ceil(5 % of 20) = 1 token of 20
  EXPECT_NEAR(s.sink_mass, 4.0 / 20, 1e-6);
}

}  // namespace
}  // namespace kvkeep::eval
