// Kernels of gpu/cuda/scoring/scoring_kernels.h. Every kernel walks its work with grid-stride
// loops (grids are capped, so no launch exceeds a grid limit whatever N), uses 256 threads per
// block, and keeps its only shared memory in fixed-size arrays: at most 2 * kMaxDeviceHeadDim
// doubles (8 KiB) plus 32 reduction slots per block.
#include "gpu/cuda/scoring/scoring_kernels.h"

#include <math.h>

#include "gpu/device_scoring.h"
#include "gpu/math/attention_math.h"
#include "gpu/math/dtype.h"
#include "gpu/math/scoring_math.h"

namespace kvkeep::cuda_scoring {
namespace {

namespace gm = ::kvkeep::gpu_math;

constexpr int kThreads = 256;
constexpr int kMaxD = kMaxDeviceHeadDim;
constexpr int64_t kMaxBlocks = 1 << 16;

int Blocks(int64_t work) {
  const int64_t b = (work + kThreads - 1) / kThreads;
  return static_cast<int>(b < 1 ? 1 : (b > kMaxBlocks ? kMaxBlocks : b));
}

int BlocksFor(int64_t items) {
  return static_cast<int>(items < 1 ? 1 : (items > kMaxBlocks ? kMaxBlocks : items));
}

__device__ int64_t GlobalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ int64_t GlobalStride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

// KV head holding flat token t: the last g with starts[g] <= t (empty heads are skipped over).
__device__ int HeadOf(const Heads& h, int64_t t) {
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

// Block-wide reductions (blockDim.x == kThreads); every thread gets the result.
template <typename T, typename Op>
__device__ T BlockReduce(T x, Op op, T identity) {
  __shared__ T slots[32];
  for (int o = 16; o > 0; o /= 2) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // slots may still be read by a previous reduction
  if (lane == 0) slots[warp] = x;
  __syncthreads();
  x = lane < static_cast<int>(blockDim.x / 32) ? slots[lane] : identity;
  for (int o = 16; o > 0; o /= 2) x = op(x, __shfl_xor_sync(0xffffffffu, x, o));
  return x;
}

struct MaxOp {
  __device__ float operator()(float a, float b) const { return b > a ? b : a; }
};
struct SumOp {
  __device__ double operator()(double a, double b) const { return a + b; }
};

// ---------------------------------------------------------------------------------------------

template <int kDtype>
__device__ float LoadElement(const void* base, int64_t i) {
  if constexpr (kDtype == 0) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (kDtype == 1) {
    return gm::HalfBitsToFloat(static_cast<const uint16_t*>(base)[i]);
  } else {
    return gm::Bf16BitsToFloat(static_cast<const uint16_t*>(base)[i]);
  }
}

template <int kDtype>
__global__ void GatherKernel(GatherView v) {
  for (int r = blockIdx.x; r < v.num_runs; r += gridDim.x) {
    const GatherRun run = v.runs[r];
    const int64_t count = static_cast<int64_t>(run.tokens) * v.d;
    const int64_t dst = run.dst * v.d;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) {
      if (v.keys_out != nullptr) v.keys_out[dst + i] = LoadElement<kDtype>(run.keys, i);
      if (v.values_out != nullptr) v.values_out[dst + i] = LoadElement<kDtype>(run.values, i);
    }
  }
}

__global__ void TokenScoresKernel(TokenScoresView v) {
  const float inv_g = 1.0f / static_cast<float>(v.group);
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) {
    const int g = HeadOf(v.heads, t);
    const int64_t j = t - v.heads.starts[g];
    const int32_t pos = v.positions[t];
    float s = 0.0f;
    switch (v.mode) {
      case TokenMode::kStreaming:
        s = static_cast<float>(j);
        break;
      case TokenMode::kRandom:
        s = gm::CounterUniform(v.seed, v.layer, static_cast<uint64_t>(g),
                               static_cast<uint64_t>(pos));
        break;
      case TokenMode::kH2o:
      case TokenMode::kObserved: {
        for (int r = 0; r < v.group; ++r) s += v.mass[r * v.heads.total + t];
        s *= inv_g;
        if (v.mode == TokenMode::kObserved) s = gm::ObservedScore(s, v.next_position, pos);
        break;
      }
    }
    v.scores[t] = s;
  }
}

__global__ void NormsKernel(NormView v) {
  for (int64_t t = GlobalThread(); t < v.total; t += GlobalStride()) {
    const float norm = sqrtf(gm::SquaredNorm(v.x + t * v.d, v.d));
    v.out[t] = v.negate ? -norm : norm;
  }
}

__global__ void SoftmaxRowsKernel(SoftmaxView v) {
  for (int row = blockIdx.x; row < v.num_rows; row += gridDim.x) {
    const SoftmaxRow r = v.rows[row];
    float* p = v.p + r.offset;
    float mx = -INFINITY;
    for (int j = threadIdx.x; j < r.len; j += blockDim.x) mx = p[j] > mx ? p[j] : mx;
    mx = BlockReduce(mx, MaxOp(), -INFINITY);
    if (v.exp_only) {
      for (int j = threadIdx.x; j < r.len; j += blockDim.x) p[j] = expf(p[j] - mx);
      continue;
    }
    float part = 0.0f;
    for (int j = threadIdx.x; j < r.len; j += blockDim.x) {
      const float e = gm::ExpFast(p[j] - mx);
      p[j] = e;
      part += e;
    }
    const double sum = BlockReduce(static_cast<double>(part), SumOp(), 0.0);
    const float inv = r.len > 0 ? static_cast<float>(1.0 / sum) * r.scale : 0.0f;
    for (int j = threadIdx.x; j < r.n; j += blockDim.x) p[j] = j < r.len ? p[j] * inv : 0.0f;
  }
}

__global__ void WindowColumnsKernel(WindowColumnsView v) {
  const int64_t total = v.heads.total;
  const int rows_of_col = v.mode == WindowMode::kTova ? 1 : v.group;
  const float inv_w = 1.0f / static_cast<float>(v.rows);
  for (int64_t idx = GlobalThread(); idx < rows_of_col * total; idx += GlobalStride()) {
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
      continue;
    }
    const float* pr = p + static_cast<int64_t>(r) * v.rows * n + j;
    if (v.mode == WindowMode::kSnapKv) {
      const int nc = n - (v.window_keep < n ? v.window_keep : n);
      if (j >= nc) continue;
      for (int i = 0; i < v.rows; ++i) s += pr[static_cast<int64_t>(i) * n];
      v.col[idx] = s * inv_w;
    } else {
      for (int i = 0; i < v.rows; ++i) {
        const float x = pr[static_cast<int64_t>(i) * n];
        s += x * x;
      }
      v.col[idx] = s;
    }
  }
}

