// cudaError_t -> absl::Status, in one place (style.md: convert at the edges).
//
//   RETURN_IF_ERROR(CudaStatus(cudaMalloc(&ptr, bytes), "cudaMalloc of the arena"));
#ifndef KVKEEP_GPU_CUDA_CUDA_STATUS_H_
#define KVKEEP_GPU_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/strings/string_view.h"

#include "absl/status/status.h"

namespace kvkeep {

// OK for cudaSuccess; otherwise a status whose code follows the error (out of memory ->
// RESOURCE_EXHAUSTED, invalid values -> INVALID_ARGUMENT, no device -> FAILED_PRECONDITION,
// the rest INTERNAL) and whose message is "<what>: <cudaGetErrorName>: <cudaGetErrorString>".
absl::Status CudaStatus(cudaError_t error, absl::string_view what);

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_CUDA_STATUS_H_
