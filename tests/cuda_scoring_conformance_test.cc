// Conformance of scoring on the device (gpu/cuda/scoring/) with the CPU scorers
// (eviction::ScoreLayer): every scorer, fp32/fp16/bf16 pages, both RoPE layouts (half-split with
// the full rotary dim, interleaved with a partial one), GQA (8 q heads over 2 KV heads) and MHA,
// heads of different lengths and positions (as after ada), fixed seeds. Label `gpu`; every device
// test skips without a CUDA device. The same cases also run through the host emulation of the
// device pipeline (HostEmulatedConformanceTest), everywhere.
//
// Tolerances (|device - cpu| <= rtol * |cpu| + atol * max_j |cpu_j| per head), and why:
//  * streaming, random: exact (integers; the same CounterUniform bits).
//  * h2o, observed, knorm: rtol 1e-5 (the same float operations; only the compiler's FMA
//    contraction and the order of a d-term sum differ).
//  * tova, snapkv, laprox, expected: rtol 1e-4, atol 1e-6 (the logits come from cuBLAS SGEMM /
//    the shared dot product in another summation order, ~d·eps relative; the softmax turns a logit
//    error e into a relative error e·|logit| of the probability).
//  * capkv, capkv-dot: rtol 2e-3, atol 1e-5 (the CPU inverts A in double and applies A⁻¹ in float;
//    the device solves L y = v in double: both carry the float Gram's rounding times cond(A)).
//  * capkv-greedy: rtol 1e-3, atol 1e-5 (double-precision updates on both sides; float weights).
// Selections: for every head, two tokens whose CPU scores differ by more than both tolerances are
// ordered the same way on the device, so any top-k (hence SelectTokens) is identical except
// among tokens tied within the tolerance; the test also checks a uniform half-budget selection.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "gpu/cuda/scoring/cuda_layer_scorer.h"
#include "gpu/cuda/scoring/host_scoring_steps.h"
#include "gpu/device_scoring.h"
#include "gpu/math/dtype.h"
#include "gtest/gtest.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"
#include "service/eviction/scorers.h"
#include "service/eviction/selection.h"

namespace kvkeep {
namespace {

using eviction::ScorerKind;

struct Case {
  ScorerKind scorer;
  DevicePageDType dtype;
  bool interleaved;
  int q_heads, kv_heads;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string name(eviction::ScorerName(info.param.scorer));
  name.erase(std::remove(name.begin(), name.end(), '-'), name.end());
  name += info.param.dtype == DevicePageDType::kFp32   ? "Fp32"
          : info.param.dtype == DevicePageDType::kFp16 ? "Fp16"
                                                       : "Bf16";
  name += info.param.interleaved ? "Interleaved" : "HalfSplit";
  name += info.param.q_heads == info.param.kv_heads ? "Mha" : "Gqa";
  return name;
}

struct Tolerance {
  double rtol, atol;
};

Tolerance ToleranceOf(ScorerKind k) {
  switch (k) {
    case ScorerKind::kStreaming:
    case ScorerKind::kRandom:
      return {0, 0};
    case ScorerKind::kH2o:
    case ScorerKind::kObserved:
    case ScorerKind::kKnorm:
      return {1e-5, 0};
    case ScorerKind::kTova:
    case ScorerKind::kSnapKv:
    case ScorerKind::kLaProx:
    case ScorerKind::kExpected:
      return {1e-4, 1e-6};
    case ScorerKind::kCapKv:
    case ScorerKind::kCapKvDot:
      return {2e-3, 1e-5};
    case ScorerKind::kCapKvGreedy:
      return {1e-3, 1e-5};
    case ScorerKind::kQSketch:
    case ScorerKind::kQSketchPost:
      return {2e-4, 1e-6};  // float GEMV of up to K·F·G softmax rows vs the CPU's double sum
  }
  return {0, 0};
}

bool DeviceAvailable(std::string* why) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0) {
    *why = std::string("no CUDA device (") + cudaGetErrorName(e) + "); conformance not run";
    return false;
  }
  return true;
}