__global__ void SnapPoolKernel(PoolView v) {
  const float inv_g = 1.0f / static_cast<float>(v.group);
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) {
    const int g = HeadOf(v.heads, t);
    const int n = v.heads.spans[g].n;
    const int nc = n - (v.window_keep < n ? v.window_keep : n);
    const int64_t start = v.heads.starts[g];
    const int j = static_cast<int>(t - start);
    if (j >= nc) continue;
    float acc = 0.0f;
    for (int r = 0; r < v.group; ++r) {
      acc += gm::PoolAt(v.col + r * v.heads.total + start, nc, j, v.kernel, v.max_pool) * inv_g;
    }
    v.scores[t] = acc;
  }
}

__global__ void LaProxCombineKernel(LaProxView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) {
    float acc = 0.0f;
    for (int r = 0; r < v.group; ++r) {
      const float vn = v.vnorm[(v.per_head_vnorm ? r * v.heads.total : 0) + t];
      acc += sqrtf(v.col[r * v.heads.total + t]) * vn;
    }
    v.scores[t] = acc;
  }
}

__global__ void QuadFormKernel(QuadFormView v) {
  const int64_t items = static_cast<int64_t>(v.group) * v.n;
  for (int64_t idx = GlobalThread(); idx < items; idx += GlobalStride()) {
    const int r = static_cast<int>(idx / v.n);
    const int64_t j = idx - static_cast<int64_t>(r) * v.n;
    const float quad = gm::Dot(v.vm + idx * v.d, v.v + j * v.d, v.d);
    v.vnorm[r * v.total + v.offset + j] = sqrtf(quad < 0.0f ? 0.0f : quad);
  }
}

__global__ void TovaAlignKernel(TovaAlignView v) {
  const float inv_h = 1.0f / static_cast<float>(v.q_heads);
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) {
    const int32_t pos = v.positions[t];
    float acc = 0.0f;
    for (int o = 0; o < v.heads.kv_heads; ++o) {
      const int64_t start = v.heads.starts[o];
      const int k = gm::FindPosition(v.positions + start, v.heads.spans[o].n, pos);
      if (k >= 0) acc += v.mass[start + k];
    }
    v.scores[t] = acc * inv_h;
  }
}

