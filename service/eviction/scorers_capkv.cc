// CapKV scorers (capkv, capkv-dot, capkv-greedy): relevance weights from the anchor query, and the
// log-det / leverage maths on the values (shared/docs/algorithms.md). Split from scorers.cc, which
// dispatches to them; the shared context and helpers are in scorers_internal.h.
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/math/rope_math.h"
#include "gpu/math/scoring_math.h"
#include "service/eviction/scorers_internal.h"

namespace kvkeep::eviction::internal {
namespace {

namespace gm = ::kvkeep::gpu_math;

// Mean pre-RoPE query of head qh rotated by R̄ (double).
void AnchorQuery(const Ctx& c, const std::vector<double>& cs, const std::vector<double>& sn,
                 int qh, double* out) {
  gm::AnchorQuery(c.in.query_sum.data() + static_cast<size_t>(qh) * c.d,
                  1.0 / static_cast<double>(c.in.query_count), cs.data(), sn.data(), c.d,
                  EffectiveRotaryDim(c.in), c.in.rope.interleaved, out);
}

// CapKV relevance weights of the non-sink tokens of KV head g for query head qh (cosine form for
// capkv and capkv-greedy, scaled dot for capkv-dot), written to w[0, m).
KVKEEP_SIMD_CLONES void CapWeights(const Ctx& c, int g, int qh, const std::vector<double>& cs,
                const std::vector<double>& sn, bool dot_form, double* a, float* anchor_f,
                float* w) {
  const HeadKV& h = c.in.heads[g];
  const int d = c.d;
  const int s0 = std::min(c.policy.sinks, h.n);
  const int m = h.n - s0;
  AnchorQuery(c, cs, sn, qh, a);
  for (int i = 0; i < d; ++i) anchor_f[i] = static_cast<float>(a[i]);
  const float anchor_norm = std::sqrt(gm::SquaredNorm(anchor_f, d));
  float mx = -std::numeric_limits<float>::infinity();
  const float tau = static_cast<float>(c.policy.capkv_tau);
  for (int j = 0; j < m; ++j) {
    const float* k = h.keys + static_cast<size_t>(s0 + j) * d;
    const float logit = gm::CapLogit(anchor_f, anchor_norm, k, d, dot_form, tau, c.inv_sqrt_d);
    w[j] = logit;
    mx = std::max(mx, logit);
  }
  for (int j = 0; j < m; ++j) w[j] = std::exp(w[j] - mx);
}

// In-place Cholesky of the symmetric positive definite d×d matrix `a` (row-major, lower triangle
// read): on success its lower triangle holds L with A = L Lᵀ and the upper triangle is zeroed.
absl::Status CholeskyInPlace(double* a, int d) {
  for (int j = 0; j < d; ++j) {
    double* rj = a + static_cast<size_t>(j) * d;
    double s = rj[j] - gm::Dot(rj, rj, j);
    if (!(s > 0)) {
      return absl::InternalError(
          absl::StrCat("Cholesky failed at pivot ", j, " (", s, "): matrix not positive definite"));
    }
    const double ljj = std::sqrt(s);
    rj[j] = ljj;
    const double inv = 1.0 / ljj;
    for (int i = j + 1; i < d; ++i) {
      double* ri = a + static_cast<size_t>(i) * d;
      ri[j] = (ri[j] - gm::Dot(ri, rj, j)) * inv;
    }
    std::fill(rj + j + 1, rj + d, 0.0);
  }
  return absl::OkStatus();
}

// A⁻¹ = L⁻ᵀ L⁻¹ from the Cholesky factor L (lower, row-major d×d). `linv` is d×d scratch.
void InverseFromCholesky(const double* l, int d, double* linv, double* inv) {
  std::fill(linv, linv + static_cast<size_t>(d) * d, 0.0);
  for (int k = 0; k < d; ++k) {
    linv[k * d + k] = 1.0 / l[k * d + k];
    for (int i = k + 1; i < d; ++i) {
      double acc = 0;
      for (int t = k; t < i; ++t) acc += l[i * d + t] * linv[t * d + k];
      linv[i * d + k] = -acc / l[i * d + i];
    }
  }
  for (int i = 0; i < d; ++i) {
    for (int j = 0; j <= i; ++j) {
      double acc = 0;
      for (int t = i; t < d; ++t) acc += linv[t * d + i] * linv[t * d + j];
      inv[i * d + j] = acc;
      inv[j * d + i] = acc;
    }
  }
}

// capkv / capkv-dot: s_j = w_j v_jᵀ A⁻¹ v_j (= w_j ‖L⁻¹ v_j‖², A = I + Σ_j (w_j + 1e-6) v_j v_jᵀ
// = L Lᵀ), per query head, mean over the group; sinks excluded (kvpress cap_press.py). Per q head:
// one SYRK for the Gram, a d×d Cholesky and inverse in double; then one GEMM per block of tokens
// applies all G inverses at once (V · [A_1⁻¹ … A_G⁻¹]), reading the values once.
KVKEEP_SIMD_CLONES absl::Status ScoreCapKvHead(const Ctx& c, int g, bool dot_form,
                                               const std::vector<double>& cs,
                                               const std::vector<double>& sn,
                                               ScoringWorkspace::Scratch& sc,
                                               std::vector<float>& out) {
  constexpr int kBlock = 256;
  const HeadKV& h = c.in.heads[g];
  const int n = h.n;
  const int d = c.d;
  const int G = c.group;
  const int s0 = std::min(c.policy.sinks, n);
  const int m = n - s0;
  std::fill(out.begin(), out.end(), 0.0f);
  if (m == 0) return absl::OkStatus();
  const float* v = h.values + static_cast<size_t>(s0) * d;
  const size_t gd = static_cast<size_t>(G) * d;
  float* w = Grow(sc.f[0], static_cast<size_t>(G) * m);
  float* scaled =
      Grow(sc.f[1], std::max(static_cast<size_t>(m) * d, static_cast<size_t>(kBlock) * gd));
  float* gram = Grow(sc.f[2], static_cast<size_t>(d) * d + d);
  float* anchor = gram + static_cast<size_t>(d) * d;
  float* inverses = Grow(sc.f[3], static_cast<size_t>(d) * gd);  // [d][G*d]
  double* a = Grow(sc.d[0], static_cast<size_t>(3) * d * d + d);
  double* linv = a + static_cast<size_t>(d) * d;
  double* inv = linv + static_cast<size_t>(d) * d;
  double* anchor_d = inv + static_cast<size_t>(d) * d;
  for (int r = 0; r < G; ++r) {
    float* wr = w + static_cast<size_t>(r) * m;
    CapWeights(c, g, g * G + r, cs, sn, dot_form, anchor_d, anchor, wr);
    for (int j = 0; j < m; ++j) {
      const float sw = std::sqrt(wr[j] + 1e-6f);
      const float* vj = v + static_cast<size_t>(j) * d;
      float* dst = scaled + static_cast<size_t>(j) * d;
      for (int i = 0; i < d; ++i) dst[i] = vj[i] * sw;
    }
    // gram = scaledᵀ scaled (lower triangle).
    cblas_ssyrk(CblasRowMajor, CblasLower, CblasTrans, d, m, 1.0f, scaled, d, 0.0f, gram, d);
    for (int i = 0; i < d; ++i) {
      for (int k = 0; k <= i; ++k) a[i * d + k] = gram[i * d + k];
      a[i * d + i] += 1.0;
    }
    RETURN_IF_ERROR(CholeskyInPlace(a, d));
    InverseFromCholesky(a, d, linv, inv);
    for (int i = 0; i < d; ++i) {
      for (int k = 0; k < d; ++k) {
        inverses[i * gd + static_cast<size_t>(r) * d + k] = static_cast<float>(inv[i * d + k]);
      }
    }
  }
  const float inv_g = 1.0f / static_cast<float>(G);
  for (int start = 0; start < m; start += kBlock) {
    const int rows = std::min(kBlock, m - start);
    const float* vb = v + static_cast<size_t>(start) * d;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, static_cast<int>(gd), d, 1.0f, vb,
                d, inverses, static_cast<int>(gd), 0.0f, scaled, static_cast<int>(gd));
    for (int j = 0; j < rows; ++j) {
      const float* vj = vb + static_cast<size_t>(j) * d;
      const float* xj = scaled + static_cast<size_t>(j) * gd;
      float acc = 0;
      for (int r = 0; r < G; ++r) {
        acc += w[static_cast<size_t>(r) * m + start + j] * gm::Dot(xj + static_cast<size_t>(r) * d, vj, d);
      }
      out[s0 + start + j] = acc * inv_g;
    }
  }
  FillUndefinedWithMax(out, s0, n);
  return absl::OkStatus();
}

}  // namespace

