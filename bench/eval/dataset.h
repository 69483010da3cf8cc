// The on-disk Q/K/V trace format read by kvkeep-eval (and written by `kvkeep-eval synth`).
//
// A dataset is a folder:
//   meta.json      {"layers": 4, "q_heads": 8, "kv_heads": 2, "head_dim": 64, "prefix": 2048,
//                   "rope_theta": 500000, "rope_style": "half",
//                   "needles": [{"layer": 1, "kv_head": 0, "position": 204}, ...]}   (optional)
//   L{l}.q.npy     [q_heads, T, head_dim]   post-RoPE queries
//   L{l}.k.npy     [kv_heads, T', head_dim] post-RoPE keys, T' >= prefix
//   L{l}.v.npy     [kv_heads, T', head_dim] values
//   L{l}.qpre.npy  optional, pre-RoPE queries, same shape as q (else q is un-rotated)
//   L{l}.wo.npy    optional, [hidden, q_heads * head_dim], the output projection as y = x·Wᵀ stores it
// Positions < prefix form the cache; positions prefix..T-1 of q are the held-out future queries.
// Arrays are float16 or float32 .npy (see npy.h).
//
//   ASSIGN_OR_RETURN(DatasetMeta meta, ReadMeta(dir));
//   ASSIGN_OR_RETURN(LayerData layer, ReadLayer(dir, meta, 0));
#ifndef KVKEEP_BENCH_EVAL_DATASET_H_
#define KVKEEP_BENCH_EVAL_DATASET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "bench/eval/npy.h"
#include "bench/eval/rope.h"

namespace kvkeep::eval {

// A planted key that some later query targets.
struct Needle {
  int layer = 0;
  int kv_head = 0;
  int64_t position = 0;
};

struct DatasetMeta {
  int layers = 0;
  int q_heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  int64_t prefix = 0;
  double rope_theta = 10000.0;
  RopeStyle rope_style = RopeStyle::kHalf;
  std::vector<Needle> needles;
  std::string profile;      // optional, informational ("mixed", ...)
  std::string description;  // optional, informational
};

// One layer's tensors, float32 in memory, C order.
struct LayerData {
  int64_t total = 0;      // T: number of query positions (prefix + future)
  int64_t kv_len = 0;     // T': number of key/value positions (>= prefix)
  std::vector<float> q;     // [q_heads][total][head_dim], post-RoPE
  std::vector<float> qpre;  // [q_heads][total][head_dim], pre-RoPE (read or un-rotated)
  std::vector<float> k;     // [kv_heads][kv_len][head_dim], post-RoPE
  std::vector<float> v;     // [kv_heads][kv_len][head_dim]
  int64_t wo_hidden = 0;    // 0 when no W_O was given
  std::vector<float> wo;    // [wo_hidden][q_heads * head_dim]
  // Optional: the query sketch a worker would send for qsketch (L{l}.sketch.npy and
  // L{l}.sketch_weights.npy): per query head sketch_k weighted centroids of the prefix's pre-RoPE
  // queries (weight 0 = unused slot). 0 = no sketch file.
  int sketch_k = 0;
  std::vector<float> sketch_centroids;  // [q_heads][sketch_k][head_dim]
  std::vector<float> sketch_weights;    // [q_heads][sketch_k]
};

// Reads and validates <dir>/meta.json. kNotFound if missing; kInvalidArgument on a malformed or
// inconsistent file (message names the field).
absl::StatusOr<DatasetMeta> ReadMeta(const std::string& dir);
absl::Status WriteMeta(const std::string& dir, const DatasetMeta& meta);

// Reads layer `layer` and checks every shape against `meta`. kNotFound for a missing required
// file, kInvalidArgument for a shape mismatch or fewer than one future query.
absl::StatusOr<LayerData> ReadLayer(const std::string& dir, const DatasetMeta& meta, int layer);

// Writes one layer's files (q, qpre, k, v, and wo and the sketch when present) in `dtype`.
absl::Status WriteLayer(const std::string& dir, const DatasetMeta& meta, int layer,
                        const LayerData& data, NpyDtype dtype = NpyDtype::kFloat32);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_DATASET_H_
