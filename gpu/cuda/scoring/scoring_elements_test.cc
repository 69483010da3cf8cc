// The device scoring pipeline emulated on the host (host_scoring_steps.h), compared with the CPU
// scorers: the CUDA scorer's own plan (PlanLayer), scratch layout and upload image (scratch_layout.h)
// and per-scorer step sequence (scorer_steps.h), with each step run on the host by the kernels'
// per-element bodies (scoring_elements.h), serial stand-ins for the block-wide kernels and
// column-major reference GEMM / Cholesky / triangular solve. It checks the plan, every layout, the
// step order and the library-call arguments on a machine without a GPU; it cannot check the
// kernels' block reductions, the launches or the libraries themselves (the `gpu` conformance suite
// does).
#include "gpu/cuda/scoring/host_scoring_steps.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "gpu/math/attention_math.h"
#include "gpu/math/dtype.h"
#include "gtest/gtest.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/scorers.h"

namespace kvkeep::cuda_scoring {
namespace {

namespace gm = ::kvkeep::gpu_math;
using Kind = DeviceScorerKind;
using eviction::ScorerKind;

struct Case {
  ScorerKind scorer;
  DevicePageDType dtype;
  bool interleaved;
  int q_heads, kv_heads;
};

// As the conformance suite's (tests/cuda_scoring_conformance_test.cc): only summation orders
// differ from the CPU here.
double Rtol(ScorerKind k) {
  switch (k) {
    case ScorerKind::kStreaming:
    case ScorerKind::kRandom:
      return 0;
    case ScorerKind::kH2o:
    case ScorerKind::kObserved:
    case ScorerKind::kKnorm:
      return 1e-5;
    case ScorerKind::kCapKv:
    case ScorerKind::kCapKvDot:
      return 2e-3;
    case ScorerKind::kCapKvGreedy:
      return 1e-3;
    default:
      return 1e-4;
  }
}

constexpr int kD = 16, kTokensPerPage = 8, kWindow = 4;

// One random layer: the CPU scorers' inputs and the same keys and values stored in pages of the
// case's dtype (keys then values of kTokensPerPage tokens per page), as the device holds them.
struct RandomLayer {
  eviction::LayerInputs in;
  std::vector<std::vector<float>> keys, values;  // what the pages hold, widened
  std::vector<std::vector<int32_t>> positions;
  std::vector<std::vector<uint8_t>> pages;
  size_t elem = 4;
};

// Stores x in the page as the case's dtype; returns the value the device reads back.
float StoreElement(DevicePageDType dtype, float x, uint8_t* at) {
  if (dtype == DevicePageDType::kFp32) {
    std::memcpy(at, &x, 4);
    return x;
  }
  const bool half = dtype == DevicePageDType::kFp16;
  const uint16_t b = half ? gm::FloatToHalfBits(x) : gm::FloatToBf16Bits(x);
  std::memcpy(at, &b, 2);
  return half ? gm::HalfBitsToFloat(b) : gm::Bf16BitsToFloat(b);
}

// Head g: 37 + 11 g tokens at random ascending positions; returns its last position.
int32_t FillHead(const Case& c, int g, std::mt19937& rng, RandomLayer& L) {
  std::normal_distribution<float> normal;
  const int n = 37 + 11 * g;
  int32_t pos = 0;
  for (int j = 0; j < n; ++j) L.positions[g].push_back(pos += 1 + static_cast<int32_t>(rng() % 3));
  const int num_pages = (n + kTokensPerPage - 1) / kTokensPerPage;
  L.pages[g].assign(num_pages * 2 * kTokensPerPage * kD * L.elem, 0);
  L.keys[g].resize(n * kD);
  L.values[g].resize(n * kD);
  for (int j = 0; j < n; ++j) {
    for (int part = 0; part < 2; ++part) {
      for (int i = 0; i < kD; ++i) {
        uint8_t* at = L.pages[g].data() +
                      ((j / kTokensPerPage) * 2 * kTokensPerPage + part * kTokensPerPage +
                       j % kTokensPerPage) *
                          kD * L.elem +
                      i * L.elem;
        (part == 0 ? L.keys : L.values)[g][j * kD + i] = StoreElement(c.dtype, normal(rng), at);
      }
    }
  }
  return pos;
}

// Window queries, query moments, attention mass and (interleaved cases) W_O Gram matrices.
void FillStatistics(const Case& c, std::mt19937& rng, eviction::LayerInputs& in) {
  const int H = c.q_heads, G = c.q_heads / c.kv_heads;
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0.01f, 1.0f);
  in.window = kWindow;
  in.window_queries.resize(H * kWindow * kD);
  for (float& x : in.window_queries) x = normal(rng);
  in.query_count = 20;
  in.query_sum.resize(H * kD);
  in.query_sq_sum.resize(H * kD);
  for (size_t i = 0; i < in.query_sum.size(); ++i) {
    in.query_sum[i] = 10.0 * normal(rng);
    in.query_sq_sum[i] = in.query_sum[i] * in.query_sum[i] / 20.0 + 20.0 * uniform(rng);
  }
  in.attention_mass.resize(H);
  for (int h = 0; h < H; ++h) {
    for (int j = 0; j < in.heads[h / G].n; ++j) in.attention_mass[h].push_back(uniform(rng));
  }
  // A query sketch of 3 slots per q head (one unused), on the side of RoPE the scorer reads.
  in.sketch_k = 3;
  in.sketch_post_rope = c.scorer == ScorerKind::kQSketchPost;
  in.sketch_centroids.resize(H * 3 * kD);
  for (float& x : in.sketch_centroids) x = 1.5f * normal(rng);
  in.sketch_weights.resize(H * 3);
  for (int h = 0; h < H; ++h) {
    in.sketch_weights[h * 3] = 1.0f + 9.0f * uniform(rng);
    in.sketch_weights[h * 3 + 1] = h % 2 == 0 ? 0.0f : 4.0f * uniform(rng);
    in.sketch_weights[h * 3 + 2] = 2.0f;
  }
  if (!c.interleaved) return;
  in.wo_gram.assign(H * kD * kD, 0.0f);
  for (int h = 0; h < H; ++h) {
    std::vector<float> wmat(kD * kD);
    for (float& x : wmat) x = normal(rng) * 0.3f;
    for (int a = 0; a < kD; ++a) {
      for (int b = 0; b < kD; ++b) {
        float s = 0;
        for (int t = 0; t < kD; ++t) s += wmat[a * kD + t] * wmat[b * kD + t];
        in.wo_gram[(h * kD + a) * kD + b] = s;
      }
    }
  }
}

// A fixed layer per scorer (seed 50 + scorer).
void MakeLayer(const Case& c, RandomLayer& L) {
  const int Hk = c.kv_heads;
  std::mt19937 rng(50 + static_cast<int>(c.scorer));
  L.in = eviction::LayerInputs{.q_heads = c.q_heads, .kv_heads = Hk, .head_dim = kD,
                               .layer_index = 2};
  L.in.rope.theta = 1e4;
  L.in.rope.interleaved = c.interleaved;
  L.in.rope.rotary_dim = c.interleaved ? 12 : 0;
  L.elem = c.dtype == DevicePageDType::kFp32 ? 4 : 2;
  L.keys.assign(Hk, {});
  L.values.assign(Hk, {});
  L.positions.assign(Hk, {});
  L.pages.assign(Hk, {});
  int32_t last = 0;
  for (int g = 0; g < Hk; ++g) {
    last = std::max(last, FillHead(c, g, rng, L));
    L.in.heads.push_back(
        {static_cast<int>(L.positions[g].size()), L.keys[g].data(), L.values[g].data(),
         L.positions[g].data()});
  }
  L.in.next_position = last + 3;
  FillStatistics(c, rng, L.in);
}

// The device request for the same layer: page runs of the case's dtype, the same statistics.
DeviceLayerRequest DeviceRequest(const Case& c, const eviction::Policy& policy,
                                 const RandomLayer& L) {
  const eviction::LayerInputs& in = L.in;
  DeviceLayerRequest req{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = kD,
                         .layer_index = in.layer_index, .dtype = c.dtype};
  req.scorer = {static_cast<Kind>(static_cast<int>(c.scorer)),
                policy.sinks,
                policy.window,
                policy.pool_kernel,
                policy.pool_max,
                policy.capkv_tau,
                policy.rope_horizon,
                policy.seed,
                policy.greedy_picks,
                policy.sketch_positions,
                policy.sketch_horizon};
  req.heads.resize(c.kv_heads);
  const size_t token_bytes = kD * L.elem;
  for (int g = 0; g < c.kv_heads; ++g) {
    req.heads[g].n = in.heads[g].n;
    req.heads[g].positions = L.positions[g].data();
    for (int j = 0; j < in.heads[g].n; j += kTokensPerPage) {
      const uint8_t* page =
          L.pages[g].data() + (j / kTokensPerPage) * 2 * kTokensPerPage * token_bytes;
      req.heads[g].runs.push_back(
          {page, page + kTokensPerPage * token_bytes,
           static_cast<uint32_t>(std::min(kTokensPerPage, in.heads[g].n - j))});
    }
  }
  req.rope = {in.rope.theta, in.rope.rotary_dim, in.rope.interleaved, nullptr};
  req.next_position = in.next_position;
  req.window = in.window;
  req.window_queries = in.window_queries.data();
  req.query_sum = in.query_sum.data();
  req.query_sq_sum = in.query_sq_sum.data();
  req.query_count = in.query_count;
  for (const auto& m : in.attention_mass) req.attention_mass.push_back(m.data());
  req.wo_gram = in.wo_gram.empty() ? nullptr : in.wo_gram.data();
  req.sketch_k = in.sketch_k;
  req.sketch_centroids = in.sketch_centroids.data();
  req.sketch_weights = in.sketch_weights.data();
  req.sketch_post_rope = in.sketch_post_rope;
  return req;
}

class HostEmulationTest : public ::testing::TestWithParam<Case> {};

TEST_P(HostEmulationTest, EmulatedDevicePipelineMatchesTheCpuScorers) {
  const Case c = GetParam();
  const eviction::Policy policy{.scorer = c.scorer, .sinks = 3, .window = kWindow, .seed = 9};
  RandomLayer layer;
  MakeLayer(c, layer);
  eviction::ScoringWorkspace ws(1);
  ASSERT_OK_AND_ASSIGN(eviction::HeadScores cpu, eviction::ScoreLayer(policy, layer.in, ws));
  const DeviceLayerRequest req = DeviceRequest(c, policy, layer);
  ASSERT_OK(ValidateDeviceLayerRequest(req));

  std::vector<std::vector<float>> emulated;
  ASSERT_OK(EmulateLayerOnHost(req, &emulated));
  ASSERT_EQ(emulated.size(), cpu.per_head.size());
  const double rtol = Rtol(c.scorer);
  for (int g = 0; g < c.kv_heads; ++g) {
    ASSERT_EQ(emulated[g].size(), cpu.per_head[g].size());
    double scale = 0;
    for (float x : cpu.per_head[g]) scale = std::max(scale, std::fabs(double{x}));
    for (size_t j = 0; j < emulated[g].size(); ++j) {
      const double want = cpu.per_head[g][j];
      EXPECT_NEAR(emulated[g][j], want, rtol * std::fabs(want) + 1e-6 * scale)
          << "head " << g << " token " << j;
    }
  }
}

std::vector<Case> Cases() {
  std::vector<Case> out;
  for (int s = 0; s <= static_cast<int>(ScorerKind::kQSketchPost); ++s) {
    out.push_back({static_cast<ScorerKind>(s), DevicePageDType::kFp32, false, 6, 2});
    out.push_back({static_cast<ScorerKind>(s), DevicePageDType::kBf16, true, 6, 2});
    out.push_back({static_cast<ScorerKind>(s), DevicePageDType::kFp16, true, 3, 3});
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(AllScorers, HostEmulationTest, ::testing::ValuesIn(Cases()),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           std::string name(eviction::ScorerName(info.param.scorer));
                           name.erase(std::remove(name.begin(), name.end(), '-'), name.end());
                           return name + std::to_string(info.index);
                         });

// One fp32 head of `n` tokens, keys then values in `page` (one run), head_dim 4.
DeviceLayerRequest OneHeadRequest(Kind kind, int n, const std::vector<float>& page) {
  DeviceLayerRequest r{.q_heads = 2, .kv_heads = 1, .head_dim = 4};
  r.scorer.kind = kind;
  r.heads.resize(1);
  r.heads[0].n = n;
  r.heads[0].runs.push_back({page.data(), page.data() + n * 4, static_cast<uint32_t>(n)});
  return r;
}

// A NaN in the keys reaches the scores of a scorer that reads keys, and the shared read-back
// (ReadScores) refuses it; a scorer that never reads keys is not affected.
TEST(HostEmulationTest, NonFiniteKeysAreReportedByTheReadBack) {
  constexpr int kN = 6;
  std::vector<float> page(2 * kN * 4, 0.5f);
  page[3 * 4 + 1] = NAN;  // key of token 3
  std::vector<std::vector<float>> scores;
  EXPECT_THAT(EmulateLayerOnHost(OneHeadRequest(Kind::kKnorm, kN, page), &scores),
              ::kvkeep::testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                          "KV head 0 token 3 scored nan"));
  ASSERT_OK(EmulateLayerOnHost(OneHeadRequest(Kind::kStreaming, kN, page), &scores));
  ASSERT_EQ(scores.size(), 1u);
  EXPECT_EQ(scores[0].size(), static_cast<size_t>(kN));
}

// The emulation answers as CudaLayerScorer::ScoreLayer before any step: invalid requests are
// refused and an empty layer has nothing to score.
TEST(HostEmulationTest, InvalidAndEmptyLayersAnswerBeforeAnyStep) {
  std::vector<float> page(2 * 4 * 4, 1.0f);
  DeviceLayerRequest bad = OneHeadRequest(Kind::kKnorm, 4, page);
  bad.head_dim = kMaxDeviceHeadDim + 1;
  std::vector<std::vector<float>> scores;
  EXPECT_THAT(EmulateLayerOnHost(bad, &scores),
              ::kvkeep::testing::StatusIs(absl::StatusCode::kInvalidArgument));
  DeviceLayerRequest empty{.q_heads = 2, .kv_heads = 2, .head_dim = 4};
  empty.scorer.kind = Kind::kKnorm;
  empty.heads.resize(2);
  scores = {{1.0f}};
  ASSERT_OK(EmulateLayerOnHost(empty, &scores));
  ASSERT_EQ(scores.size(), 2u);
  EXPECT_TRUE(scores[0].empty());
  EXPECT_TRUE(scores[1].empty());
}

}  // namespace
}  // namespace kvkeep::cuda_scoring