// Non-sink token t of its head: its head and head-local index, or false.
__device__ bool NonSink(const Heads& h, int64_t t, int* g, int* j) {
  *g = HeadOf(h, t);
  const HeadSpan& s = h.spans[*g];
  *j = static_cast<int>(t - h.starts[*g]);
  return *j >= s.s0 && *j < s.n;
}

// kMax: head_dim bucket (64, 128, 256, 512) sizing the per-thread rotated key, so that the local
// memory the launch reserves follows the model's head_dim rather than the largest one supported.
template <int kMax>
__global__ void ExpectedLogitsKernel(ExpectedLogitsView v) {
  float kt[kMax], kt2[kMax];
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) {
    int g, j;
    if (!NonSink(v.heads, t, &g, &j)) continue;
    gm::RotateTransposed(v.keys + t * v.d, v.cos_f, v.minus_sin_f, v.d, v.rotary_dim,
                         v.interleaved, kt);
    for (int i = 0; i < v.d; ++i) kt2[i] = kt[i] * kt[i];
    for (int r = 0; r < v.group; ++r) {
      const int64_t h = static_cast<int64_t>(g) * v.group + r;
      float l = gm::Dot(kt, v.mu + h * v.d, v.d);
      if (v.var != nullptr) l += gm::Dot(kt2, v.var + h * v.d, v.d);
      v.logits[r * v.heads.total + t] = l;
    }
  }
}

__global__ void GroupSumKernel(GroupSumView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) {
    int g, j;
    if (!NonSink(v.heads, t, &g, &j)) continue;
    float acc = 0.0f;
    for (int r = 0; r < v.group; ++r) acc += v.p[r * v.heads.total + t];
    v.scores[t] = v.vnorm != nullptr ? acc * v.vnorm[t] : acc;
  }
}

__global__ void CapLogitsKernel(CapLogitsView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) {
    int g, j;
    if (!NonSink(v.heads, t, &g, &j)) continue;
    for (int r = 0; r < v.group; ++r) {
      const int64_t h = static_cast<int64_t>(g) * v.group + r;
      v.w[r * v.heads.total + t] = gm::CapLogit(v.anchor + h * v.d, v.anchor_norm[h],
                                                v.keys + t * v.d, v.d, v.dot_form, v.tau,
                                                v.inv_sqrt_d);
    }
  }
}

__global__ void ScaleValuesKernel(ScaleValuesView v) {
  const int64_t md = static_cast<int64_t>(v.m) * v.d;
  for (int64_t idx = GlobalThread(); idx < v.group * md; idx += GlobalStride()) {
    const int r = static_cast<int>(idx / md);
    const int64_t e = idx - r * md;
    const int64_t j = e / v.d;
    const float sw = sqrtf(v.w[r * v.total + j] + 1e-6f);
    v.scaled[idx] = v.values[e] * sw;
  }
}

__global__ void GramToDoubleKernel(GramToDoubleView v) {
  const int64_t dd = static_cast<int64_t>(v.d) * v.d;
  for (int64_t idx = GlobalThread(); idx < v.batch * dd; idx += GlobalStride()) {
    const int64_t e = idx % dd;
    const bool diagonal = e / v.d == e % v.d;
    v.a[idx] = static_cast<double>(v.gram[idx]) + (diagonal ? 1.0 : 0.0);
  }
}

__global__ void ValuesToDoubleKernel(ValuesToDoubleView v) {
  for (int64_t idx = GlobalThread(); idx < v.group * v.count; idx += GlobalStride()) {
    v.y[idx] = static_cast<double>(v.values[idx % v.count]);
  }
}

__global__ void LeverageKernel(LeverageView v) {
  const int64_t md = static_cast<int64_t>(v.m) * v.d;
  for (int64_t j = GlobalThread(); j < v.m; j += GlobalStride()) {
    double acc = 0;
    for (int r = 0; r < v.group; ++r) {
      const double* y = v.y + r * md + j * v.d;
      double sq = 0;
      for (int i = 0; i < v.d; ++i) sq += y[i] * y[i];
      acc += static_cast<double>(v.w[r * v.total + j]) * sq;
    }
    v.scores[j] = static_cast<float>(acc / v.group);
  }
}

