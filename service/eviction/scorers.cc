#include "service/eviction/scorers.h"

#include <cblas.h>
#include <dlfcn.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <mutex>
#include <thread>

#include "common/status_macros.h"
#include "gpu/math/attention_math.h"
#include "gpu/math/rope_math.h"
#include "gpu/math/scoring_math.h"
#include "service/eviction/attention_mass.h"
#include "service/eviction/scorer_kernels.h"
#include "service/eviction/scorers_internal.h"
#include "service/eviction/worker_pool.h"

namespace kvkeep::eviction {
namespace {

namespace gm = ::kvkeep::gpu_math;
using internal::Ctx;
using internal::ExpectedLogits;
using internal::FillUndefinedWithMax;
using internal::Grow;
using internal::KeysDotQueries;
using internal::ScoreCapKv;
using internal::ScoreCapKvGreedy;
using internal::ScoreQSketch;

// Below this many multiply-adds per layer a second worker costs more than it saves.
constexpr double kParallelWork = 1 << 18;

// ScoreLayer spreads the KV heads of a layer over the workspace's threads and calls BLAS inside each
// worker. A multithreaded BLAS underneath (OpenBLAS's pthreads build, Debian's default) then runs
// its own threads on the same cores: 2 levels of threads oversubscribe them and OpenBLAS's idle
// threads spin in sched_yield (kvkeep-bench score on 2 cores: capkv at 32k tokens 650 -> 400 ms
// per layer, snapkv 133 -> 100 ms). While at least one multi-worker ScoreLayer runs, OpenBLAS is held
// at one thread per caller; the previous setting is restored when the last one ends. The entry
// points are looked up with dlsym, so with another BLAS this does nothing. Process-wide: another
// OpenBLAS user in the process runs single-threaded while scoring is in progress.
class BlasThreadsPinned {
 public:
  explicit BlasThreadsPinned(bool pin) : pin_(pin && Api().set != nullptr) {
    if (!pin_) return;
    std::lock_guard<std::mutex> lock(Mu());
    if (Active()++ == 0) {
      Saved() = Api().get != nullptr ? Api().get() : 0;
      if (Saved() != 1) Api().set(1);
    }
  }
  ~BlasThreadsPinned() {
    if (!pin_) return;
    std::lock_guard<std::mutex> lock(Mu());
    if (--Active() == 0 && Saved() > 1) Api().set(Saved());
  }
  BlasThreadsPinned(const BlasThreadsPinned&) = delete;
  BlasThreadsPinned& operator=(const BlasThreadsPinned&) = delete;

