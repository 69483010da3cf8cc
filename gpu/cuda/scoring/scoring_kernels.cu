// Kernels of gpu/cuda/scoring/scoring_kernels.h. Every kernel walks its work with grid-stride
// loops (grids are capped, so no launch exceeds a grid limit whatever N), uses 256 threads per
// block, and keeps its only shared memory in fixed-size arrays: at most 2 * kMaxDeviceHeadDim
// doubles (8 KiB) plus 32 reduction slots per block.
#include <math.h>

#include "gpu/cuda/scoring/scoring_elements.h"
#include "gpu/cuda/scoring/scoring_kernels.h"
#include "gpu/device_scoring.h"
#include "gpu/math/attention_math.h"
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

// The runtime's "last error" is per thread and outlives the call that set it: a failed runtime call
// earlier on this thread (the scorer's own cudaMalloc that failed on a previous layer, the backend's
// cudaMallocAsync) would be read by the cudaGetLastError after a launch and blamed on it, failing a
// later, healthy layer. Every launcher clears it first, so that check reports its own launch only
// (a sticky error, one that breaks the context, still surfaces at the next synchronisation).
void ClearStaleError() { (void)cudaGetLastError(); }

int BlocksFor(int64_t items) {
  return static_cast<int>(items < 1 ? 1 : (items > kMaxBlocks ? kMaxBlocks : items));
}

__device__ int64_t GlobalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ int64_t GlobalStride() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

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
__global__ void GatherKernel(GatherView v) {
  for (int r = blockIdx.x; r < v.num_runs; r += gridDim.x) {
    const int64_t count = static_cast<int64_t>(v.runs[r].tokens) * v.d;
    for (int64_t i = threadIdx.x; i < count; i += blockDim.x) GatherAt<kDtype>(v, r, i);
  }
}

__global__ void TokenScoresKernel(TokenScoresView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) TokenScoreAt(v, t);
}

__global__ void NormsKernel(NormView v) {
  for (int64_t t = GlobalThread(); t < v.total; t += GlobalStride()) NormAt(v, t);
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
  const int64_t items = (v.mode == WindowMode::kTova ? 1 : v.group) * v.heads.total;
  for (int64_t idx = GlobalThread(); idx < items; idx += GlobalStride()) WindowColumnAt(v, idx);
}

__global__ void SnapPoolKernel(PoolView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) SnapPoolAt(v, t);
}

__global__ void LaProxCombineKernel(LaProxView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) LaProxCombineAt(v, t);
}

__global__ void QuadFormKernel(QuadFormView v) {
  const int64_t items = static_cast<int64_t>(v.group) * v.n;
  for (int64_t idx = GlobalThread(); idx < items; idx += GlobalStride()) QuadFormAt(v, idx);
}

__global__ void TovaAlignKernel(TovaAlignView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) TovaAlignAt(v, t);
}

// kMax: head_dim bucket (64, 128, 256, 512) sizing the per-thread rotated key, so that the local
// memory the launch reserves follows the model's head_dim rather than the largest one supported.
template <int kMax>
__global__ void ExpectedLogitsKernel(ExpectedLogitsView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) {
    ExpectedLogitAt<kMax>(v, t);
  }
}

__global__ void GroupSumKernel(GroupSumView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) GroupSumAt(v, t);
}

__global__ void CapLogitsKernel(CapLogitsView v) {
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) CapLogitAt(v, t);
}

__global__ void ScaleValuesKernel(ScaleValuesView v) {
  const int64_t items = static_cast<int64_t>(v.group) * v.m * v.d;
  for (int64_t idx = GlobalThread(); idx < items; idx += GlobalStride()) ScaleValueAt(v, idx);
}

__global__ void GramToDoubleKernel(GramToDoubleView v) {
  const int64_t items = static_cast<int64_t>(v.batch) * v.d * v.d;
  for (int64_t idx = GlobalThread(); idx < items; idx += GlobalStride()) GramToDoubleAt(v, idx);
}

__global__ void ValuesToDoubleKernel(ValuesToDoubleView v) {
  for (int64_t idx = GlobalThread(); idx < v.group * v.count; idx += GlobalStride()) {
    ValueToDoubleAt(v, idx);
  }
}

__global__ void LeverageKernel(LeverageView v) {
  for (int64_t j = GlobalThread(); j < v.m; j += GlobalStride()) LeverageAt(v, j);
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
  const int64_t q_heads = static_cast<int64_t>(v.heads.kv_heads) * v.group;
  const int64_t matrices = q_heads * v.d * v.d;
  for (int64_t idx = GlobalThread(); idx < matrices; idx += GlobalStride()) {
    GreedyInitMatrixAt(v, idx);
  }
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) GreedyInitTokenAt(v, t);
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

__global__ void GreedyUpdateKernel(GreedyView v, int window_k) {
  for (int64_t idx = GlobalThread(); idx < v.group * v.heads.total; idx += GlobalStride()) {
    GreedyUpdateAt(v, window_k, idx);
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
  for (int64_t t = GlobalThread(); t < v.heads.total; t += GlobalStride()) GreedyFinishAt(v, t);
}

}  // namespace

