// Token scorers: for one layer, a score per (KV head, cached token), higher = keep. The formulas are
// those of shared/docs/algorithms.md; each scorer's notes below say which tokens it defines.
//
//   ScoringWorkspace ws;                      // one per thread; reuse across layers and calls
//   ASSIGN_OR_RETURN(HeadScores s, ScoreLayer(policy, layer_inputs, ws));
//   // s.per_head[g][j]: score of token index j of KV head g.
//
// Conventions common to every scorer:
//  * A GQA group reduces its query heads by mean (laprox: by sum, as specified).
//  * Tokens a scorer does not define (capkv*, expected: the sinks, which kvpress excludes from the
//    statistics; snapkv: the observation window, which kvpress excludes before pooling;
//    capkv-greedy: sinks and window) hold the head's largest defined score, so a plain top-k keeps
//    them too. SelectTokens keeps sinks and window regardless of their scores.
//  * Scores are finite for valid inputs.
#ifndef KVKEEP_SERVICE_EVICTION_SCORERS_H_
#define KVKEEP_SERVICE_EVICTION_SCORERS_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"

namespace kvkeep::eviction {

struct HeadScores {
  std::vector<std::vector<float>> per_head;  // [kv_heads][heads[g].n], higher = keep
};

// Scratch memory reused across ScoreLayer calls, so that scoring allocates nothing per token once
// the buffers have grown to the largest layer seen (they never shrink; bytes() tells how much).
// Not thread-safe: use one workspace per calling thread. ScoreLayer itself may run up to
// `threads()` workers over the KV heads of a layer, each with its own scratch from here. The
// largest buffer is the window attention of one GQA group: G * window * n floats per worker
// (Llama-3-8B, w = 32, n = 32k: 16 MiB per worker).
class ScoringWorkspace {
 public:
  // threads: workers ScoreLayer may use, the caller included. 0 = min(2, hardware threads).
  explicit ScoringWorkspace(int threads = 0);

  int threads() const { return static_cast<int>(scratch_.size()); }
  size_t bytes() const;

  // Per-worker buffers; internal to the scorers (public so that the implementation file can use
  // them without friend declarations).
  struct Scratch {
    std::vector<float> f[4];
    std::vector<double> d[4];
  };
  Scratch& scratch(int worker) { return scratch_[worker]; }

 private:
  std::vector<Scratch> scratch_;
};

// Scores every token of every KV head of one layer.
//   OK                   `out` holds [kv_heads][n_g] finite scores;
//   INVALID_ARGUMENT     bad policy or inputs (see ValidatePolicy, ValidateLayerInputs);
//   FAILED_PRECONDITION  a statistic the scorer needs was not sent;
//   INTERNAL             a numerical failure that valid inputs cannot cause (e.g. Cholesky).
absl::StatusOr<HeadScores> ScoreLayer(const Policy& policy, const LayerInputs& in,
                                      ScoringWorkspace& workspace);

// As ScoreLayer, writing into `out` and reusing its vectors' capacity (the hot path of decode-time
// eviction). `out` is unspecified when the status is not OK.
absl::Status ScoreLayerInto(const Policy& policy, const LayerInputs& in,
                            ScoringWorkspace& workspace, HeadScores* out);

// R̄ of the layer: per rotated pair i, the mean cosine and sine of p * f_i over the positions
// [EffectiveNextPosition(in), + policy.rope_horizon). Exposed for tests and the eval tool.
void AveragedRotation(const LayerInputs& in, const Policy& policy, std::vector<double>* cos_mean,
                      std::vector<double>* sin_mean);

}  // namespace kvkeep::eviction

#endif  // KVKEEP_SERVICE_EVICTION_SCORERS_H_