// Device memory freed with the test.
struct DeviceBuffer {
  void* ptr = nullptr;
  ~DeviceBuffer() {
    if (ptr != nullptr) cudaFree(ptr);
  }
};

// Rounds x to the page dtype and appends its bytes to `bytes`; returns the rounded value.
float Store(DevicePageDType dtype, float x, std::vector<uint8_t>* bytes) {
  if (dtype == DevicePageDType::kFp32) {
    const size_t at = bytes->size();
    bytes->resize(at + 4);
    std::memcpy(bytes->data() + at, &x, 4);
    return x;
  }
  const uint16_t b = dtype == DevicePageDType::kFp16 ? gpu_math::FloatToHalfBits(x)
                                                     : gpu_math::FloatToBf16Bits(x);
  const size_t at = bytes->size();
  bytes->resize(at + 2);
  std::memcpy(bytes->data() + at, &b, 2);
  return dtype == DevicePageDType::kFp16 ? gpu_math::HalfBitsToFloat(b)
                                         : gpu_math::Bf16BitsToFloat(b);
}

constexpr int kD = 64, kTokensPerPage = 16, kWindow = 8;

// The random source of one case: every draw of the layer comes from these, in order.
struct Draws {
  explicit Draws(const Case& c)
      : rng(1000 + static_cast<int>(c.scorer) * 31 + static_cast<int>(c.dtype) * 7 +
            (c.interleaved ? 3 : 0)) {}
  std::mt19937 rng;
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform{0.01f, 1.0f};
};

// One layer: the CPU scorers' inputs and the same keys and values as pages of the case's dtype.
struct Layer {
  eviction::LayerInputs in;
  std::vector<std::vector<float>> keys, values;
  std::vector<std::vector<int32_t>> positions;
  std::vector<std::vector<uint8_t>> pages;  // [page][keys of 16 tokens][values of 16]
};

// Per KV head: its own length and positions (gaps, as after ada eviction) and its pages.
void MakeHeads(const Case& c, Draws& draw, Layer& L) {
  const int Hk = c.kv_heads;
  L.keys.assign(Hk, {});
  L.values.assign(Hk, {});
  L.positions.assign(Hk, {});
  L.pages.assign(Hk, {});
  int32_t max_position = 0;
  for (int g = 0; g < Hk; ++g) {
    const int n = 150 + 37 * g;
    int32_t p = 0;
    for (int j = 0; j < n; ++j) {
      p += 1 + static_cast<int32_t>(draw.rng() % (g + 2));
      L.positions[g].push_back(p);
    }
    max_position = std::max(max_position, p);
    L.keys[g].resize(static_cast<size_t>(n) * kD);
    L.values[g].resize(static_cast<size_t>(n) * kD);
    for (int page = 0; page * kTokensPerPage < n; ++page) {
      // A full page of room; only the committed tokens are written and scored.
      std::vector<uint8_t> k_bytes, v_bytes;
      for (int t = 0; t < kTokensPerPage; ++t) {
        const int j = page * kTokensPerPage + t;
        for (int i = 0; i < kD; ++i) {
          const float kx = Store(
              c.dtype, j < n ? draw.normal(draw.rng) * (1.0f + 0.02f * (i % 7)) : 0.0f, &k_bytes);
          const float vx = Store(c.dtype, j < n ? draw.normal(draw.rng) : 0.0f, &v_bytes);
          if (j < n) {
            L.keys[g][static_cast<size_t>(j) * kD + i] = kx;
            L.values[g][static_cast<size_t>(j) * kD + i] = vx;
          }
        }
      }
      L.pages[g].insert(L.pages[g].end(), k_bytes.begin(), k_bytes.end());
      L.pages[g].insert(L.pages[g].end(), v_bytes.begin(), v_bytes.end());
    }
    L.in.heads.push_back(eviction::HeadKV{.n = n,
                                          .keys = L.keys[g].data(),
                                          .values = L.values[g].data(),
                                          .positions = L.positions[g].data()});
  }
  L.in.next_position = max_position + 5;
}

