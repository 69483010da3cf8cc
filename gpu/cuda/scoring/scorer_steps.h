// Which steps (scoring_steps.h) score one layer, in which order, for each scorer: the device
// pipeline of every scorer of shared/docs/algorithms.md, written once. The CUDA scorer runs it with
// launches on its stream (cuda_layer_scorer.cc); the host emulation runs the same sequence serially
// (host_scoring_steps.h, scoring_elements_test.cc), so the tests without a GPU walk exactly the
// plan, buffers, step order and library-call arguments the device gets.
//
//   const LayerPlan plan = PlanLayer(request);
//   const ScratchLayout layout = LayoutScratch(request, plan);
//   PackUpload(request, plan, layout, scratch, staging);  // then staging -> scratch
//   RETURN_IF_ERROR(RunScorerSteps(request, plan, layout, scratch, steps));
//   // scores at scratch + layout.scores once the steps have finished
#ifndef KVKEEP_GPU_CUDA_SCORING_SCORER_STEPS_H_
#define KVKEEP_GPU_CUDA_SCORING_SCORER_STEPS_H_

#include "absl/status/status.h"
#include "gpu/cuda/scoring/layer_plan.h"
#include "gpu/cuda/scoring/scoring_steps.h"
#include "gpu/cuda/scoring/scratch_layout.h"
#include "gpu/device_scoring.h"

namespace kvkeep::cuda_scoring {

// Gathers the pages the scorer reads and runs its steps on `scratch` (layout.total_bytes, the
// upload image already in place). The first failing step's status is returned, and no later step
// is issued. `request` must have passed ValidateDeviceLayerRequest and hold at least one token.
absl::Status RunScorerSteps(const DeviceLayerRequest& request, const LayerPlan& plan,
                            const ScratchLayout& layout, char* scratch, ScoringSteps& steps);

}  // namespace kvkeep::cuda_scoring

#endif  // KVKEEP_GPU_CUDA_SCORING_SCORER_STEPS_H_
