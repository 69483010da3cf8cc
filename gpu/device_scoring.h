// Scoring of one layer's cached tokens on the device that holds the pages (issue #5): the request
// says where each KV head's keys and values lie in device memory, carries the layer's statistics as
// host arrays, and names the scorer; the answer is a host score per (KV head, token), the same
// quantity eviction::ScoreLayer computes on the CPU (shared/docs/algorithms.md).
//
// Host-only: no CUDA header, no service/ header. The service builds requests
// (service/device_scoring_request.h); a backend that can score offers a DeviceLayerScorer through
// Backend::layer_scorer() (the CUDA one: gpu/cuda/scoring/cuda_layer_scorer.h).
//
//   DeviceLayerRequest req{.q_heads = 32, .kv_heads = 8, .head_dim = 128,
//                          .dtype = DevicePageDType::kBf16};
//   req.scorer.kind = DeviceScorerKind::kSnapKv;
//   req.heads.resize(8);
//   req.heads[g].n = n;
//   req.heads[g].runs.push_back({.keys = page_keys, .values = page_values, .tokens = 16});
//   req.window = 32;
//   req.window_queries = stats.window_queries.data();
//   std::vector<std::vector<float>> scores;
//   RETURN_IF_ERROR(scorer->ScoreLayer(req, &scores));   // scores[g][j]
#ifndef KVKEEP_GPU_DEVICE_SCORING_H_
#define KVKEEP_GPU_DEVICE_SCORING_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "gpu/math/policy_defaults.h"

