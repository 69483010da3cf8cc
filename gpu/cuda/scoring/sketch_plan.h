// Host-side preparation of the query-sketch scorers (qsketch, qsketch-post) for the device
// pipeline (no CUDA calls): every (q head, centroid, future position) becomes one query row,
// rotated on the host with the shared maths (gpu/math/sketch_math.h) and scaled by 1/√d, with its
// coefficient w / (F · W). On the device, per KV head: one GEMM of its rows against its keys, a
// full (non-causal) softmax per row, and one GEMV of the probabilities with the coefficients
// (scorer_steps.cc). The probability buffer is reused by the heads: max_g rows_g · n_g floats.
//
//   PlanSketch(request, &plan);   // after the heads are planned (PlanLayer calls it)
#ifndef KVKEEP_GPU_CUDA_SCORING_SKETCH_PLAN_H_
#define KVKEEP_GPU_CUDA_SCORING_SKETCH_PLAN_H_

#include "gpu/cuda/scoring/layer_plan.h"
#include "gpu/device_scoring.h"

namespace kvkeep::cuda_scoring {

bool IsSketchScorer(DeviceScorerKind kind);

// Fills plan->sketch_rows / sketch_coef / sketch_row_start, the softmax rows (head g's rows at
// sketch_row_start[g], offsets into the shared probability buffer) and plan->p_floats.
void PlanSketch(const DeviceLayerRequest& request, LayerPlan* plan);

}  // namespace kvkeep::cuda_scoring

#endif  // KVKEEP_GPU_CUDA_SCORING_SKETCH_PLAN_H_
