// Host emulation of the device scoring pipeline (cuda_layer_scorer.cc), compared with the CPU
// scorers: the same plan (PlanLayer), the same per-element bodies the kernels run
// (scoring_elements.h), serial stand-ins for the block-wide kernels (softmax rows, fills, greedy
// pick and rank-1 step) and column-major reference GEMM / Cholesky / triangular solve called with
// the arguments the CUDA code passes to cuBLAS / cuSOLVER. It checks the plan, every layout and the
// library-call conventions on a machine without a GPU; it cannot check the kernels' block
// reductions, the launches or the libraries themselves (the `gpu` conformance suite does).
#include "gpu/cuda/scoring/scoring_elements.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/status_matchers.h"
#include "gpu/cuda/scoring/layer_plan.h"
#include "gpu/math/attention_math.h"
#include "gtest/gtest.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/scorers.h"

namespace kvkeep::cuda_scoring {
namespace {

namespace gm = ::kvkeep::gpu_math;
using Kind = DeviceScorerKind;
using eviction::ScorerKind;

// C = alpha op(A) op(B) + beta C, column-major, as cublasSgemm / cublasSgemmStridedBatched.
void Gemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
          const float* b, int ldb, float beta, float* c, int ldc) {
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double s = 0;
      for (int l = 0; l < k; ++l) {
        const float x =
            ta ? a[l + static_cast<int64_t>(i) * lda] : a[i + static_cast<int64_t>(l) * lda];
        const float y =
            tb ? b[j + static_cast<int64_t>(l) * ldb] : b[l + static_cast<int64_t>(j) * ldb];
        s += double{x} * y;
      }
      float& out = c[i + static_cast<int64_t>(j) * ldc];
      out = static_cast<float>(alpha * s + (beta == 0 ? 0.0 : beta * out));
    }
  }
}

// Lower Cholesky in place, column-major (as cusolverDnDpotrf, CUBLAS_FILL_MODE_LOWER); info as
// cuSOLVER's (0, or the 1-based order of the failing minor).
int Potrf(double* a, int n) {
  for (int j = 0; j < n; ++j) {
    double s = a[j + j * n];
    for (int k = 0; k < j; ++k) s -= a[j + k * n] * a[j + k * n];
    if (!(s > 0)) return j + 1;
    const double l = std::sqrt(s);
    a[j + j * n] = l;
    for (int i = j + 1; i < n; ++i) {
      double t = a[i + j * n];
      for (int k = 0; k < j; ++k) t -= a[i + k * n] * a[j + k * n];
      a[i + j * n] = t / l;
    }
  }
  return 0;
}

// Solves L X = B in place (side left, lower, no transpose, non-unit), column-major, as
// cublasDtrsmBatched for one matrix.
void Trsm(int m, int n, const double* l, int lda, double* b, int ldb) {
  for (int c = 0; c < n; ++c) {
    double* x = b + static_cast<int64_t>(c) * ldb;
    for (int i = 0; i < m; ++i) {
      double s = x[i];
      for (int k = 0; k < i; ++k) s -= l[i + k * lda] * x[k];
      x[i] = s / l[i + i * lda];
    }
  }
}

void SoftmaxRowSerial(const SoftmaxRow& r, float* buffer, bool exp_only) {
  float* p = buffer + r.offset;
  float mx = -INFINITY;
  for (int j = 0; j < r.len; ++j) mx = std::max(mx, p[j]);
  if (exp_only) {
    for (int j = 0; j < r.len; ++j) p[j] = std::exp(p[j] - mx);
    return;
  }
  double sum = 0;
  for (int j = 0; j < r.len; ++j) {
    p[j] = gm::ExpFast(p[j] - mx);
    sum += p[j];
  }
  const float inv = r.len > 0 ? static_cast<float>(1.0 / sum) * r.scale : 0.0f;
  for (int j = 0; j < r.n; ++j) p[j] = j < r.len ? p[j] * inv : 0.0f;
}

void FillUndefinedSerial(const LayerPlan& plan, float* scores) {
  for (int g = 0; g < plan.kv_heads; ++g) {
    const HeadSpan& s = plan.spans[g];
    float* out = scores + plan.starts[g];
    float m = s.end > s.begin ? -INFINITY : 0.0f;
    for (int j = s.begin; j < s.end; ++j) m = std::max(m, out[j]);
    for (int j = 0; j < s.n; ++j) {
      if (j < s.begin || j >= s.end) out[j] = m;
    }
  }
}

