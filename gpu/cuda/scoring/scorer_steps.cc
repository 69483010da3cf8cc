#include "gpu/cuda/scoring/scorer_steps.h"

#include <cstdint>

#include "common/status_macros.h"
#include "gpu/cuda/scoring/sketch_plan.h"

namespace kvkeep::cuda_scoring {
namespace {

using Kind = DeviceScorerKind;

// One layer's request, plan and scratch as the steps see them.
struct Layer {
  const DeviceLayerRequest& r;
  const LayerPlan& plan;
  const ScratchLayout& l;
  char* base;
  ScoringSteps& steps;

  Kind kind() const { return r.scorer.kind; }
  template <typename T>
  T* At(size_t offset) const {
    return offset == kNone ? nullptr : reinterpret_cast<T*>(base + offset);
  }
  Heads heads() const {
    return Heads{At<const HeadSpan>(l.spans), At<const int64_t>(l.starts), plan.kv_heads,
                 plan.total};
  }
  const int32_t* positions() const { return At<const int32_t>(l.positions); }
  const float* keys() const { return At<const float>(l.keys); }
  const float* values() const { return At<const float>(l.values); }
  float* out() const { return At<float>(l.scores); }
  SoftmaxView Softmax(float* p, bool exp_only) const {
    return SoftmaxView{At<const SoftmaxRow>(l.softmax_rows),
                       static_cast<int>(plan.softmax_rows.size()), p, exp_only};
  }
};

absl::Status GatherPages(const Layer& x) {
  if (x.plan.runs.empty()) return absl::OkStatus();
  const DevicePageDType t = x.r.dtype;
  const int dtype = t == DevicePageDType::kFp32 ? 0 : (t == DevicePageDType::kFp16 ? 1 : 2);
  return x.steps.Gather({x.At<const GatherRun>(x.l.runs), static_cast<int>(x.plan.runs.size()),
                         x.plan.d, dtype, x.At<float>(x.l.keys), x.At<float>(x.l.values)});
}

// streaming, random, h2o, observed: one pass over the tokens.
absl::Status TokenScorer(const Layer& x) {
  TokenScoresView v;
  v.heads = x.heads();
  v.mode = x.kind() == Kind::kStreaming ? TokenMode::kStreaming
           : x.kind() == Kind::kRandom  ? TokenMode::kRandom
           : x.kind() == Kind::kH2o     ? TokenMode::kH2o
                                        : TokenMode::kObserved;
  v.positions = x.positions();
  v.seed = x.r.scorer.seed;
  v.layer = static_cast<uint64_t>(x.r.layer_index);
  v.mass = x.At<const float>(x.l.mass);
  v.group = x.plan.group;
  v.next_position = x.plan.next;
  v.scores = x.out();
  return x.steps.TokenScores(v);
}

// tova, snapkv, laprox: per KV head the window queries' logits against its keys (one GEMM), the
// causal softmax rows, then the column reductions into col [G][N].
absl::Status WindowAttention(const Layer& x) {
  const LayerPlan& lp = x.plan;
  const int G = lp.group, d = lp.d, window = x.r.window;
  const bool tova = x.kind() == Kind::kTova;
  const float* wq = x.At<const float>(x.l.window_queries);
  float* p = x.At<float>(x.l.p);
  for (int g = 0; g < lp.kv_heads; ++g) {
    const int n = x.r.heads[g].n;
    if (n == 0) continue;
    const int64_t q0 = static_cast<int64_t>(g) * G * window * d;
    GemmCall logits;
    logits.what = "window logits GEMM";
    logits.trans_a = true;
    logits.m = n;
    logits.n = G * lp.rows;
    logits.k = d;
    logits.alpha = lp.inv_sqrt_d;
    logits.a = x.keys() + lp.starts[g] * d;
    logits.lda = d;
    // tova reads only the last window query of every q head.
    logits.b = tova ? wq + q0 + static_cast<int64_t>(window - 1) * d : wq + q0;
    logits.ldb = tova ? window * d : d;
    logits.beta = 0.0f;
    logits.c = p + lp.p_offset[g];
    logits.ldc = n;
    RETURN_IF_ERROR(x.steps.Gemm(logits));
  }
  RETURN_IF_ERROR(x.steps.SoftmaxRows(x.Softmax(p, false)));
  WindowColumnsView wc;
  wc.heads = x.heads();
  wc.p_offset = x.At<const int64_t>(x.l.p_offset);
  wc.p = p;
  wc.group = G;
  wc.rows = lp.rows;
  wc.window_keep = x.r.scorer.window;
  wc.mode = tova                          ? WindowMode::kTova
            : x.kind() == Kind::kSnapKv ? WindowMode::kSnapKv
                                        : WindowMode::kLaProx;
  wc.col = x.At<float>(x.l.col);
  return x.steps.WindowColumns(wc);
}

// laprox: vnorm [G][N] = ‖W_O,h v_t‖ through the Gram matrices when W_O was sent, else ‖v_t‖ [N].
absl::Status LaProxValueNorms(const Layer& x) {
  const LayerPlan& lp = x.plan;
  const int G = lp.group, d = lp.d;
  float* vnorm = x.At<float>(x.l.vnorm);
  if (x.l.wo_gram == kNone) {
    return x.steps.Norms({lp.total, x.values(), d, false, vnorm});
  }
  float* vm = x.At<float>(x.l.vm);
  for (int g = 0; g < lp.kv_heads; ++g) {
    const int n = x.r.heads[g].n;
    if (n == 0) continue;
    const float* head_values = x.values() + lp.starts[g] * d;
    // vm_q = V_g · M_{gG+q} (row-major [n][d]) for every q of the group.
    GemmCall gram;
    gram.what = "W_O Gram GEMM";
    gram.m = d;
    gram.n = n;
    gram.k = d;
    gram.alpha = 1.0f;
    gram.a = x.At<const float>(x.l.wo_gram) + static_cast<int64_t>(g) * G * d * d;
    gram.lda = d;
    gram.stride_a = static_cast<long long>(d) * d;
    gram.b = head_values;
    gram.ldb = d;
    gram.stride_b = 0;
    gram.beta = 0.0f;
    gram.c = vm;
    gram.ldc = d;
    gram.stride_c = static_cast<long long>(n) * d;
    gram.strided_batched = true;
    gram.batch = G;
    RETURN_IF_ERROR(x.steps.Gemm(gram));
    RETURN_IF_ERROR(x.steps.QuadForm({vm, head_values, n, d, G, lp.starts[g], lp.total, vnorm}));
  }
  return absl::OkStatus();
}

absl::Status WindowScorer(const Layer& x) {
  RETURN_IF_ERROR(WindowAttention(x));
  const Heads heads = x.heads();
  const float* col = x.At<const float>(x.l.col);
  const DeviceScorerParams& p = x.r.scorer;
  switch (x.kind()) {
    case Kind::kTova:
      return x.steps.TovaAlign({heads, x.positions(), col, x.plan.q_heads, x.out()});
    case Kind::kSnapKv:
      RETURN_IF_ERROR(x.steps.SnapPool(
          {heads, col, x.plan.group, p.window, p.pool_kernel, p.pool_max, x.out()}));
      return x.steps.FillUndefined(heads, x.out());
    default:
      RETURN_IF_ERROR(LaProxValueNorms(x));
      return x.steps.LaProxCombine({heads, col, x.At<const float>(x.l.vnorm),
                                    x.l.wo_gram != kNone, x.plan.group, x.out()});
  }
}

// expected: logits of the expected query against R̄ᵀk, softmax over the non-sink tokens, times
// ‖v‖, summed over the group.
absl::Status ExpectedScorer(const Layer& x) {
  float* logits = x.At<float>(x.l.logits);
  float* vnorm = x.At<float>(x.l.vnorm);
  ExpectedLogitsView v;
  v.heads = x.heads();
  v.keys = x.keys();
  v.mu = x.At<const float>(x.l.mu);
  v.var = x.At<const float>(x.l.var);
  v.cos_f = x.At<const float>(x.l.cos);
  v.minus_sin_f = x.At<const float>(x.l.minus_sin);
  v.d = x.plan.d;
  v.rotary_dim = x.plan.rotary_dim;
  v.interleaved = x.r.rope.interleaved;
  v.group = x.plan.group;
  v.logits = logits;
  RETURN_IF_ERROR(x.steps.ExpectedLogits(v));
  RETURN_IF_ERROR(x.steps.SoftmaxRows(x.Softmax(logits, false)));
  RETURN_IF_ERROR(x.steps.Norms({x.plan.total, x.values(), x.plan.d, false, vnorm}));
  RETURN_IF_ERROR(x.steps.GroupSum({x.heads(), logits, vnorm, x.plan.group, x.out()}));
  return x.steps.FillUndefined(x.heads(), x.out());
}

// capkv*: the weights w [G][N] = exp(logit - row max) of the anchors against the keys.
absl::Status CapWeights(const Layer& x) {
  float* w = x.At<float>(x.l.logits);
  CapLogitsView cl;
  cl.heads = x.heads();
  cl.keys = x.keys();
  cl.anchor = x.At<const float>(x.l.anchor);
  cl.anchor_norm = x.At<const float>(x.l.anchor_norm);
  cl.d = x.plan.d;
  cl.group = x.plan.group;
  cl.dot_form = x.kind() == Kind::kCapKvDot;
  cl.tau = static_cast<float>(x.r.scorer.capkv_tau);
  cl.inv_sqrt_d = x.plan.inv_sqrt_d;
  cl.w = w;
  RETURN_IF_ERROR(x.steps.CapLogits(cl));
  return x.steps.SoftmaxRows(x.Softmax(w, true));
}

// capkv-greedy: the window tokens join S first (they are kept anyway), then up to max_picks
// greedy picks, each followed by the rank-1 update of the picked token.
absl::Status CapKvGreedyScorer(const Layer& x) {
  GreedyView v;
  v.heads = x.heads();
  v.values = x.values();
  v.w = x.At<const float>(x.l.logits);
  v.q = x.At<double>(x.l.greedy_q);
  v.b = x.At<double>(x.l.greedy_b);
  v.z = x.At<double>(x.l.greedy_z);
  v.inv_denom = x.At<double>(x.l.inv_denom);
  v.add = x.At<int>(x.l.add);
  v.scores = x.out();
  v.d = x.plan.d;
  v.group = x.plan.group;
  RETURN_IF_ERROR(x.steps.GreedyInit(v));
  for (int k = 0; k < x.plan.max_window_adds; ++k) {
    RETURN_IF_ERROR(x.steps.GreedyAdd(v, k));
  }
  for (int64_t step = 0; step < x.plan.max_picks; ++step) {
    RETURN_IF_ERROR(x.steps.GreedySelect(v, step));
    RETURN_IF_ERROR(x.steps.GreedyAdd(v, -1));
  }
  RETURN_IF_ERROR(x.steps.GreedyFinish(v));
  return x.steps.FillUndefined(x.heads(), x.out());
}

// capkv, capkv-dot, per KV head: A = (√w V)ᵀ(√w V) + I in double for each q head of the group.
absl::Status CapKvGramMatrices(const Layer& x) {
  const LayerPlan& lp = x.plan;
  const int G = lp.group, d = lp.d;
  const float* w = x.At<const float>(x.l.logits);
  float* scaled = x.At<float>(x.l.scaled);
  float* gram = x.At<float>(x.l.gram);
  for (int g = 0; g < lp.kv_heads; ++g) {
    const int m = lp.spans[g].m;
    if (m == 0) continue;
    const int64_t first = lp.starts[g] + lp.spans[g].s0;
    RETURN_IF_ERROR(
        x.steps.ScaleValues({x.values() + first * d, w + first, lp.total, m, d, G, scaled}));
    GemmCall call;
    call.what = "capkv Gram GEMM";
    call.trans_b = true;
    call.m = d;
    call.n = d;
    call.k = m;
    call.alpha = 1.0f;
    call.a = scaled;
    call.lda = d;
    call.stride_a = static_cast<long long>(m) * d;
    call.b = scaled;
    call.ldb = d;
    call.stride_b = static_cast<long long>(m) * d;
    call.beta = 0.0f;
    call.c = gram;
    call.ldc = d;
    call.stride_c = static_cast<long long>(d) * d;
    call.strided_batched = true;
    call.batch = G;
    RETURN_IF_ERROR(x.steps.Gemm(call));
    RETURN_IF_ERROR(
        x.steps.GramToDouble({gram, x.At<double>(x.l.a) + static_cast<int64_t>(g) * G * d * d, d,
                              G}));
  }
  return absl::OkStatus();
}

// capkv, capkv-dot: A = L Lᵀ for every matrix at once, then per KV head Y = L⁻¹ V and the
// leverage Σ_r w ‖y‖² / G.
absl::Status CapKvScorer(const Layer& x) {
  const LayerPlan& lp = x.plan;
  const int G = lp.group, d = lp.d;
  RETURN_IF_ERROR(CapKvGramMatrices(x));
  if (lp.chol_batch > 0) {
    RETURN_IF_ERROR(x.steps.CholeskyBatched(
        {d, x.At<double*>(x.l.chol_ptrs), d, x.At<int>(x.l.info), lp.chol_batch}));
  }
  const float* w = x.At<const float>(x.l.logits);
  double* y = x.At<double>(x.l.y);
  for (int g = 0; g < lp.kv_heads; ++g) {
    const int m = lp.spans[g].m;
    if (m == 0) continue;
    const int64_t first = lp.starts[g] + lp.spans[g].s0;
    RETURN_IF_ERROR(
        x.steps.ValuesToDouble({x.values() + first * d, static_cast<int64_t>(m) * d, G, y}));
    RETURN_IF_ERROR(x.steps.TrsmBatched({d, m, 1.0, x.At<const double* const>(x.l.trsm_a) + g * G,
                                         d, x.At<double* const>(x.l.trsm_b) + g * G, d, G}));
    RETURN_IF_ERROR(x.steps.Leverage({y, w + first, lp.total, m, d, G, x.out() + first}));
  }
  return x.steps.FillUndefined(x.heads(), x.out());
}

// qsketch, qsketch-post (sketch_plan.h): per KV head, logits of its sketch rows against its keys
// (one GEMM into p [rows][n]), a full softmax per row, then scores = pᵀ · coefficients (a GEMV).
absl::Status QSketchScorer(const Layer& x) {
  const LayerPlan& lp = x.plan;
  const int d = lp.d;
  float* p = x.At<float>(x.l.p);
  const float* rows = x.At<const float>(x.l.sketch_rows);
  const float* coef = x.At<const float>(x.l.sketch_coef);
  for (int g = 0; g < lp.kv_heads; ++g) {
    const int n = x.r.heads[g].n;
    const int64_t first = lp.sketch_row_start[g];
    const int count = static_cast<int>(lp.sketch_row_start[g + 1] - first);
    if (n == 0 || count == 0) continue;
    GemmCall logits;
    logits.what = "qsketch logits GEMM";
    logits.trans_a = true;
    logits.m = n;
    logits.n = count;
    logits.k = d;
    logits.alpha = 1.0f;  // rows are already scaled by 1/√d
    logits.a = x.keys() + lp.starts[g] * d;
    logits.lda = d;
    logits.b = rows + first * d;
    logits.ldb = d;
    logits.beta = 0.0f;
    logits.c = p;
    logits.ldc = n;
    RETURN_IF_ERROR(x.steps.Gemm(logits));
    RETURN_IF_ERROR(x.steps.SoftmaxRows(
        SoftmaxView{x.At<const SoftmaxRow>(x.l.softmax_rows) + first, count, p, false}));
    GemmCall reduce;
    reduce.what = "qsketch coefficient GEMV";
    reduce.m = n;
    reduce.n = 1;
    reduce.k = count;
    reduce.alpha = 1.0f;
    reduce.a = p;
    reduce.lda = n;
    reduce.b = coef + first;
    reduce.ldb = count;
    reduce.beta = 0.0f;
    reduce.c = x.out() + lp.starts[g];
    reduce.ldc = n;
    RETURN_IF_ERROR(x.steps.Gemm(reduce));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status RunScorerSteps(const DeviceLayerRequest& request, const LayerPlan& plan,
                            const ScratchLayout& layout, char* scratch, ScoringSteps& steps) {
  const Layer x{request, plan, layout, scratch, steps};
  RETURN_IF_ERROR(GatherPages(x));
  switch (x.kind()) {
    case Kind::kStreaming:
    case Kind::kRandom:
    case Kind::kH2o:
    case Kind::kObserved:
      return TokenScorer(x);
    case Kind::kKnorm:
      return steps.Norms({plan.total, x.keys(), plan.d, true, x.out()});
    case Kind::kTova:
    case Kind::kSnapKv:
    case Kind::kLaProx:
      return WindowScorer(x);
    case Kind::kExpected:
      return ExpectedScorer(x);
    case Kind::kCapKv:
    case Kind::kCapKvDot:
      RETURN_IF_ERROR(CapWeights(x));
      return CapKvScorer(x);
    case Kind::kCapKvGreedy:
      RETURN_IF_ERROR(CapWeights(x));
      return CapKvGreedyScorer(x);
    case Kind::kQSketch:
    case Kind::kQSketchPost:
      return QSketchScorer(x);
  }
  return absl::InvalidArgumentError("unknown device scorer");
}

}  // namespace kvkeep::cuda_scoring