// Window queries, query moments, attention mass and, in half of the cases, W_O Grams (laprox).
void MakeStatistics(const Case& c, Draws& draw, eviction::LayerInputs& in) {
  const int H = c.q_heads, G = c.q_heads / c.kv_heads;
  in.window = kWindow;
  in.window_queries.resize(static_cast<size_t>(H) * kWindow * kD);
  for (float& x : in.window_queries) x = draw.normal(draw.rng);
  in.query_count = 40;
  in.query_sum.resize(static_cast<size_t>(H) * kD);
  in.query_sq_sum.resize(static_cast<size_t>(H) * kD);
  for (size_t i = 0; i < in.query_sum.size(); ++i) {
    in.query_sum[i] = 40.0 * draw.normal(draw.rng) * 0.5;
    in.query_sq_sum[i] = in.query_sum[i] * in.query_sum[i] / 40.0 + 40.0 * draw.uniform(draw.rng);
  }
  in.attention_mass.resize(H);
  for (int h = 0; h < H; ++h) {
    for (int j = 0; j < in.heads[h / G].n; ++j) {
      in.attention_mass[h].push_back(draw.uniform(draw.rng) * 3);
    }
  }
  // Query sketch: 4 slots per q head, the last unused on odd heads, the RoPE side of the scorer.
  in.sketch_k = 4;
  in.sketch_post_rope = c.scorer == ScorerKind::kQSketchPost;
  in.sketch_centroids.resize(static_cast<size_t>(H) * 4 * kD);
  for (float& x : in.sketch_centroids) x = 1.5f * draw.normal(draw.rng);
  in.sketch_weights.resize(static_cast<size_t>(H) * 4);
  for (int h = 0; h < H; ++h) {
    for (int s = 0; s < 4; ++s) {
      in.sketch_weights[h * 4 + s] = (s == 3 && h % 2 == 1) ? 0.0f : 1.0f + 20 * draw.uniform(draw.rng);
    }
  }
  if (!c.interleaved) return;
  in.wo_gram.resize(static_cast<size_t>(H) * kD * kD);
  std::vector<float> w(static_cast<size_t>(kD) * kD);
  for (int h = 0; h < H; ++h) {
    for (float& x : w) x = draw.normal(draw.rng) * 0.1f;
    float* m = in.wo_gram.data() + static_cast<size_t>(h) * kD * kD;
    for (int a = 0; a < kD; ++a) {
      for (int b = 0; b < kD; ++b) {
        double s = 0;
        for (int t = 0; t < kD; ++t) s += double{w[a * kD + t]} * w[b * kD + t];
        m[a * kD + b] = static_cast<float>(s);
      }
    }
  }
}

