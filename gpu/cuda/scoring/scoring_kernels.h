// CUDA kernels of the device scorers (gpu/device_scoring.h), FlashInfer style: each launcher takes
// a plain view struct (layouts in the comments) and a cudaStream_t, enqueues its kernel(s) and
// returns the launch's cudaError_t; it never synchronises. The per-token maths are the
// KVKEEP_HOST_DEVICE functions of gpu/math/ that the CPU scorers call too.
//
// Conventions of one layer: KV head g holds n_g tokens; its tokens are stored at the flat token
// indices [offset_g, offset_g + n_g) of every [N]-long array (N = Σ n_g), and per query head r of
// its group at [r * N + offset_g, ...) of every [G][N] array (G = q_heads / kv_heads).
//
//   ScoreHeads heads{...};                    // device array of HeadSpan
//   RETURN_IF_ERROR(CudaStatus(LaunchKnorm({heads, keys, d, scores}, stream), "knorm"));
#ifndef KVKEEP_GPU_CUDA_SCORING_SCORING_KERNELS_H_
#define KVKEEP_GPU_CUDA_SCORING_SCORING_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>

namespace kvkeep::cuda_scoring {

// One KV head of the layer (device array, kv_heads entries).
struct HeadSpan {
  int n = 0;           // tokens
  int64_t offset = 0;  // first flat token index
  int begin = 0;       // defined scores: head-local [begin, end); the rest get the max of those
  int end = 0;
  int s0 = 0;         // sinks of this head (min(sinks, n))
  int m = 0;          // non-sink tokens n - s0
  int nc = 0;         // capkv-greedy candidates (non-sink, non-window)
  int64_t picks = 0;  // capkv-greedy picks
};

struct Heads {
  const HeadSpan* spans = nullptr;  // [kv_heads]
  const int64_t* starts = nullptr;  // [kv_heads + 1] offsets, starts[kv_heads] = N
  int kv_heads = 0;
  int64_t total = 0;  // N
};

// A run of tokens of one head in one page (device array).
struct GatherRun {
  const void* keys = nullptr;  // [tokens][d] of the page dtype
  const void* values = nullptr;
  uint32_t tokens = 0;
  int64_t dst = 0;  // first flat token index written
};

// dtype: 0 fp32, 1 fp16, 2 bf16. keys_out / values_out [N][d] float (nullptr = not gathered).
struct GatherView {
  const GatherRun* runs = nullptr;
  int num_runs = 0;
  int d = 0;
  int dtype = 0;
  float* keys_out = nullptr;
  float* values_out = nullptr;
};
cudaError_t LaunchGather(const GatherView& v, cudaStream_t stream);

// streaming (head-local index), random (CounterUniform), h2o / observed (group-mean mass
// [G][N] -> scores [N]).
enum class TokenMode { kStreaming = 0, kRandom = 1, kH2o = 2, kObserved = 3 };
struct TokenScoresView {
  Heads heads;
  TokenMode mode = TokenMode::kStreaming;
  const int32_t* positions = nullptr;  // [N]
  uint64_t seed = 0;
  uint64_t layer = 0;
  const float* mass = nullptr;  // [G][N]
  int group = 1;
  int64_t next_position = 0;
  float* scores = nullptr;  // [N]
};
cudaError_t LaunchTokenScores(const TokenScoresView& v, cudaStream_t stream);

// scores[t] = -‖k_t‖ (knorm), or scale * ‖x_t‖ when negate is false.
struct NormView {
  int64_t total = 0;
  const float* x = nullptr;  // [N][d]
  int d = 0;
  bool negate = true;
  float* out = nullptr;  // [N]
};
cudaError_t LaunchNorms(const NormView& v, cudaStream_t stream);

// One softmax row: `len` visible logits of p[offset, offset + n) are turned into probabilities
// (times `scale`), the rest of the n set to 0. exp is gm::ExpFast, the sum is accumulated in
// double.
struct SoftmaxRow {
  int64_t offset = 0;
  int n = 0;
  int len = 0;
  float scale = 1.0f;
};
struct SoftmaxView {
  const SoftmaxRow* rows = nullptr;
  int num_rows = 0;
  float* p = nullptr;
  bool exp_only = false;  // true: p = exp(p - row max) with expf, no normalisation (capkv weights)
};
cudaError_t LaunchSoftmaxRows(const SoftmaxView& v, cudaStream_t stream);

// Window attention reductions. p holds, for head g, [G][rows][n_g] floats at p_offset[g].
//   kSnapKv: col[r][t] = mean over rows of p (tokens j < nc_g = n_g - min(window, n_g) only);
//   kLaProx: col[r][t] = Σ_rows p²;
//   kTova:   col[0][t] = Σ_r p[r][0][j] (rows = 1).
enum class WindowMode { kSnapKv = 0, kLaProx = 1, kTova = 2 };
struct WindowColumnsView {
  Heads heads;
  const int64_t* p_offset = nullptr;  // [kv_heads]
  const float* p = nullptr;
  int group = 1;
  int rows = 1;
  int window_keep = 0;  // policy window (snapkv)
  WindowMode mode = WindowMode::kSnapKv;
  float* col = nullptr;  // [G][N] (tova: [N])
};
cudaError_t LaunchWindowColumns(const WindowColumnsView& v, cudaStream_t stream);

// snapkv: scores[t] = Σ_r PoolAt(col[r] of head g, nc_g, j, kernel, max) / G, j < nc_g.
struct PoolView {
  Heads heads;
  const float* col = nullptr;  // [G][N]
  int group = 1;
  int window_keep = 0;
  int kernel = 7;
  bool max_pool = true;
  float* scores = nullptr;
};
cudaError_t LaunchSnapPool(const PoolView& v, cudaStream_t stream);

// laprox: scores[t] = Σ_r sqrt(col[r][t]) * vnorm[r or 0][t].
struct LaProxView {
  Heads heads;
  const float* col = nullptr;    // [G][N]
  const float* vnorm = nullptr;  // [G][N] when per_head_vnorm, else [N]
  bool per_head_vnorm = false;
  int group = 1;
  float* scores = nullptr;
};
cudaError_t LaunchLaProxCombine(const LaProxView& v, cudaStream_t stream);

// vnorm[r][offset + j] = sqrt(max(vm_r[j] · v_j, 0)) for one head (vm: [G][n][d], v: [n][d]).
struct QuadFormView {
  const float* vm = nullptr;
  const float* v = nullptr;
  int n = 0;
  int d = 0;
  int group = 1;
  int64_t offset = 0;
  int64_t total = 0;
  float* vnorm = nullptr;  // [G][N]
};
cudaError_t LaunchQuadForm(const QuadFormView& v, cudaStream_t stream);

// tova: scores[t] = Σ_o mass[o's token at t's position] / q_heads (absent = 0), o in order.
struct TovaAlignView {
  Heads heads;
  const int32_t* positions = nullptr;  // [N]
  const float* mass = nullptr;         // [N]
  int q_heads = 1;
  float* scores = nullptr;
};
cudaError_t LaunchTovaAlign(const TovaAlignView& v, cudaStream_t stream);

// expected: logits[r][t] = (R̄ᵀk_t)·mu_r (+ (R̄ᵀk_t)²·var_r) for the non-sink tokens.
struct ExpectedLogitsView {
  Heads heads;
  const float* keys = nullptr;         // [N][d]
  const float* mu = nullptr;           // [q_heads][d] (μ/√d)
  const float* var = nullptr;          // [q_heads][d] (σ²/(2d)) or nullptr
  const float* cos_f = nullptr;        // [rotary_dim / 2]
  const float* minus_sin_f = nullptr;  // [rotary_dim / 2]
  int d = 0;
  int rotary_dim = 0;
  bool interleaved = false;
  int group = 1;
  float* logits = nullptr;  // [G][N]
};
cudaError_t LaunchExpectedLogits(const ExpectedLogitsView& v, cudaStream_t stream);

// scores[t] = (Σ_r p[r][t]) * vnorm[t] for non-sink tokens (p already scaled by 1/G).
struct GroupSumView {
  Heads heads;
  const float* p = nullptr;      // [G][N]
  const float* vnorm = nullptr;  // [N] or nullptr (= 1)
  int group = 1;
  float* scores = nullptr;
};
cudaError_t LaunchGroupSum(const GroupSumView& v, cudaStream_t stream);

// capkv*: w[r][t] = CapLogit(anchor_r, norm_r, k_t) for the non-sink tokens (exp applied later).
struct CapLogitsView {
  Heads heads;
  const float* keys = nullptr;         // [N][d]
  const float* anchor = nullptr;       // [q_heads][d]
  const float* anchor_norm = nullptr;  // [q_heads]
  int d = 0;
  int group = 1;
  bool dot_form = false;
  float tau = 5.0f;
  float inv_sqrt_d = 1.0f;
  float* w = nullptr;  // [G][N]
};
cudaError_t LaunchCapLogits(const CapLogitsView& v, cudaStream_t stream);

// capkv, one head: scaled[r][j][i] = v_{s0+j}[i] * sqrt(w[r][offset + s0 + j] + 1e-6).
struct ScaleValuesView {
  const float* values = nullptr;  // head's first non-sink value, [m][d]
  const float* w = nullptr;       // &w[offset + s0], row stride total
  int64_t total = 0;
  int m = 0;
  int d = 0;
  int group = 1;
  float* scaled = nullptr;  // [G][m][d]
};
cudaError_t LaunchScaleValues(const ScaleValuesView& v, cudaStream_t stream);

// a[b] = (double) gram[b] + I for b < batch (d×d each).
struct GramToDoubleView {
  const float* gram = nullptr;
  double* a = nullptr;
  int d = 0;
  int batch = 0;
};
cudaError_t LaunchGramToDouble(const GramToDoubleView& v, cudaStream_t stream);

// capkv, one head: y[r] = (double) values (m×d) for r < G (right-hand sides of the solves).
struct ValuesToDoubleView {
  const float* values = nullptr;
  int64_t count = 0;  // m * d
  int group = 1;
  double* y = nullptr;
};
cudaError_t LaunchValuesToDouble(const ValuesToDoubleView& v, cudaStream_t stream);

// capkv, one head: scores[offset + s0 + j] = Σ_r w[r][…] ‖y_r[:, j]‖² / G (y_r = L_r⁻¹ V column j).
struct LeverageView {
  const double* y = nullptr;  // [G][m][d]
  const float* w = nullptr;   // &w[offset + s0], row stride total
  int64_t total = 0;
  int m = 0;
  int d = 0;
  int group = 1;
  float* scores = nullptr;  // &scores[offset + s0]
};
cudaError_t LaunchLeverage(const LeverageView& v, cudaStream_t stream);

// Per head: the max of scores over head-local [begin, end) (0 when empty) written outside it.
cudaError_t LaunchFillUndefined(const Heads& heads, float* scores, cudaStream_t stream);

// capkv-greedy (see ScoreCapKvGreedy on the CPU): state per q head h = g * G + r: B_h = A_S⁻¹
// (d×d double), q_h[t] = v_tᵀ B_h v_t (double, [G][N]), weights w ([G][N], cosine form).
struct GreedyView {
  Heads heads;
  const float* values = nullptr;  // [N][d]
  const float* w = nullptr;       // [G][N]
  double* q = nullptr;            // [G][N]
  double* b = nullptr;            // [q_heads][d][d]
  double* z = nullptr;            // [q_heads][d]
  double* inv_denom = nullptr;    // [q_heads]
  int* add = nullptr;             // [kv_heads]: head-local non-sink index to add next, -1 none
  float* scores = nullptr;        // [N]
  int d = 0;
  int group = 1;
};
// B_h = I, q_h[t] = ‖v_t‖², candidates' scores = -1.
cudaError_t LaunchGreedyInit(const GreedyView& v, cudaStream_t stream);
// Adds token t to S of every head: t = nc_g + window_k when window_k >= 0 (and < m_g), else add[g].
cudaError_t LaunchGreedyAdd(const GreedyView& v, int window_k, cudaStream_t stream);
// Picks, per head with step < picks, the unpicked candidate of largest gain (lowest index on
// ties), records its gain as its score and sets add[g] (to -1 when no later step reads gains).
cudaError_t LaunchGreedySelect(const GreedyView& v, int64_t step, cudaStream_t stream);
// Unpicked candidates score their current gain.
cudaError_t LaunchGreedyFinish(const GreedyView& v, cudaStream_t stream);

}  // namespace kvkeep::cuda_scoring

#endif  // KVKEEP_GPU_CUDA_SCORING_SCORING_KERNELS_H_
