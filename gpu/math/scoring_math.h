// Per-token formulas of the eviction scorers (shared/docs/algorithms.md) that the CPU scorers
// (service/eviction/scorers.cc) and the CUDA kernels (gpu/cuda/scoring/) both evaluate, written
// once (KVKEEP_HOST_DEVICE) so that the CPU tests exercise the code the kernels run.
//
//   float kt[128];
//   RotateTransposed(k, cos_f, minus_sin_f, 128, 128, /*interleaved=*/false, kt);   // R̄ᵀ k
//   float logit = CapLogit(anchor, anchor_norm, k, 128, /*dot_form=*/false, 5.0f, 0.0884f);
//   double gain = GreedyGain(q, w, group, m, j);
#ifndef KVKEEP_GPU_MATH_SCORING_MATH_H_
#define KVKEEP_GPU_MATH_SCORING_MATH_H_

#include <math.h>
#include <stdint.h>

#include "gpu/math/attention_math.h"
#include "gpu/math/host_device.h"
#include "gpu/math/rope_math.h"

namespace kvkeep::gpu_math {

// Number of the n ascending `positions` that are <= pos (nullptr positions = 0..n-1): how many keys
// a query at `pos` sees.
KVKEEP_HOST_DEVICE inline int VisibleCount(const int32_t* positions, int n, int64_t pos) {
  if (positions == nullptr) {
    const int64_t c = pos + 1;
    return c < 0 ? 0 : (c > n ? n : static_cast<int>(c));
  }
  int lo = 0, hi = n;  // first index whose position is > pos
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (positions[mid] <= pos) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Index of `pos` among the n ascending `positions` (nullptr = 0..n-1), or -1 when absent.
KVKEEP_HOST_DEVICE inline int FindPosition(const int32_t* positions, int n, int64_t pos) {
  const int i = VisibleCount(positions, n, pos) - 1;
  if (i < 0) return -1;
  const int64_t at = positions == nullptr ? i : positions[i];
  return at == pos ? i : -1;
}

// observed: the group-mean attention mass of a token divided by how many queries could see it.
KVKEEP_HOST_DEVICE inline float ObservedScore(float mean_mass, int64_t next_position,
                                              int64_t position) {
  return mean_mass / static_cast<float>(next_position - position);
}

// kt = R̄ᵀ k for a key of d channels: rotated pair i by (cos_f[i], minus_sin_f[i]) (the transpose
// of R̄, so minus_sin_f holds -mean sin), channels at and past rotary_dim copied.
KVKEEP_HOST_DEVICE inline void RotateTransposed(const float* k, const float* cos_f,
                                                const float* minus_sin_f, int d, int rotary_dim,
                                                bool interleaved, float* kt) {
  const int half = rotary_dim / 2;
  if (interleaved) {
    for (int i = 0; i < half; ++i) {
      kt[2 * i] = k[2 * i] * cos_f[i] - k[2 * i + 1] * minus_sin_f[i];
      kt[2 * i + 1] = k[2 * i + 1] * cos_f[i] + k[2 * i] * minus_sin_f[i];
    }
  } else {
    for (int i = 0; i < half; ++i) {
      kt[i] = k[i] * cos_f[i] - k[i + half] * minus_sin_f[i];
      kt[i + half] = k[i + half] * cos_f[i] + k[i] * minus_sin_f[i];
    }
  }
  for (int i = rotary_dim; i < d; ++i) kt[i] = k[i];
}

// expected: the per-query-head terms of the logit k·(R̄μ)/√d + Σ_i σ²_i (R̄ᵀk)_i²/(2d):
// mu_scaled[i] = μ_i/√d and var_scaled[i] = max(σ²_i, 0)/(2d) (0 without a second moment), from the
// sums of the pre-RoPE queries.
KVKEEP_HOST_DEVICE inline void ExpectedQueryTerms(const double* sum, const double* sq_sum,
                                                  double inv_count, int d, float* mu_scaled,
                                                  float* var_scaled) {
  for (int i = 0; i < d; ++i) {
    const double mean = sum[i] * inv_count;
    mu_scaled[i] = static_cast<float>(mean / sqrt(static_cast<double>(d)));
    double v = 0;
    if (sq_sum != nullptr) {
      v = sq_sum[i] * inv_count - mean * mean;
      v = v < 0.0 ? 0.0 : v;  // std::max(v, 0.0)
    }
    var_scaled[i] = static_cast<float>(v / (2.0 * d));
  }
}

// capkv*: the anchor μ̂ = R̄ · mean(pre-RoPE queries), in double; cos_mean / sin_mean per rotated
// pair (AveragedCosSin).
KVKEEP_HOST_DEVICE inline void AnchorQuery(const double* sum, double inv_count,
                                           const double* cos_mean, const double* sin_mean, int d,
                                           int rotary_dim, bool interleaved, double* out) {
  for (int i = 0; i < d; ++i) out[i] = sum[i] * inv_count;
  for (int i = 0; i < rotary_dim / 2; ++i) {
    int a, b;
    RopePair(i, rotary_dim, interleaved, &a, &b);
    double ya, yb;
    RotatePair(out[a], out[b], cos_mean[i], sin_mean[i], &ya, &yb);
    out[a] = ya;
    out[b] = yb;
  }
}

// capkv* relevance logit of key k: τ·cos(μ̂, k) clamped (cosine form) or μ̂·k/√d (dot form); the
// weight is exp(logit − max over the head's non-sink tokens).
KVKEEP_HOST_DEVICE inline float CapLogit(const float* anchor, float anchor_norm, const float* k,
                                         int d, bool dot_form, float tau, float inv_sqrt_d) {
  const float dot = Dot(anchor, k, d);
  if (dot_form) return dot * inv_sqrt_d;
  return tau * ClampedCosine(dot, anchor_norm, sqrtf(SquaredNorm(k, d)));
}

// capkv-greedy: group-mean gain log(1 + w_rj q_rj) of token j, q and w laid out [group][m].
KVKEEP_HOST_DEVICE inline double GreedyGain(const double* q, const float* w, int group, int64_t m,
                                            int64_t j) {
  double s = 0;
  for (int r = 0; r < group; ++r) {
    const double qj = q[r * m + j] < 0.0 ? 0.0 : q[r * m + j];  // std::max(q, 0.0)
    s += log1p(static_cast<double>(w[r * m + j]) * qj);
  }
  return s / group;
}

}  // namespace kvkeep::gpu_math

#endif  // KVKEEP_GPU_MATH_SCORING_MATH_H_
