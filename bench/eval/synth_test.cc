// The synthetic profiles must carry the properties they claim (algorithms.md, "Quality measures");
// each test below fails for a generator that lost one of them.
#include "bench/eval/synth.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "bench/eval/measures.h"
#include "bench/eval/rope.h"
#include "common/status_matchers.h"

namespace kvkeep::eval {
namespace {

using ::kvkeep::testing::StatusIs;

SynthOptions Small(const std::string& profile) {
  SynthOptions o;
  o.profile = profile;
  o.prefix = 1024;
  o.future = 64;
  return o;
}

struct Generated {
  SynthDataset ds;
  std::vector<LayerReference> refs;
};

Generated Make(const SynthOptions& o) {
  auto ds = GenerateSynth(o);
  EXPECT_TRUE(ds.ok()) << ds.status();
  Generated g{std::move(*ds), {}};
  for (const LayerData& l : g.ds.layers) g.refs.push_back(BuildReference(g.ds.meta, l));
  return g;
}

double Norm(const float* x, int d) {
  double s = 0;
  for (int c = 0; c < d; ++c) s += static_cast<double>(x[c]) * x[c];
  return std::sqrt(s);
}

double Cosine(const float* a, const float* b, int d) {
  double dot = 0;
  for (int c = 0; c < d; ++c) dot += static_cast<double>(a[c]) * b[c];
  return dot / (Norm(a, d) * Norm(b, d) + 1e-30);
}

// Causal attention row of prefix query t of q head h (over keys 0..t).
std::vector<double> PrefixAttention(const SynthDataset& ds, int layer, int h, int64_t t) {
  const LayerData& l = ds.layers[layer];
  const int d = ds.meta.head_dim, G = ds.meta.q_heads / ds.meta.kv_heads;
  const float* q = l.q.data() + (static_cast<size_t>(h) * l.total + t) * d;
  const float* K = l.k.data() + static_cast<size_t>(h / G) * l.kv_len * d;
  std::vector<double> a(t + 1);
  double mx = -1e300, sum = 0;
  for (int64_t j = 0; j <= t; ++j) {
    double dot = 0;
    for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * K[j * d + c];
    a[j] = dot / std::sqrt(static_cast<double>(d));
    mx = std::max(mx, a[j]);
  }
  for (double& x : a) sum += (x = std::exp(x - mx));
  for (double& x : a) x /= sum;
  return a;
}

TEST(SynthTest, MixedSinksTakeMassButCarryNearZeroValues) {
  const Generated g = Make(Small("mixed"));
  const Sparsity s = MeasureSparsity(g.refs);
  EXPECT_GT(s.sink_mass, 0.2);
  const int d = g.ds.meta.head_dim;
  for (const LayerData& l : g.ds.layers) {
    for (int head = 0; head < g.ds.meta.kv_heads; ++head) {
      std::vector<double> norms;
      for (int64_t t = 4; t < g.ds.meta.prefix; ++t) {
        norms.push_back(Norm(l.v.data() + (head * l.kv_len + t) * d, d));
      }
      std::nth_element(norms.begin(), norms.begin() + norms.size() / 2, norms.end());
      const double median = norms[norms.size() / 2];
      for (int t = 0; t < 4; ++t) {
        EXPECT_LT(Norm(l.v.data() + (head * l.kv_len + t) * d, d), 0.1 * median);
      }
    }
  }
}

TEST(SynthTest, MixedMiddleLayersAreSparseEarlyLayerIsNot) {
  const Generated g = Make(Small("mixed"));
  const Sparsity s = MeasureSparsity(g.refs);
  ASSERT_EQ(s.layer_top5_mass.size(), 4u);
  // A few percent of tokens hold most of the mass in the middle layers.
  EXPECT_GT(s.layer_top5_mass[1], 0.6);
  EXPECT_GT(s.layer_top5_mass[2], 0.6);
  EXPECT_LT(s.layer_top5_mass[0], s.layer_top5_mass[1] - 0.1);
  // Not only the sinks: the top 5 % outside the sinks still holds a large share in the middle.
  EXPECT_GT(s.layer_top5_mass[1] - s.sink_mass, 0.1);
}

TEST(SynthTest, NeighbouringValuesShareContent) {
  const Generated g = Make(Small("mixed"));
  const int d = g.ds.meta.head_dim;
  const LayerData& l = g.ds.layers[1];
  double near = 0, far = 0;
  int count = 0;
  for (int64_t t = 10; t + 600 < g.ds.meta.prefix; t += 7, ++count) {
    near += Cosine(l.v.data() + t * d, l.v.data() + (t + 1) * d, d);
    far += Cosine(l.v.data() + t * d, l.v.data() + (t + 600) * d, d);
  }
  EXPECT_GT(near / count, 0.6);             // i.i.d. values would give ~0
  EXPECT_LT(far / count, near / count - 0.3);
}

TEST(SynthTest, LocalHeadsAttendTheirRecentNeighbours) {
  const Generated g = Make(Small("mixed"));
  // Middle layer, KV head 1 is the local one; its sharpest q head is h = 4.
  double local = 0;
  int count = 0;
  for (int64_t t = 400; t < 1000; t += 50, ++count) {
    const auto a = PrefixAttention(g.ds, 1, 4, t);
    for (int64_t j = t - 31; j <= t; ++j) local += a[j];
  }
  EXPECT_GT(local / count, 0.25);  // uniform attention would put ~32/t < 0.08 there
  // The retrieval head of the same layer is not local.
  double other = 0;
  for (int64_t t = 400; t < 1000; t += 50) {
    const auto a = PrefixAttention(g.ds, 1, 0, t);
    for (int64_t j = t - 31; j <= t; ++j) other += a[j];
  }
  EXPECT_LT(other / count, local / count - 0.1);
}

TEST(SynthTest, NeedlesAtSeveralDepthsAreTargetedByFutureQueries) {
  const Generated g = Make(Small("mixed"));
  ASSERT_GE(g.ds.meta.needles.size(), 5u);
  const auto targets = FindNeedleTargets(g.ds.meta.needles, g.refs);
  EXPECT_GE(targets.size(), g.ds.meta.needles.size() * 8 / 10);
  int64_t lo = g.ds.meta.prefix, hi = 0;
  for (const auto& t : targets) {
    lo = std::min(lo, t.position);
    hi = std::max(hi, t.position);
    EXPECT_EQ(t.full_answer[0], t.position);  // the needle's value is the retrieved answer
  }
  EXPECT_LT(lo, g.ds.meta.prefix / 5);
  EXPECT_GT(hi, g.ds.meta.prefix * 4 / 5);
}

TEST(SynthTest, RopeAppliedAndContentInLowFrequencyChannels) {
  const Generated g = Make(Small("mixed"));
  const int d = g.ds.meta.head_dim, half = d / 2;
  const LayerData& l = g.ds.layers[2];
  EXPECT_EQ(g.ds.meta.rope_theta, 500000.0);
  // q is qpre rotated by position.
  std::vector<float> rotated(l.qpre.begin(), l.qpre.begin() + l.total * d);
  RotateRows(RopeStyle::kHalf, g.ds.meta.rope_theta, d, 0, l.total, rotated.data());
  for (int64_t i = 0; i < l.total * d; i += 97) EXPECT_NEAR(rotated[i], l.q[i], 1e-3);
  // Un-rotate the keys; the token-to-token variation of the pre-RoPE keys lives mostly in the
  // channels whose rotation over the whole prefix is below one radian.
  std::vector<float> k(l.k.begin(), l.k.begin() + l.kv_len * d);
  RotateRows(RopeStyle::kHalf, g.ds.meta.rope_theta, d, 0, l.kv_len, k.data(), /*inverse=*/true);
  double low = 0, all = 0;
  for (int c = 0; c < d; ++c) {
    const int pair = c % half;
    const double freq = std::pow(g.ds.meta.rope_theta, -2.0 * pair / d);
    double mean = 0, var = 0;
    for (int64_t t = 4; t < g.ds.meta.prefix; ++t) mean += k[t * d + c];
    mean /= g.ds.meta.prefix - 4;
    for (int64_t t = 4; t < g.ds.meta.prefix; ++t) var += std::pow(k[t * d + c] - mean, 2);
    all += var;
    if (freq * g.ds.meta.prefix < 1.0) low += var;
  }
  EXPECT_GT(low / all, 0.7);
}

TEST(SynthTest, GqaHeadsOfAGroupDifferInSharpness) {
  const Generated g = Make(Small("gqa"));
  const LayerReference& ref = g.refs[1];
  // Entropy of the attention outside the sinks (every head is drawn to the sinks alike).
  auto entropy = [&](int h) {
    double e = 0;
    for (int64_t t = 0; t < ref.future; ++t) {
      const float* p = ref.probs.data() + (h * ref.future + t) * ref.prefix;
      double rest = 0;
      for (int64_t j = 4; j < ref.prefix; ++j) rest += p[j];
      for (int64_t j = 4; j < ref.prefix; ++j) {
        if (p[j] > 0) e -= p[j] / rest * std::log(p[j] / rest);
      }
    }
    return e / ref.future;
  };
  EXPECT_LT(entropy(0) + 1.5, entropy(3));
  EXPECT_LT(entropy(4) + 1.5, entropy(7));
}

TEST(SynthTest, ProfilesCarryTheirEmphasis) {
  const Sparsity sinks = MeasureSparsity(Make(Small("sinks")).refs);
  const Sparsity heavy = MeasureSparsity(Make(Small("heavy")).refs);
  const Sparsity mixed = MeasureSparsity(Make(Small("mixed")).refs);
  EXPECT_GT(sinks.sink_mass, 0.5);
  EXPECT_GT(sinks.sink_mass, mixed.sink_mass);
  for (double m : heavy.layer_top5_mass) EXPECT_GT(m, 0.6);
  EXPECT_GT(heavy.top5_mass - heavy.sink_mass, mixed.top5_mass - mixed.sink_mass);
}

TEST(SynthTest, SameSeedSameDataOtherSeedDifferent) {
  SynthOptions o = Small("local");
  o.layers = 1;
  o.prefix = 256;
  auto a = GenerateSynth(o), b = GenerateSynth(o);
  o.seed = 2;
  auto c = GenerateSynth(o);
  ASSERT_OK(a);
  ASSERT_OK(b);
  ASSERT_OK(c);
  EXPECT_EQ(a->layers[0].k, b->layers[0].k);
  EXPECT_NE(a->layers[0].k, c->layers[0].k);
}

TEST(SynthTest, RejectsUnknownProfileAndBadSizes) {
  SynthOptions o;
  o.profile = "llama";
  EXPECT_THAT(GenerateSynth(o), StatusIs(absl::StatusCode::kInvalidArgument, "mixed"));
  o = SynthOptions();
  o.head_dim = 30;
  EXPECT_THAT(GenerateSynth(o), StatusIs(absl::StatusCode::kInvalidArgument));
  o = SynthOptions();
  o.q_heads = 6;
  o.kv_heads = 4;
  EXPECT_THAT(GenerateSynth(o), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvkeep::eval
