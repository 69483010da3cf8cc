#include "gpu/cuda/scoring/host_scoring_steps.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "common/status_macros.h"
#include "gpu/cuda/scoring/layer_plan.h"
#include "gpu/cuda/scoring/scorer_steps.h"
#include "gpu/cuda/scoring/scoring_elements.h"
#include "gpu/cuda/scoring/scratch_layout.h"
#include "gpu/math/attention_math.h"

namespace kvkeep::cuda_scoring {
namespace {

namespace gm = ::kvkeep::gpu_math;

// C = alpha op(A) op(B) + beta C for one matrix, column-major, as cublasSgemm.
void ReferenceSgemm(bool ta, bool tb, int m, int n, int k, float alpha, const float* a, int lda,
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

// Lower Cholesky in place, column-major; info as cuSOLVER's.
int ReferencePotrf(double* a, int n, int lda) {
  for (int j = 0; j < n; ++j) {
    double s = a[j + j * lda];
    for (int k = 0; k < j; ++k) s -= a[j + k * lda] * a[j + k * lda];
    if (!(s > 0)) return j + 1;
    const double l = std::sqrt(s);
    a[j + j * lda] = l;
    for (int i = j + 1; i < n; ++i) {
      double t = a[i + j * lda];
      for (int k = 0; k < j; ++k) t -= a[i + k * lda] * a[j + k * lda];
      a[i + j * lda] = t / l;
    }
  }
  return 0;
}

// L X = alpha B in place (side left, lower, no transpose, non-unit), column-major.
void ReferenceTrsm(int m, int n, double alpha, const double* l, int lda, double* b, int ldb) {
  for (int c = 0; c < n; ++c) {
    double* x = b + static_cast<int64_t>(c) * ldb;
    for (int i = 0; i < m; ++i) {
      double s = alpha * x[i];
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

// The rank-1 step of GreedyAddKernel for q head h: z = B x, B -= z zᵀ / (1 + xᵀz), with x the
// added token's value scaled by √w.
void GreedyRankOne(const GreedyView& v, int h, int window_k) {
  const int g = h / v.group, r = h % v.group, d = v.d;
  const int tl = GreedyToken(v, g, window_k);
  if (tl < 0) return;
  const int64_t t = v.heads.starts[g] + v.heads.spans[g].s0 + tl;
  const double sw = std::sqrt(static_cast<double>(v.w[r * v.heads.total + t]));
  double* bh = v.b + static_cast<int64_t>(h) * d * d;
  double* zh = v.z + static_cast<int64_t>(h) * d;
  std::vector<double> x(d);
  for (int i = 0; i < d; ++i) x[i] = v.values[t * d + i] * sw;
  double xz = 0;
  for (int i = 0; i < d; ++i) {
    double acc = 0;
    for (int k = 0; k < d; ++k) acc += bh[static_cast<int64_t>(i) * d + k] * x[k];
    zh[i] = acc;
    xz += x[i] * acc;
  }
  v.inv_denom[h] = 1.0 / (1.0 + xz);
  for (int64_t e = 0; e < static_cast<int64_t>(d) * d; ++e) {
    bh[e] -= zh[e / d] * zh[e % d] * v.inv_denom[h];
  }
}

}  // namespace

absl::Status HostScoringSteps::Gather(const GatherView& v) {
  for (int run = 0; run < v.num_runs; ++run) {
    for (int64_t i = 0; i < int64_t{v.runs[run].tokens} * v.d; ++i) {
      if (v.dtype == 0) GatherAt<0>(v, run, i);
      if (v.dtype == 1) GatherAt<1>(v, run, i);
      if (v.dtype == 2) GatherAt<2>(v, run, i);
    }
  }
  return absl::OkStatus();
}

absl::Status HostScoringSteps::TokenScores(const TokenScoresView& v) {
  for (int64_t t = 0; t < v.heads.total; ++t) TokenScoreAt(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::Norms(const NormView& v) {
  for (int64_t t = 0; t < v.total; ++t) NormAt(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::SoftmaxRows(const SoftmaxView& v) {
  for (int i = 0; i < v.num_rows; ++i) SoftmaxRowSerial(v.rows[i], v.p, v.exp_only);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::WindowColumns(const WindowColumnsView& v) {
  const int64_t rows = v.mode == WindowMode::kTova ? 1 : v.group;
  for (int64_t i = 0; i < rows * v.heads.total; ++i) WindowColumnAt(v, i);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::TovaAlign(const TovaAlignView& v) {
  for (int64_t t = 0; t < v.heads.total; ++t) TovaAlignAt(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::SnapPool(const PoolView& v) {
  for (int64_t t = 0; t < v.heads.total; ++t) SnapPoolAt(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::QuadForm(const QuadFormView& v) {
  for (int64_t i = 0; i < int64_t{v.group} * v.n; ++i) QuadFormAt(v, i);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::LaProxCombine(const LaProxView& v) {
  for (int64_t t = 0; t < v.heads.total; ++t) LaProxCombineAt(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::ExpectedLogits(const ExpectedLogitsView& v) {
  for (int64_t t = 0; t < v.heads.total; ++t) ExpectedLogitAt<kMaxDeviceHeadDim>(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::GroupSum(const GroupSumView& v) {
  for (int64_t t = 0; t < v.heads.total; ++t) GroupSumAt(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::CapLogits(const CapLogitsView& v) {
  for (int64_t t = 0; t < v.heads.total; ++t) CapLogitAt(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::ScaleValues(const ScaleValuesView& v) {
  for (int64_t i = 0; i < int64_t{v.group} * v.m * v.d; ++i) ScaleValueAt(v, i);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::GramToDouble(const GramToDoubleView& v) {
  for (int64_t i = 0; i < int64_t{v.batch} * v.d * v.d; ++i) GramToDoubleAt(v, i);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::ValuesToDouble(const ValuesToDoubleView& v) {
  for (int64_t i = 0; i < v.group * v.count; ++i) ValueToDoubleAt(v, i);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::Leverage(const LeverageView& v) {
  for (int64_t j = 0; j < v.m; ++j) LeverageAt(v, j);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::FillUndefined(const Heads& heads, float* scores) {
  for (int g = 0; g < heads.kv_heads; ++g) {
    const HeadSpan& s = heads.spans[g];
    float* out = scores + heads.starts[g];
    float m = s.end > s.begin ? -INFINITY : 0.0f;
    for (int j = s.begin; j < s.end; ++j) m = std::max(m, out[j]);
    for (int j = 0; j < s.n; ++j) {
      if (j < s.begin || j >= s.end) out[j] = m;
    }
  }
  return absl::OkStatus();
}

absl::Status HostScoringSteps::GreedyInit(const GreedyView& v) {
  const int64_t q_heads = int64_t{v.heads.kv_heads} * v.group;
  for (int64_t i = 0; i < q_heads * v.d * v.d; ++i) GreedyInitMatrixAt(v, i);
  for (int64_t t = 0; t < v.heads.total; ++t) GreedyInitTokenAt(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::GreedyAdd(const GreedyView& v, int window_k) {
  for (int h = 0; h < v.heads.kv_heads * v.group; ++h) GreedyRankOne(v, h, window_k);
  for (int64_t i = 0; i < v.group * v.heads.total; ++i) GreedyUpdateAt(v, window_k, i);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::GreedySelect(const GreedyView& v, int64_t step) {
  for (int g = 0; g < v.heads.kv_heads; ++g) {
    const HeadSpan& s = v.heads.spans[g];
    v.add[g] = -1;
    if (step >= s.picks) continue;
    const int64_t base = v.heads.starts[g] + s.s0;
    int best = -1;
    double best_gain = -1;
    for (int j = 0; j < s.nc; ++j) {
      if (v.scores[base + j] >= 0.0f) continue;  // picked already
      const double gain = gm::GreedyGain(v.q + base, v.w + base, v.group, v.heads.total, j);
      if (gain > best_gain) {
        best_gain = gain;
        best = j;
      }
    }
    if (best < 0) continue;
    v.scores[base + best] = static_cast<float>(best_gain);
    v.add[g] = step + 1 < s.nc ? best : -1;
  }
  return absl::OkStatus();
}

absl::Status HostScoringSteps::GreedyFinish(const GreedyView& v) {
  for (int64_t t = 0; t < v.heads.total; ++t) GreedyFinishAt(v, t);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::Gemm(const GemmCall& c) {
  for (int i = 0; i < c.batch; ++i) {
    ReferenceSgemm(c.trans_a, c.trans_b, c.m, c.n, c.k, c.alpha, c.a + i * c.stride_a, c.lda,
                   c.b + i * c.stride_b, c.ldb, c.beta, c.c + i * c.stride_c, c.ldc);
  }
  return absl::OkStatus();
}

absl::Status HostScoringSteps::CholeskyBatched(const CholeskyCall& c) {
  for (int i = 0; i < c.batch; ++i) c.info[i] = ReferencePotrf(c.matrices[i], c.n, c.lda);
  return absl::OkStatus();
}

absl::Status HostScoringSteps::TrsmBatched(const TrsmCall& c) {
  for (int i = 0; i < c.batch; ++i) ReferenceTrsm(c.m, c.n, c.alpha, c.l[i], c.lda, c.b[i], c.ldb);
  return absl::OkStatus();
}

absl::Status EmulateLayerOnHost(const DeviceLayerRequest& request,
                                std::vector<std::vector<float>>* scores) {
  RETURN_IF_ERROR(ValidateDeviceLayerRequest(request));
  if (SizeScores(request, scores) == 0) return absl::OkStatus();
  const LayerPlan plan = PlanLayer(request);
  const ScratchLayout layout = LayoutScratch(request, plan);
  std::vector<double> storage(layout.total_bytes / sizeof(double) + 1);  // 8-byte aligned
  char* scratch = reinterpret_cast<char*>(storage.data());
  std::memset(scratch, 0xff, layout.total_bytes);  // NaN in every float and double
  PackUpload(request, plan, layout, scratch, scratch);
  HostScoringSteps steps;
  RETURN_IF_ERROR(RunScorerSteps(request, plan, layout, scratch, steps));
  return ReadScores(request, plan, layout, scratch + layout.scores, scores);
}

}  // namespace kvkeep::cuda_scoring