// The CUDA scorer's Run, serially on the host (same buffers, same order of steps).
std::vector<std::vector<float>> Emulate(const DeviceLayerRequest& r) {
  const Kind kind = r.scorer.kind;
  const DeviceScorerParams& p = r.scorer;
  const LayerPlan lp = PlanLayer(r);
  const int Hk = r.kv_heads, H = r.q_heads, G = H / Hk, d = r.head_dim;
  const int64_t N = lp.total;
  const DeviceScorerNeeds needs = DeviceNeeds(kind);
  std::vector<float> keys(N * d), values(N * d), out(N, 0.0f);
  const int dtype = r.dtype == DevicePageDType::kFp32   ? 0
                    : r.dtype == DevicePageDType::kFp16 ? 1
                                                        : 2;
  const GatherView gv{
      lp.runs.data(), static_cast<int>(lp.runs.size()),   d,
      dtype,          needs.keys ? keys.data() : nullptr, needs.values ? values.data() : nullptr};
  for (int run = 0; run < gv.num_runs; ++run) {
    for (int64_t i = 0; i < int64_t{lp.runs[run].tokens} * d; ++i) {
      if (dtype == 0) GatherAt<0>(gv, run, i);
      if (dtype == 1) GatherAt<1>(gv, run, i);
      if (dtype == 2) GatherAt<2>(gv, run, i);
    }
  }
  const Heads heads{lp.spans.data(), lp.starts.data(), Hk, N};
  switch (kind) {
    case Kind::kStreaming:
    case Kind::kRandom:
    case Kind::kH2o:
    case Kind::kObserved: {
      std::vector<float> mass(G * N);
      if (kind == Kind::kH2o || kind == Kind::kObserved) PackMass(r, lp, mass.data());
      TokenScoresView v;
      v.heads = heads;
      v.mode = kind == Kind::kStreaming ? TokenMode::kStreaming
               : kind == Kind::kRandom  ? TokenMode::kRandom
               : kind == Kind::kH2o     ? TokenMode::kH2o
                                        : TokenMode::kObserved;
      v.positions = lp.positions.data();
      v.seed = p.seed;
      v.layer = static_cast<uint64_t>(r.layer_index);
      v.mass = mass.data();
      v.group = G;
      v.next_position = lp.next;
      v.scores = out.data();
      for (int64_t t = 0; t < N; ++t) TokenScoreAt(v, t);
      break;
    }
    case Kind::kKnorm:
      for (int64_t t = 0; t < N; ++t) NormAt({N, keys.data(), d, true, out.data()}, t);
      break;
    case Kind::kTova:
    case Kind::kSnapKv:
    case Kind::kLaProx: {
      std::vector<float> pbuf(lp.p_floats), col(G * N), vnorm(G * N);
      for (int g = 0; g < Hk; ++g) {
        const int n = r.heads[g].n;
        if (n == 0) continue;
        const int64_t q0 = static_cast<int64_t>(g) * G * r.window * d;
        const float* q = kind == Kind::kTova ? r.window_queries + q0 + int64_t{r.window - 1} * d
                                             : r.window_queries + q0;
        const int ldq = kind == Kind::kTova ? r.window * d : d;
        Gemm(true, false, n, G * lp.rows, d, lp.inv_sqrt_d, keys.data() + lp.starts[g] * d, d, q,
             ldq, 0.0f, pbuf.data() + lp.p_offset[g], n);
      }
      for (const SoftmaxRow& row : lp.softmax_rows) SoftmaxRowSerial(row, pbuf.data(), false);
      WindowColumnsView wc;
      wc.heads = heads;
      wc.p_offset = lp.p_offset.data();
      wc.p = pbuf.data();
      wc.group = G;
      wc.rows = lp.rows;
      wc.window_keep = p.window;
      wc.mode = kind == Kind::kTova     ? WindowMode::kTova
                : kind == Kind::kSnapKv ? WindowMode::kSnapKv
                                        : WindowMode::kLaProx;
      wc.col = col.data();
      for (int64_t i = 0; i < (kind == Kind::kTova ? 1 : G) * N; ++i) WindowColumnAt(wc, i);
      if (kind == Kind::kTova) {
        for (int64_t t = 0; t < N; ++t) {
          TovaAlignAt({heads, lp.positions.data(), col.data(), H, out.data()}, t);
        }
      } else if (kind == Kind::kSnapKv) {
        for (int64_t t = 0; t < N; ++t) {
          SnapPoolAt({heads, col.data(), G, p.window, p.pool_kernel, p.pool_max, out.data()}, t);
        }
        FillUndefinedSerial(lp, out.data());
      } else {
        const bool gram = r.wo_gram != nullptr;
        if (gram) {
          std::vector<float> vm(static_cast<int64_t>(G) * lp.max_n * d);
          for (int g = 0; g < Hk; ++g) {
            const int n = r.heads[g].n;
            for (int q = 0; q < G; ++q) {  // the strided batch, one matrix at a time
              Gemm(false, false, d, n, d, 1.0f, r.wo_gram + (int64_t{g} * G + q) * d * d, d,
                   values.data() + lp.starts[g] * d, d, 0.0f, vm.data() + int64_t{q} * n * d, d);
            }
            const QuadFormView qv{
                vm.data(),   values.data() + lp.starts[g] * d, n, d, G, lp.starts[g], N,
                vnorm.data()};
            for (int64_t i = 0; i < int64_t{G} * n; ++i) QuadFormAt(qv, i);
          }
        } else {
          for (int64_t t = 0; t < N; ++t) NormAt({N, values.data(), d, false, vnorm.data()}, t);
        }
        for (int64_t t = 0; t < N; ++t) {
          LaProxCombineAt({heads, col.data(), vnorm.data(), gram, G, out.data()}, t);
        }
      }
      break;
    }
    case Kind::kExpected: {
      std::vector<float> mu(H * d), var(H * d), cf(lp.rotary_dim / 2), sf(lp.rotary_dim / 2);
      std::vector<float> logits(G * N), vnorm(N);
      const bool with_var = r.query_sq_sum != nullptr;
      ExpectedTerms(r, lp, mu.data(), with_var ? var.data() : nullptr, cf.data(), sf.data());
      ExpectedLogitsView v;
      v.heads = heads;
      v.keys = keys.data();
      v.mu = mu.data();
      v.var = with_var ? var.data() : nullptr;
      v.cos_f = cf.data();
      v.minus_sin_f = sf.data();
      v.d = d;
      v.rotary_dim = lp.rotary_dim;
      v.interleaved = r.rope.interleaved;
      v.group = G;
      v.logits = logits.data();
      for (int64_t t = 0; t < N; ++t) ExpectedLogitAt<kMaxDeviceHeadDim>(v, t);
      for (const SoftmaxRow& row : lp.softmax_rows) SoftmaxRowSerial(row, logits.data(), false);
      for (int64_t t = 0; t < N; ++t) NormAt({N, values.data(), d, false, vnorm.data()}, t);
      for (int64_t t = 0; t < N; ++t) {
        GroupSumAt({heads, logits.data(), vnorm.data(), G, out.data()}, t);
      }
      FillUndefinedSerial(lp, out.data());
      break;
    }
    case Kind::kCapKv:
    case Kind::kCapKvDot:
    case Kind::kCapKvGreedy: {
      std::vector<float> anchor(H * d), anorm(H), w(G * N);
      CapAnchors(r, lp, anchor.data(), anorm.data());
      CapLogitsView cl;
      cl.heads = heads;
      cl.keys = keys.data();
      cl.anchor = anchor.data();
      cl.anchor_norm = anorm.data();
      cl.d = d;
      cl.group = G;
      cl.dot_form = kind == Kind::kCapKvDot;
      cl.tau = static_cast<float>(p.capkv_tau);
      cl.inv_sqrt_d = lp.inv_sqrt_d;
      cl.w = w.data();
      for (int64_t t = 0; t < N; ++t) CapLogitAt(cl, t);
      for (const SoftmaxRow& row : lp.softmax_rows) SoftmaxRowSerial(row, w.data(), true);
      if (kind == Kind::kCapKvGreedy) {
        std::vector<double> q(G * N), b(int64_t{H} * d * d), z(H * d), inv_denom(H);
        std::vector<int> add(Hk, -1);
        GreedyView v;
        v.heads = heads;
        v.values = values.data();
        v.w = w.data();
        v.q = q.data();
        v.b = b.data();
        v.z = z.data();
        v.inv_denom = inv_denom.data();
        v.add = add.data();
        v.scores = out.data();
        v.d = d;
        v.group = G;
        for (int64_t i = 0; i < int64_t{H} * d * d; ++i) GreedyInitMatrixAt(v, i);
        for (int64_t t = 0; t < N; ++t) GreedyInitTokenAt(v, t);
        auto add_step = [&](int window_k) {  // GreedyAddKernel, one q head at a time
          for (int h = 0; h < H; ++h) {
            const int g = h / G, rr = h % G;
            const int tl = GreedyToken(v, g, window_k);
            if (tl < 0) continue;
            const int64_t t = lp.starts[g] + lp.spans[g].s0 + tl;
            const double sw = std::sqrt(static_cast<double>(w[rr * N + t]));
            double* bh = b.data() + int64_t{h} * d * d;
            std::vector<double> x(d);
            for (int i = 0; i < d; ++i) x[i] = values[t * d + i] * sw;
            double xz = 0;
            for (int i = 0; i < d; ++i) {
              double acc = 0;
              for (int k = 0; k < d; ++k) acc += bh[int64_t{i} * d + k] * x[k];
              z[int64_t{h} * d + i] = acc;
              xz += x[i] * acc;
            }
            inv_denom[h] = 1.0 / (1.0 + xz);
            for (int64_t e = 0; e < int64_t{d} * d; ++e) {
              bh[e] -= z[h * d + e / d] * z[h * d + e % d] * inv_denom[h];
            }
          }
          for (int64_t i = 0; i < G * N; ++i) GreedyUpdateAt(v, window_k, i);
        };
        for (int k = 0; k < lp.max_window_adds; ++k) add_step(k);
        for (int64_t step = 0; step < lp.max_picks; ++step) {
          for (int g = 0; g < Hk; ++g) {  // GreedySelectKernel
            const HeadSpan& s = lp.spans[g];
            add[g] = -1;
            if (step >= s.picks) continue;
            const int64_t base = lp.starts[g] + s.s0;
            int best = -1;
            double best_gain = -1;
            for (int j = 0; j < s.nc; ++j) {
              if (out[base + j] >= 0.0f) continue;
              const double gain = gm::GreedyGain(q.data() + base, w.data() + base, G, N, j);
              if (gain > best_gain) {
                best_gain = gain;
                best = j;
              }
            }
            out[base + best] = static_cast<float>(best_gain);
            add[g] = step + 1 < s.nc ? best : -1;
          }
          add_step(-1);
        }
        for (int64_t t = 0; t < N; ++t) GreedyFinishAt(v, t);
        FillUndefinedSerial(lp, out.data());
        break;
      }
      std::vector<double> a(int64_t{H} * d * d);
      std::vector<float> scaled(int64_t{G} * lp.max_m * d), gram(int64_t{G} * d * d);
      for (int g = 0; g < Hk; ++g) {
        const int m = lp.spans[g].m;
        if (m == 0) continue;
        const int64_t first = lp.starts[g] + lp.spans[g].s0;
        const ScaleValuesView sv{
            values.data() + first * d, w.data() + first, N, m, d, G, scaled.data()};
        for (int64_t i = 0; i < int64_t{G} * m * d; ++i) ScaleValueAt(sv, i);
        for (int q = 0; q < G; ++q) {
          const float* sq = scaled.data() + int64_t{q} * m * d;
          Gemm(false, true, d, d, m, 1.0f, sq, d, sq, d, 0.0f, gram.data() + int64_t{q} * d * d, d);
        }
        const GramToDoubleView gd{gram.data(), a.data() + int64_t{g} * G * d * d, d, G};
        for (int64_t i = 0; i < int64_t{G} * d * d; ++i) GramToDoubleAt(gd, i);
      }
      for (int g = 0; g < Hk; ++g) {
        if (lp.spans[g].m == 0) continue;
        for (int q = 0; q < G; ++q) {
          EXPECT_EQ(Potrf(a.data() + (int64_t{g} * G + q) * d * d, d), 0);
        }
      }
      std::vector<double> y(int64_t{G} * lp.max_m * d);
      for (int g = 0; g < Hk; ++g) {
        const int m = lp.spans[g].m;
        if (m == 0) continue;
        const int64_t first = lp.starts[g] + lp.spans[g].s0;
        const ValuesToDoubleView vd{values.data() + first * d, int64_t{m} * d, G, y.data()};
        for (int64_t i = 0; i < int64_t{G} * m * d; ++i) ValueToDoubleAt(vd, i);
        for (int q = 0; q < G; ++q) {
          Trsm(d, m, a.data() + (int64_t{g} * G + q) * d * d, d, y.data() + int64_t{q} * m * d, d);
        }
        const LeverageView lv{y.data(), w.data() + first, N, m, d, G, out.data() + first};
        for (int64_t j = 0; j < m; ++j) LeverageAt(lv, j);
      }
      FillUndefinedSerial(lp, out.data());
      break;
    }
  }
  std::vector<std::vector<float>> scores(Hk);
  for (int g = 0; g < Hk; ++g) {
    scores[g].assign(out.begin() + lp.starts[g], out.begin() + lp.starts[g + 1]);
  }
  return scores;
}

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

