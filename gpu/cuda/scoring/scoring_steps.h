// The primitive steps one layer's scoring is made of: every kernel of scoring_kernels.h and the
// three library calls (cuBLAS GEMM, cuSOLVER batched Cholesky, cuBLAS batched triangular solve).
// The per-scorer sequences of steps are written once (scorer_steps.h) against this interface;
// two implementations run them:
//   - CudaScoringSteps (cuda_scoring_steps.h): each step is a launch on the scorer's stream;
//   - HostScoringSteps (host_scoring_steps.h, tests): each step runs serially on host memory, the
//     kernels through their per-element bodies (scoring_elements.h) and the library calls through
//     column-major reference routines with the libraries' conventions.
// Pointers in the views and calls address the scratch the implementation runs on (device memory
// for CUDA, host memory for the emulation). A step may run asynchronously: its result is visible
// to the next step, not to the host, until the implementation says so.
//
//   RETURN_IF_ERROR(steps.Norms({N, keys, d, /*negate=*/true, scores}));
#ifndef KVKEEP_GPU_CUDA_SCORING_SCORING_STEPS_H_
#define KVKEEP_GPU_CUDA_SCORING_SCORING_STEPS_H_

#include <cstdint>

#include "absl/status/status.h"
#include "gpu/cuda/scoring/scoring_kernels.h"

namespace kvkeep::cuda_scoring {

// C = alpha op(A) op(B) + beta C, column-major, fp32 (cublasSgemm; cublasSgemmStridedBatched when
// strided_batched, over `batch` matrices `stride_*` elements apart).
struct GemmCall {
  const char* what = "";  // names the GEMM in errors
  bool trans_a = false, trans_b = false;
  int m = 0, n = 0, k = 0;
  float alpha = 1.0f;
  const float* a = nullptr;
  int lda = 0;
  long long stride_a = 0;
  const float* b = nullptr;
  int ldb = 0;
  long long stride_b = 0;
  float beta = 0.0f;
  float* c = nullptr;
  int ldc = 0;
  long long stride_c = 0;
  bool strided_batched = false;
  int batch = 1;
};

// In-place lower Cholesky of `batch` n×n double matrices (cusolverDnDpotrfBatched,
// CUBLAS_FILL_MODE_LOWER); info[b] as cuSOLVER's: 0, or the 1-based order of the failing minor.
struct CholeskyCall {
  int n = 0;
  double** matrices = nullptr;  // [batch] pointers into the scratch
  int lda = 0;
  int* info = nullptr;  // [batch]
  int batch = 0;
};

// Solves L X = alpha B in place for `batch` pairs (cublasDtrsmBatched: side left, lower, no
// transpose, non-unit diagonal); L m×m, B m×n, column-major.
struct TrsmCall {
  int m = 0, n = 0;
  double alpha = 1.0;
  const double* const* l = nullptr;  // [batch] pointers into the scratch
  int lda = 0;
  double* const* b = nullptr;  // [batch] pointers into the scratch
  int ldb = 0;
  int batch = 0;
};

// Not thread-safe: one layer at a time.
class ScoringSteps {
 public:
  virtual ~ScoringSteps() = default;

  // Kernels (scoring_kernels.h documents each view).
  virtual absl::Status Gather(const GatherView& v) = 0;
  virtual absl::Status TokenScores(const TokenScoresView& v) = 0;
  virtual absl::Status Norms(const NormView& v) = 0;
  virtual absl::Status SoftmaxRows(const SoftmaxView& v) = 0;
  virtual absl::Status WindowColumns(const WindowColumnsView& v) = 0;
  virtual absl::Status TovaAlign(const TovaAlignView& v) = 0;
  virtual absl::Status SnapPool(const PoolView& v) = 0;
  virtual absl::Status QuadForm(const QuadFormView& v) = 0;
  virtual absl::Status LaProxCombine(const LaProxView& v) = 0;
  virtual absl::Status ExpectedLogits(const ExpectedLogitsView& v) = 0;
  virtual absl::Status GroupSum(const GroupSumView& v) = 0;
  virtual absl::Status CapLogits(const CapLogitsView& v) = 0;
  virtual absl::Status ScaleValues(const ScaleValuesView& v) = 0;
  virtual absl::Status GramToDouble(const GramToDoubleView& v) = 0;
  virtual absl::Status ValuesToDouble(const ValuesToDoubleView& v) = 0;
  virtual absl::Status Leverage(const LeverageView& v) = 0;
  virtual absl::Status FillUndefined(const Heads& heads, float* scores) = 0;
  virtual absl::Status GreedyInit(const GreedyView& v) = 0;
  virtual absl::Status GreedyAdd(const GreedyView& v, int window_k) = 0;
  virtual absl::Status GreedySelect(const GreedyView& v, int64_t step) = 0;
  virtual absl::Status GreedyFinish(const GreedyView& v) = 0;

  // Library calls.
  virtual absl::Status Gemm(const GemmCall& call) = 0;
  virtual absl::Status CholeskyBatched(const CholeskyCall& call) = 0;
  virtual absl::Status TrsmBatched(const TrsmCall& call) = 0;
};

}  // namespace kvkeep::cuda_scoring

#endif  // KVKEEP_GPU_CUDA_SCORING_SCORING_STEPS_H_
