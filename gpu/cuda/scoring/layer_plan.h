// Host-side preparation of one layer for the scoring kernels (no CUDA calls): the KV heads' spans
// and flat offsets, the effective next position, the softmax rows with their causal lengths, the
// gather runs, R̄, and the per-q-head terms the scorers precompute on the host (expected's μ/√d and
// σ²/(2d), capkv's anchors). The CUDA scorer uploads these (scratch_layout.h); the host emulation
// (host_scoring_steps.h) runs the same steps on them.
//
//   cuda_scoring::LayerPlan plan = cuda_scoring::PlanLayer(request);   // request validated
//   // plan.spans[g], plan.starts, plan.total, plan.softmax_rows, ...
#ifndef KVKEEP_GPU_CUDA_SCORING_LAYER_PLAN_H_
#define KVKEEP_GPU_CUDA_SCORING_LAYER_PLAN_H_

#include <cstdint>
#include <vector>

#include "gpu/cuda/scoring/scoring_kernels.h"
#include "gpu/device_scoring.h"

namespace kvkeep::cuda_scoring {

struct LayerPlan {
  int q_heads = 0, kv_heads = 0, group = 1, d = 0, rotary_dim = 0;
  float inv_sqrt_d = 1.0f;
  std::vector<HeadSpan> spans;     // [kv_heads]
  std::vector<int64_t> starts;     // [kv_heads + 1]
  int64_t total = 0;               // N
  int64_t next = 0;                // effective next position
  std::vector<int32_t> positions;  // [N], flat
  // Window scorers: head g's probabilities [G][rows][n_g] at p_offset[g] of p_floats; other
  // scorers with softmax (expected, capkv*): one row per (KV head, q head) of a [G][N] buffer.
  int rows = 0;
  std::vector<int64_t> p_offset;  // [kv_heads]
  int64_t p_floats = 0;
  std::vector<SoftmaxRow> softmax_rows;
  std::vector<GatherRun> runs;  // device addresses from the request
  int max_n = 0, max_m = 0, max_window_adds = 0;
  int64_t max_picks = 0;
  int chol_batch = 0;                      // capkv: (KV head, q head) pairs with non-sink tokens
  std::vector<double> cos_mean, sin_mean;  // R̄ per rotated pair (query-moment scorers)
  // qsketch*: query rows [R][d] (rotated, /√d), coefficients [R], head g's rows from
  // sketch_row_start[g] (sketch_plan.h); p_floats is then the probability buffer of one head.
  std::vector<float> sketch_rows;
  std::vector<float> sketch_coef;
  std::vector<int64_t> sketch_row_start;
};

// `request` must have passed ValidateDeviceLayerRequest.
LayerPlan PlanLayer(const DeviceLayerRequest& request);

// expected: mu [q_heads][d], var [q_heads][d] (nullptr when no second moment was sent), and R̄ᵀ
// as float (cos, -sin) per pair.
void ExpectedTerms(const DeviceLayerRequest& request, const LayerPlan& plan, float* mu, float* var,
                   float* cos_f, float* minus_sin_f);

// capkv*: anchors [q_heads][d] (float of the double R̄ · mean query) and their norms [q_heads].
void CapAnchors(const DeviceLayerRequest& request, const LayerPlan& plan, float* anchor,
                float* anchor_norm);

// h2o / observed: the attention mass as [G][N] (q head g * G + r of head g at r * N + starts[g]).
void PackMass(const DeviceLayerRequest& request, const LayerPlan& plan, float* mass);

bool IsWindowScorer(DeviceScorerKind kind);
bool IsCapScorer(DeviceScorerKind kind);

}  // namespace kvkeep::cuda_scoring

#endif  // KVKEEP_GPU_CUDA_SCORING_LAYER_PLAN_H_
