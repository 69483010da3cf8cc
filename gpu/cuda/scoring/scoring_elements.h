// The per-element bodies of the scoring kernels (scoring_kernels.cu), KVKEEP_HOST_DEVICE: each
// kernel is a grid-stride loop over one of these, and the host emulation (host_scoring_steps.cc)
// runs the same bodies in plain loops over host arrays, so the index arithmetic of every [N] and
// [G][N] layout is exercised on the CPU. Block-wide steps (softmax rows, fills, greedy pick and
// rank-1 step) and the cuBLAS/cuSOLVER calls are not here.
//
//   for (int64_t t = 0; t < view.heads.total; ++t) TokenScoreAt(view, t);   // host
#ifndef KVKEEP_GPU_CUDA_SCORING_SCORING_ELEMENTS_H_
#define KVKEEP_GPU_CUDA_SCORING_SCORING_ELEMENTS_H_

#include <math.h>
#include <stdint.h>

#include "gpu/cuda/scoring/scoring_kernels.h"
#include "gpu/math/attention_math.h"
#include "gpu/math/dtype.h"
#include "gpu/math/host_device.h"
#include "gpu/math/scoring_math.h"

namespace kvkeep::cuda_scoring {

// KV head holding flat token t: the last g with starts[g] <= t (empty heads are skipped over).
KVKEEP_HOST_DEVICE inline int HeadOf(const Heads& h, int64_t t) {
  int lo = 0, hi = h.kv_heads - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (h.starts[mid] <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  return lo;
}

// Whether flat token t is a non-sink token of its head; its head and head-local index.
KVKEEP_HOST_DEVICE inline bool NonSink(const Heads& h, int64_t t, int* g, int* j) {
  *g = HeadOf(h, t);
  const HeadSpan& s = h.spans[*g];
  *j = static_cast<int>(t - h.starts[*g]);
  return *j >= s.s0 && *j < s.n;
}

// Element i of a page's keys or values (kDtype 0 fp32, 1 fp16, 2 bf16) as float.
template <int kDtype>
KVKEEP_HOST_DEVICE inline float LoadElement(const void* base, int64_t i) {
  if constexpr (kDtype == 0) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (kDtype == 1) {
    return gpu_math::HalfBitsToFloat(static_cast<const uint16_t*>(base)[i]);
  } else {
    return gpu_math::Bf16BitsToFloat(static_cast<const uint16_t*>(base)[i]);
  }
}

// Element i (< tokens * d) of run r.
template <int kDtype>
KVKEEP_HOST_DEVICE inline void GatherAt(const GatherView& v, int r, int64_t i) {
  const GatherRun& run = v.runs[r];
  const int64_t dst = run.dst * v.d + i;
  if (v.keys_out != nullptr) v.keys_out[dst] = LoadElement<kDtype>(run.keys, i);
  if (v.values_out != nullptr) v.values_out[dst] = LoadElement<kDtype>(run.values, i);
}

KVKEEP_HOST_DEVICE inline void TokenScoreAt(const TokenScoresView& v, int64_t t) {
  const int g = HeadOf(v.heads, t);
  const int64_t j = t - v.heads.starts[g];
  const int32_t pos = v.positions[t];
  float s = 0.0f;
  switch (v.mode) {
    case TokenMode::kStreaming:
      s = static_cast<float>(j);
      break;
    case TokenMode::kRandom:
      s = gpu_math::CounterUniform(v.seed, v.layer, static_cast<uint64_t>(g),
                                   static_cast<uint64_t>(pos));
      break;
    case TokenMode::kH2o:
    case TokenMode::kObserved: {
      for (int r = 0; r < v.group; ++r) s += v.mass[r * v.heads.total + t];
      s *= 1.0f / static_cast<float>(v.group);
      if (v.mode == TokenMode::kObserved) s = gpu_math::ObservedScore(s, v.next_position, pos);
      break;
    }
  }
  v.scores[t] = s;
}

KVKEEP_HOST_DEVICE inline void NormAt(const NormView& v, int64_t t) {
  const float norm = sqrtf(gpu_math::SquaredNorm(v.x + t * v.d, v.d));
  v.out[t] = v.negate ? -norm : norm;
}

// idx over [rows of col][N] (tova: [N]).
KVKEEP_HOST_DEVICE inline void WindowColumnAt(const WindowColumnsView& v, int64_t idx) {
  const int64_t total = v.heads.total;
  const int r = static_cast<int>(idx / total);
  const int64_t t = idx - r * total;
  const int g = HeadOf(v.heads, t);
  const int n = v.heads.spans[g].n;
  const int64_t j = t - v.heads.starts[g];
  const float* p = v.p + v.p_offset[g];
  float s = 0.0f;
  if (v.mode == WindowMode::kTova) {
    for (int q = 0; q < v.group; ++q) s += p[static_cast<int64_t>(q) * n + j];
    v.col[t] = s;
    return;
  }
  const float* pr = p + static_cast<int64_t>(r) * v.rows * n + j;
  if (v.mode == WindowMode::kSnapKv) {
    const int nc = n - (v.window_keep < n ? v.window_keep : n);
    if (j >= nc) return;
    for (int i = 0; i < v.rows; ++i) s += pr[static_cast<int64_t>(i) * n];
    v.col[idx] = s * (1.0f / static_cast<float>(v.rows));
  } else {
    for (int i = 0; i < v.rows; ++i) {
      const float x = pr[static_cast<int64_t>(i) * n];
      s += x * x;
    }
    v.col[idx] = s;
  }
}

KVKEEP_HOST_DEVICE inline void SnapPoolAt(const PoolView& v, int64_t t) {
  const int g = HeadOf(v.heads, t);
  const int n = v.heads.spans[g].n;
  const int nc = n - (v.window_keep < n ? v.window_keep : n);
  const int64_t start = v.heads.starts[g];
  const int j = static_cast<int>(t - start);
  if (j >= nc) return;
  const float inv_g = 1.0f / static_cast<float>(v.group);
  float acc = 0.0f;
  for (int r = 0; r < v.group; ++r) {
    acc += gpu_math::PoolAt(v.col + r * v.heads.total + start, nc, j, v.kernel, v.max_pool) * inv_g;
  }
  v.scores[t] = acc;
}

KVKEEP_HOST_DEVICE inline void LaProxCombineAt(const LaProxView& v, int64_t t) {
  float acc = 0.0f;
  for (int r = 0; r < v.group; ++r) {
    const float vn = v.vnorm[(v.per_head_vnorm ? r * v.heads.total : 0) + t];
    acc += sqrtf(v.col[r * v.heads.total + t]) * vn;
  }
  v.scores[t] = acc;
}

// idx over [G][n] of one head.
KVKEEP_HOST_DEVICE inline void QuadFormAt(const QuadFormView& v, int64_t idx) {
  const int r = static_cast<int>(idx / v.n);
  const int64_t j = idx - static_cast<int64_t>(r) * v.n;
  const float quad = gpu_math::Dot(v.vm + idx * v.d, v.v + j * v.d, v.d);
  v.vnorm[r * v.total + v.offset + j] = sqrtf(quad < 0.0f ? 0.0f : quad);
}

KVKEEP_HOST_DEVICE inline void TovaAlignAt(const TovaAlignView& v, int64_t t) {
  const int32_t pos = v.positions[t];
  float acc = 0.0f;
  for (int o = 0; o < v.heads.kv_heads; ++o) {
    const int64_t start = v.heads.starts[o];
    const int k = gpu_math::FindPosition(v.positions + start, v.heads.spans[o].n, pos);
    if (k >= 0) acc += v.mass[start + k];
  }
  v.scores[t] = acc * (1.0f / static_cast<float>(v.q_heads));
}

// kMax >= d: size of the rotated-key scratch.
template <int kMax>
KVKEEP_HOST_DEVICE inline void ExpectedLogitAt(const ExpectedLogitsView& v, int64_t t) {
  int g, j;
  if (!NonSink(v.heads, t, &g, &j)) return;
  float kt[kMax], kt2[kMax];
  gpu_math::RotateTransposed(v.keys + t * v.d, v.cos_f, v.minus_sin_f, v.d, v.rotary_dim,
                             v.interleaved, kt);
  for (int i = 0; i < v.d; ++i) kt2[i] = kt[i] * kt[i];
  for (int r = 0; r < v.group; ++r) {
    const int64_t h = static_cast<int64_t>(g) * v.group + r;
    float l = gpu_math::Dot(kt, v.mu + h * v.d, v.d);
    if (v.var != nullptr) l += gpu_math::Dot(kt2, v.var + h * v.d, v.d);
    v.logits[r * v.heads.total + t] = l;
  }
}

KVKEEP_HOST_DEVICE inline void GroupSumAt(const GroupSumView& v, int64_t t) {
  int g, j;
  if (!NonSink(v.heads, t, &g, &j)) return;
  float acc = 0.0f;
  for (int r = 0; r < v.group; ++r) acc += v.p[r * v.heads.total + t];
  v.scores[t] = v.vnorm != nullptr ? acc * v.vnorm[t] : acc;
}

KVKEEP_HOST_DEVICE inline void CapLogitAt(const CapLogitsView& v, int64_t t) {
  int g, j;
  if (!NonSink(v.heads, t, &g, &j)) return;
  for (int r = 0; r < v.group; ++r) {
    const int64_t h = static_cast<int64_t>(g) * v.group + r;
    v.w[r * v.heads.total + t] =
        gpu_math::CapLogit(v.anchor + h * v.d, v.anchor_norm[h], v.keys + t * v.d, v.d, v.dot_form,
                           v.tau, v.inv_sqrt_d);
  }
}

// idx over [G][m][d] of one head.
KVKEEP_HOST_DEVICE inline void ScaleValueAt(const ScaleValuesView& v, int64_t idx) {
  const int64_t md = static_cast<int64_t>(v.m) * v.d;
  const int r = static_cast<int>(idx / md);
  const int64_t e = idx - r * md;
  const int64_t j = e / v.d;
  v.scaled[idx] = v.values[e] * sqrtf(v.w[r * v.total + j] + 1e-6f);
}

KVKEEP_HOST_DEVICE inline void GramToDoubleAt(const GramToDoubleView& v, int64_t idx) {
  const int64_t e = idx % (static_cast<int64_t>(v.d) * v.d);
  v.a[idx] = static_cast<double>(v.gram[idx]) + (e / v.d == e % v.d ? 1.0 : 0.0);
}

KVKEEP_HOST_DEVICE inline void ValueToDoubleAt(const ValuesToDoubleView& v, int64_t idx) {
  v.y[idx] = static_cast<double>(v.values[idx % v.count]);
}

// Token j (< m) of one head: Σ_r w_rj ‖L_r⁻¹ v_j‖² / G from the solved columns y.
KVKEEP_HOST_DEVICE inline void LeverageAt(const LeverageView& v, int64_t j) {
  const int64_t md = static_cast<int64_t>(v.m) * v.d;
  double acc = 0;
  for (int r = 0; r < v.group; ++r) {
    const double* y = v.y + r * md + j * v.d;
    double sq = 0;
    for (int i = 0; i < v.d; ++i) sq += y[i] * y[i];
    acc += static_cast<double>(v.w[r * v.total + j]) * sq;
  }
  v.scores[j] = static_cast<float>(acc / v.group);
}

// capkv-greedy: the head-local non-sink index head g adds in this step (window_k >= 0: the k-th
// window token), or -1.
KVKEEP_HOST_DEVICE inline int GreedyToken(const GreedyView& v, int g, int window_k) {
  const HeadSpan& s = v.heads.spans[g];
  if (window_k >= 0) return s.nc + window_k < s.m ? s.nc + window_k : -1;
  return v.add[g];
}

// B_h = I and q_h[t] = ‖v_t‖², candidates' scores -1 (the "not picked" mark): b element idx
// (< q_heads * d²) and token t (< N) are independent loops.
KVKEEP_HOST_DEVICE inline void GreedyInitMatrixAt(const GreedyView& v, int64_t idx) {
  const int64_t e = idx % (static_cast<int64_t>(v.d) * v.d);
  v.b[idx] = e / v.d == e % v.d ? 1.0 : 0.0;
}
KVKEEP_HOST_DEVICE inline void GreedyInitTokenAt(const GreedyView& v, int64_t t) {
  int g, j;
  if (!NonSink(v.heads, t, &g, &j)) return;
  const float* vt = v.values + t * v.d;
  double sq = 0;
  for (int i = 0; i < v.d; ++i) sq += static_cast<double>(vt[i]) * vt[i];
  for (int r = 0; r < v.group; ++r) v.q[r * v.heads.total + t] = sq;
  if (j - v.heads.spans[g].s0 < v.heads.spans[g].nc) v.scores[t] = -1.0f;
}

// q_h[t] -= (v_t · z_h)² / (1 + x·z) for idx over [G][N].
KVKEEP_HOST_DEVICE inline void GreedyUpdateAt(const GreedyView& v, int window_k, int64_t idx) {
  const int64_t total = v.heads.total;
  const int r = static_cast<int>(idx / total);
  const int64_t t = idx - r * total;
  int g, j;
  if (!NonSink(v.heads, t, &g, &j)) return;
  if (GreedyToken(v, g, window_k) < 0) return;
  const int64_t h = static_cast<int64_t>(g) * v.group + r;
  const float* vt = v.values + t * v.d;
  const double* zh = v.z + h * v.d;
  double p = 0;
  for (int i = 0; i < v.d; ++i) p += static_cast<double>(vt[i]) * zh[i];
  v.q[idx] -= p * p * v.inv_denom[h];
}

// Unpicked candidates score their current gain.
KVKEEP_HOST_DEVICE inline void GreedyFinishAt(const GreedyView& v, int64_t t) {
  int g, j;
  if (!NonSink(v.heads, t, &g, &j)) return;
  const HeadSpan& s = v.heads.spans[g];
  const int jl = j - s.s0;
  if (jl >= s.nc || v.scores[t] >= 0.0f) return;
  const int64_t base = v.heads.starts[g] + s.s0;
  v.scores[t] =
      static_cast<float>(gpu_math::GreedyGain(v.q + base, v.w + base, v.group, v.heads.total, jl));
}

}  // namespace kvkeep::cuda_scoring

#endif  // KVKEEP_GPU_CUDA_SCORING_SCORING_ELEMENTS_H_
