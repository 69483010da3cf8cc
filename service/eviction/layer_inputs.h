// What a scorer sees of one layer of one sequence: the cached keys/values of each KV head (borrowed,
// float32) and the optional statistics the worker sends with a Compress (window queries, query
// moments, attention mass, W_O Grams).
//
//   LayerInputs in{.q_heads = 32, .kv_heads = 8, .head_dim = 128};
//   in.heads.resize(8);
//   in.heads[g] = HeadKV{.n = n, .keys = k_ptr, .values = v_ptr};
//   in.rope.theta = 5e5;
//   in.next_position = n;
//   RETURN_IF_ERROR(ValidateLayerInputs(in, policy));
#ifndef KVKEEP_SERVICE_EVICTION_LAYER_INPUTS_H_
#define KVKEEP_SERVICE_EVICTION_LAYER_INPUTS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "service/eviction/policy.h"

namespace kvkeep::eviction {

struct RopeSpec {
  double theta = 10000.0;        // Default: 10000.
  int rotary_dim = 0;            // Default: 0 = head_dim. Even, <= head_dim.
  bool interleaved = false;      // Default: false. true: pairs (2i, 2i+1) (GPT-J);
                                 // false: half-split (i, i + rotary_dim/2) (Llama / NeoX).
  std::vector<float> inv_freq;   // Optional explicit table (rotary_dim / 2 entries) overriding theta
                                 // (e.g. Llama 3 frequency scaling).
};

// One KV head of one layer; float32 row-major; the pointers are borrowed and must stay valid for
// the duration of the call that reads them.
struct HeadKV {
  int n = 0;                            // cached tokens of this head (heads may differ after ada)
  const float* keys = nullptr;          // [n][head_dim], post-RoPE
  const float* values = nullptr;        // [n][head_dim]
  const int32_t* positions = nullptr;   // [n] original positions, strictly ascending;
                                        // nullptr = 0..n-1
};

struct LayerInputs {
  int q_heads = 0, kv_heads = 0, head_dim = 0;  // q_heads % kv_heads == 0
  int layer_index = 0;                          // layer of the sequence (mixes into `random`)
  std::vector<HeadKV> heads;                    // kv_heads entries
  RopeSpec rope;
  // Position of the next token to be generated. 0 = one past the largest cached position.
  int64_t next_position = 0;
  // Optional statistics (empty = not sent):
  int window = 0;                               // number of window queries
  std::vector<float> window_queries;            // [q_heads][window][head_dim], post-RoPE; query i is
                                                // at position next_position - window + i and sees
                                                // the keys whose position is <= its own
  std::vector<double> query_sum;                // [q_heads][head_dim] sum of pre-RoPE queries
                                                // (sinks excluded)
  int64_t query_count = 0;                      // number of queries summed, > 0 when sent
  std::vector<double> query_sq_sum;             // optional [q_heads][head_dim] sum of squares
                                                // (diagonal second moment, for `expected`)
  std::vector<std::vector<float>> attention_mass;  // [q_heads] each of length heads[h / G].n:
                                                   // Σ_i A[i, j]
  std::vector<float> wo_gram;                   // optional [q_heads][head_dim][head_dim]
                                                // = W_O^h W_O^hᵀ; empty = identity
  // Optional query sketch (qsketch, qsketch-post; common/query_sketch.h): per query head up to
  // sketch_k weighted centroids of the queries the prefix has seen.
  int sketch_k = 0;                             // centroid slots per query head; 0 = not sent
  std::vector<float> sketch_centroids;          // [q_heads][sketch_k][head_dim]
  std::vector<float> sketch_weights;            // [q_heads][sketch_k]; > 0 for a centroid,
                                                // 0 for an unused slot (heads may have fewer)
  bool sketch_post_rope = false;                // false: centroids of pre-RoPE queries (qsketch
                                                // rotates them); true: of post-RoPE queries
};

// Checks `in` for `policy.scorer`:
//   INVALID_ARGUMENT     inconsistent shapes (head counts, sizes of the statistics, null pointers
//                        with n > 0, positions not strictly ascending or beyond next_position, bad
//                        RoPE spec) or a NaN/Inf in anything the scorer reads;
//   FAILED_PRECONDITION  a statistic the scorer needs (ScorerNeeds) was not sent.
// Statistics that were sent but are not needed are checked for shape only.
// check_tensors = false skips the checks of the keys and values themselves (null pointers, NaN/Inf):
// for inputs whose tensors live elsewhere (scoring on the device, gpu/device_scoring.h).
absl::Status ValidateLayerInputs(const LayerInputs& in, const Policy& policy,
                                 bool check_tensors = true);

// Fused validation, for scorers that meet every key, value and attention-mass entry in their own
// pass (service/eviction/scorers.cc) and so need not read them twice:
//   ValidateLayerInputsDeferringScans  everything ValidateLayerInputs(in, policy) checks, except the
//                                      NaN/Inf scans of the keys and values and (for scorers that
//                                      need it) of attention_mass; null pointers are still checked.
//   ScanLayerTensors                   exactly those scans, in ValidateLayerInputs' order (heads in
//                                      order, keys before values, then attention_mass rows): the
//                                      same INVALID_ARGUMENT for the first non-finite entry, or OK.
// A caller that sees a non-finite intermediate in its pass calls ScanLayerTensors to tell bad
// input (its error) from overflow of finite input (OK: go on as ValidateLayerInputs would have).
// Together they accept exactly the inputs ValidateLayerInputs accepts; for an input with several
// faults, the shape and statistics faults are reported before a non-finite tensor entry.
absl::Status ValidateLayerInputsDeferringScans(const LayerInputs& in, const Policy& policy);
absl::Status ScanLayerTensors(const LayerInputs& in, const Policy& policy);

// Effective next position (resolves next_position == 0) and rotary dim (resolves 0).
int64_t EffectiveNextPosition(const LayerInputs& in);
int EffectiveRotaryDim(const LayerInputs& in);

}  // namespace kvkeep::eviction

#endif  // KVKEEP_SERVICE_EVICTION_LAYER_INPUTS_H_