// The dispatcher of ScoreCapKvHead's clones is local to this file (see scorers_internal.h).
absl::Status ScoreCapKv(const Ctx& c, int g, bool dot_form, const std::vector<double>& cs,
                        const std::vector<double>& sn, ScoringWorkspace::Scratch& sc,
                        std::vector<float>& out) {
  return ScoreCapKvHead(c, g, dot_form, cs, sn, sc, out);
}

// capkv-greedy: greedy maximiser of Σ_{h∈group} log det(I + Σ_{j∈S} w_hj v_j v_jᵀ), starting from
// the observation window (always kept). Each q head keeps B_h = A_S⁻¹ and q_hj = v_jᵀ B_h v_j;
// adding token t with x = √w_ht v_t is the rank-1 step z = B_h x, q_hj -= (v_j·z)² / (1 + x·z),
// B_h -= z zᵀ / (1 + x·z): O(n·d + d²) per head and pick. Score = group-mean gain
// log(1 + w_hj q_hj) at pick time (non-increasing along the greedy order: log det is submodular),
// so top-k by score is the greedy set for every k.
void ScoreCapKvGreedy(const Ctx& c, int g, const std::vector<double>& cs,
                      const std::vector<double>& sn, ScoringWorkspace::Scratch& sc,
                      std::vector<float>& out) {
  const HeadKV& h = c.in.heads[g];
  const int n = h.n;
  const int d = c.d;
  const int G = c.group;
  const int s0 = std::min(c.policy.sinks, n);
  const int m = n - s0;                                      // non-sink tokens
  const int nc = std::max(0, m - std::min(c.policy.window, m));  // candidates: [0, nc) of those
  std::fill(out.begin(), out.end(), 0.0f);
  if (nc == 0) return;
  const size_t md = static_cast<size_t>(m) * d;
  float* w = Grow(sc.f[0], static_cast<size_t>(G) * m);
  float* anchor = Grow(sc.f[1], static_cast<size_t>(d));
  double* vd = Grow(sc.d[0], md);
  double* binv = Grow(sc.d[1], static_cast<size_t>(G) * d * d);
  double* q = Grow(sc.d[2], static_cast<size_t>(G) * m + static_cast<size_t>(m));
  double* p = q + static_cast<size_t>(G) * m;
  double* zx = Grow(sc.d[3], static_cast<size_t>(3) * d);
  double* z = zx;
  double* x = zx + d;
  double* anchor_d = zx + 2 * d;
  for (size_t i = 0; i < md; ++i) vd[i] = h.values[static_cast<size_t>(s0) * d + i];
  for (int r = 0; r < G; ++r) {
    CapWeights(c, g, g * G + r, cs, sn, /*dot_form=*/false, anchor_d, anchor,
               w + static_cast<size_t>(r) * m);
    double* b = binv + static_cast<size_t>(r) * d * d;
    std::fill(b, b + static_cast<size_t>(d) * d, 0.0);
    for (int i = 0; i < d; ++i) b[i * d + i] = 1.0;
    for (int j = 0; j < m; ++j) {
      q[static_cast<size_t>(r) * m + j] = gm::SquaredNorm(vd + static_cast<size_t>(j) * d, d);
    }
  }
  auto add = [&](int t) {
    for (int r = 0; r < G; ++r) {
      double* b = binv + static_cast<size_t>(r) * d * d;
      const double sw = std::sqrt(static_cast<double>(w[static_cast<size_t>(r) * m + t]));
      const double* vt = vd + static_cast<size_t>(t) * d;
      for (int i = 0; i < d; ++i) x[i] = vt[i] * sw;
      cblas_dsymv(CblasRowMajor, CblasLower, d, 1.0, b, d, x, 1, 0.0, z, 1);
      const double denom = 1.0 + gm::Dot(x, z, d);
      cblas_dgemv(CblasRowMajor, CblasNoTrans, m, d, 1.0, vd, d, z, 1, 0.0, p, 1);
      double* qr = q + static_cast<size_t>(r) * m;
      const double inv = 1.0 / denom;
      for (int j = 0; j < m; ++j) qr[j] -= p[j] * p[j] * inv;
      cblas_dsyr(CblasRowMajor, CblasLower, d, -inv, z, 1, b, d);
    }
  };
  auto gain = [&](int j) { return gm::GreedyGain(q, w, G, m, j); };
  for (int t = nc; t < m; ++t) add(t);  // the window is kept anyway
  // out doubles as the picked mask: picked tokens get their gain, others stay at -1 until scored.
  float* picked_gain = out.data() + s0;
  std::fill(picked_gain, picked_gain + nc, -1.0f);
  const int64_t picks =
      c.policy.greedy_picks > 0 ? std::min<int64_t>(c.policy.greedy_picks, nc) : nc;
  for (int64_t step = 0; step < picks; ++step) {
    int best = -1;
    double best_gain = -1;
    for (int j = 0; j < nc; ++j) {
      if (picked_gain[j] >= 0.0f) continue;
      const double gj = gain(j);
      if (gj > best_gain) {
        best_gain = gj;
        best = j;
      }
    }
    picked_gain[best] = static_cast<float>(best_gain);
    if (step + 1 < nc) add(best);  // the last update matters only if gains are read after
  }
  // Unpicked tokens: current gain (only when stopped early).
  for (int j = 0; j < nc; ++j) {
    if (picked_gain[j] < 0.0f) picked_gain[j] = static_cast<float>(gain(j));
  }
  FillUndefinedWithMax(out, s0, s0 + nc);
}

}  // namespace kvkeep::eviction::internal
