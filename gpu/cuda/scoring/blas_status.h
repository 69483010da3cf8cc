// cublasStatus_t / cusolverStatus_t -> absl::Status, in one place (style.md: convert at the edges;
// cudaError_t is converted by gpu/cuda/cuda_status.h).
//
//   RETURN_IF_ERROR(CublasStatus(cublasSgemm(...), "window logits GEMM"));
#ifndef KVKEEP_GPU_CUDA_SCORING_BLAS_STATUS_H_
#define KVKEEP_GPU_CUDA_SCORING_BLAS_STATUS_H_

#include <cublas_v2.h>
#include <cusolverDn.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace kvkeep {

// OK for success; RESOURCE_EXHAUSTED for allocation failures, INVALID_ARGUMENT for invalid values,
// FAILED_PRECONDITION when the library is not initialised or the architecture is unsupported,
// INTERNAL otherwise. The message is "<what>: <status name>".
absl::Status CublasStatus(cublasStatus_t status, absl::string_view what);
absl::Status CusolverStatus(cusolverStatus_t status, absl::string_view what);

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_SCORING_BLAS_STATUS_H_
