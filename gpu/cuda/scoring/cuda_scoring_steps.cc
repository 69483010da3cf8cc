#include "gpu/cuda/scoring/cuda_scoring_steps.h"

#include "gpu/cuda/cuda_status.h"
#include "gpu/cuda/scoring/blas_status.h"

namespace kvkeep::cuda_scoring {

absl::Status CudaScoringSteps::Gather(const GatherView& v) {
  return CudaStatus(LaunchGather(v, stream_), "gather kernel");
}

absl::Status CudaScoringSteps::TokenScores(const TokenScoresView& v) {
  return CudaStatus(LaunchTokenScores(v, stream_), "token scores kernel");
}

absl::Status CudaScoringSteps::Norms(const NormView& v) {
  return CudaStatus(LaunchNorms(v, stream_), v.negate ? "knorm kernel" : "norms kernel");
}

absl::Status CudaScoringSteps::SoftmaxRows(const SoftmaxView& v) {
  return CudaStatus(LaunchSoftmaxRows(v, stream_),
                    v.exp_only ? "capkv weights kernel" : "softmax kernel");
}

absl::Status CudaScoringSteps::WindowColumns(const WindowColumnsView& v) {
  return CudaStatus(LaunchWindowColumns(v, stream_), "window columns kernel");
}

absl::Status CudaScoringSteps::TovaAlign(const TovaAlignView& v) {
  return CudaStatus(LaunchTovaAlign(v, stream_), "tova kernel");
}

absl::Status CudaScoringSteps::SnapPool(const PoolView& v) {
  return CudaStatus(LaunchSnapPool(v, stream_), "pooling kernel");
}

absl::Status CudaScoringSteps::QuadForm(const QuadFormView& v) {
  return CudaStatus(LaunchQuadForm(v, stream_), "quadratic form kernel");
}

absl::Status CudaScoringSteps::LaProxCombine(const LaProxView& v) {
  return CudaStatus(LaunchLaProxCombine(v, stream_), "laprox kernel");
}

absl::Status CudaScoringSteps::ExpectedLogits(const ExpectedLogitsView& v) {
  return CudaStatus(LaunchExpectedLogits(v, stream_), "expected logits kernel");
}

absl::Status CudaScoringSteps::GroupSum(const GroupSumView& v) {
  return CudaStatus(LaunchGroupSum(v, stream_), "group sum kernel");
}

absl::Status CudaScoringSteps::CapLogits(const CapLogitsView& v) {
  return CudaStatus(LaunchCapLogits(v, stream_), "capkv logits kernel");
}

absl::Status CudaScoringSteps::ScaleValues(const ScaleValuesView& v) {
  return CudaStatus(LaunchScaleValues(v, stream_), "scale values kernel");
}

absl::Status CudaScoringSteps::GramToDouble(const GramToDoubleView& v) {
  return CudaStatus(LaunchGramToDouble(v, stream_), "Gram conversion kernel");
}

absl::Status CudaScoringSteps::ValuesToDouble(const ValuesToDoubleView& v) {
  return CudaStatus(LaunchValuesToDouble(v, stream_), "values conversion kernel");
}

absl::Status CudaScoringSteps::Leverage(const LeverageView& v) {
  return CudaStatus(LaunchLeverage(v, stream_), "leverage kernel");
}

absl::Status CudaScoringSteps::FillUndefined(const Heads& heads, float* scores) {
  return CudaStatus(LaunchFillUndefined(heads, scores, stream_), "fill kernel");
}

absl::Status CudaScoringSteps::GreedyInit(const GreedyView& v) {
  return CudaStatus(LaunchGreedyInit(v, stream_), "greedy init kernel");
}

absl::Status CudaScoringSteps::GreedyAdd(const GreedyView& v, int window_k) {
  return CudaStatus(LaunchGreedyAdd(v, window_k, stream_), "greedy add kernels");
}

absl::Status CudaScoringSteps::GreedySelect(const GreedyView& v, int64_t step) {
  return CudaStatus(LaunchGreedySelect(v, step, stream_), "greedy select kernel");
}

absl::Status CudaScoringSteps::GreedyFinish(const GreedyView& v) {
  return CudaStatus(LaunchGreedyFinish(v, stream_), "greedy finish kernel");
}

absl::Status CudaScoringSteps::Gemm(const GemmCall& c) {
  const cublasOperation_t op_a = c.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t op_b = c.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  if (!c.strided_batched) {
    return CublasStatus(cublasSgemm(blas_, op_a, op_b, c.m, c.n, c.k, &c.alpha, c.a, c.lda, c.b,
                                    c.ldb, &c.beta, c.c, c.ldc),
                        c.what);
  }
  return CublasStatus(
      cublasSgemmStridedBatched(blas_, op_a, op_b, c.m, c.n, c.k, &c.alpha, c.a, c.lda,
                                c.stride_a, c.b, c.ldb, c.stride_b, &c.beta, c.c, c.ldc,
                                c.stride_c, c.batch),
      c.what);
}

absl::Status CudaScoringSteps::CholeskyBatched(const CholeskyCall& c) {
  return CusolverStatus(cusolverDnDpotrfBatched(solver_, CUBLAS_FILL_MODE_LOWER, c.n, c.matrices,
                                                c.lda, c.info, c.batch),
                        "batched Cholesky (cusolverDnDpotrfBatched)");
}

absl::Status CudaScoringSteps::TrsmBatched(const TrsmCall& c) {
  return CublasStatus(
      cublasDtrsmBatched(blas_, CUBLAS_SIDE_LEFT, CUBLAS_FILL_MODE_LOWER, CUBLAS_OP_N,
                         CUBLAS_DIAG_NON_UNIT, c.m, c.n, &c.alpha, c.l, c.lda, c.b, c.ldb,
                         c.batch),
      "batched triangular solve (cublasDtrsmBatched)");
}

}  // namespace kvkeep::cuda_scoring
