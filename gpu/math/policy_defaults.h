// The defaults of an eviction policy's fields, written once. Every description of a policy reads
// them here:
//   - eviction::Policy (service/eviction/policy.h): the CPU scorers' and allocators' policy;
//   - DeviceScorerParams (gpu/device_scoring.h): the fields the device scorers read;
//   - the wire's kvkeep.v1.Policy: a field set neither in the request nor in the tenant's default
//     takes the eviction::Policy default (ResolvePolicy, service/compress/policy_convert.h).
// The meaning of each field is documented on eviction::Policy. Header-only and free of service/
// headers, so the device side includes it too (the CPU side already includes gpu/math/).
//
//   struct MyPolicy { int sinks = policy_defaults::kSinks; };
#ifndef KVKEEP_GPU_MATH_POLICY_DEFAULTS_H_
#define KVKEEP_GPU_MATH_POLICY_DEFAULTS_H_

#include <cstdint>
#include <string_view>

namespace kvkeep::policy_defaults {

// Scorer, by its algorithms.md name (eviction::ParseScorer).
inline constexpr std::string_view kScorerName = "snapkv";
// First tokens of every head, always kept.
inline constexpr int kSinks = 4;
// Last tokens of every head (observation window), always kept.
inline constexpr int kWindow = 32;
// SnapKV pooling kernel along tokens; odd, >= 1.
inline constexpr int kPoolKernel = 7;
// SnapKV max pooling (true) or average pooling (false).
inline constexpr bool kPoolMax = true;
// Ada-KV floor alpha: kAdaAlphaAuto picks kAdaAlphaGqa with GQA (q_heads > kv_heads), else
// kAdaAlphaMha.
inline constexpr double kAdaAlphaAuto = -1;
inline constexpr double kAdaAlphaGqa = 0.2;
inline constexpr double kAdaAlphaMha = 0.5;
// PyramidKV min = b / beta; >= 1.
inline constexpr double kPyramidBeta = 20;
// CapKV cosine temperature; > 0.
inline constexpr double kCapKvTau = 5;
// R̄ averages the RoPE rotation over this many positions from next_position.
inline constexpr int kRopeHorizon = 512;
// Seed of the `random` scorer.
inline constexpr uint64_t kSeed = 0;
// capkv-greedy picks per KV head; 0 = rank every candidate.
inline constexpr int64_t kGreedyPicks = 0;
// qsketch: future positions each centroid is rotated to, and the span they are spread over
// (gpu/math/sketch_math.h). kMaxSketchPositions bounds the work per centroid.
inline constexpr int kSketchPositions = 16;
inline constexpr int kSketchHorizon = 512;
inline constexpr int kMaxSketchPositions = 256;
// Largest number of centroid slots per query head a sketch may carry (LayerInputs::sketch_k, the
// wire's QuerySketch): bounds memory and scoring work (K x F softmax rows per query head).
inline constexpr int kMaxSketchCentroids = 1024;

}  // namespace kvkeep::policy_defaults

#endif  // KVKEEP_GPU_MATH_POLICY_DEFAULTS_H_
