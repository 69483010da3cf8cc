#include "service/eviction/scorers.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "service/eviction/naive_reference.h"
#include "service/eviction/worker_pool.h"

namespace kvkeep::eviction {
namespace {

using ::kvkeep::testing::StatusIs;

// A synthetic layer that owns its tensors. Keys carry a few heavy hitters, values are correlated
// with their neighbours, queries share a dominant direction per head (so attention is not flat).
struct Layer {
  std::vector<std::vector<float>> keys, values;
  std::vector<std::vector<int32_t>> positions;
  LayerInputs in;
};

struct LayerSpec {
  int q_heads = 8, kv_heads = 2, head_dim = 16;
  int n = 70;
  int window = 8;
  bool interleaved = false;
  bool gapped = false;       // positions with holes and a shorter second head (after eviction)
  int rotary_dim = 0;
  bool inv_freq_table = false;
  bool sq_sum = true;
  bool gram = false;
  uint32_t seed = 1;
};

Layer MakeLayer(const LayerSpec& s) {
  std::mt19937 rng(s.seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unif(0.0f, 1.0f);
  Layer L;
  const int d = s.head_dim;
  L.in.q_heads = s.q_heads;
  L.in.kv_heads = s.kv_heads;
  L.in.head_dim = d;
  L.in.layer_index = 3;
  L.in.rope.theta = 10000.0;
  L.in.rope.interleaved = s.interleaved;
  L.in.rope.rotary_dim = s.rotary_dim;
  if (s.inv_freq_table) {
    const int rd = s.rotary_dim == 0 ? d : s.rotary_dim;
    for (int i = 0; i < rd / 2; ++i) L.in.rope.inv_freq.push_back(0.9f / (1.0f + 3.0f * i));
  }
  L.keys.resize(s.kv_heads);
  L.values.resize(s.kv_heads);
  L.positions.resize(s.kv_heads);
  int32_t max_pos = 0;
  for (int g = 0; g < s.kv_heads; ++g) {
    const int n = s.gapped && g % 2 == 1 ? s.n - 9 : s.n;
    std::vector<int32_t>& pos = L.positions[g];
    int32_t p = 0;
    for (int j = 0; j < n; ++j) {
      pos.push_back(p);
      p += s.gapped ? 1 + static_cast<int32_t>(rng() % 2) : 1;
    }
    max_pos = std::max(max_pos, pos.back());
    std::vector<float>& k = L.keys[g];
    std::vector<float>& v = L.values[g];
    k.resize(static_cast<size_t>(n) * d);
    v.resize(static_cast<size_t>(n) * d);
    for (int j = 0; j < n; ++j) {
      const float heavy = (j % 11 == 5) ? 2.5f : 1.0f;
      for (int i = 0; i < d; ++i) {
        k[j * d + i] = heavy * normal(rng) + (i == 1 ? 0.8f : 0.0f);
        v[j * d + i] = (j > 0 ? 0.6f * v[(j - 1) * d + i] : 0.0f) + normal(rng);
      }
    }
  }
  for (int g = 0; g < s.kv_heads; ++g) {
    HeadKV h;
    h.n = static_cast<int>(L.positions[g].size());
    h.keys = L.keys[g].data();
    h.values = L.values[g].data();
    h.positions = s.gapped ? L.positions[g].data() : nullptr;
    L.in.heads.push_back(h);
  }
  // With gaps, the next position is past every head's last one; the window queries overlap the
  // last cached tokens.
  L.in.next_position = max_pos + 1;
  L.in.window = s.window;
  L.in.window_queries.resize(static_cast<size_t>(s.q_heads) * s.window * d);
  L.in.query_sum.resize(static_cast<size_t>(s.q_heads) * d);
  L.in.query_count = 50;
  if (s.sq_sum) L.in.query_sq_sum.resize(static_cast<size_t>(s.q_heads) * d);
  for (int h = 0; h < s.q_heads; ++h) {
    std::vector<float> dir(d);
    for (float& x : dir) x = normal(rng);
    for (int i = 0; i < s.window; ++i) {
      for (int c = 0; c < d; ++c) {
        L.in.window_queries[(static_cast<size_t>(h) * s.window + i) * d + c] =
            1.2f * dir[c] + 0.7f * normal(rng);
      }
    }
    for (int c = 0; c < d; ++c) {
      const double mean = dir[c] * 0.9;
      const double var = 0.2 + unif(rng);
      L.in.query_sum[h * d + c] = mean * L.in.query_count;
      if (s.sq_sum) L.in.query_sq_sum[h * d + c] = (var + mean * mean) * L.in.query_count;
    }
  }
  L.in.attention_mass.resize(s.q_heads);
  for (int h = 0; h < s.q_heads; ++h) {
    const int n = L.in.heads[h / (s.q_heads / s.kv_heads)].n;
    for (int j = 0; j < n; ++j) L.in.attention_mass[h].push_back(unif(rng) * (j % 7 == 0 ? 5 : 1));
  }
  // A pre-RoPE query sketch: sketch_k slots per query head around the head's direction, some
  // unused (weight 0), drawn after everything else so the other statistics do not change.
  L.in.sketch_k = 5;
  L.in.sketch_centroids.resize(static_cast<size_t>(s.q_heads) * 5 * d);
  L.in.sketch_weights.resize(static_cast<size_t>(s.q_heads) * 5);
  for (int h = 0; h < s.q_heads; ++h) {
    for (int c = 0; c < 5; ++c) {
      const float w = c == 0 ? 3.0f : static_cast<float>(rng() % 4) * 2.0f;  // 0 = unused
      L.in.sketch_weights[h * 5 + c] = w;
      for (int i = 0; i < d; ++i) {
        L.in.sketch_centroids[(static_cast<size_t>(h) * 5 + c) * d + i] =
            1.5f * normal(rng) + (i == 1 ? 0.5f : 0.0f);
      }
    }
  }
  if (s.gram) {
    // M_h = W Wᵀ for a random d × (d/2) W: positive semi-definite, rank-deficient.
    L.in.wo_gram.resize(static_cast<size_t>(s.q_heads) * d * d);
    for (int h = 0; h < s.q_heads; ++h) {
      std::vector<float> w(static_cast<size_t>(d) * (d / 2));
      for (float& x : w) x = normal(rng);
      for (int a = 0; a < d; ++a) {
        for (int b = 0; b < d; ++b) {
          double acc = 0;
          for (int e = 0; e < d / 2; ++e) acc += w[a * (d / 2) + e] * w[b * (d / 2) + e];
          L.in.wo_gram[(static_cast<size_t>(h) * d + a) * d + b] = static_cast<float>(acc);
        }
      }
    }
  }
  return L;
}

Policy PolicyFor(ScorerKind kind) {
  Policy p;
  p.scorer = kind;
  p.window = 8;
  p.sinks = 4;
  p.rope_horizon = 64;
  p.seed = 42;
  return p;
}

void ExpectScoresNear(const HeadScores& got, const std::vector<std::vector<double>>& want,
                      double rel = 1e-3, double abs = 1e-6) {
  ASSERT_EQ(got.per_head.size(), want.size());
  for (size_t g = 0; g < want.size(); ++g) {
    ASSERT_EQ(got.per_head[g].size(), want[g].size()) << "head " << g;
    for (size_t j = 0; j < want[g].size(); ++j) {
      EXPECT_NEAR(got.per_head[g][j], want[g][j], abs + rel * std::fabs(want[g][j]))
          << "head " << g << " token " << j;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Every scorer against the naive double-precision re-computation, GQA 8/2, both RoPE styles,
// with contiguous and gapped (post-eviction, unequal heads) positions.

using ScorerCase = std::tuple<ScorerKind, bool /*interleaved*/, bool /*gapped*/>;

class ScorerMatchesNaiveTest : public ::testing::TestWithParam<ScorerCase> {};

TEST_P(ScorerMatchesNaiveTest, AgreesWithPlainLoops) {
  const auto [kind, interleaved, gapped] = GetParam();
  LayerSpec spec;
  spec.interleaved = interleaved;
  spec.gapped = gapped;
  spec.seed = 7 + static_cast<uint32_t>(kind);
  if (kind == ScorerKind::kCapKvGreedy) {
    spec.n = 36;  // the brute force is O(n^2 d^3) per step
    spec.head_dim = 8;
  }
  Layer layer = MakeLayer(spec);
  layer.in.sketch_post_rope = SketchScorerWantsPostRope(kind);
  const Policy policy = PolicyFor(kind);
  ScoringWorkspace ws;
  ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
  ExpectScoresNear(got, naive::Score(policy, layer.in));
}

std::string CaseName(const ::testing::TestParamInfo<ScorerCase>& info) {
  std::string name;
  bool upper = true;
  for (char ch : ScorerName(std::get<0>(info.param))) {
    if (ch == '-') {
      upper = true;
      continue;
    }
    name += upper ? static_cast<char>(std::toupper(ch)) : ch;
    upper = false;
  }
  name += std::get<1>(info.param) ? "Interleaved" : "HalfSplit";
  name += std::get<2>(info.param) ? "Gapped" : "Contiguous";
  return name;
}

INSTANTIATE_TEST_SUITE_P(
    AllScorers, ScorerMatchesNaiveTest,
    ::testing::Combine(::testing::Values(ScorerKind::kStreaming, ScorerKind::kRandom,
                                         ScorerKind::kKnorm, ScorerKind::kTova, ScorerKind::kH2o,
                                         ScorerKind::kObserved, ScorerKind::kSnapKv,
                                         ScorerKind::kExpected, ScorerKind::kCapKv,
                                         ScorerKind::kCapKvDot, ScorerKind::kCapKvGreedy,
                                         ScorerKind::kLaProx, ScorerKind::kQSketch,
                                         ScorerKind::kQSketchPost),
                       ::testing::Bool(), ::testing::Bool()),
    CaseName);

// ---------------------------------------------------------------------------------------------
// Variants the grid above does not reach.

TEST(ScorerVariants, RopeDependentScorersHonourPartialRotaryDimAndFrequencyTable) {
  for (ScorerKind kind : {ScorerKind::kExpected, ScorerKind::kCapKv, ScorerKind::kCapKvDot}) {
    for (bool interleaved : {false, true}) {
      LayerSpec spec;
      spec.rotary_dim = 8;
      spec.inv_freq_table = true;
      spec.interleaved = interleaved;
      spec.seed = 99;
      Layer layer = MakeLayer(spec);
      const Policy policy = PolicyFor(kind);
      ScoringWorkspace ws;
      ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
      SCOPED_TRACE(std::string(ScorerName(kind)) + (interleaved ? " interleaved" : " half"));
      ExpectScoresNear(got, naive::Score(policy, layer.in));
    }
  }
}

TEST(ScorerVariants, QSketchHonoursPartialRotaryDimFrequencyTableAndPositionSchedule) {
  for (bool interleaved : {false, true}) {
    LayerSpec spec;
    spec.rotary_dim = 8;
    spec.inv_freq_table = true;
    spec.interleaved = interleaved;
    spec.seed = 101;
    Layer layer = MakeLayer(spec);
    Policy policy = PolicyFor(ScorerKind::kQSketch);
    policy.sketch_positions = 3;
    policy.sketch_horizon = 100;  // strata of 33.3: offsets 16, 50, 83
    ScoringWorkspace ws;
    ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
    SCOPED_TRACE(interleaved ? "interleaved" : "half-split");
    ExpectScoresNear(got, naive::Score(policy, layer.in));
  }
}

TEST(ScorerVariants, QSketchScoresAreADistributionAndRotationMatters) {
  Layer layer = MakeLayer(LayerSpec{.seed = 103});
  ScoringWorkspace ws;
  ASSERT_OK_AND_ASSIGN(HeadScores pre, ScoreLayer(PolicyFor(ScorerKind::kQSketch), layer.in, ws));
  layer.in.sketch_post_rope = true;
  ASSERT_OK_AND_ASSIGN(HeadScores post,
                       ScoreLayer(PolicyFor(ScorerKind::kQSketchPost), layer.in, ws));
  double diff = 0;
  for (size_t g = 0; g < pre.per_head.size(); ++g) {
    double sum_pre = 0, sum_post = 0;  // a weighted mean of softmaxes sums to 1 per head
    for (size_t j = 0; j < pre.per_head[g].size(); ++j) {
      sum_pre += pre.per_head[g][j];
      sum_post += post.per_head[g][j];
      diff += std::fabs(pre.per_head[g][j] - post.per_head[g][j]);
    }
    EXPECT_NEAR(sum_pre, 1.0, 1e-4);
    EXPECT_NEAR(sum_post, 1.0, 1e-4);
  }
  EXPECT_GT(diff, 1e-2);  // rotating to the future positions changes what the centroids attend
}

TEST(ScorerVariants, QSketchRejectsASketchOfTheWrongSideOfRope) {
  Layer layer = MakeLayer(LayerSpec{.seed = 107});
  ScoringWorkspace ws;
  layer.in.sketch_post_rope = true;
  EXPECT_THAT(ScoreLayer(PolicyFor(ScorerKind::kQSketch), layer.in, ws),
              StatusIs(absl::StatusCode::kFailedPrecondition, "pre-RoPE"));
  layer.in.sketch_post_rope = false;
  EXPECT_THAT(ScoreLayer(PolicyFor(ScorerKind::kQSketchPost), layer.in, ws),
              StatusIs(absl::StatusCode::kFailedPrecondition, "post-RoPE"));
}

TEST(ScorerVariants, RopeStyleChangesQueryMomentScores) {
  // Guards against an implementation that ignores `interleaved`: the two styles must differ.
  LayerSpec spec;
  spec.seed = 5;
  Layer half = MakeLayer(spec);
  spec.interleaved = true;
  Layer inter = MakeLayer(spec);
  ScoringWorkspace ws;
  ASSERT_OK_AND_ASSIGN(HeadScores a, ScoreLayer(PolicyFor(ScorerKind::kCapKv), half.in, ws));
  ASSERT_OK_AND_ASSIGN(HeadScores b, ScoreLayer(PolicyFor(ScorerKind::kCapKv), inter.in, ws));
  double diff = 0;
  for (size_t j = 0; j < a.per_head[0].size(); ++j) {
    diff += std::fabs(a.per_head[0][j] - b.per_head[0][j]);
  }
  EXPECT_GT(diff, 1e-3);
}

TEST(ScorerVariants, LaProxWithOutputProjectionGram) {
  LayerSpec spec;
  spec.gram = true;
  spec.seed = 17;
  Layer layer = MakeLayer(spec);
  const Policy policy = PolicyFor(ScorerKind::kLaProx);
  ScoringWorkspace ws;
  ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
  ExpectScoresNear(got, naive::Score(policy, layer.in));
}

TEST(ScorerVariants, SnapKvAveragePoolingKernelFive) {
  Layer layer = MakeLayer(LayerSpec{.seed = 23});
  Policy policy = PolicyFor(ScorerKind::kSnapKv);
  policy.pool_max = false;
  policy.pool_kernel = 5;
  ScoringWorkspace ws;
  ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
  ExpectScoresNear(got, naive::Score(policy, layer.in));
}

TEST(ScorerVariants, ExpectedWithoutSecondMoment) {
  Layer layer = MakeLayer(LayerSpec{.sq_sum = false, .seed = 29});
  const Policy policy = PolicyFor(ScorerKind::kExpected);
  ScoringWorkspace ws;
  ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
  ExpectScoresNear(got, naive::Score(policy, layer.in));
}

TEST(ScorerVariants, MultiHeadAttentionWithoutGrouping) {
  for (ScorerKind kind : {ScorerKind::kSnapKv, ScorerKind::kCapKv, ScorerKind::kExpected,
                          ScorerKind::kTova, ScorerKind::kLaProx}) {
    Layer layer = MakeLayer(LayerSpec{.q_heads = 3, .kv_heads = 3, .seed = 31});
    const Policy policy = PolicyFor(kind);
    ScoringWorkspace ws;
    ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
    SCOPED_TRACE(std::string(ScorerName(kind)));
    ExpectScoresNear(got, naive::Score(policy, layer.in));
  }
}

TEST(ScorerVariants, CapKvTemperatureMatters) {
  Layer layer = MakeLayer(LayerSpec{.seed = 37});
  Policy policy = PolicyFor(ScorerKind::kCapKv);
  policy.capkv_tau = 1.5;
  ScoringWorkspace ws;
  ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
  ExpectScoresNear(got, naive::Score(policy, layer.in));
}

// ---------------------------------------------------------------------------------------------
// capkv-greedy against a brute-force log-det greedy.

TEST(CapKvGreedy, OrderOfScoresIsTheBruteForceGreedyOrder) {
  for (bool interleaved : {false, true}) {
    Layer layer = MakeLayer(LayerSpec{.q_heads = 4, .kv_heads = 2, .head_dim = 6, .n = 40,
                                      .interleaved = interleaved, .seed = 41});
    const Policy policy = PolicyFor(ScorerKind::kCapKvGreedy);
    ScoringWorkspace ws;
    ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
    for (int g = 0; g < 2; ++g) {
      std::vector<int> order;
      std::vector<double> gains;
      naive::BruteForceGreedy(policy, layer.in, g, &order, &gains);
      ASSERT_EQ(order.size(), 40u - 4 - 8);
      std::vector<int> by_score;
      for (int j = 4; j < 40 - 8; ++j) by_score.push_back(j);
      const std::vector<float>& s = got.per_head[g];
      std::stable_sort(by_score.begin(), by_score.end(),
                       [&](int a, int b) { return s[a] > s[b]; });
      EXPECT_EQ(by_score, order) << "head " << g;
      for (size_t t = 0; t < order.size(); ++t) {
        EXPECT_NEAR(s[order[t]], gains[t], 1e-6 + 1e-4 * gains[t]) << "pick " << t;
      }
    }
  }
}

TEST(CapKvGreedy, EarlyStopKeepsTheGreedyPrefixOnTop) {
  Layer layer = MakeLayer(LayerSpec{.q_heads = 4, .kv_heads = 2, .head_dim = 6, .n = 40,
                                    .seed = 43});
  Policy policy = PolicyFor(ScorerKind::kCapKvGreedy);
  policy.greedy_picks = 5;
  ScoringWorkspace ws;
  ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(policy, layer.in, ws));
  std::vector<int> order;
  std::vector<double> gains;
  naive::BruteForceGreedy(policy, layer.in, 0, &order, &gains);
  ASSERT_EQ(order.size(), 5u);
  const std::vector<float>& s = got.per_head[0];
  float min_picked = INFINITY;
  for (int j : order) min_picked = std::min(min_picked, s[j]);
  for (int j = 4; j < 40 - 8; ++j) {
    if (std::find(order.begin(), order.end(), j) == order.end()) {
      EXPECT_LE(s[j], min_picked) << "token " << j;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Workspace, threads and conventions.

TEST(ScoringWorkspaceTest, ReuseGivesIdenticalScoresWithoutGrowing) {
  Layer layer = MakeLayer(LayerSpec{.n = 200, .seed = 53});
  for (ScorerKind kind : {ScorerKind::kSnapKv, ScorerKind::kCapKv, ScorerKind::kExpected}) {
    ScoringWorkspace ws;
    ASSERT_OK_AND_ASSIGN(HeadScores a, ScoreLayer(PolicyFor(kind), layer.in, ws));
    const size_t bytes = ws.bytes();
    EXPECT_GT(bytes, 0u);
    HeadScores b = a;
    ASSERT_OK(ScoreLayerInto(PolicyFor(kind), layer.in, ws, &b));
    EXPECT_EQ(a.per_head, b.per_head);
    EXPECT_EQ(ws.bytes(), bytes);
  }
}

TEST(ScoringWorkspaceTest, TwoWorkersMatchOne) {
  // Large enough that ScoreLayer actually splits the heads.
  Layer layer = MakeLayer(LayerSpec{.q_heads = 8, .kv_heads = 4, .head_dim = 64, .n = 1500,
                                    .seed = 59});
  for (ScorerKind kind : {ScorerKind::kKnorm, ScorerKind::kExpected, ScorerKind::kTova}) {
    ScoringWorkspace one(1), two(2);
    ASSERT_OK_AND_ASSIGN(HeadScores a, ScoreLayer(PolicyFor(kind), layer.in, one));
    ASSERT_OK_AND_ASSIGN(HeadScores b, ScoreLayer(PolicyFor(kind), layer.in, two));
    EXPECT_EQ(a.per_head, b.per_head) << ScorerName(kind);
  }
}

TEST(ScoringWorkspaceTest, ConcurrentCallersGetTheScoresOfASingleCaller) {
  // Several threads, each with its own two-worker workspace, score at once through the shared
  // worker pool: every result equals that of the same two-worker call made alone. (Alone, not with
  // one worker: snapkv and capkv call OpenBLAS, whose sums depend on its thread count, and a
  // multi-worker ScoreLayer holds OpenBLAS at one thread while a one-worker call does not.)
  Layer layer = MakeLayer(LayerSpec{.q_heads = 8, .kv_heads = 4, .head_dim = 64, .n = 1500,
                                    .seed = 67});
  const std::vector<ScorerKind> kinds = {ScorerKind::kKnorm, ScorerKind::kTova,
                                         ScorerKind::kExpected, ScorerKind::kSnapKv,
                                         ScorerKind::kCapKv};
  std::vector<HeadScores> want;
  for (ScorerKind kind : kinds) {
    ScoringWorkspace alone(2);
    ASSERT_OK_AND_ASSIGN(HeadScores s, ScoreLayer(PolicyFor(kind), layer.in, alone));
    want.push_back(std::move(s));
  }
  constexpr int kThreads = 4, kRounds = 6;
  std::vector<int> mismatches(kThreads, 0), failures(kThreads, 0);
  std::vector<std::string> mismatched(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      ScoringWorkspace ws(2);
      for (int round = 0; round < kRounds; ++round) {
        const size_t k = (t + round) % kinds.size();
        absl::StatusOr<HeadScores> got = ScoreLayer(PolicyFor(kinds[k]), layer.in, ws);
        if (!got.ok()) {
          ++failures[t];
        } else if (got->per_head != want[k].per_head) {
          ++mismatches[t];
          absl::StrAppend(&mismatched[t], " ", ScorerName(kinds[k]));
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(failures[t], 0) << "thread " << t;
    EXPECT_EQ(mismatches[t], 0) << "thread " << t << ":" << mismatched[t];
  }
}

TEST(ScoringWorkspaceTest, ScoringInsideAPoolTaskNeitherDeadlocksNorStartsThreads) {
  // An engine may score from inside a task of the scorers' own pool (or from as many threads as it
  // likes): the nested ScoreLayer finishes, gives the same scores, and no call starts a thread.
  Layer layer = MakeLayer(LayerSpec{.q_heads = 8, .kv_heads = 4, .head_dim = 64, .n = 1500,
                                    .seed = 73});
  const Policy policy = PolicyFor(ScorerKind::kTova);
  ScoringWorkspace alone(2);
  ASSERT_OK_AND_ASSIGN(HeadScores want, ScoreLayer(policy, layer.in, alone));
  const auto threads = [] {
    int n = 0;
    for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator("/proc/self/task")) ++n;
    return n;
  };
  const int before = threads();
  constexpr int kTasks = 6;
  std::vector<int> mismatches(kTasks, 0);
  WorkerPool::Shared().Run(kTasks, 2, [&](int task, int) {
    ScoringWorkspace ws(2);
    for (int r = 0; r < 3; ++r) {
      absl::StatusOr<HeadScores> got = ScoreLayer(policy, layer.in, ws);
      if (!got.ok() || got->per_head != want.per_head) ++mismatches[task];
    }
  });
  for (int t = 0; t < kTasks; ++t) EXPECT_EQ(mismatches[t], 0) << "task " << t;
  EXPECT_EQ(threads(), before) << "scoring started (or left) threads of its own";
}

TEST(ScorerVariants, GroupSizesAndHeadDimsOffTheVectorWidth) {
  // The blocked dot kernels of tova and expected take query rows four at a time and channels
  // eight at a time: groups of 3, 5 and 6 rows, d = 20 and an odd token count reach their tails.
  for (int group : {3, 5, 6}) {
    for (ScorerKind kind : {ScorerKind::kTova, ScorerKind::kExpected}) {
      Layer layer = MakeLayer(LayerSpec{.q_heads = 2 * group, .kv_heads = 2, .head_dim = 20,
                                        .n = 71, .seed = 71u + static_cast<uint32_t>(group)});
      ScoringWorkspace ws;
      ASSERT_OK_AND_ASSIGN(HeadScores got, ScoreLayer(PolicyFor(kind), layer.in, ws));
      SCOPED_TRACE(absl::StrCat(ScorerName(kind), " group ", group));
      ExpectScoresNear(got, naive::Score(PolicyFor(kind), layer.in));
    }
  }
}

TEST(ScorerConventions, UndefinedTokensHoldTheHeadMaximum) {
  Layer layer = MakeLayer(LayerSpec{.seed = 61});
  ScoringWorkspace ws;
  ASSERT_OK_AND_ASSIGN(HeadScores cap, ScoreLayer(PolicyFor(ScorerKind::kCapKv), layer.in, ws));
  const std::vector<float>& s = cap.per_head[0];
  const float mx = *std::max_element(s.begin() + 4, s.end());
  for (int j = 0; j < 4; ++j) EXPECT_EQ(s[j], mx);
  ASSERT_OK_AND_ASSIGN(HeadScores snap, ScoreLayer(PolicyFor(ScorerKind::kSnapKv), layer.in, ws));
  const std::vector<float>& t = snap.per_head[1];
  const float mx2 = *std::max_element(t.begin(), t.end() - 8);
  for (size_t j = t.size() - 8; j < t.size(); ++j) EXPECT_EQ(t[j], mx2);
}

TEST(ScorerConventions, RandomIsSeededUniformAndPerLayer) {
  Layer layer = MakeLayer(LayerSpec{.n = 4000, .seed = 67});
  ScoringWorkspace ws;
  Policy p = PolicyFor(ScorerKind::kRandom);
  ASSERT_OK_AND_ASSIGN(HeadScores a, ScoreLayer(p, layer.in, ws));
  ASSERT_OK_AND_ASSIGN(HeadScores a2, ScoreLayer(p, layer.in, ws));
  EXPECT_EQ(a.per_head, a2.per_head);
  p.seed = 43;
  ASSERT_OK_AND_ASSIGN(HeadScores b, ScoreLayer(p, layer.in, ws));
  EXPECT_NE(a.per_head[0], b.per_head[0]);
  EXPECT_NE(a.per_head[0], a.per_head[1]);
  layer.in.layer_index = 4;
  ASSERT_OK_AND_ASSIGN(HeadScores c, ScoreLayer(PolicyFor(ScorerKind::kRandom), layer.in, ws));
  EXPECT_NE(a.per_head[0], c.per_head[0]);
  double mean = 0;
  for (float v : a.per_head[0]) {
    EXPECT_GE(v, 0.0f);
    EXPECT_LT(v, 1.0f);
    mean += v;
  }
  mean /= a.per_head[0].size();
  EXPECT_NEAR(mean, 0.5, 0.03);
}

TEST(ScorerConventions, ScoreLayerRejectsMissingStatistics) {
  Layer layer = MakeLayer(LayerSpec{.seed = 71});
  layer.in.window_queries.clear();
  layer.in.window = 0;
  ScoringWorkspace ws;
  EXPECT_THAT(ScoreLayer(PolicyFor(ScorerKind::kSnapKv), layer.in, ws),
              StatusIs(absl::StatusCode::kFailedPrecondition, "window_queries"));
  EXPECT_OK(ScoreLayer(PolicyFor(ScorerKind::kCapKv), layer.in, ws));
}

TEST(ScorerConventions, ShortHeadsScoreWithoutCandidates) {
  // n <= sinks: nothing but sinks; every scorer still answers finite scores of the right size.
  for (ScorerKind kind : {ScorerKind::kSnapKv, ScorerKind::kCapKv, ScorerKind::kCapKvGreedy,
                          ScorerKind::kExpected, ScorerKind::kLaProx, ScorerKind::kTova}) {
    Layer layer = MakeLayer(LayerSpec{.n = 3, .window = 2, .seed = 73});
    ScoringWorkspace ws;
    ASSERT_OK_AND_ASSIGN(HeadScores s, ScoreLayer(PolicyFor(kind), layer.in, ws));
    for (const auto& h : s.per_head) {
      ASSERT_EQ(h.size(), 3u);
      for (float v : h) EXPECT_TRUE(std::isfinite(v)) << ScorerName(kind);
    }
  }
}

}  // namespace
}  // namespace kvkeep::eviction

namespace kvkeep::eviction {
namespace {

// The NaN/Inf checks of keys, values and attention mass run fused into the scoring pass
// (ValidateLayerInputsDeferringScans + ScanLayerTensors): ScoreLayer must still refuse exactly
// the inputs ValidateLayerInputs refuses, with the same error naming the first bad entry, for
// every scorer, wherever the bad entry sits (a sink, the window, the middle, either head).
TEST(ScorerConventions, FusedFiniteChecksGiveValidationsError) {
  const float kBad[] = {std::numeric_limits<float>::quiet_NaN(),
                        std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()};
  const LayerSpec spec{.n = 70, .window = 8, .seed = 77};
  const int d = spec.head_dim;
  for (ScorerKind kind : {ScorerKind::kKnorm, ScorerKind::kTova, ScorerKind::kH2o,
                          ScorerKind::kObserved, ScorerKind::kSnapKv, ScorerKind::kExpected,
                          ScorerKind::kCapKv, ScorerKind::kCapKvDot, ScorerKind::kCapKvGreedy,
                          ScorerKind::kLaProx}) {
    const Policy policy = PolicyFor(kind);
    for (int tensor = 0; tensor < 3; ++tensor) {  // keys, values, attention mass
      for (int g = 0; g < spec.kv_heads; ++g) {
        for (int token : {0, 1, 35, 69}) {
          for (int lane : {0, d - 1}) {
            for (float bad : kBad) {
              Layer layer = MakeLayer(spec);
              if (tensor == 0) layer.keys[g][static_cast<size_t>(token) * d + lane] = bad;
              if (tensor == 1) layer.values[g][static_cast<size_t>(token) * d + lane] = bad;
              if (tensor == 2) layer.in.attention_mass[g * 4 + lane % 4][token] = bad;
              const absl::Status want = ValidateLayerInputs(layer.in, policy);
              ScoringWorkspace ws;
              const absl::Status got = ScoreLayer(policy, layer.in, ws).status();
              SCOPED_TRACE(absl::StrCat(ScorerName(kind), " tensor ", tensor, " head ", g,
                                        " token ", token, " lane ", lane, " value ", bad));
              EXPECT_EQ(got, want);
              if (!want.ok()) {
                EXPECT_EQ(want.code(), absl::StatusCode::kInvalidArgument);
              }
            }
          }
        }
      }
    }
  }
}

// Finite inputs whose squares overflow float: validation accepts them, so scoring must too (the
// fused check's non-finite intermediates lead to a scan that finds nothing), for every scorer.
TEST(ScorerConventions, OverflowOfFiniteInputsIsNotAnError) {
  for (ScorerKind kind : {ScorerKind::kKnorm, ScorerKind::kTova, ScorerKind::kExpected,
                          ScorerKind::kH2o, ScorerKind::kLaProx}) {
    Layer layer = MakeLayer(LayerSpec{.seed = 79});
    for (auto& k : layer.keys) k[5] = 3e38f;
    for (auto& v : layer.values) v[7] = 3e38f;
    for (auto& m : layer.in.attention_mass) {
      m[3] = 3e38f;
      m[4] = 3e38f;
    }
    const Policy policy = PolicyFor(kind);
    ASSERT_OK(ValidateLayerInputs(layer.in, policy));
    ScoringWorkspace ws;
    EXPECT_OK(ScoreLayer(policy, layer.in, ws).status()) << ScorerName(kind);
  }
}

}  // namespace
}  // namespace kvkeep::eviction