 private:
  struct Entry {
    void (*set)(int) = nullptr;
    int (*get)() = nullptr;
  };
  static const Entry& Api() {
    static const Entry e = [] {
      Entry x;
      x.set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
      x.get = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
      return x;
    }();
    return e;
  }
  static std::mutex& Mu() {
    static std::mutex mu;
    return mu;
  }
  static int& Active() {
    static int active = 0;
    return active;
  }
  static int& Saved() {
    static int saved = 0;
    return saved;
  }
  bool pin_;
};

// Runs fn(index, worker) for index in [0, count) on the caller and up to `workers` - 1 helpers of
// the shared pool (worker < workers indexes the workspace's scratch). Heads are claimed one at a
// time, so a worker that the scheduler holds back does not hold the layer up.
template <typename Fn>
void ParallelFor(int count, int workers, Fn fn) {
  WorkerPool::Shared().Run(count, workers, fn);
}

inline int32_t PositionOf(const HeadKV& h, int j) { return h.positions ? h.positions[j] : j; }

// Whether x[0..n) are all finite: x * 0 is (+-)0 for finite x and NaN for NaN/Inf. Eight explicit
// lanes so GCC vectorises it without -ffast-math. The scorers run it over intermediates of their
// own pass (norms, logits) that are non-finite whenever an input they were computed from is, so
// validation does not read the keys and values a second time (ValidateLayerInputsDeferringScans).
inline bool AllFinite(const float* x, size_t n) {
  float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += x[i + l] * 0.0f;
  }
  float total = 0.0f;
  for (; i < n; ++i) total += x[i] * 0.0f;
  for (int l = 0; l < 8; ++l) total += acc[l];
  return total == 0.0f;
}

// Whether the keys and values of `h` that the scorer reads are all finite (for the scorers whose
// pass does not propagate every non-finite input: GEMM- and solve-based ones).
bool HeadFinite(const HeadKV& h, int d, const Needs& needs) {
  const size_t count = static_cast<size_t>(h.n) * d;
  return (!needs.keys || AllFinite(h.keys, count)) && (!needs.values || AllFinite(h.values, count));
}

// Number of tokens of `h` whose position is <= pos (positions ascend).
int VisibleCount(const HeadKV& h, int64_t pos) { return gm::VisibleCount(h.positions, h.n, pos); }

// knorm: minus the L2 norm of each key. False when a norm is not finite (a non-finite key, or a
// finite one whose square overflows).
KVKEEP_SIMD_CLONES bool ScoreKnorm(const HeadKV& h, int d, float* s) {
  // (Four keys at a time through a blocked dot kernel measured 1.7x slower here: memory-bound.)
  for (int j = 0; j < h.n; ++j) s[j] = -std::sqrt(gm::SquaredNorm(h.keys + static_cast<size_t>(j) * d, d));
  return AllFinite(s, static_cast<size_t>(h.n));
}

// ---------------------------------------------------------------------------------------------
// Window attention (snapkv, laprox, tova).

// Turns rows of logits (row i for a query at position qpos0 + i * qpos_step) into softmax
// probabilities over the keys that query sees; keys beyond its position get 0.
KVKEEP_SIMD_CLONES void SoftmaxRows(const HeadKV& h, float* p, int rows, int64_t qpos0,
                                    int qpos_step) {
  const int n = h.n;
  for (int i = 0; i < rows; ++i) {
    float* row = p + static_cast<size_t>(i) * n;
    const int len = VisibleCount(h, qpos0 + static_cast<int64_t>(i) * qpos_step);
    if (len > 0) {
      const float m = gm::RowMax(row, len);
      const double sum = gm::ExpShiftInPlace(row, len, m);
      const float inv = static_cast<float>(1.0 / sum);
      for (int j = 0; j < len; ++j) row[j] *= inv;
    }
    std::fill(row + len, row + n, 0.0f);
  }
}

const float* WindowQuery(const Ctx& c, int q_head, int i) {
  return c.in.window_queries.data() +
         (static_cast<size_t>(q_head) * c.in.window + i) * static_cast<size_t>(c.d);
}

// The window queries of a group are contiguous ([q_heads][window][d]), so one GEMM of G * w rows
// scores the whole group and reads the keys once.
void GroupWindowAttention(const Ctx& c, int g, ScoringWorkspace::Scratch& sc, float** p_out) {
  const HeadKV& h = c.in.heads[g];
  const int w = c.in.window;
  float* p = Grow(sc.f[0], static_cast<size_t>(c.group) * w * h.n);
  const float* q = WindowQuery(c, g * c.group, 0);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, c.group * w, h.n, c.d, c.inv_sqrt_d, q, c.d,
              h.keys, c.d, 0.0f, p, h.n);
  for (int r = 0; r < c.group; ++r) {
    SoftmaxRows(h, p + static_cast<size_t>(r) * w * h.n, w, c.next - w, 1);
  }
  *p_out = p;
}

KVKEEP_SIMD_CLONES void ScoreSnapKv(const Ctx& c, int g, ScoringWorkspace::Scratch& sc,
                                    std::vector<float>& out) {
  const HeadKV& h = c.in.heads[g];
  const int n = h.n;
  const int w = c.in.window;
  const int nc = n - std::min(c.policy.window, n);  // pooled range: tokens outside the window
  float* p;
  GroupWindowAttention(c, g, sc, &p);
  float* col = Grow(sc.f[1], static_cast<size_t>(n));
  std::fill(out.begin(), out.end(), 0.0f);
  const float inv_w = 1.0f / static_cast<float>(w);
  const float inv_g = 1.0f / static_cast<float>(c.group);
  for (int r = 0; r < c.group; ++r) {
    std::fill(col, col + nc, 0.0f);
    for (int i = 0; i < w; ++i) {
      const float* row = p + (static_cast<size_t>(r) * w + i) * n;
      for (int j = 0; j < nc; ++j) col[j] += row[j];
    }
    for (int j = 0; j < nc; ++j) col[j] *= inv_w;
    for (int j = 0; j < nc; ++j) {
      out[j] += gm::PoolAt(col, nc, j, c.policy.pool_kernel, c.policy.pool_max) * inv_g;
    }
  }
  FillUndefinedWithMax(out, 0, nc);
}

