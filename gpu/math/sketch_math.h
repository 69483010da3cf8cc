// Per-element maths of the query-sketch scorers (qsketch, qsketch-post; issue 16), shared by the
// CPU scorer (service/eviction/scorers_qsketch.cc) and the CUDA scorer (gpu/cuda/scoring/).
//
// A sketch holds, per query head, K weighted centroids c with weights w_c >= 0 (0 = unused slot).
// The score of cached token j of a KV head is
//   Σ_{query heads r of the group} Σ_c w_rc · (1/F) Σ_f softmax_j( rot_f(c_rc) · k_j / √d )
//   / Σ_r Σ_c w_rc
// with the softmax over ALL cached tokens of the head (no causal mask). qsketch rotates each
// pre-RoPE centroid with the model's RoPE to F future positions SketchFuturePosition(next, f, F,
// horizon); qsketch-post uses the (post-RoPE) centroids as they are (F = 1, no rotation).
//
//   const int64_t p = SketchFuturePosition(next, f, 16, 512);        // next + 16, + 48, ..., + 496
//   SketchCosSin(p, inv_freq_i, &cos_t[i], &sin_t[i]);              // per rotated pair i
//   RotateForward(centroid, cos_t, sin_t, d, rotary_dim, interleaved, scale, row);
//   const float coef = SketchRowCoefficient(w, 16, total_weight);    // multiplies the softmax row
#ifndef KVKEEP_GPU_MATH_SKETCH_MATH_H_
#define KVKEEP_GPU_MATH_SKETCH_MATH_H_

#include <math.h>
#include <stdint.h>

#include "gpu/math/host_device.h"

namespace kvkeep::gpu_math {

// Future position f of `count` (0 <= f < count): the midpoints of `count` equal strata of
// [next, next + horizon), rounded down: next + floor((2f + 1) · horizon / (2 · count)).
KVKEEP_HOST_DEVICE inline int64_t SketchFuturePosition(int64_t next, int f, int count,
                                                       int horizon) {
  return next + ((2 * static_cast<int64_t>(f) + 1) * horizon) / (2 * static_cast<int64_t>(count));
}

// cos and sin of the RoPE angle p · inv_freq of one rotated pair, computed in double and rounded.
KVKEEP_HOST_DEVICE inline void SketchCosSin(int64_t position, double inv_freq, float* c,
                                            float* s) {
  const double angle = static_cast<double>(position) * inv_freq;
  *c = static_cast<float>(cos(angle));
  *s = static_cast<float>(sin(angle));
}

// y = scale · R(p) x for a head vector of d channels: rotated pair i by the angle whose cosine and
// sine are cos_t[i], sin_t[i] (y_a = x_a c − x_b s, y_b = x_b c + x_a s, rope_math.h's pairs);
// channels at and past rotary_dim are copied (times scale). cos_t == nullptr: no rotation.
KVKEEP_HOST_DEVICE inline void RotateForward(const float* x, const float* cos_t,
                                             const float* sin_t, int d, int rotary_dim,
                                             bool interleaved, float scale, float* y) {
  if (cos_t == nullptr) {
    for (int i = 0; i < d; ++i) y[i] = x[i] * scale;
    return;
  }
  const int half = rotary_dim / 2;
  for (int i = 0; i < half; ++i) {
    const int a = interleaved ? 2 * i : i;
    const int b = interleaved ? 2 * i + 1 : i + half;
    const float xa = x[a], xb = x[b];
    y[a] = (xa * cos_t[i] - xb * sin_t[i]) * scale;
    y[b] = (xb * cos_t[i] + xa * sin_t[i]) * scale;
  }
  for (int i = rotary_dim; i < d; ++i) y[i] = x[i] * scale;
}

// Factor of one (centroid, future position) softmax row in the head's score: w / (F · W), W the
// total weight of the group's centroids.
KVKEEP_HOST_DEVICE inline float SketchRowCoefficient(float weight, int positions,
                                                     double total_weight) {
  return static_cast<float>(static_cast<double>(weight) /
                            (static_cast<double>(positions) * total_weight));
}

}  // namespace kvkeep::gpu_math

#endif  // KVKEEP_GPU_MATH_SKETCH_MATH_H_
