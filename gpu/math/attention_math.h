// Per-token maths shared by the CPU scorers and the CUDA kernels: dot products, norms, cosine, the
// pieces of a numerically safe softmax, 1-D pooling along tokens, and the counter-based random
// number used by the `random` scorer. Everything here is `inline` and KVKEEP_HOST_DEVICE.
//
//   float logit = Dot(q, k, d) * InvSqrt(d);
//   float w = exp(tau * (ClampedCosine(mu, k, d) - c_max));
#ifndef KVKEEP_GPU_MATH_ATTENTION_MATH_H_
#define KVKEEP_GPU_MATH_ATTENTION_MATH_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "gpu/math/host_device.h"

namespace kvkeep::gpu_math {

// Dot product with eight independent accumulators so that the compiler vectorises it without
// -ffast-math (a single float accumulator is a serial dependency chain).
template <typename T>
KVKEEP_HOST_DEVICE inline T Dot(const T* x, const T* y, int d) {
  T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= d; i += 8) {
    for (int l = 0; l < 8; ++l) acc[l] += x[i + l] * y[i + l];
  }
  for (; i < d; ++i) acc[0] += x[i] * y[i];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

template <typename T>
KVKEEP_HOST_DEVICE inline T SquaredNorm(const T* x, int d) {
  return Dot(x, x, d);
}

// cos(x, y) clamped to [-1, 1]; 0 when either vector is zero.
KVKEEP_HOST_DEVICE inline float ClampedCosine(float dot, float norm_x, float norm_y) {
  const float denom = norm_x * norm_y;
  if (!(denom > 0.0f)) return 0.0f;
  float c = dot / denom;
  c = c > 1.0f ? 1.0f : c;
  c = c < -1.0f ? -1.0f : c;
  return c;
}

// exp(x) for float, about 1 ulp on the normal range (Cephes expf: Cody-Waite reduction by ln 2,
// degree-6 polynomial), written with plain arithmetic so that loops over it vectorise (libm's expf
// does not without -ffast-math; GCC also needs -fno-trapping-math to if-convert the clamps, which
// kvkeep_eviction sets). Inputs are clamped to [-87, 88]: below, it returns ~1.6e-38
// instead of a denormal or 0, which softmax sums cannot tell apart.
KVKEEP_HOST_DEVICE inline float ExpFast(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float kMagic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to the nearest integer
  const float t = x * 1.44269504088896341f + kMagic;
  const float n = t - kMagic;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r * r + r + 1.0f;
  int32_t ti;
  memcpy(&ti, &t, sizeof ti);
  const int32_t bits = (ti - 0x4B400000 + 127) << 23;  // t's low mantissa bits hold n
  float scale;
  memcpy(&scale, &bits, sizeof scale);
  return e * scale;
}

// Softmax pieces: a row is normalised as exp(x - RowMax) / SumExpShifted.
KVKEEP_HOST_DEVICE inline float RowMax(const float* x, int n) {
  float acc[8] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY,
                  -INFINITY, -INFINITY, -INFINITY, -INFINITY};
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int l = 0; l < 8; ++l) acc[l] = x[j + l] > acc[l] ? x[j + l] : acc[l];
  }
  for (; j < n; ++j) acc[0] = x[j] > acc[0] ? x[j] : acc[0];
  float m = acc[0];
  for (int l = 1; l < 8; ++l) m = acc[l] > m ? acc[l] : m;
  return m;
}

// Replaces x[j] by exp(x[j] - shift) and returns their sum (accumulated in double).
// The exponentials vectorise (ExpFast); the sum is kept in eight float lanes per block of 1024 and
// then accumulated in double.
KVKEEP_HOST_DEVICE inline double ExpShiftInPlace(float* x, int n, float shift) {
  double sum = 0;
  for (int start = 0; start < n; start += 1024) {
    const int end = n - start < 1024 ? n : start + 1024;
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int j = start;
    for (; j + 8 <= end; j += 8) {
      for (int l = 0; l < 8; ++l) {
        const float e = ExpFast(x[j + l] - shift);
        x[j + l] = e;
        acc[l] += e;
      }
    }
    for (; j < end; ++j) {
      const float e = ExpFast(x[j] - shift);
      x[j] = e;
      acc[0] += e;
    }
    for (int l = 0; l < 8; ++l) sum += acc[l];
  }
  return sum;
}

// Online softmax merge (FlashAttention style): folds one logit into a running (max, sum).
KVKEEP_HOST_DEVICE inline void OnlineSoftmaxAdd(float x, float* running_max, float* running_sum) {
  if (x > *running_max) {
    *running_sum = *running_sum * expf(*running_max - x) + 1.0f;
    *running_max = x;
  } else {
    *running_sum += expf(x - *running_max);
  }
}

// 1-D pooling at index j over x[0, n), kernel k (odd), stride 1, padding k / 2.
// Max pooling ignores out-of-range taps (PyTorch max_pool1d pads with -inf); average pooling counts
// them as zeros and always divides by k (PyTorch avg_pool1d, count_include_pad=True, as kvpress).
KVKEEP_HOST_DEVICE inline float PoolAt(const float* x, int n, int j, int k, bool max_pool) {
  const int half = k / 2;
  const int lo = j - half < 0 ? 0 : j - half;
  const int hi = j + half >= n ? n - 1 : j + half;
  if (max_pool) {
    float m = -INFINITY;
    for (int t = lo; t <= hi; ++t) m = x[t] > m ? x[t] : m;
    return m;
  }
  float s = 0.0f;
  for (int t = lo; t <= hi; ++t) s += x[t];
  return s / static_cast<float>(k);
}

// SplitMix64 (Steele, Lea, Flood 2014): a strong 64-bit mixer, used as a counter-based generator.
KVKEEP_HOST_DEVICE inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) from (seed, layer, kv_head, position), exactly representable as a float
// (24 bits): the same token gets the same number on every backend and every call.
KVKEEP_HOST_DEVICE inline float CounterUniform(uint64_t seed, uint64_t layer, uint64_t head,
                                               uint64_t position) {
  uint64_t h = SplitMix64(seed);
  h = SplitMix64(h ^ layer);
  h = SplitMix64(h ^ head);
  h = SplitMix64(h ^ position);
  return static_cast<float>(h >> 40) * (1.0f / 16777216.0f);
}

}  // namespace kvkeep::gpu_math

#endif  // KVKEEP_GPU_MATH_ATTENTION_MATH_H_
