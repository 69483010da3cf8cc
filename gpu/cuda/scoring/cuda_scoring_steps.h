// ScoringSteps (scoring_steps.h) on a CUDA device: every step is enqueued on one stream (kernels
// through the launchers of scoring_kernels.h, GEMMs and solves through the cuBLAS / cuSOLVER
// handles bound to that stream) and returns as soon as it is enqueued; nothing synchronises. A
// step answers the launch's or the library call's error (cuda_status.h, blas_status.h), naming
// the kernel or the call.
//
//   CudaScoringSteps steps(stream, blas, solver);   // borrowed; blas and solver use `stream`
//   RETURN_IF_ERROR(RunScorerSteps(request, plan, layout, device_scratch, steps));
//
// Not thread-safe; borrows the stream and handles for its lifetime (CudaLayerScorer serialises
// calls and owns them).
#ifndef KVKEEP_GPU_CUDA_SCORING_CUDA_SCORING_STEPS_H_
#define KVKEEP_GPU_CUDA_SCORING_CUDA_SCORING_STEPS_H_

#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cusolverDn.h>

#include "gpu/cuda/scoring/scoring_steps.h"

namespace kvkeep::cuda_scoring {

class CudaScoringSteps final : public ScoringSteps {
 public:
  CudaScoringSteps(cudaStream_t stream, cublasHandle_t blas, cusolverDnHandle_t solver)
      : stream_(stream), blas_(blas), solver_(solver) {}

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

 private:
  const cudaStream_t stream_;
  const cublasHandle_t blas_;
  const cusolverDnHandle_t solver_;
};

}  // namespace kvkeep::cuda_scoring

#endif  // KVKEEP_GPU_CUDA_SCORING_CUDA_SCORING_STEPS_H_
