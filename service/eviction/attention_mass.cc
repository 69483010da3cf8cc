#include "service/eviction/attention_mass.h"

#include <cstring>
#include <limits>

#include "gpu/math/scoring_math.h"
#include "service/eviction/scorers_internal.h"

namespace kvkeep::eviction::internal {
namespace {

namespace gm = ::kvkeep::gpu_math;

// Eight lanes: one AVX2 register in the AVX2 clone, two SSE registers otherwise. Nothing here
// enables FMA, so every lane rounds as the scalar expression does.
typedef float F8 __attribute__((vector_size(32)));
typedef int32_t I8 __attribute__((vector_size(32)));

// Everything is inlined into the cloned pass, so that its AVX2 clone compiles them for AVX2 too.
#define KVKEEP_MASS_INLINE __attribute__((always_inline)) inline

KVKEEP_MASS_INLINE void Load(F8* v, const float* p) { std::memcpy(v, p, sizeof *v); }
KVKEEP_MASS_INLINE void Load(I8* v, const int32_t* p) { std::memcpy(v, p, sizeof *v); }
KVKEEP_MASS_INLINE void Store(float* p, const F8& v) { std::memcpy(p, &v, sizeof v); }

// S_j of token j: the group sum from 0.0f in increasing row order (0.0f + x turns -0 into +0, as
// the unfused loop's zero fill did).
KVKEEP_MASS_INLINE float GroupSum(const std::vector<float>* rows, int group, int j) {
  float s = 0.0f;
  for (int r = 0; r < group; ++r) s += rows[r][j];
  return s;
}

// One token, exactly the unfused expression; *check += S_j * 0 (NaN when S_j is not finite).
template <bool kObserved>
KVKEEP_MASS_INLINE float Token(const std::vector<float>* rows, int group, float inv_g, int64_t next,
                               int32_t pos, int j, float* check) {
  const float s = GroupSum(rows, group, j);
  *check += s * 0.0f;
  const float v = s * inv_g;
  return kObserved ? gm::ObservedScore(v, next, pos) : v;
}

// Tokens [begin, n) one at a time.
template <bool kObserved>
KVKEEP_MASS_INLINE void Tokens(const std::vector<float>* rows, int group, int begin, int n,
                               const int32_t* positions, int64_t next, float inv_g, float* check,
                               float* out) {
  for (int j = begin; j < n; ++j) {
    out[j] = Token<kObserved>(rows, group, inv_g, next, positions ? positions[j] : j, j, check);
  }
}

// The pass, eight tokens at a time. float(next - pos) is formed in int32 lanes: with 0 <= next <=
// INT32_MAX (the caller checks) and 0 <= pos the difference is exact in int32, and its conversion
// to float rounds once, as the int64 one does.
template <bool kObserved, bool kPositions>
KVKEEP_MASS_INLINE bool Pass(const std::vector<float>* rows, int group, int n,
                             const int32_t* positions, int64_t next, float* out) {
  const float inv_g = 1.0f / static_cast<float>(group);
  const I8 next8 = I8{0, 0, 0, 0, 0, 0, 0, 0} + static_cast<int32_t>(next);
  F8 check = {0, 0, 0, 0, 0, 0, 0, 0};
  I8 pos = {0, 1, 2, 3, 4, 5, 6, 7};  // !kPositions: the token indices
  int j = 0;
  for (; j + 8 <= n; j += 8) {
    F8 s = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int r = 0; r < group; ++r) {
      F8 m;
      Load(&m, rows[r].data() + j);
      s += m;
    }
    check += s * 0.0f;
    F8 v = s * inv_g;
    if constexpr (kObserved) {
      if constexpr (kPositions) Load(&pos, positions + j);
      v /= __builtin_convertvector(next8 - pos, F8);
      if constexpr (!kPositions) pos += 8;
    }
    Store(out + j, v);
  }
  float tail = 0.0f;
  Tokens<kObserved>(rows, group, j, n, positions, next, inv_g, &tail, out);
  float total = tail;
  for (int l = 0; l < 8; ++l) total += check[l];
  return total == 0.0f;
}

KVKEEP_SIMD_CLONES bool MassPass(const std::vector<float>* rows, int group, int n,
                                 const int32_t* positions, int64_t next, bool observed,
                                 float* out) {
  if (!observed) return Pass<false, false>(rows, group, n, nullptr, next, out);
  if (next < 0 || next > std::numeric_limits<int32_t>::max()) {  // beyond any real context
    float check = 0.0f;
    Tokens<true>(rows, group, 0, n, positions, next, 1.0f / static_cast<float>(group), &check, out);
    return check == 0.0f;
  }
  return positions ? Pass<true, true>(rows, group, n, positions, next, out)
                   : Pass<true, false>(rows, group, n, nullptr, next, out);
}

}  // namespace

bool GroupAttentionMass(const std::vector<float>* rows, int group, int n, const int32_t* positions,
                        int64_t next, bool observed, float* out) {
  if (MassPass(rows, group, n, positions, next, observed, out)) return true;
  for (int j = 0; j < n; ++j) out[j] = GroupSum(rows, group, j);  // rare: the sums, as before
  return false;
}

}  // namespace kvkeep::eviction::internal
