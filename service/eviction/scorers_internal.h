// Internal to the scorers (scorers.cc, scorers_capkv.cc): the per-layer context every scorer reads,
// scratch helpers, and the CapKV scorers that scorers_capkv.cc defines. Not an API: include it only
// from service/eviction's scorer files. Nothing here locks or allocates beyond the workspace
// scratch it is handed; every function is called by one worker thread on its own scratch.
#ifndef KVKEEP_SERVICE_EVICTION_SCORERS_INTERNAL_H_
#define KVKEEP_SERVICE_EVICTION_SCORERS_INTERNAL_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"
#include "service/eviction/scorers.h"

// The per-token loops below are written so that GCC vectorises them without -ffast-math (explicit
// lane accumulators, no reassociation). The hottest ones are also built for AVX2 and picked at load
// time (GCC/Clang target_clones, an ifunc). AVX2 without FMA performs the same float operations in
// the same order as the baseline SSE2 build, only 8 lanes at a time, so both builds give bit-identical
// scores; FMA is deliberately not enabled (it would contract a * b + c and change the rounding).
// Not under ThreadSanitizer: the ifunc resolver runs while the dynamic loader relocates the
// binary, before the TSan runtime is initialised, and its instrumented entry (__tsan_func_entry)
// crashes the process before main (deploy/sanitize thread).
#if defined(__SANITIZE_THREAD__)
#define KVKEEP_TSAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KVKEEP_TSAN_BUILD 1
#endif
#endif
#if defined(__x86_64__) && defined(__ELF__) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(__CUDACC__) && !defined(KVKEEP_TSAN_BUILD)
#define KVKEEP_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define KVKEEP_SIMD_CLONES
#endif

namespace kvkeep::eviction::internal {

// Everything a scorer needs about the layer, resolved once.
struct Ctx {
  const Policy& policy;
  const LayerInputs& in;
  int group;      // q heads per KV head
  int d;
  int64_t next;   // effective next position
  float inv_sqrt_d;
};

// Grows `v` to at least n elements (never shrinks) and returns its data: workspace scratch.
template <typename T>
inline T* Grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// Sets s[j] for j outside [begin, end) to the maximum over [begin, end) (0 when empty).
inline void FillUndefinedWithMax(std::vector<float>& s, int begin, int end) {
  float m = 0.0f;
  if (end > begin) m = *std::max_element(s.begin() + begin, s.begin() + end);
  std::fill(s.begin(), s.begin() + begin, m);
  std::fill(s.begin() + end, s.end(), m);
}

// ---- CapKV scorers (scorers_capkv.cc) ---------------------------------------------------------
// cs, sn: R̄ of the layer (AveragedRotation); sc: the calling worker's scratch; out: head g's scores.

// Neither is declared KVKEEP_SIMD_CLONES: GCC 12 makes a target_clones function's clones local to
// the file that defines it and emits a second dispatcher in every caller's file, so a cloned
// function cannot be called from another file. The cloned bodies stay in scorers_capkv.cc.

// capkv (dot_form = false) and capkv-dot (dot_form = true) for KV head g. INTERNAL when a Cholesky
// factorisation fails (valid inputs cannot cause it).
absl::Status ScoreCapKv(const Ctx& c, int g, bool dot_form, const std::vector<double>& cs,
                        const std::vector<double>& sn, ScoringWorkspace::Scratch& sc,
                        std::vector<float>& out);

// capkv-greedy for KV head g.
void ScoreCapKvGreedy(const Ctx& c, int g, const std::vector<double>& cs,
                      const std::vector<double>& sn, ScoringWorkspace::Scratch& sc,
                      std::vector<float>& out);

// ---- Query-sketch scorers (scorers_qsketch.cc) -----------------------------------------------

// qsketch (rotated pre-RoPE centroids) and qsketch-post (post-RoPE centroids as they are) for KV
// head g (gpu/math/sketch_math.h gives the formula).
void ScoreQSketch(const Ctx& c, int g, ScoringWorkspace::Scratch& sc, std::vector<float>& out);

}  // namespace kvkeep::eviction::internal

#endif  // KVKEEP_SERVICE_EVICTION_SCORERS_INTERNAL_H_