KVKEEP_SIMD_CLONES void ScoreLaProx(const Ctx& c, int g, ScoringWorkspace::Scratch& sc,
                                    std::vector<float>& out) {
  const HeadKV& h = c.in.heads[g];
  const int n = h.n;
  const int d = c.d;
  const int w = c.in.window;
  float* p;
  GroupWindowAttention(c, g, sc, &p);
  float* col = Grow(sc.f[1], static_cast<size_t>(n));
  float* vnorm = Grow(sc.f[2], static_cast<size_t>(n));
  std::fill(out.begin(), out.end(), 0.0f);
  const bool gram = !c.in.wo_gram.empty();
  float* vm = gram ? Grow(sc.f[3], static_cast<size_t>(n) * d) : nullptr;
  if (!gram) {
    for (int j = 0; j < n; ++j) vnorm[j] = std::sqrt(gm::SquaredNorm(h.values + size_t(j) * d, d));
  }
  for (int r = 0; r < c.group; ++r) {
    const int qh = g * c.group + r;
    if (gram) {
      // v_j^T M v_j = row j of (V M) dotted with v_j.
      const float* m = c.in.wo_gram.data() + static_cast<size_t>(qh) * d * d;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, d, d, 1.0f, h.values, d, m, d,
                  0.0f, vm, d);
      for (int j = 0; j < n; ++j) {
        const float quad = gm::Dot(vm + size_t(j) * d, h.values + size_t(j) * d, d);
        vnorm[j] = std::sqrt(std::max(quad, 0.0f));
      }
    }
    std::fill(col, col + n, 0.0f);
    for (int i = 0; i < w; ++i) {
      const float* row = p + (static_cast<size_t>(r) * w + i) * n;
      for (int j = 0; j < n; ++j) col[j] += row[j] * row[j];
    }
    for (int j = 0; j < n; ++j) out[j] += std::sqrt(col[j]) * vnorm[j];
  }
}

