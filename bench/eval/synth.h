// Synthetic Q/K/V profiles for the eviction quality harness (`kvkeep-eval synth`).
//
// No pretrained weights can be fetched here, so each profile is built to carry the attention
// properties published for real models (see docs/quality.md and algorithms.md "Quality measures"):
//   * attention sinks: the first tokens take a large share of attention but carry near-zero values;
//   * heavy hitters: a few percent of tokens, in short runs (mean length 2), hold most of the mass,
//     strongest in the middle layers; part of their pull comes from a *smaller* key norm on an
//     outlier channel (what K-norm relies on), the rest from a key direction every query shares;
//   * local heads: RoPE makes a query aligned with its neighbours' high/mid-frequency channels;
//   * semantic content in the low-frequency RoPE channels (theta 5e5, Llama 3), low-rank keys that
//     drift by topic segment; queries mostly ask about the current topic, sometimes an older one
//     (future queries more often than the prefix, so the observation window is informative but not
//     an oracle);
//   * retrieval heads and needles: planted 5-token spans at several depths (meta.json lists the
//     centre), targeted by held-out future queries (and, for half of them, by one query inside the
//     observation window, as a question in the prompt would);
//   * values that share content with their neighbours (topic + AR(1) drift), never i.i.d.;
//   * GQA groups whose query heads differ in sharpness;
//   * an optional output projection W_O with unequal, anisotropic heads.
// Queries and keys are generated pre-RoPE and rotated here; `qpre` is written too.
//
//   SynthOptions opts;  opts.profile = "mixed";
//   ASSIGN_OR_RETURN(SynthDataset ds, GenerateSynth(opts));
//   RETURN_IF_ERROR(WriteSynth(ds, "/tmp/mixed"));
#ifndef KVKEEP_BENCH_EVAL_SYNTH_H_
#define KVKEEP_BENCH_EVAL_SYNTH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "bench/eval/dataset.h"
#include "bench/eval/npy.h"

namespace kvkeep::eval {

struct SynthOptions {
  std::string profile = "mixed";  // one of SynthProfileNames()
  uint64_t seed = 1;              // Default: 1. Same seed, same bytes.
  int layers = 4;                 // Default: 4 (early, two middle, late).
  int q_heads = 8;                // Default: 8.
  int kv_heads = 2;               // Default: 2 (GQA groups of 4).
  int head_dim = 64;              // Default: 64. Must be 32 or more and even.
  int64_t prefix = 2048;          // Default: 2048 cached tokens.
  int64_t future = 128;           // Default: 128 held-out future queries.
  bool with_wo = true;            // Default: write L{l}.wo.npy.
  NpyDtype dtype = NpyDtype::kFloat32;  // Default: float32 files.
};

struct SynthDataset {
  DatasetMeta meta;
  std::vector<LayerData> layers;
};

// The profile names, in the order the docs list them.
const std::vector<std::string>& SynthProfileNames();
// One line describing `profile` (empty for an unknown name).
std::string SynthProfileDescription(const std::string& profile);

// kInvalidArgument for an unknown profile or impossible sizes (head_dim < 32 or odd, prefix < 256,
// future < 1, q_heads not a multiple of kv_heads).
absl::StatusOr<SynthDataset> GenerateSynth(const SynthOptions& options);

// Creates `dir` if needed and writes meta.json and every layer's files in `dtype`.
absl::Status WriteSynth(const SynthDataset& dataset, const std::string& dir,
                        NpyDtype dtype = NpyDtype::kFloat32);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_SYNTH_H_