// ---------------------------------------------------------------------------------------------

cudaError_t LaunchGather(const GatherView& v, cudaStream_t stream) {
  ClearStaleError();
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
  ClearStaleError();
  if (v.heads.total == 0) return cudaSuccess;
  TokenScoresKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchNorms(const NormView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.total == 0) return cudaSuccess;
  if (v.d < 1 || v.d > kMaxD) return cudaErrorInvalidValue;
  NormsKernel<<<Blocks(v.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchSoftmaxRows(const SoftmaxView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.num_rows == 0) return cudaSuccess;
  SoftmaxRowsKernel<<<BlocksFor(v.num_rows), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchWindowColumns(const WindowColumnsView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.heads.total == 0) return cudaSuccess;
  const int64_t rows = v.mode == WindowMode::kTova ? 1 : v.group;
  WindowColumnsKernel<<<Blocks(rows * v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchSnapPool(const PoolView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.heads.total == 0) return cudaSuccess;
  if (v.kernel < 1 || v.kernel % 2 == 0) return cudaErrorInvalidValue;
  SnapPoolKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchLaProxCombine(const LaProxView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.heads.total == 0) return cudaSuccess;
  LaProxCombineKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchQuadForm(const QuadFormView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.n == 0) return cudaSuccess;
  QuadFormKernel<<<Blocks(static_cast<int64_t>(v.group) * v.n), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchTovaAlign(const TovaAlignView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.heads.total == 0) return cudaSuccess;
  TovaAlignKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchExpectedLogits(const ExpectedLogitsView& v, cudaStream_t stream) {
  ClearStaleError();
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
  ClearStaleError();
  if (v.heads.total == 0) return cudaSuccess;
  GroupSumKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchCapLogits(const CapLogitsView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.heads.total == 0) return cudaSuccess;
  CapLogitsKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchScaleValues(const ScaleValuesView& v, cudaStream_t stream) {
  ClearStaleError();
  const int64_t items = static_cast<int64_t>(v.group) * v.m * v.d;
  if (items == 0) return cudaSuccess;
  ScaleValuesKernel<<<Blocks(items), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchGramToDouble(const GramToDoubleView& v, cudaStream_t stream) {
  ClearStaleError();
  const int64_t items = static_cast<int64_t>(v.batch) * v.d * v.d;
  if (items == 0) return cudaSuccess;
  GramToDoubleKernel<<<Blocks(items), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchValuesToDouble(const ValuesToDoubleView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.count == 0) return cudaSuccess;
  ValuesToDoubleKernel<<<Blocks(v.group * v.count), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchLeverage(const LeverageView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.m == 0) return cudaSuccess;
  LeverageKernel<<<Blocks(v.m), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

cudaError_t LaunchFillUndefined(const Heads& heads, float* scores, cudaStream_t stream) {
  ClearStaleError();
  if (heads.total == 0) return cudaSuccess;
  FillUndefinedKernel<<<BlocksFor(heads.kv_heads), kThreads, 0, stream>>>(heads, scores);
  return cudaGetLastError();
}

cudaError_t LaunchGreedyInit(const GreedyView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.d < 1 || v.d > kMaxD) return cudaErrorInvalidValue;
  const int64_t items = static_cast<int64_t>(v.heads.kv_heads) * v.group * v.d * v.d;
  GreedyInitKernel<<<Blocks(items > v.heads.total ? items : v.heads.total), kThreads, 0, stream>>>(
      v);
  return cudaGetLastError();
}

cudaError_t LaunchGreedyAdd(const GreedyView& v, int window_k, cudaStream_t stream) {
  ClearStaleError();
  if (v.d < 1 || v.d > kMaxD) return cudaErrorInvalidValue;
  GreedyAddKernel<<<BlocksFor(static_cast<int64_t>(v.heads.kv_heads) * v.group), kThreads, 0,
                    stream>>>(v, window_k);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (v.heads.total == 0) return cudaSuccess;
  GreedyUpdateKernel<<<Blocks(v.group * v.heads.total), kThreads, 0, stream>>>(v, window_k);
  return cudaGetLastError();
}

cudaError_t LaunchGreedySelect(const GreedyView& v, int64_t step, cudaStream_t stream) {
  ClearStaleError();
  GreedySelectKernel<<<BlocksFor(v.heads.kv_heads), kThreads, 0, stream>>>(v, step);
  return cudaGetLastError();
}

cudaError_t LaunchGreedyFinish(const GreedyView& v, cudaStream_t stream) {
  ClearStaleError();
  if (v.heads.total == 0) return cudaSuccess;
  GreedyFinishKernel<<<Blocks(v.heads.total), kThreads, 0, stream>>>(v);
  return cudaGetLastError();
}

}  // namespace kvkeep::cuda_scoring
