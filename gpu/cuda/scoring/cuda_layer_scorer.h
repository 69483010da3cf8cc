// The CUDA DeviceLayerScorer (gpu/device_scoring.h): gathers a layer's pages from device arenas
// into float scratch (fp16/bf16 widened with gpu/math/dtype.h) and runs the scorer's kernels
// (scoring_kernels.h), cuBLAS GEMMs and cuSOLVER batched Cholesky on one stream of its own; one
// synchronisation per layer, at the end. Device scratch and pinned staging grow to the largest
// layer seen and are reused. One layer: PlanLayer (layer_plan.h) and LayoutScratch / PackUpload
// (scratch_layout.h) on the host, one upload, RunScorerSteps (scorer_steps.h) with each step
// launched by CudaScoringSteps (cuda_scoring_steps.h), one download, ReadScores. The tests without
// a GPU run the same sequence on the host (host_scoring_steps.h).
//
//   std::unique_ptr<DeviceLayerScorer> scorer = CreateCudaLayerScorer(/*device_ordinal=*/0);
//   RETURN_IF_ERROR(scorer->ScoreLayer(request, &scores));
//
// Creation never fails: the device, stream and library handles are set up by the first
// ScoreLayer, which answers FAILED_PRECONDITION when the device is unusable (no device, no
// driver). Thread-safe: calls are serialised. Each call makes `device_ordinal` current on the
// calling thread.
#ifndef KVKEEP_GPU_CUDA_SCORING_CUDA_LAYER_SCORER_H_
#define KVKEEP_GPU_CUDA_SCORING_CUDA_LAYER_SCORER_H_

#include <memory>

#include "gpu/device_scoring.h"

namespace kvkeep {

std::unique_ptr<DeviceLayerScorer> CreateCudaLayerScorer(int device_ordinal);

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_SCORING_CUDA_LAYER_SCORER_H_