class HostEmulationTest : public ::testing::TestWithParam<Case> {};

TEST_P(HostEmulationTest, EmulatedDevicePipelineMatchesTheCpuScorers) {
  const Case c = GetParam();
  constexpr int kD = 16, kTokensPerPage = 8, kWindow = 4;
  const int H = c.q_heads, Hk = c.kv_heads, G = H / Hk;
  std::mt19937 rng(50 + static_cast<int>(c.scorer));
  std::normal_distribution<float> normal;
  std::uniform_real_distribution<float> uniform(0.01f, 1.0f);
  const eviction::Policy policy{.scorer = c.scorer, .sinks = 3, .window = kWindow, .seed = 9};
  eviction::LayerInputs in{.q_heads = H, .kv_heads = Hk, .head_dim = kD, .layer_index = 2};
  in.rope.theta = 1e4;
  in.rope.interleaved = c.interleaved;
  in.rope.rotary_dim = c.interleaved ? 12 : 0;
  const size_t elem = c.dtype == DevicePageDType::kFp32 ? 4 : 2;
  std::vector<std::vector<float>> keys(Hk), values(Hk);
  std::vector<std::vector<int32_t>> positions(Hk);
  std::vector<std::vector<uint8_t>> pages(Hk);
  int32_t last = 0;
  for (int g = 0; g < Hk; ++g) {
    const int n = 37 + 11 * g;
    int32_t pos = 0;
    for (int j = 0; j < n; ++j) positions[g].push_back(pos += 1 + static_cast<int32_t>(rng() % 3));
    last = std::max(last, pos);
    const int num_pages = (n + kTokensPerPage - 1) / kTokensPerPage;
    pages[g].assign(num_pages * 2 * kTokensPerPage * kD * elem, 0);
    keys[g].resize(n * kD);
    values[g].resize(n * kD);
    for (int j = 0; j < n; ++j) {
      for (int part = 0; part < 2; ++part) {
        for (int i = 0; i < kD; ++i) {
          float x = normal(rng);
          uint8_t* at = pages[g].data() +
                        ((j / kTokensPerPage) * 2 * kTokensPerPage + part * kTokensPerPage +
                         j % kTokensPerPage) *
                            kD * elem +
                        i * elem;
          if (c.dtype == DevicePageDType::kFp32) {
            std::memcpy(at, &x, 4);
          } else {
            const uint16_t b =
                c.dtype == DevicePageDType::kFp16 ? gm::FloatToHalfBits(x) : gm::FloatToBf16Bits(x);
            std::memcpy(at, &b, 2);
            x = c.dtype == DevicePageDType::kFp16 ? gm::HalfBitsToFloat(b) : gm::Bf16BitsToFloat(b);
          }
          (part == 0 ? keys : values)[g][j * kD + i] = x;
        }
      }
    }
    in.heads.push_back({n, keys[g].data(), values[g].data(), positions[g].data()});
  }
  in.next_position = last + 3;
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
  if (c.interleaved) {
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
  eviction::ScoringWorkspace ws(1);
  ASSERT_OK_AND_ASSIGN(eviction::HeadScores cpu, eviction::ScoreLayer(policy, in, ws));

  DeviceLayerRequest req{
      .q_heads = H, .kv_heads = Hk, .head_dim = kD, .layer_index = 2, .dtype = c.dtype};
  req.scorer = {static_cast<Kind>(static_cast<int>(c.scorer)),
                policy.sinks,
                policy.window,
                policy.pool_kernel,
                policy.pool_max,
                policy.capkv_tau,
                policy.rope_horizon,
                policy.seed,
                policy.greedy_picks};
  req.heads.resize(Hk);
  const size_t token_bytes = kD * elem;
  for (int g = 0; g < Hk; ++g) {
    req.heads[g].n = in.heads[g].n;
    req.heads[g].positions = positions[g].data();
    for (int j = 0; j < in.heads[g].n; j += kTokensPerPage) {
      const uint8_t* page =
          pages[g].data() + (j / kTokensPerPage) * 2 * kTokensPerPage * token_bytes;
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
  ASSERT_OK(ValidateDeviceLayerRequest(req));

  const std::vector<std::vector<float>> emulated = Emulate(req);
  ASSERT_EQ(emulated.size(), cpu.per_head.size());
  const double rtol = Rtol(c.scorer);
  for (int g = 0; g < Hk; ++g) {
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
  for (int s = 0; s <= static_cast<int>(ScorerKind::kLaProx); ++s) {
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

}  // namespace
}  // namespace kvkeep::cuda_scoring
