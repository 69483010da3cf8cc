// Inner loops of the window-query and query-moment scorers (service/eviction/scorers.cc): the dot
// products of one or two keys with every query row of a GQA group, in a single pass over each key.
// Internal to the scorers; include it only from their files.
//
// Every result is bit for bit gm::Dot (gpu/math/attention_math.h) of the same operands: lane l of
// each accumulator sums the products at i ≡ l (mod 8) in increasing i, the tail lands in lane 0,
// and the eight lanes are reduced in gm::Dot's order. Only the schedule differs: the accumulators
// of all (key, query row) pairs are interleaved, so each key chunk and each query chunk is loaded
// once per block instead of once per dot product, and there are up to 8 independent dependency
// chains instead of one. The GCC/Clang vector type V8 is one AVX2 register in the scorers' AVX2
// clones (KVKEEP_SIMD_CLONES), two SSE registers otherwise; nothing here enables FMA.
//
// Every function is forced inline (KVKEEP_KERNEL_INLINE): called from a scorer's AVX2 clone it
// must be compiled as part of that clone. An out-of-line copy would be one weak symbol compiled for
// the default target (SSE), which both clones would call.
//
// Stateless; the functions touch only the memory they are handed.
#ifndef KVKEEP_SERVICE_EVICTION_SCORER_KERNELS_H_
#define KVKEEP_SERVICE_EVICTION_SCORER_KERNELS_H_

#include <cstddef>
#include <cstring>

#define KVKEEP_KERNEL_INLINE __attribute__((always_inline)) inline

namespace kvkeep::eviction::internal {

typedef float V8 __attribute__((vector_size(32)));

// *v = the eight floats at p (unaligned). An out-parameter, not a return value: returning a
// 32-byte vector from a function compiled without AVX has a different ABI (-Wpsabi).
KVKEEP_KERNEL_INLINE void LoadV8(V8* v, const float* p) { std::memcpy(v, p, sizeof *v); }

// gm::Dot's final reduction of its eight lane sums.
KVKEEP_KERNEL_INLINE float ReduceV8(const V8& a) {
  return ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
}

// out[r * out_stride + k] = gm::Dot(keys + k * d, q + r * d, d) * scale, for K keys (rows of
// `keys`, d apart) and R query rows.
template <int K, int R>
KVKEEP_KERNEL_INLINE void KeysDotQueriesBlock(const float* keys, const float* q, int d, float scale,
                                              float* out, size_t out_stride) {
  V8 acc[K][R];
  for (int k = 0; k < K; ++k) {
    for (int r = 0; r < R; ++r) acc[k][r] = V8{0, 0, 0, 0, 0, 0, 0, 0};
  }
  int i = 0;
  for (; i + 8 <= d; i += 8) {
    V8 kv[K];
    for (int k = 0; k < K; ++k) LoadV8(&kv[k], keys + static_cast<size_t>(k) * d + i);
    for (int r = 0; r < R; ++r) {
      V8 qv;
      LoadV8(&qv, q + static_cast<size_t>(r) * d + i);
      for (int k = 0; k < K; ++k) acc[k][r] += kv[k] * qv;
    }
  }
  for (; i < d; ++i) {
    for (int r = 0; r < R; ++r) {
      for (int k = 0; k < K; ++k) {
        acc[k][r][0] += keys[static_cast<size_t>(k) * d + i] * q[r * d + i];
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int k = 0; k < K; ++k) out[r * out_stride + k] = ReduceV8(acc[k][r]) * scale;
  }
}

// KeysDotQueriesBlock for any number of query rows G, four at a time.
template <int K>
KVKEEP_KERNEL_INLINE void KeysDotQueries(const float* keys, const float* q, int G, int d,
                                         float scale, float* out, size_t out_stride) {
  int r = 0;
  for (; r + 4 <= G; r += 4) {
    KeysDotQueriesBlock<K, 4>(keys, q + static_cast<size_t>(r) * d, d, scale, out + r * out_stride,
                              out_stride);
  }
  const float* qr = q + static_cast<size_t>(r) * d;
  float* o = out + r * out_stride;
  switch (G - r) {
    case 3:
      KeysDotQueriesBlock<K, 3>(keys, qr, d, scale, o, out_stride);
      break;
    case 2:
      KeysDotQueriesBlock<K, 2>(keys, qr, d, scale, o, out_stride);
      break;
    case 1:
      KeysDotQueriesBlock<K, 1>(keys, qr, d, scale, o, out_stride);
      break;
    default:
      break;
  }
}

// expected's logits of one rotated key kt for R query rows:
//   out[r * out_stride] = gm::Dot(kt, mu_r, d) + gm::Dot(kt², var_r, d)   (Cov)
//   out[r * out_stride] = gm::Dot(kt, mu_r, d)                             (!Cov)
// with kt² = kt * kt elementwise, formed in registers instead of a second buffer.
template <int R, bool Cov>
KVKEEP_KERNEL_INLINE void ExpectedLogitsBlock(const float* kt, const float* mu, const float* var,
                                              int d, float* out, size_t out_stride) {
  V8 am[R], av[R];
  for (int r = 0; r < R; ++r) am[r] = av[r] = V8{0, 0, 0, 0, 0, 0, 0, 0};
  int i = 0;
  for (; i + 8 <= d; i += 8) {
    V8 x;
    LoadV8(&x, kt + i);
    const V8 x2 = x * x;
    for (int r = 0; r < R; ++r) {
      V8 m;
      LoadV8(&m, mu + static_cast<size_t>(r) * d + i);
      am[r] += x * m;
      if constexpr (Cov) {
        V8 v;
        LoadV8(&v, var + static_cast<size_t>(r) * d + i);
        av[r] += x2 * v;
      }
    }
  }
  for (; i < d; ++i) {
    const float x2 = kt[i] * kt[i];
    for (int r = 0; r < R; ++r) {
      am[r][0] += kt[i] * mu[r * d + i];
      if constexpr (Cov) av[r][0] += x2 * var[r * d + i];
    }
  }
  for (int r = 0; r < R; ++r) {
    out[r * out_stride] = Cov ? ReduceV8(am[r]) + ReduceV8(av[r]) : ReduceV8(am[r]);
  }
}

// ExpectedLogitsBlock for any number of query rows G, four at a time.
template <bool Cov>
KVKEEP_KERNEL_INLINE void ExpectedLogits(const float* kt, const float* mu, const float* var, int G,
                                         int d, float* out, size_t out_stride) {
  int r = 0;
  for (; r + 4 <= G; r += 4) {
    const size_t at = static_cast<size_t>(r) * d;
    ExpectedLogitsBlock<4, Cov>(kt, mu + at, var + at, d, out + r * out_stride, out_stride);
  }
  const size_t at = static_cast<size_t>(r) * d;
  float* o = out + r * out_stride;
  switch (G - r) {
    case 3:
      ExpectedLogitsBlock<3, Cov>(kt, mu + at, var + at, d, o, out_stride);
      break;
    case 2:
      ExpectedLogitsBlock<2, Cov>(kt, mu + at, var + at, d, o, out_stride);
      break;
    case 1:
      ExpectedLogitsBlock<1, Cov>(kt, mu + at, var + at, d, o, out_stride);
      break;
    default:
      break;
  }
}

}  // namespace kvkeep::eviction::internal

#undef KVKEEP_KERNEL_INLINE

#endif  // KVKEEP_SERVICE_EVICTION_SCORER_KERNELS_H_
