// Rotary position embedding (RoPE) maths shared by the CPU scorers and the CUDA kernels.
//
// A head vector of `head_dim` channels has `rotary_dim / 2` rotated pairs; channels at and beyond
// `rotary_dim` are not rotated. Pair i uses inverse frequency f_i (theta^(-2i / rotary_dim) unless a
// table overrides it) and the channels
//   half-split (Llama / NeoX): (i, i + rotary_dim / 2)
//   interleaved (GPT-J):       (2i, 2i + 1)
// Position p rotates a pair by the angle p * f_i:  y_a = x_a cos - x_b sin,  y_b = x_b cos + x_a sin.
//
// The scorers that predict future queries (expected, capkv) use R̄, the rotation averaged over the
// positions [p0, p0 + count): it has the same pair structure with (mean cos, mean sin) per pair, which
// AveragedCosSin gives in closed form.
//
//   double c, s;
//   AveragedCosSin(next_position, 512, RopeInvFreq(5e5, i, 128), &c, &s);
//   RotatePair(x[a], x[b], c, s, &y[a], &y[b]);          // y = R̄ x on this pair
#ifndef KVKEEP_GPU_MATH_ROPE_MATH_H_
#define KVKEEP_GPU_MATH_ROPE_MATH_H_

#include <math.h>

#include "gpu/math/host_device.h"

namespace kvkeep::gpu_math {

// Channels (a, b) of rotated pair i (0 <= i < rotary_dim / 2).
KVKEEP_HOST_DEVICE inline void RopePair(int i, int rotary_dim, bool interleaved, int* a, int* b) {
  if (interleaved) {
    *a = 2 * i;
    *b = 2 * i + 1;
  } else {
    *a = i;
    *b = i + rotary_dim / 2;
  }
}

// Default inverse frequency of pair i: theta^(-2i / rotary_dim).
KVKEEP_HOST_DEVICE inline double RopeInvFreq(double theta, int i, int rotary_dim) {
  return pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(rotary_dim));
}

// Rotates (xa, xb) by the angle whose cosine is c and sine is s (c, s need not be a unit pair:
// averaged rotations shrink). Applying it with -s gives the transpose.
template <typename T>
KVKEEP_HOST_DEVICE inline void RotatePair(T xa, T xb, T c, T s, T* ya, T* yb) {
  *ya = xa * c - xb * s;
  *yb = xb * c + xa * s;
}

// Mean of cos(p f) and sin(p f) over p = p0, p0 + 1, ..., p0 + count - 1 (count >= 1), in closed
// form: sum_m e^{i(a + m f)} = e^{i(a + (count-1) f / 2)} sin(count f / 2) / sin(f / 2), a = p0 f.
// Near f = 2πk, where the ratio is 0/0, it sums directly.
KVKEEP_HOST_DEVICE inline void AveragedCosSin(double p0, int count, double f, double* c, double* s) {
  const double half = 0.5 * f;
  const double sh = sin(half);
  if (fabs(sh) < 1e-6) {
    double sc = 0, ss = 0;
    for (int m = 0; m < count; ++m) {
      const double angle = (p0 + m) * f;
      sc += cos(angle);
      ss += sin(angle);
    }
    *c = sc / count;
    *s = ss / count;
    return;
  }
  const double ratio = sin(count * half) / sh / count;
  const double mid = p0 * f + (count - 1) * half;
  *c = ratio * cos(mid);
  *s = ratio * sin(mid);
}

}  // namespace kvkeep::gpu_math

#endif  // KVKEEP_GPU_MATH_ROPE_MATH_H_
