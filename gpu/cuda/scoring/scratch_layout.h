// Where one layer's buffers lie in the scorer's single scratch allocation, and how the host fills
// and reads it (no CUDA calls). The layout is a pure function of the request and its LayerPlan;
// the same byte offsets hold on both sides:
//   [0, upload_bytes)                      the upload image, packed on the host (PackUpload) and
//                                          copied to the device in one transfer;
//   [scores, scores + download_bytes)      scores [N] then the Cholesky infos, copied back in one
//                                          transfer and read by ReadScores;
//   [scores + download_bytes, total_bytes) scratch the device steps alone use.
// A buffer the scorer does not use is kNone. The CUDA scorer (cuda_layer_scorer.cc) places it in
// device memory; the host emulation (host_scoring_steps.h) in a host array of total_bytes.
//
//   const LayerPlan plan = PlanLayer(request);
//   const ScratchLayout layout = LayoutScratch(request, plan);
//   PackUpload(request, plan, layout, device_base, staging);   // staging: upload_bytes
//   ... upload, RunScorerSteps (scorer_steps.h), download ...
//   RETURN_IF_ERROR(ReadScores(request, plan, layout, downloaded, &scores));
#ifndef KVKEEP_GPU_CUDA_SCORING_SCRATCH_LAYOUT_H_
#define KVKEEP_GPU_CUDA_SCORING_SCRATCH_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "gpu/cuda/scoring/layer_plan.h"
#include "gpu/device_scoring.h"

namespace kvkeep::cuda_scoring {

inline constexpr size_t kNone = ~size_t{0};

// Byte offsets (256-aligned), kNone for a buffer the scorer does not use. Shapes use N tokens,
// G = q_heads / kv_heads, H = q_heads, Hk = kv_heads, d = head_dim.
struct ScratchLayout {
  // Uploaded: the plan's arrays and the host statistics the scorer reads.
  size_t spans = kNone;           // HeadSpan [Hk]
  size_t starts = kNone;          // int64 [Hk + 1]
  size_t positions = kNone;       // int32 [N]
  size_t runs = kNone;            // GatherRun [runs]
  size_t softmax_rows = kNone;    // SoftmaxRow [rows]
  size_t p_offset = kNone;        // int64 [Hk]
  size_t mass = kNone;            // h2o / observed: float [G][N]
  size_t window_queries = kNone;  // window scorers: float [H][window][d]
  size_t wo_gram = kNone;         // laprox with W_O: float [H][d][d]
  size_t mu = kNone;              // expected: float [H][d]
  size_t var = kNone;             // expected with second moments: float [H][d]
  size_t cos = kNone;             // expected: float [rotary_dim / 2]
  size_t minus_sin = kNone;       // expected: float [rotary_dim / 2]
  size_t anchor = kNone;          // capkv*: float [H][d]
  size_t anchor_norm = kNone;     // capkv*: float [H]
  size_t chol_ptrs = kNone;       // capkv, capkv-dot: double* [chol_batch] into `a`
  size_t trsm_a = kNone;          // capkv, capkv-dot: double* [Hk * G] into `a`
  size_t trsm_b = kNone;          // capkv, capkv-dot: double* [Hk * G] into `y`
  size_t sketch_rows = kNone;     // qsketch*: float [R][d] (sketch_plan.h)
  size_t sketch_coef = kNone;     // qsketch*: float [R]
  size_t upload_bytes = 0;
  // Downloaded.
  size_t scores = kNone;  // float [N]
  size_t info = kNone;    // int [chol_batch]
  size_t download_bytes = 0;
  // Device-only scratch.
  size_t keys = kNone;       // float [N][d] (gathered)
  size_t values = kNone;     // float [N][d] (gathered)
  size_t p = kNone;          // window scorers, qsketch*: float [p_floats]
  size_t col = kNone;        // window scorers: float [G][N]
  size_t vnorm = kNone;      // laprox, expected: float [G][N]
  size_t vm = kNone;         // laprox with W_O: float [G][max_n][d]
  size_t logits = kNone;     // expected, capkv*: float [G][N]
  size_t scaled = kNone;     // capkv, capkv-dot: float [G][max_m][d]
  size_t gram = kNone;       // capkv, capkv-dot: float [G][d][d]
  size_t a = kNone;          // capkv, capkv-dot: double [H][d][d]
  size_t y = kNone;          // capkv, capkv-dot: double [G][max_m][d]
  size_t greedy_q = kNone;   // capkv-greedy: double [G][N]
  size_t greedy_b = kNone;   // capkv-greedy: double [H][d][d]
  size_t greedy_z = kNone;   // capkv-greedy: double [H][d]
  size_t inv_denom = kNone;  // capkv-greedy: double [H]
  size_t add = kNone;        // capkv-greedy: int [Hk]
  size_t total_bytes = 0;
};

// Sizes (*scores)[g] to heads[g].n for the kv_heads heads; returns N, the tokens of the layer.
int64_t SizeScores(const DeviceLayerRequest& request, std::vector<std::vector<float>>* scores);

// `request` must have passed ValidateDeviceLayerRequest; `plan` = PlanLayer(request).
ScratchLayout LayoutScratch(const DeviceLayerRequest& request, const LayerPlan& plan);

// Writes the upload image ([0, layout.upload_bytes) of `image`); pointer arrays (capkv) point into
// the scratch at `scratch_base`, where the image will lie once uploaded.
void PackUpload(const DeviceLayerRequest& request, const LayerPlan& plan,
                const ScratchLayout& layout, char* scratch_base, char* image);

// Reads the download region (`downloaded` holds layout.download_bytes) into (*scores)[g], already
// sized to heads[g].n:
//   OK                 every score finite;
//   INTERNAL           a capkv Cholesky failed (matrix not positive definite);
//   INVALID_ARGUMENT   a non-finite score (NaN/Inf in the keys or values).
absl::Status ReadScores(const DeviceLayerRequest& request, const LayerPlan& plan,
                        const ScratchLayout& layout, const char* downloaded,
                        std::vector<std::vector<float>>* scores);

}  // namespace kvkeep::cuda_scoring

#endif  // KVKEEP_GPU_CUDA_SCORING_SCRATCH_LAYOUT_H_
