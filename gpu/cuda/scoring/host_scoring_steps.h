// ScoringSteps (scoring_steps.h) on the host, for tests on machines without a GPU: every kernel
// runs its per-element body (scoring_elements.h) in a plain loop over the same index range the
// kernel's grid covers; the block-wide kernels (softmax rows, fills, greedy pick and rank-1 step)
// run serial stand-ins; the library calls run column-major reference routines with cuBLAS's and
// cuSOLVER's conventions. Pointers address host memory, so RunScorerSteps (scorer_steps.h) on a
// host array of ScratchLayout::total_bytes walks the device pipeline step for step. It checks the
// plan, every layout, the step order and the library-call arguments; not the kernels' block
// reductions, the launches or the libraries themselves (the `gpu` conformance suite does).
//
//   std::vector<std::vector<float>> scores;
//   RETURN_IF_ERROR(EmulateLayerOnHost(request, &scores));   // as CudaLayerScorer::ScoreLayer
//
// Not thread-safe; steps run synchronously.
#ifndef KVKEEP_GPU_CUDA_SCORING_HOST_SCORING_STEPS_H_
#define KVKEEP_GPU_CUDA_SCORING_HOST_SCORING_STEPS_H_

#include <vector>

#include "absl/status/status.h"
#include "gpu/cuda/scoring/scoring_steps.h"
#include "gpu/device_scoring.h"

namespace kvkeep::cuda_scoring {

class HostScoringSteps final : public ScoringSteps {
 public:
  absl::Status Gather(const GatherView& v) override;
  absl::Status TokenScores(const TokenScoresView& v) override;
  absl::Status Norms(const NormView& v) override;
  absl::Status SoftmaxRows(const SoftmaxView& v) override;
  absl::Status WindowColumns(const WindowColumnsView& v) override;
  absl::Status TovaAlign(const TovaAlignView& v) override;
  absl::Status SnapPool(const PoolView& v) override;
  absl::Status QuadForm(const QuadFormView& v) override;
  absl::Status LaProxCombine(const LaProxView& v) override;
  absl::Status ExpectedLogits(const ExpectedLogitsView& v) override;
  absl::Status GroupSum(const GroupSumView& v) override;
  absl::Status CapLogits(const CapLogitsView& v) override;
  absl::Status ScaleValues(const ScaleValuesView& v) override;
  absl::Status GramToDouble(const GramToDoubleView& v) override;
  absl::Status ValuesToDouble(const ValuesToDoubleView& v) override;
  absl::Status Leverage(const LeverageView& v) override;
  absl::Status FillUndefined(const Heads& heads, float* scores) override;
  absl::Status GreedyInit(const GreedyView& v) override;
  absl::Status GreedyAdd(const GreedyView& v, int window_k) override;
  absl::Status GreedySelect(const GreedyView& v, int64_t step) override;
  absl::Status GreedyFinish(const GreedyView& v) override;
  absl::Status Gemm(const GemmCall& call) override;
  absl::Status CholeskyBatched(const CholeskyCall& call) override;
  absl::Status TrsmBatched(const TrsmCall& call) override;
};

// CudaLayerScorer::ScoreLayer's path with host memory for the device and HostScoringSteps for the
// launches: validation, PlanLayer, LayoutScratch, PackUpload, RunScorerSteps, ReadScores. The
// device-only scratch starts as NaN bytes, so a step that reads what no earlier step wrote shows.
// Same answers as ScoreLayer (except FAILED_PRECONDITION for an unusable device).
absl::Status EmulateLayerOnHost(const DeviceLayerRequest& request,
                                std::vector<std::vector<float>>* scores);

}  // namespace kvkeep::cuda_scoring

#endif  // KVKEEP_GPU_CUDA_SCORING_HOST_SCORING_STEPS_H_
