// qsketch and qsketch-post (issue 16): the attention that the prefix's query sketch, asked from
// where decoding will be, pays each cached token. Formula: gpu/math/sketch_math.h.
//
// Per KV head the group's centroids (rotated to each future position for qsketch) form the rows of
// a matrix Q; one sgemm per block of rows gives the logits Q Kᵀ/√d over every cached token, each
// row is turned into a softmax (no causal mask: every cached token is in the past of every future
// position) and added to the scores with its coefficient w / (F · W). Work: G · K · F · n · d
// multiply-adds per KV head (Llama-3-8B, K = 32, F = 16, n = 32k: 8.6 GFLOP).
#include <cblas.h>

#include <algorithm>
#include <cstddef>
#include <vector>

#include "gpu/math/attention_math.h"
#include "gpu/math/rope_math.h"
#include "gpu/math/sketch_math.h"
#include "service/eviction/scorers_internal.h"

namespace kvkeep::eviction::internal {
namespace {

namespace gm = ::kvkeep::gpu_math;

// Rows of Q scored per sgemm: bounds the logit block to kBlockRows · n floats.
constexpr int kBlockRows = 64;

// cos/sin tables [positions][rotary_dim / 2] of the future positions (qsketch only).
void FutureRotations(const Ctx& c, int positions, std::vector<float>& cos_t,
                     std::vector<float>& sin_t) {
  const int rd = EffectiveRotaryDim(c.in);
  const int half = rd / 2;
  cos_t.resize(static_cast<size_t>(positions) * half);
  sin_t.resize(static_cast<size_t>(positions) * half);
  for (int f = 0; f < positions; ++f) {
    const int64_t p =
        gm::SketchFuturePosition(c.next, f, positions, c.policy.sketch_horizon);
    for (int i = 0; i < half; ++i) {
      const double inv_freq = c.in.rope.inv_freq.empty()
                                  ? gm::RopeInvFreq(c.in.rope.theta, i, rd)
                                  : static_cast<double>(c.in.rope.inv_freq[i]);
      gm::SketchCosSin(p, inv_freq, &cos_t[static_cast<size_t>(f) * half + i],
                       &sin_t[static_cast<size_t>(f) * half + i]);
    }
  }
}

}  // namespace

void ScoreQSketch(const Ctx& c, int g, ScoringWorkspace::Scratch& sc, std::vector<float>& out) {
  const HeadKV& h = c.in.heads[g];
  const int n = h.n;
  const int d = c.d;
  const int K = c.in.sketch_k;
  const bool rotate = c.policy.scorer == ScorerKind::kQSketch;
  const int F = rotate ? c.policy.sketch_positions : 1;
  const int rd = EffectiveRotaryDim(c.in);
  const int half = rd / 2;
  std::fill(out.begin(), out.end(), 0.0f);
  if (n == 0) return;

  double total_weight = 0;
  for (int r = 0; r < c.group; ++r) {
    const float* w = c.in.sketch_weights.data() + static_cast<size_t>(g * c.group + r) * K;
    for (int k = 0; k < K; ++k) total_weight += w[k];
  }
  std::vector<float> cos_t, sin_t;
  if (rotate) FutureRotations(c, F, cos_t, sin_t);

  float* q = Grow(sc.f[0], static_cast<size_t>(kBlockRows) * d);
  float* logits = Grow(sc.f[1], static_cast<size_t>(kBlockRows) * n);
  float* coef = Grow(sc.f[2], static_cast<size_t>(kBlockRows));
  double* acc = Grow(sc.d[0], static_cast<size_t>(n));
  std::fill(acc, acc + n, 0.0);
  int rows = 0;
  auto flush = [&] {
    if (rows == 0) return;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, d, 1.0f, q, d, h.keys, d, 0.0f,
                logits, n);
    for (int i = 0; i < rows; ++i) {
      float* row = logits + static_cast<size_t>(i) * n;
      const float m = gm::RowMax(row, n);
      const double z = gm::ExpShiftInPlace(row, n, m);
      const double scale = static_cast<double>(coef[i]) / z;
      for (int j = 0; j < n; ++j) acc[j] += scale * row[j];
    }
    rows = 0;
  };
  for (int r = 0; r < c.group; ++r) {
    const size_t qh = static_cast<size_t>(g * c.group + r);
    for (int k = 0; k < K; ++k) {
      const float w = c.in.sketch_weights[qh * K + k];
      if (!(w > 0)) continue;  // unused slot
      const float* centroid = c.in.sketch_centroids.data() + (qh * K + k) * d;
      const float row_coef = gm::SketchRowCoefficient(w, F, total_weight);
      for (int f = 0; f < F; ++f) {
        const float* ct = rotate ? cos_t.data() + static_cast<size_t>(f) * half : nullptr;
        const float* st = rotate ? sin_t.data() + static_cast<size_t>(f) * half : nullptr;
        gm::RotateForward(centroid, ct, st, d, rd, c.in.rope.interleaved, c.inv_sqrt_d,
                          q + static_cast<size_t>(rows) * d);
        coef[rows] = row_coef;
        if (++rows == kBlockRows) flush();
      }
    }
  }
  flush();
  for (int j = 0; j < n; ++j) out[j] = static_cast<float>(acc[j]);
}

}  // namespace kvkeep::eviction::internal