__global__ void FillUndefinedKernel(Heads heads, float* scores) {
  for (int g = blockIdx.x; g < heads.kv_heads; g += gridDim.x) {
    const HeadSpan s = heads.spans[g];
    float* out = scores + heads.starts[g];
    float m = -INFINITY;
    for (int j = s.begin + threadIdx.x; j < s.end; j += blockDim.x) m = out[j] > m ? out[j] : m;
    m = BlockReduce(m, MaxOp(), -INFINITY);
    if (s.end <= s.begin) m = 0.0f;
    for (int j = threadIdx.x; j < s.n; j += blockDim.x) {
      if (j < s.begin || j >= s.end) out[j] = m;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// capkv-greedy

__global__ void GreedyInitKernel(GreedyView v) {
  const int64_t total = v.heads.total;
  const int64_t q_heads = static_cast<int64_t>(v.heads.kv_heads) * v.group;
  const int64_t dd = static_cast<int64_t>(v.d) * v.d;
  for (int64_t idx = GlobalThread(); idx < q_heads * dd; idx += GlobalStride()) {
    const int64_t e = idx % dd;
    v.b[idx] = e / v.d == e % v.d ? 1.0 : 0.0;
  }
  for (int64_t t = GlobalThread(); t < total; t += GlobalStride()) {
    int g, j;
    if (!NonSink(v.heads, t, &g, &j)) continue;
    const float* vt = v.values + t * v.d;
    double sq = 0;
    for (int i = 0; i < v.d; ++i) sq += static_cast<double>(vt[i]) * vt[i];
    for (int r = 0; r < v.group; ++r) v.q[r * total + t] = sq;
    if (j - v.heads.spans[g].s0 < v.heads.spans[g].nc) v.scores[t] = -1.0f;
  }
}

// Head-local non-sink index of the token head g adds in this step, or -1.
__device__ int GreedyToken(const GreedyView& v, int g, int window_k) {
  const HeadSpan& s = v.heads.spans[g];
  if (window_k >= 0) return s.nc + window_k < s.m ? s.nc + window_k : -1;
  return v.add[g];
}

// One block per q head: z = B x, 1/(1 + x·z), B -= z zᵀ / (1 + x·z).
__global__ void GreedyAddKernel(GreedyView v, int window_k) {
  __shared__ double x[kMaxD];
  __shared__ double z[kMaxD];
  const int q_heads = v.heads.kv_heads * v.group;
  for (int h = blockIdx.x; h < q_heads; h += gridDim.x) {
    const int g = h / v.group, r = h % v.group;
    const int tl = GreedyToken(v, g, window_k);
    if (tl < 0) continue;  // uniform across the block
    const int64_t t = v.heads.starts[g] + v.heads.spans[g].s0 + tl;
    const double sw = sqrt(static_cast<double>(v.w[r * v.heads.total + t]));
    double* b = v.b + static_cast<int64_t>(h) * v.d * v.d;
    __syncthreads();  // x, z of the previous h are no longer read
    for (int i = threadIdx.x; i < v.d; i += blockDim.x) x[i] = v.values[t * v.d + i] * sw;
    __syncthreads();
    double part = 0;
    for (int i = threadIdx.x; i < v.d; i += blockDim.x) {
      const double* row = b + static_cast<int64_t>(i) * v.d;
      double acc = 0;
      for (int k = 0; k < v.d; ++k) acc += row[k] * x[k];
      z[i] = acc;
      v.z[static_cast<int64_t>(h) * v.d + i] = acc;
      part += x[i] * acc;
    }
    const double inv = 1.0 / (1.0 + BlockReduce(part, SumOp(), 0.0));  // syncs: z complete
    if (threadIdx.x == 0) v.inv_denom[h] = inv;
    for (int64_t e = threadIdx.x; e < static_cast<int64_t>(v.d) * v.d; e += blockDim.x) {
      const int i = static_cast<int>(e / v.d), k = static_cast<int>(e % v.d);
      b[e] -= z[i] * z[k] * inv;
    }
  }
}

// q_h[t] -= (v_t · z_h)² / (1 + x·z) for every non-sink token t of every head that added one.
__global__ void GreedyUpdateKernel(GreedyView v, int window_k) {
  const int64_t total = v.heads.total;
  for (int64_t idx = GlobalThread(); idx < v.group * total; idx += GlobalStride()) {
    const int r = static_cast<int>(idx / total);
    const int64_t t = idx - r * total;
    int g, j;
    if (!NonSink(v.heads, t, &g, &j)) continue;
    if (GreedyToken(v, g, window_k) < 0) continue;
    const int64_t h = static_cast<int64_t>(g) * v.group + r;
    const float* vt = v.values + t * v.d;
    const double* zh = v.z + h * v.d;
    double p = 0;
    for (int i = 0; i < v.d; ++i) p += static_cast<double>(vt[i]) * zh[i];
    v.q[idx] -= p * p * v.inv_denom[h];
  }
}

struct ArgMax {
  double gain;
  int index;
};

__device__ ArgMax Better(ArgMax a, ArgMax b) {
  if (b.index < 0) return a;
  if (a.index < 0) return b;
  if (b.gain > a.gain || (b.gain == a.gain && b.index < a.index)) return b;
  return a;
}

__global__ void GreedySelectKernel(GreedyView v, int64_t step) {
  __shared__ double gains[32];
  __shared__ int indices[32];
  for (int g = blockIdx.x; g < v.heads.kv_heads; g += gridDim.x) {
    const HeadSpan s = v.heads.spans[g];
    const int64_t base = v.heads.starts[g] + s.s0;
    if (step >= s.picks) {
      if (threadIdx.x == 0) v.add[g] = -1;
      continue;
    }
    ArgMax best{-1.0, -1};
    for (int j = threadIdx.x; j < s.nc; j += blockDim.x) {
      if (v.scores[base + j] >= 0.0f) continue;  // picked
      const double gain = gm::GreedyGain(v.q + base, v.w + base, v.group, v.heads.total, j);
      best = Better(best, ArgMax{gain, j});
    }
    for (int o = 16; o > 0; o /= 2) {
      ArgMax other{__shfl_xor_sync(0xffffffffu, best.gain, o),
                   __shfl_xor_sync(0xffffffffu, best.index, o)};
      best = Better(best, other);
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads();
    if (lane == 0) {
      gains[warp] = best.gain;
      indices[warp] = best.index;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) {
        best = Better(best, ArgMax{gains[w], indices[w]});
      }
      if (best.index >= 0) v.scores[base + best.index] = static_cast<float>(best.gain);
      v.add[g] = best.index >= 0 && step + 1 < s.nc ? best.index : -1;
    }
  }
}

__global__ void GreedyFinishKernel(GreedyView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) {
    int g, j;
    if (!NonSink(v.heads, t, &g, &j)) continue;
    const HeadSpan& s = v.heads.spans[g];
    const int jl = j - s.s0;
    if (jl >= s.nc || v.scores[t] >= 0.0f) continue;
    const int64_t base = v.heads.starts[g] + s.s0;
    v.scores[t] = static_cast<float>(
        gm::GreedyGain(v.q + base, v.w + base, v.group, v.heads.total, jl));
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------

cudaError_t LaunchGather(const GatherView& v, cudaStream_t stream) {
  if (v.num_runs == 0) return cudaSuccess;
  switch (v.dtype) {
    case 0:
      GatherKernel<0><<<BlocksFor(v.num_runs), kThreads, 0, stream>>>(v);
      break;
    case 1:
      GatherKernel<1><<<BlocksFor(v.num_runs), kThreads, 0, stream>>>(v);
      break;
    case 2:
      GatherKernel<2><<<BlocksFor(v.num_runs), kThreads, 0, stream>>>(v);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

cudaError_t LaunchTokenScores(const TokenScoresView& v, cudaStream_t stream) {
  if (v.heads.total == 0) return cudaSuccess;
  TokenScoresKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchNorms(const NormView& v, cudaStream_t stream) {
  if (v.total == 0) return cudaSuccess;
  if (v.d < 1 || v.d > kMaxD) return cudaErrorInvalidValue;
  NormsKernel<<<Blocks(v.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchSoftmaxRows(const SoftmaxView& v, cudaStream_t stream) {
  if (v.num_rows == 0) return cudaSuccess;
  SoftmaxRowsKernel<<<BlocksFor(v.num_rows), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchWindowColumns(const WindowColumnsView& v, cudaStream_t stream) {
  if (v.heads.total == 0) return cudaSuccess;
  const int64_t rows = v.mode == WindowMode::kTova ? 1 : v.group;
  WindowColumnsKernel<<<Blocks(rows * v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchSnapPool(const PoolView& v, cudaStream_t stream) {
  if (v.heads.total == 0) return cudaSuccess;
  if (v.kernel < 1 || v.kernel % 2 == 0) return cudaErrorInvalidValue;
  SnapPoolKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchLaProxCombine(const LaProxView& v, cudaStream_t stream) {
  if (v.heads.total == 0) return cudaSuccess;
  LaProxCombineKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchQuadForm(const QuadFormView& v, cudaStream_t stream) {
  if (v.n == 0) return cudaSuccess;
  QuadFormKernel<<<Blocks(static_cast<int64_t>(v.group) * v.n), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchTovaAlign(const TovaAlignView& v, cudaStream_t stream) {
  if (v.heads.total == 0) return cudaSuccess;
  TovaAlignKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchExpectedLogits(const ExpectedLogitsView& v, cudaStream_t stream) {
  if (v.heads.total == 0) return cudaSuccess;
  if (v.d < 1 || v.d > kMaxD) return cudaErrorInvalidValue;
  const int blocks = Blocks(v.heads.total);
  if (v.d <= 64) {
    ExpectedLogitsKernel<64><<<blocks, kThreads, 0, stream>>>(v);
  } else if (v.d <= 128) {
    ExpectedLogitsKernel<128><<<blocks, kThreads, 0, stream>>>(v);
  } else if (v.d <= 256) {
    ExpectedLogitsKernel<256><<<blocks, kThreads, 0, stream>>>(v);
  } else {
    ExpectedLogitsKernel<kMaxD><<<blocks, kThreads, 0, stream>>>(v);
  }
  return cudaGetLastError();
}

cudaError_t LaunchGroupSum(const GroupSumView& v, cudaStream_t stream) {
  if (v.heads.total == 0) return cudaSuccess;
  GroupSumKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchCapLogits(const CapLogitsView& v, cudaStream_t stream) {
  if (v.heads.total == 0) return cudaSuccess;
  CapLogitsKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchScaleValues(const ScaleValuesView& v, cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(v.group) * v.m * v.d;
  if (items == 0) return cudaSuccess;
  ScaleValuesKernel<<<Blocks(items), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchGramToDouble(const GramToDoubleView& v, cudaStream_t stream) {
  const int64_t items = static_cast<int64_t>(v.batch) * v.d * v.d;
  if (items == 0) return cudaSuccess;
  GramToDoubleKernel<<<Blocks(items), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchValuesToDouble(const ValuesToDoubleView& v, cudaStream_t stream) {
  if (v.count == 0) return cudaSuccess;
  ValuesToDoubleKernel<<<Blocks(v.group * v.count), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchLeverage(const LeverageView& v, cudaStream_t stream) {
  if (v.m == 0) return cudaSuccess;
  LeverageKernel<<<Blocks(v.m), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchFillUndefined(const Heads& heads, float* scores, cudaStream_t stream) {
  if (heads.total == 0) return cudaSuccess;
  FillUndefinedKernel<<<BlocksFor(heads.kv_heads), kThreads, 0, stream>>>(heads, scores);
  return cudaGetLastError();
}

cudaError_t LaunchGreedyInit(const GreedyView& v, cudaStream_t stream) {
  if (v.d < 1 || v.d > kMaxD) return cudaErrorInvalidValue;
  const int64_t items = static_cast<int64_t>(v.heads.kv_heads) * v.group * v.d * v.d;
  GreedyInitKernel<<<Blocks(items > v.heads.total ? items : v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchGreedyAdd(const GreedyView& v, int window_k, cudaStream_t stream) {
  if (v.d < 1 || v.d > kMaxD) return cudaErrorInvalidValue;
  GreedyAddKernel<<<BlocksFor(static_cast<int64_t>(v.heads.kv_heads) * v.group), kThreads, 0,
                    stream>>>(v, window_k);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (v.heads.total == 0) return cudaSuccess;
  GreedyUpdateKernel<<<Blocks(v.group * v.heads.total), kThreads, 0, stream>>>(v, window_k);
  return cudaGetLastError();
}

cudaError_t LaunchGreedySelect(const GreedyView& v, int64_t step, cudaStream_t stream) {
  GreedySelectKernel<<<BlocksFor(v.heads.kv_heads), kThreads, 0, stream>>>(v, step);
  return cudaGetLastError();
}

cudaError_t LaunchGreedyFinish(const GreedyView& v, cudaStream_t stream) {
  if (v.heads.total == 0) return cudaSuccess;
  GreedyFinishKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

}  // namespace kvkeep::cuda_scoring
