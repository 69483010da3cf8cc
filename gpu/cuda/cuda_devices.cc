#include "gpu/cuda/cuda_devices.h"

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/cuda/cuda_status.h"
#include "gpu/gpu_uuid.h"

namespace kvkeep {

absl::StatusOr<int> CudaDeviceCount() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky; leave no stale error for later checks
    return absl::FailedPreconditionError(
        absl::StrCat("no CUDA device: cudaGetDeviceCount: ", cudaGetErrorName(err), ": ",
                     cudaGetErrorString(err)));
  }
  if (count <= 0) {
    return absl::FailedPreconditionError("no CUDA device: cudaGetDeviceCount found 0 devices");
  }
  return count;
}

absl::StatusOr<std::string> CudaDeviceUuid(int ordinal) {
  cudaDeviceProp prop;
  RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, ordinal),
                             absl::StrCat("cudaGetDeviceProperties(", ordinal, ")")));
  return FormatGpuUuid(prop.uuid.bytes);
}

absl::StatusOr<std::string> CudaDeviceSummary(int ordinal) {
  cudaDeviceProp prop;
  RETURN_IF_ERROR(CudaStatus(cudaGetDeviceProperties(&prop, ordinal),
                             absl::StrCat("cudaGetDeviceProperties(", ordinal, ")")));
  return absl::StrCat(prop.name, " (", FormatGpuUuid(prop.uuid.bytes), "), compute capability ",
                      prop.major, ".", prop.minor, ", ", prop.totalGlobalMem >> 20, " MiB");
}

absl::StatusOr<int> FindCudaDeviceByUuid(absl::string_view uuid) {
  if (!IsGpuUuid(uuid)) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", uuid, "\" is not a GPU UUID (GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"));
  }
  ASSIGN_OR_RETURN(int count, CudaDeviceCount());
  std::string seen;
  for (int i = 0; i < count; ++i) {
    ASSIGN_OR_RETURN(std::string mine, CudaDeviceUuid(i));
    // nvidia-smi prints lower case; compare case-insensitively all the same.
    bool same = mine.size() == uuid.size();
    for (std::size_t c = 0; same && c < mine.size(); ++c) {
      same = (mine[c] | 0x20) == (uuid[c] | 0x20);
    }
    if (same) return i;
    absl::StrAppend(&seen, seen.empty() ? "" : ", ", mine);
  }
  return absl::NotFoundError(absl::StrCat("no visible CUDA device has UUID ", uuid,
                                          " (this process sees ", seen,
                                          "; check CUDA_VISIBLE_DEVICES)"));
}

ScopedCudaDevice::ScopedCudaDevice(int ordinal) {
  status_ = CudaStatus(cudaGetDevice(&previous_), "cudaGetDevice");
  if (!status_.ok()) {
    previous_ = -1;
    return;
  }
  if (previous_ == ordinal) return;
  status_ = CudaStatus(cudaSetDevice(ordinal), absl::StrCat("cudaSetDevice(", ordinal, ")"));
}

ScopedCudaDevice::~ScopedCudaDevice() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

}  // namespace kvkeep
