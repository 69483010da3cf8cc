// Eviction policy: which scorer ranks the cached tokens and how a sequence budget is allocated to
// layers and KV heads. The maths of each scorer and allocator is specified in
// shared/docs/algorithms.md; this header only names them and holds their parameters.
//
//   ASSIGN_OR_RETURN(ScorerKind kind, ParseScorer("capkv-dot"));
//   Policy policy{.scorer = kind, .allocation = DefaultAllocation(kind)};
//   RETURN_IF_ERROR(ValidatePolicy(policy));
//   if (!ScorerNeeds(kind).values) { ... }
#ifndef KVKEEP_SERVICE_EVICTION_POLICY_H_
#define KVKEEP_SERVICE_EVICTION_POLICY_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "gpu/math/policy_defaults.h"

namespace kvkeep::eviction {

enum class ScorerKind {
  kStreaming,    // "streaming": recency (StreamingLLM)
  kRandom,       // "random": seeded uniform
  kKnorm,        // "knorm": -||k||
  kTova,         // "tova": attention of the last window query, mean over all query heads
  kH2o,          // "h2o": accumulated attention mass
  kObserved,     // "observed": attention mass / number of queries that could see the token
  kSnapKv,       // "snapkv": window attention, pooled
  kExpected,     // "expected": Expected Attention from query moments
  kCapKv,        // "capkv": ridge leverage, tau * cosine weights (kvpress cap_press.py)
  kCapKvDot,     // "capkv-dot": ridge leverage, scaled-dot weights (the paper's form)
  kCapKvGreedy,  // "capkv-greedy": exact greedy log-det maximiser
  kLaProx,       // "laprox": output-aware, layer-comparable (reconstructed)
  kQSketch,      // "qsketch": attention of rotated pre-RoPE query-sketch centroids (issue 16)
  kQSketchPost,  // "qsketch-post": attention of post-RoPE query-sketch centroids, unrotated
};

enum class Allocation {
  kUniform,  // "uniform": every (layer, KV head) the same share
  kAda,      // "ada": uniform across layers, Ada-KV across the heads of a layer
  kPyramid,  // "pyramid": PyramidKV layer budgets, uniform across the heads of a layer
  kGlobal,   // "global": one top-k over the whole sequence after per-layer normalisation
  kSequence,  // "sequence": one kept token set for every layer and head (sequence_allocation.h)
};

// The scorer named by policy_defaults::kScorerName (policy.cc checks at compile time).
inline constexpr ScorerKind kDefaultScorer = ScorerKind::kSnapKv;

// Defaults: gpu/math/policy_defaults.h, the one place every description of a policy reads them
// from (this struct, DeviceScorerParams, the wire policy through ResolvePolicy).
struct Policy {
  ScorerKind scorer = kDefaultScorer;            // Default: snapkv.
  Allocation allocation = Allocation::kUniform;  // Default: uniform (see DefaultAllocation).
  // First tokens of every head, always kept. Default: 4.
  int sinks = policy_defaults::kSinks;
  // Last tokens of every head (observation window), always kept. Default: 32.
  int window = policy_defaults::kWindow;
  // SnapKV pooling kernel along tokens; odd, >= 1. Default: 7.
  int pool_kernel = policy_defaults::kPoolKernel;
  // SnapKV max pooling (true) or average pooling (false). Default: true.
  bool pool_max = policy_defaults::kPoolMax;
  // Default: -1 = auto: 0.2 with GQA (q_heads > kv_heads), 0.5 otherwise (EffectiveAdaAlpha).
  double ada_alpha = policy_defaults::kAdaAlphaAuto;
  // PyramidKV min = b / beta; >= 1. Default: 20.
  double pyramid_beta = policy_defaults::kPyramidBeta;
  // CapKV cosine temperature; > 0. Default: 5.
  double capkv_tau = policy_defaults::kCapKvTau;
  // R̄ is the RoPE rotation averaged over this many positions starting at next_position
  // (expected, capkv*). Default: 512.
  int rope_horizon = policy_defaults::kRopeHorizon;
  // Seed of `random`. Default: 0.
  uint64_t seed = policy_defaults::kSeed;
  // capkv-greedy only: stop after this many greedy picks per KV head (the allocation's budget, when
  // known, makes it O(n·k·d) instead of O(n²·d)). Tokens not picked score their gain at the stop,
  // which is below every picked token's, so top-k by score is the greedy set for every
  // k <= greedy_picks. Default: 0 = rank every candidate.
  int64_t greedy_picks = policy_defaults::kGreedyPicks;
  // qsketch only: each centroid is rotated to this many future positions spread over
  // [next_position, next_position + sketch_horizon) (gpu/math/sketch_math.h). Default: 16.
  int sketch_positions = policy_defaults::kSketchPositions;
  // qsketch only: span of the future positions. Default: 512.
  int sketch_horizon = policy_defaults::kSketchHorizon;
};

// "streaming", "random", "knorm", "tova", "h2o", "observed", "snapkv", "expected", "capkv",
// "capkv-dot", "capkv-greedy", "laprox", "qsketch", "qsketch-post". INVALID_ARGUMENT (listing the names) otherwise.
absl::StatusOr<ScorerKind> ParseScorer(absl::string_view name);
absl::string_view ScorerName(ScorerKind kind);
// "uniform", "ada", "pyramid", "global", "sequence". INVALID_ARGUMENT otherwise.
absl::StatusOr<Allocation> ParseAllocation(absl::string_view name);
absl::string_view AllocationName(Allocation allocation);

// The allocation a scorer should use when the user names none: kGlobal for laprox (its scores are
// comparable across heads and layers), kUniform for every other scorer.
Allocation DefaultAllocation(ScorerKind kind);

// OK, or INVALID_ARGUMENT naming the first offending field and its value.
absl::Status ValidatePolicy(const Policy& policy);

// What each scorer reads, so the daemon can reject a Compress whose statistics are missing.
struct Needs {
  bool keys = false;
  bool values = false;
  bool window_queries = false;  // LayerInputs::window_queries
  bool query_moments = false;   // LayerInputs::query_sum / query_count (query_sq_sum optional)
  bool attention_mass = false;  // LayerInputs::attention_mass
  bool query_sketch = false;    // LayerInputs::sketch_* (pre-RoPE for qsketch, post for -post)
};
Needs ScorerNeeds(ScorerKind kind);

// Ada floor alpha actually used: policy.ada_alpha when >= 0, else 0.2 when q_heads_per_kv > 1
// (GQA) and 0.5 otherwise.
double EffectiveAdaAlpha(const Policy& policy, int q_heads_per_kv);

// Whether the scorer reads the query sketch (qsketch, qsketch-post), and whether it wants the
// centroids of post-RoPE queries (qsketch-post) rather than pre-RoPE ones (qsketch).
bool IsSketchScorer(ScorerKind kind);
bool SketchScorerWantsPostRope(ScorerKind kind);

}  // namespace kvkeep::eviction

#endif  // KVKEEP_SERVICE_EVICTION_POLICY_H_