// The layer's request with head g's pages at page_base[g] (device or host memory).
DeviceLayerRequest Describe(const Case& c, const eviction::Policy& policy, const Layer& L,
                            const std::vector<const char*>& page_base) {
  const eviction::LayerInputs& in = L.in;
  const size_t elem = c.dtype == DevicePageDType::kFp32 ? 4 : 2;
  const size_t token_bytes = kD * elem, page_bytes = 2 * kTokensPerPage * token_bytes;
  DeviceLayerRequest req;
  req.q_heads = c.q_heads;
  req.kv_heads = c.kv_heads;
  req.head_dim = kD;
  req.layer_index = in.layer_index;
  req.dtype = c.dtype;
  req.scorer = DeviceScorerParams{.kind = static_cast<DeviceScorerKind>(static_cast<int>(c.scorer)),
                                  .sinks = policy.sinks,
                                  .window = policy.window,
                                  .pool_kernel = policy.pool_kernel,
                                  .pool_max = policy.pool_max,
                                  .capkv_tau = policy.capkv_tau,
                                  .rope_horizon = policy.rope_horizon,
                                  .seed = policy.seed,
                                  .greedy_picks = policy.greedy_picks,
                                  .sketch_positions = policy.sketch_positions,
                                  .sketch_horizon = policy.sketch_horizon};
  req.heads.resize(c.kv_heads);
  for (int g = 0; g < c.kv_heads; ++g) {
    req.heads[g].n = in.heads[g].n;
    req.heads[g].positions = L.positions[g].data();
    for (int j = 0; j < in.heads[g].n; j += kTokensPerPage) {
      const char* page = page_base[g] + (j / kTokensPerPage) * page_bytes;
      req.heads[g].runs.push_back(
          DeviceTokenRun{page, page + kTokensPerPage * token_bytes,
                         static_cast<uint32_t>(std::min(kTokensPerPage, in.heads[g].n - j))});
    }
  }
  req.rope = DeviceRope{in.rope.theta, in.rope.rotary_dim, in.rope.interleaved, nullptr};
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

// Copies head g's pages into device[g] (one buffer per KV head); their device addresses.
void UploadPages(const Layer& L, std::vector<DeviceBuffer>& device,
                 std::vector<const char*>* page_base) {
  for (size_t g = 0; g < L.pages.size(); ++g) {
    const std::vector<uint8_t>& pages = L.pages[g];
    ASSERT_EQ(cudaMalloc(&device[g].ptr, pages.size()), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(device[g].ptr, pages.data(), pages.size(), cudaMemcpyHostToDevice),
              cudaSuccess);
    page_base->push_back(static_cast<const char*>(device[g].ptr));
  }
}

// The case's policy and layer.
eviction::Policy CasePolicy(const Case& c) {
  return eviction::Policy{.scorer = c.scorer, .sinks = 4, .window = kWindow, .seed = 77};
}
void MakeLayer(const Case& c, Layer& layer) {
  Draws draw(c);
  layer.in = eviction::LayerInputs{
      .q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = kD, .layer_index = 3};
  layer.in.rope.theta = 5e5;
  layer.in.rope.interleaved = c.interleaved;
  layer.in.rope.rotary_dim = c.interleaved ? 48 : 0;
  MakeHeads(c, draw, layer);
  MakeStatistics(c, draw, layer.in);
}

// Every device score within the tolerance of the CPU's, and clearly ordered pairs in order.
void ExpectScoresMatch(const Tolerance& tol, const eviction::HeadScores& cpu,
                       const std::vector<std::vector<float>>& dev) {
  for (size_t g = 0; g < dev.size(); ++g) {
    const std::vector<float>& a = cpu.per_head[g];
    const std::vector<float>& b = dev[g];
    ASSERT_EQ(a.size(), b.size()) << "head " << g;
    double scale = 0;
    for (float x : a) scale = std::max(scale, std::fabs(double{x}));
    auto allowed = [&](float x) { return tol.rtol * std::fabs(double{x}) + tol.atol * scale; };
    for (size_t j = 0; j < a.size(); ++j) {
      ASSERT_LE(std::fabs(double{a[j]} - b[j]), allowed(a[j]))
          << "head " << g << " token " << j << ": cpu " << a[j] << " device " << b[j];
    }
    // Clearly ordered pairs keep their order.
    for (size_t i = 0; i < a.size(); ++i) {
      for (size_t j = 0; j < a.size(); ++j) {
        if (double{a[i]} - a[j] > allowed(a[i]) + allowed(a[j])) {
          ASSERT_GT(b[i], b[j]) << "head " << g << ": tokens " << i << " and " << j;
        }
      }
    }
  }
}

// A uniform half budget keeps the same tokens, up to ties within the tolerance.
void ExpectSameSelections(const eviction::Policy& policy, const Tolerance& tol, int group,
                          const eviction::HeadScores& cpu, const eviction::HeadScores& dev) {
  eviction::Policy select = policy;
  select.allocation = eviction::Allocation::kUniform;
  ASSERT_OK_AND_ASSIGN(eviction::Selection want,
                       eviction::SelectTokens(select, {.keep_ratio = 0.5}, {cpu}, group));
  ASSERT_OK_AND_ASSIGN(eviction::Selection got,
                       eviction::SelectTokens(select, {.keep_ratio = 0.5}, {dev}, group));
  for (size_t g = 0; g < dev.per_head.size(); ++g) {
    const std::vector<int32_t>& kw = want.kept[0][g];
    const std::vector<int32_t>& kg = got.kept[0][g];
    ASSERT_EQ(kw.size(), kg.size());
    std::vector<int32_t> only_cpu, only_dev;
    std::set_difference(kw.begin(), kw.end(), kg.begin(), kg.end(), std::back_inserter(only_cpu));
    std::set_difference(kg.begin(), kg.end(), kw.begin(), kw.end(), std::back_inserter(only_dev));
    // Every swapped token is tied, within the tolerance, with the token it swapped with.
    ASSERT_EQ(only_cpu.size(), only_dev.size());
    const std::vector<float>& a = cpu.per_head[g];
    double scale = 0;
    for (float x : a) scale = std::max(scale, std::fabs(double{x}));
    for (size_t i = 0; i < only_cpu.size(); ++i) {
      const float x = a[only_cpu[i]], y = a[only_dev[i]];
      EXPECT_LE(std::fabs(double{x} - y), 2 * (tol.rtol * std::fabs(double{x}) + tol.atol * scale))
          << "head " << g << ": the device kept token " << only_dev[i] << " instead of "
          << only_cpu[i];
    }
  }
}

class CudaScoringConformanceTest : public ::testing::TestWithParam<Case> {
 protected:
  void SetUp() override {
    std::string why;
    if (!DeviceAvailable(&why)) GTEST_SKIP() << why;
    scorer_ = CreateCudaLayerScorer(0);
  }

  std::unique_ptr<DeviceLayerScorer> scorer_;
};

TEST_P(CudaScoringConformanceTest, ScoresAndSelectionsMatchTheCpu) {
  const Case c = GetParam();
  const eviction::Policy policy = CasePolicy(c);
  Layer layer;
  MakeLayer(c, layer);
  // The CPU reference.
  eviction::ScoringWorkspace ws(1);
  ASSERT_OK_AND_ASSIGN(eviction::HeadScores cpu, eviction::ScoreLayer(policy, layer.in, ws));

  std::vector<DeviceBuffer> device(c.kv_heads);
  std::vector<const char*> page_base;
  ASSERT_NO_FATAL_FAILURE(UploadPages(layer, device, &page_base));
  std::vector<std::vector<float>> dev;
  ASSERT_OK(scorer_->ScoreLayer(Describe(c, policy, layer, page_base), &dev));
  ASSERT_EQ(dev.size(), static_cast<size_t>(c.kv_heads));

  const Tolerance tol = ToleranceOf(c.scorer);
  ASSERT_NO_FATAL_FAILURE(ExpectScoresMatch(tol, cpu, dev));
  eviction::HeadScores dev_scores;
  dev_scores.per_head = dev;
  ExpectSameSelections(policy, tol, c.q_heads / c.kv_heads, cpu, dev_scores);
  EXPECT_GT(scorer_->scratch_bytes(), 0u);
}

// The same cases through the device pipeline emulated on the host (host_scoring_steps.h: the CUDA
// scorer's plan, layout and steps, run serially): runs everywhere, so the cases, their requests
// and the comparisons are exercised on machines without a GPU.
class HostEmulatedConformanceTest : public ::testing::TestWithParam<Case> {};

TEST_P(HostEmulatedConformanceTest, ScoresAndSelectionsMatchTheCpu) {
  const Case c = GetParam();
  const eviction::Policy policy = CasePolicy(c);
  Layer layer;
  MakeLayer(c, layer);
  eviction::ScoringWorkspace ws(1);
  ASSERT_OK_AND_ASSIGN(eviction::HeadScores cpu, eviction::ScoreLayer(policy, layer.in, ws));
  std::vector<const char*> page_base;
  for (const std::vector<uint8_t>& pages : layer.pages) {
    page_base.push_back(reinterpret_cast<const char*>(pages.data()));
  }
  std::vector<std::vector<float>> emulated;
  ASSERT_OK(cuda_scoring::EmulateLayerOnHost(Describe(c, policy, layer, page_base), &emulated));
  ASSERT_EQ(emulated.size(), static_cast<size_t>(c.kv_heads));
  const Tolerance tol = ToleranceOf(c.scorer);
  ASSERT_NO_FATAL_FAILURE(ExpectScoresMatch(tol, cpu, emulated));
  eviction::HeadScores emulated_scores;
  emulated_scores.per_head = emulated;
  ExpectSameSelections(policy, tol, c.q_heads / c.kv_heads, cpu, emulated_scores);
}

std::vector<Case> AllCases() {
  std::vector<Case> out;
  for (int s = 0; s <= static_cast<int>(ScorerKind::kQSketchPost); ++s) {
    for (DevicePageDType dtype :
         {DevicePageDType::kFp32, DevicePageDType::kFp16, DevicePageDType::kBf16}) {
      for (bool interleaved : {false, true}) {
        out.push_back({static_cast<ScorerKind>(s), dtype, interleaved, 8, 2});
        out.push_back({static_cast<ScorerKind>(s), dtype, interleaved, 4, 4});
      }
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(AllScorers, CudaScoringConformanceTest, ::testing::ValuesIn(AllCases()),
                         CaseName);
INSTANTIATE_TEST_SUITE_P(AllScorers, HostEmulatedConformanceTest,
                         ::testing::ValuesIn(AllCases()), CaseName);

// Scratch is reused: a second, smaller layer after a larger one needs no new allocation, and the
// same request scores the same (the device code is deterministic).
TEST(CudaScoringConformance, RepeatedLayersReuseScratchAndRepeatScores) {
  std::string why;
  if (!DeviceAvailable(&why)) GTEST_SKIP() << why;
  std::unique_ptr<DeviceLayerScorer> scorer = CreateCudaLayerScorer(0);
  constexpr int kD = 32, kN = 64;
  std::vector<float> pages(2 * kN * kD);
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  for (float& x : pages) x = normal(rng);
  DeviceBuffer buf;
  ASSERT_EQ(cudaMalloc(&buf.ptr, pages.size() * 4), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(buf.ptr, pages.data(), pages.size() * 4, cudaMemcpyHostToDevice),
            cudaSuccess);
  const float* base = static_cast<const float*>(buf.ptr);
  auto request = [&](int n) {
    DeviceLayerRequest r{.q_heads = 2, .kv_heads = 1, .head_dim = kD};
    r.scorer.kind = DeviceScorerKind::kKnorm;
    r.heads.resize(1);
    r.heads[0].n = n;
    r.heads[0].runs.push_back({base, base + kN * kD, static_cast<uint32_t>(n)});
    return r;
  };
  std::vector<std::vector<float>> first, again, small;
  ASSERT_OK(scorer->ScoreLayer(request(kN), &first));
  const size_t bytes = scorer->scratch_bytes();
  ASSERT_OK(scorer->ScoreLayer(request(kN / 2), &small));
  ASSERT_OK(scorer->ScoreLayer(request(kN), &again));
  EXPECT_EQ(scorer->scratch_bytes(), bytes);
  EXPECT_EQ(first, again);
  ASSERT_EQ(small[0].size(), static_cast<size_t>(kN / 2));
  for (int j = 0; j < kN / 2; ++j) EXPECT_EQ(small[0][j], first[0][j]);
}

}  // namespace
}  // namespace kvkeep