namespace kvkeep {

// The scorers of algorithms.md, in the order of eviction::ScorerKind.
enum class DeviceScorerKind {
  kStreaming,
  kRandom,
  kKnorm,
  kTova,
  kH2o,
  kObserved,
  kSnapKv,
  kExpected,
  kCapKv,
  kCapKvDot,
  kCapKvGreedy,
  kLaProx,
  kQSketch,
  kQSketchPost,
};

// Element type of the pages.
enum class DevicePageDType { kFp32, kFp16, kBf16 };

// The policy fields the scorers read: eviction::Policy's, same meaning, and the same defaults,
// both read from gpu/math/policy_defaults.h (kind: device_scoring_request.cc checks at compile
// time that it is eviction::kDefaultScorer's).
struct DeviceScorerParams {
  DeviceScorerKind kind = DeviceScorerKind::kSnapKv;  // Default: snapkv.
  int sinks = policy_defaults::kSinks;                // Default: 4. First tokens of every head.
  // Observation window (last tokens of every head). Default: 32.
  int window = policy_defaults::kWindow;
  int pool_kernel = policy_defaults::kPoolKernel;  // Default: 7. snapkv pooling kernel, odd, >= 1.
  bool pool_max = policy_defaults::kPoolMax;  // Default: true. snapkv max (true) or average pooling.
  double capkv_tau = policy_defaults::kCapKvTau;  // Default: 5. capkv cosine temperature, > 0.
  // R̄ averages the RoPE rotation over this many positions. Default: 512.
  int rope_horizon = policy_defaults::kRopeHorizon;
  uint64_t seed = policy_defaults::kSeed;  // Default: 0. Seed of `random`.
  // Default: 0 = rank every candidate (capkv-greedy).
  int64_t greedy_picks = policy_defaults::kGreedyPicks;
  // qsketch: future positions per centroid and their span. Defaults: 16 over 512.
  int sketch_positions = policy_defaults::kSketchPositions;
  int sketch_horizon = policy_defaults::kSketchHorizon;
};

// Consecutive tokens of one KV head inside one page: `tokens` keys at `keys` and as many values at
// `values`, each [tokens][head_dim] of the request's dtype, densely packed. DEVICE addresses
// (Backend::DeviceAddress of the arena plus the byte offset), borrowed for the call.
struct DeviceTokenRun {
  const void* keys = nullptr;
  const void* values = nullptr;
  uint32_t tokens = 0;
};

struct DeviceHeadRequest {
  int n = 0;  // cached tokens; the runs' tokens sum to n, in token order
  std::vector<DeviceTokenRun> runs;
  const int32_t* positions = nullptr;  // HOST [n], strictly ascending; nullptr = 0..n-1
};

struct DeviceRope {
  double theta = 10000.0;           // Default: 10000.
  int rotary_dim = 0;               // Default: 0 = head_dim. Even, <= head_dim.
  bool interleaved = false;         // Default: false (half-split, Llama / NeoX); true: GPT-J pairs.
  const float* inv_freq = nullptr;  // HOST [rotary_dim / 2] or nullptr (then theta decides)
};

// One layer of one sequence. Host arrays are borrowed for the duration of ScoreLayer; their
// layouts are those of eviction::LayerInputs.
struct DeviceLayerRequest {
  int q_heads = 0, kv_heads = 0, head_dim = 0;  // q_heads % kv_heads == 0
  int layer_index = 0;                          // mixes into `random`
  DevicePageDType dtype = DevicePageDType::kFp32;
  DeviceScorerParams scorer;
  std::vector<DeviceHeadRequest> heads;  // kv_heads entries
  DeviceRope rope;
  int64_t next_position = 0;  // 0 = one past the largest cached position
  // Statistics (nullptr / 0 = not sent):
  int window = 0;                         // window queries per q head
  const float* window_queries = nullptr;  // [q_heads][window][head_dim], post-RoPE
  const double* query_sum = nullptr;      // [q_heads][head_dim], pre-RoPE, sinks excluded
  const double* query_sq_sum = nullptr;   // optional [q_heads][head_dim]
  int64_t query_count = 0;
  std::vector<const float*> attention_mass;  // empty or [q_heads] of heads[h / G].n floats
  const float* wo_gram = nullptr;            // optional [q_heads][head_dim][head_dim]
  // Query sketch (qsketch, qsketch-post; eviction::LayerInputs::sketch_*):
  int sketch_k = 0;                          // slots per q head; 0 = not sent
  const float* sketch_centroids = nullptr;   // [q_heads][sketch_k][head_dim]
  const float* sketch_weights = nullptr;     // [q_heads][sketch_k], >= 0 (0 = unused slot)
  bool sketch_post_rope = false;             // centroids of post-RoPE queries (qsketch-post)
};

// Which parts a scorer reads (as eviction::ScorerNeeds).
struct DeviceScorerNeeds {
  bool keys = false, values = false, window_queries = false, query_moments = false,
       attention_mass = false, query_sketch = false;
};
DeviceScorerNeeds DeviceNeeds(DeviceScorerKind kind);

// Largest head_dim the kernels take (shared-memory and register tiles are sized for it).
inline constexpr int kMaxDeviceHeadDim = 512;

// Host-side checks of a request, before anything reaches a device:
//   OK                  consistent;
//   INVALID_ARGUMENT    bad shapes (head counts, head_dim outside [1, kMaxDeviceHeadDim], runs that
//                       do not add up to n, null run addresses the scorer reads, positions not
//                       ascending or beyond next_position, bad RoPE spec or parameters) or a
//                       NaN/Inf in a host statistic the scorer reads;
//   FAILED_PRECONDITION a statistic the scorer needs is missing.
// Keys and values are on the device and not inspected here; a non-finite score they cause is
// reported by ScoreLayer.
absl::Status ValidateDeviceLayerRequest(const DeviceLayerRequest& request);

// Scores layers on one device. Implementations are thread-safe: concurrent calls are serialised
// (one stream per scorer instance) and each call finishes its device work before returning.
class DeviceLayerScorer {
 public:
  virtual ~DeviceLayerScorer() = default;

  // Scores every token of every KV head of the layer; (*scores)[g] gets heads[g].n floats, the
  // quantity eviction::ScoreLayer gives for the same inputs (within the tolerances documented in
  // docs/architecture.md, "Scoring on the device"). Reuses *scores' capacity.
  //   OK                   scores written;
  //   INVALID_ARGUMENT     ValidateDeviceLayerRequest failed, or a score came out non-finite
  //                        (NaN/Inf in the keys or values);
  //   FAILED_PRECONDITION  a needed statistic is missing, or the device is unusable (no device,
  //                        no driver);
  //   RESOURCE_EXHAUSTED   device or pinned memory could not be had;
  //   INTERNAL             a kernel, cuBLAS or cuSOLVER failure (e.g. a Cholesky that failed).
  // *scores is unspecified when the status is not OK.
  virtual absl::Status ScoreLayer(const DeviceLayerRequest& request,
                                  std::vector<std::vector<float>>* scores) = 0;

  // Bytes of device and pinned host scratch held (grown to the largest layer seen, reused).
  virtual size_t scratch_bytes() const = 0;
};

}  // namespace kvkeep

#endif  // KVKEEP_GPU_DEVICE_SCORING_H_
