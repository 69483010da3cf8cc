#include "gpu/cuda/scoring/blas_status.h"

#include "absl/strings/str_cat.h"

namespace kvkeep {

absl::Status CublasStatus(cublasStatus_t status, absl::string_view what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": ", cublasGetStatusName(status), " (",
                                           cublasGetStatusString(status), ")");
  switch (status) {
    case CUBLAS_STATUS_ALLOC_FAILED:
      return absl::ResourceExhaustedError(message);
    case CUBLAS_STATUS_INVALID_VALUE:
      return absl::InvalidArgumentError(message);
    case CUBLAS_STATUS_NOT_INITIALIZED:
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status CusolverStatus(cusolverStatus_t status, absl::string_view what) {
  if (status == CUSOLVER_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message = absl::StrCat(what, ": cusolverStatus_t ", static_cast<int>(status));
  switch (status) {
    case CUSOLVER_STATUS_ALLOC_FAILED:
      return absl::ResourceExhaustedError(message);
    case CUSOLVER_STATUS_INVALID_VALUE:
      return absl::InvalidArgumentError(message);
    case CUSOLVER_STATUS_NOT_INITIALIZED:
    case CUSOLVER_STATUS_ARCH_MISMATCH:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace kvkeep