// Attention of the last window query of every query head of KV head g, summed over the group. The
// logits are G dot products per key, computed while the key is in L1, so the keys are read once.
// (An sgemm with G = 4 rows spends more time packing the keys than multiplying: 3x slower here.)
// False when a logit is not finite (a non-finite key, or overflow).
KVKEEP_SIMD_CLONES bool TovaGroupMass(const Ctx& c, int g, ScoringWorkspace::Scratch& sc,
                                      float* mass) {
  const HeadKV& h = c.in.heads[g];
  const int n = h.n;
  const int d = c.d;
  const int G = c.group;
  float* p = Grow(sc.f[0], static_cast<size_t>(G) * n);
  float* q = Grow(sc.f[2], static_cast<size_t>(G) * d);
  for (int r = 0; r < G; ++r) {
    const float* src = WindowQuery(c, g * G + r, c.in.window - 1);
    std::copy(src, src + d, q + static_cast<size_t>(r) * d);
  }
  // One key at a time, so the keys are read as one stream with a constant stride: two keys at a
  // time (each query chunk loaded once for both) measured 1.4-2.8x slower, as the interleaved
  // reads of two rows defeat the hardware prefetcher on this memory-bound loop (software prefetch
  // won back part of it, never all).
  for (int j = 0; j < n; ++j) {
    KeysDotQueries<1>(h.keys + static_cast<size_t>(j) * d, q, G, d, c.inv_sqrt_d, p + j,
                      static_cast<size_t>(n));
  }
  if (!AllFinite(p, static_cast<size_t>(G) * n)) return false;
  SoftmaxRows(h, p, G, c.next - 1, 0);
  std::fill(mass, mass + n, 0.0f);
  for (int r = 0; r < G; ++r) {
    const float* row = p + static_cast<size_t>(r) * n;
    for (int j = 0; j < n; ++j) mass[j] += row[j];
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Query-moment scorers (expected here; capkv* in scorers_capkv.cc).

// Expected Attention (kvpress expected_attention_press.py): per query head, logits
// k·(R̄μ)/√d + kᵀ(R̄ΣR̄ᵀ)k/(2d) = (R̄ᵀk)·μ/√d + Σ_i σ²_i (R̄ᵀk)_i²/(2d), softmax over the
// non-sink tokens, mean over the group, times ‖v‖.
// False when a logit or value norm is not finite (a non-finite key or value, or overflow); the
// sinks, which the pass skips, are checked on their own.
KVKEEP_SIMD_CLONES bool ScoreExpected(const Ctx& c, int g, const std::vector<double>& cs,
                   const std::vector<double>& sn, ScoringWorkspace::Scratch& sc,
                   std::vector<float>& out) {
  const HeadKV& h = c.in.heads[g];
  const int n = h.n;
  const int d = c.d;
  const int G = c.group;
  const int rd = EffectiveRotaryDim(c.in);
  const int s0 = std::min(c.policy.sinks, n);
  const int m = n - s0;
  std::fill(out.begin(), out.end(), 0.0f);
  const size_t sink_floats = static_cast<size_t>(s0) * d;
  if (!AllFinite(h.keys, sink_floats) || !AllFinite(h.values, sink_floats)) return false;
  if (m == 0) return true;
  const bool cov = !c.in.query_sq_sum.empty();
  // Per query head: mu/√d and σ²/(2d) as float rows.
  float* mu = Grow(sc.f[0], static_cast<size_t>(G) * d);
  float* var = Grow(sc.f[1], static_cast<size_t>(G) * d);
  float* logits = Grow(sc.f[2], static_cast<size_t>(G) * m);
  float* kt = Grow(sc.f[3], static_cast<size_t>(d) + rd + n);
  float* vnorm = kt + d + rd;  // ‖v_j‖, computed in the token loop (values and keys stream together)
  // R̄ᵀ rotates pair i by (cos, -sin); as floats, hoisted out of the token loop.
  const int half = rd / 2;
  float* cf = kt + d;
  float* sf = cf + half;
  for (int i = 0; i < half; ++i) {
    cf[i] = static_cast<float>(cs[i]);
    sf[i] = static_cast<float>(-sn[i]);
  }
  const bool interleaved = c.in.rope.interleaved;
  const double inv_count = 1.0 / static_cast<double>(c.in.query_count);
  for (int r = 0; r < G; ++r) {
    const size_t qh = static_cast<size_t>(g * G + r);
    gm::ExpectedQueryTerms(c.in.query_sum.data() + qh * d,
                           cov ? c.in.query_sq_sum.data() + qh * d : nullptr, inv_count, d,
                           mu + static_cast<size_t>(r) * d, var + static_cast<size_t>(r) * d);
  }
  for (int j = 0; j < m; ++j) {
    const float* k = h.keys + static_cast<size_t>(s0 + j) * d;
    gm::RotateTransposed(k, cf, sf, d, rd, interleaved, kt);  // R̄ᵀ k
    // Both dot products of every query row of the group in one pass over R̄ᵀ k (kt² in registers).
    if (cov) {
      ExpectedLogits<true>(kt, mu, var, G, d, logits + j, static_cast<size_t>(m));
    } else {
      ExpectedLogits<false>(kt, mu, var, G, d, logits + j, static_cast<size_t>(m));
    }
    vnorm[s0 + j] = std::sqrt(gm::SquaredNorm(h.values + static_cast<size_t>(s0 + j) * d, d));
  }
  if (!AllFinite(logits, static_cast<size_t>(G) * m) || !AllFinite(vnorm + s0, m)) return false;
  const float inv_g = 1.0f / static_cast<float>(G);
  for (int r = 0; r < G; ++r) {
    float* row = logits + static_cast<size_t>(r) * m;
    const float mx = gm::RowMax(row, m);
    const double z = gm::ExpShiftInPlace(row, m, mx);
    const float inv = static_cast<float>(1.0 / z) * inv_g;
    for (int j = 0; j < m; ++j) out[s0 + j] += row[j] * inv;
  }
  for (int j = s0; j < n; ++j) out[j] *= vnorm[j];
  FillUndefinedWithMax(out, s0, n);
  return true;
}

// ---- Scorers over the whole layer ------------------------------------------------------------

// streaming: recency, the token index.
void ScoreStreaming(const LayerInputs& in, HeadScores* out) {
  for (int g = 0; g < in.kv_heads; ++g) {
    std::vector<float>& s = out->per_head[g];
    for (size_t j = 0; j < s.size(); ++j) s[j] = static_cast<float>(j);
  }
}

// random: a counter-based uniform of (seed, layer, head, position).
void ScoreRandom(const Policy& policy, const LayerInputs& in, HeadScores* out) {
  for (int g = 0; g < in.kv_heads; ++g) {
    std::vector<float>& s = out->per_head[g];
    for (int j = 0; j < in.heads[g].n; ++j) {
      s[j] = gm::CounterUniform(policy.seed, static_cast<uint64_t>(in.layer_index),
                                static_cast<uint64_t>(g),
                                static_cast<uint64_t>(PositionOf(in.heads[g], j)));
    }
  }
}

// h2o (observed = false) and observed: the group-mean attention mass of each token, for KV head g
// (one fused pass, attention_mass.h). False when a group sum is not finite (a non-finite mass
// entry, or overflow).
bool ScoreAttentionMass(const Ctx& c, int g, bool observed, std::vector<float>& s) {
  const HeadKV& h = c.in.heads[g];
  return internal::GroupAttentionMass(c.in.attention_mass.data() + static_cast<size_t>(g) * c.group,
                                      c.group, h.n, h.positions, c.next, observed, s.data());
}

// Whether every KV head of the layer holds the same token positions.
bool SamePositions(const LayerInputs& in) {
  for (int g = 1; g < in.kv_heads; ++g) {
    const HeadKV& a = in.heads[0];
    const HeadKV& b = in.heads[g];
    if (a.n != b.n) return false;
    if (a.positions == b.positions) continue;
    for (int j = 0; j < a.n; ++j) {
      if (PositionOf(a, j) != PositionOf(b, j)) return false;
    }
  }
  return true;
}

// TOVA's average over every query head of the layer, when the KV heads hold different tokens
// (after ada eviction): tokens are aligned by position, absent = 0 attention. `mass` holds the
// group sums on entry and the averages on return; worker 0's scratch stages the result.
void MergeTovaByPosition(const LayerInputs& in, float inv_h, ScoringWorkspace::Scratch& sc,
                         std::vector<std::vector<float>>& mass) {
  size_t total = 0;
  for (int g = 0; g < in.kv_heads; ++g) total += in.heads[g].n;
  float* merged = Grow(sc.f[1], total);
  size_t offset = 0;
  for (int g = 0; g < in.kv_heads; ++g) {
    const HeadKV& hg = in.heads[g];
    float* dst = merged + offset;
    std::fill(dst, dst + hg.n, 0.0f);
    for (int o = 0; o < in.kv_heads; ++o) {
      const HeadKV& ho = in.heads[o];
      int k = 0;
      for (int j = 0; j < hg.n; ++j) {
        const int32_t pos = PositionOf(hg, j);
        while (k < ho.n && PositionOf(ho, k) < pos) ++k;
        if (k < ho.n && PositionOf(ho, k) == pos) dst[j] += mass[o][k];
      }
    }
    for (int j = 0; j < hg.n; ++j) dst[j] *= inv_h;
    offset += hg.n;
  }
  offset = 0;
  for (int g = 0; g < in.kv_heads; ++g) {
    std::copy(merged + offset, merged + offset + in.heads[g].n, mass[g].begin());
    offset += in.heads[g].n;
  }
}

// tova: the last query's attention, averaged over every query head of the layer. False (scores
// unspecified) when a head's logits were not all finite.
bool ScoreTova(const Ctx& c, int workers, ScoringWorkspace& workspace, HeadScores* out) {
  const LayerInputs& in = c.in;
  // Mass of the last query per KV head (summed over its group) ...
  std::vector<std::vector<float>>& mass = out->per_head;  // reuse: first the group sums
  std::vector<char> finite(in.kv_heads, 1);
  ParallelFor(in.kv_heads, workers, [&](int g, int t) {
    finite[g] = TovaGroupMass(c, g, workspace.scratch(t), mass[g].data());
  });
  if (std::find(finite.begin(), finite.end(), 0) != finite.end()) return false;
  // ... then every KV head averages over all query heads of the layer.
  const float inv_h = 1.0f / static_cast<float>(in.q_heads);
  if (!SamePositions(in)) {
    MergeTovaByPosition(in, inv_h, workspace.scratch(0), mass);
    return true;
  }
  std::vector<float>& acc = mass[0];
  for (int g = 1; g < in.kv_heads; ++g) {
    for (size_t j = 0; j < acc.size(); ++j) acc[j] += mass[g][j];
  }
  for (float& v : acc) v *= inv_h;
  for (int g = 1; g < in.kv_heads; ++g) mass[g] = acc;
  return true;
}

// The scorers that report (through ScoreHeads' `finite`) whether every key, value and attention-mass
// entry they read was finite, so their inputs need no separate scan. A scorer added to ScoreHeads
// joins this list only once it sets `finite` for every input it reads.
bool FusesScans(ScorerKind kind) {
  switch (kind) {
    case ScorerKind::kStreaming:
    case ScorerKind::kRandom:
    case ScorerKind::kKnorm:
    case ScorerKind::kH2o:
    case ScorerKind::kObserved:
    case ScorerKind::kTova:
    case ScorerKind::kSnapKv:
    case ScorerKind::kLaProx:
    case ScorerKind::kExpected:
    case ScorerKind::kCapKv:
    case ScorerKind::kCapKvDot:
    case ScorerKind::kCapKvGreedy:
      return true;
    default:  // a scorer added later: validated in full until it fuses its scans
      return false;
  }
}

// Runs the scorer over every KV head; finite[g] = 0 when head g's pass met a non-finite value.
// The GEMM- and solve-based scorers scan their head's inputs first (in their worker, in parallel)
// and skip a head that is not finite.
absl::Status ScoreHeads(const Ctx& c, const Needs& needs, int workers,
                        const std::vector<double>& cs, const std::vector<double>& sn,
                        ScoringWorkspace& workspace, std::vector<char>& finite, HeadScores* out) {
  const LayerInputs& in = c.in;
  const Policy& policy = c.policy;
  auto scanned = [&](int g) {
    finite[g] = HeadFinite(in.heads[g], c.d, needs);
    return finite[g] != 0;
  };
  switch (policy.scorer) {
    case ScorerKind::kStreaming:
      ScoreStreaming(in, out);
      return absl::OkStatus();
    case ScorerKind::kRandom:
      ScoreRandom(policy, in, out);
      return absl::OkStatus();
    case ScorerKind::kKnorm:
      ParallelFor(in.kv_heads, workers, [&](int g, int) {
        finite[g] = ScoreKnorm(in.heads[g], c.d, out->per_head[g].data());
      });
      return absl::OkStatus();
    case ScorerKind::kH2o:
    case ScorerKind::kObserved:
      // One worker: the mass is a few MiB at most, and a second thread's start-up cost more than
      // it saved (kvkeep-bench score at 16k on the loaded 2-core machine: 0.13 -> 0.4-2.8 ms).
      ParallelFor(in.kv_heads, 1, [&](int g, int) {
        finite[g] = ScoreAttentionMass(c, g, policy.scorer == ScorerKind::kObserved,
                                       out->per_head[g]);
      });
      return absl::OkStatus();
    case ScorerKind::kTova:
      finite[0] = ScoreTova(c, workers, workspace, out);
      return absl::OkStatus();
    case ScorerKind::kSnapKv:
      ParallelFor(in.kv_heads, workers, [&](int g, int t) {
        if (scanned(g)) ScoreSnapKv(c, g, workspace.scratch(t), out->per_head[g]);
      });
      return absl::OkStatus();
    case ScorerKind::kLaProx:
      ParallelFor(in.kv_heads, workers, [&](int g, int t) {
        if (scanned(g)) ScoreLaProx(c, g, workspace.scratch(t), out->per_head[g]);
      });
      return absl::OkStatus();
    case ScorerKind::kExpected:
      ParallelFor(in.kv_heads, workers, [&](int g, int t) {
        finite[g] = ScoreExpected(c, g, cs, sn, workspace.scratch(t), out->per_head[g]);
      });
      return absl::OkStatus();
    case ScorerKind::kCapKv:
    case ScorerKind::kCapKvDot: {
      std::vector<absl::Status> status(in.kv_heads);
      ParallelFor(in.kv_heads, workers, [&](int g, int t) {
        if (!scanned(g)) return;
        status[g] = ScoreCapKv(c, g, policy.scorer == ScorerKind::kCapKvDot, cs, sn,
                               workspace.scratch(t), out->per_head[g]);
      });
      for (const absl::Status& st : status) RETURN_IF_ERROR(st);
      return absl::OkStatus();
    }
    case ScorerKind::kCapKvGreedy:
      ParallelFor(in.kv_heads, workers, [&](int g, int t) {
        if (scanned(g)) ScoreCapKvGreedy(c, g, cs, sn, workspace.scratch(t), out->per_head[g]);
      });
      return absl::OkStatus();
    case ScorerKind::kQSketch:
    case ScorerKind::kQSketchPost:
      ParallelFor(in.kv_heads, workers, [&](int g, int t) {
        ScoreQSketch(c, g, workspace.scratch(t), out->per_head[g]);
      });
      return absl::OkStatus();
  }
  return absl::InvalidArgumentError("unknown scorer");
}

}  // namespace

// ---------------------------------------------------------------------------------------------

ScoringWorkspace::ScoringWorkspace(int threads) {
  if (threads <= 0) {
    const unsigned hw = std::thread::hardware_concurrency();
    threads = static_cast<int>(std::min(2u, std::max(1u, hw)));
  }
  scratch_.resize(threads);
}

size_t ScoringWorkspace::bytes() const {
  size_t total = 0;
  for (const Scratch& s : scratch_) {
    for (const auto& v : s.f) total += v.capacity() * sizeof(float);
    for (const auto& v : s.d) total += v.capacity() * sizeof(double);
  }
  return total;
}

void AveragedRotation(const LayerInputs& in, const Policy& policy, std::vector<double>* cos_mean,
                      std::vector<double>* sin_mean) {
  const int rd = EffectiveRotaryDim(in);
  const int pairs = rd / 2;
  cos_mean->resize(pairs);
  sin_mean->resize(pairs);
  const double p0 = static_cast<double>(EffectiveNextPosition(in));
  for (int i = 0; i < pairs; ++i) {
    const double f = in.rope.inv_freq.empty() ? gm::RopeInvFreq(in.rope.theta, i, rd)
                                              : static_cast<double>(in.rope.inv_freq[i]);
    gm::AveragedCosSin(p0, policy.rope_horizon, f, &(*cos_mean)[i], &(*sin_mean)[i]);
  }
}

absl::StatusOr<HeadScores> ScoreLayer(const Policy& policy, const LayerInputs& in,
                                      ScoringWorkspace& workspace) {
  HeadScores out;
  RETURN_IF_ERROR(ScoreLayerInto(policy, in, workspace, &out));
  return out;
}

absl::Status ScoreLayerInto(const Policy& policy, const LayerInputs& in,
                            ScoringWorkspace& workspace, HeadScores* out) {
  RETURN_IF_ERROR(ValidatePolicy(policy));
  // The NaN/Inf scans of the keys, values and attention mass are fused into the scoring pass
  // below: each scorer reports whether its intermediates stayed finite, and only when one did not
  // are the inputs scanned (ScanLayerTensors), for the error ValidateLayerInputs would give.
  // A scorer not listed in FusesScans is validated in full first.
  const bool fused = FusesScans(policy.scorer);
  RETURN_IF_ERROR(fused ? ValidateLayerInputsDeferringScans(in, policy)
                        : ValidateLayerInputs(in, policy));
  const Ctx c{policy,
              in,
              in.q_heads / in.kv_heads,
              in.head_dim,
              EffectiveNextPosition(in),
              static_cast<float>(1.0 / std::sqrt(static_cast<double>(in.head_dim)))};
  out->per_head.resize(in.kv_heads);
  double total_tokens = 0;
  for (int g = 0; g < in.kv_heads; ++g) {
    out->per_head[g].resize(in.heads[g].n);
    total_tokens += in.heads[g].n;
  }
  const double work = total_tokens * c.d * c.group;
  // Heads are split over the workspace's workers (each with its own scratch); BLAS calls inside a
  // worker are then small enough that the BLAS library's own threads add little.
  const int workers = work >= kParallelWork ? workspace.threads() : 1;
  const BlasThreadsPinned blas_pin(workers > 1);
  std::vector<double> cs, sn;
  const Needs needs = ScorerNeeds(policy.scorer);
  if (needs.query_moments) AveragedRotation(in, policy, &cs, &sn);
  std::vector<char> finite(in.kv_heads, 1);  // per head: did the pass stay finite?
  absl::Status st = ScoreHeads(c, needs, workers, cs, sn, workspace, finite, out);
  if (fused && std::find(finite.begin(), finite.end(), 0) != finite.end()) {
    // A non-finite input (its error, as ValidateLayerInputs words it) or overflow of finite
    // input (OK: the scores stand, as they did when validation ran first).
    RETURN_IF_ERROR(ScanLayerTensors(in, policy));
  }
  return st;
}

}  // namespace kvkeep::eviction
