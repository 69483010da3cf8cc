#include "gpu/cuda/cuda_devices.h"

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <cudaTypedefs.h>

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

namespace {

// The driver's current-context calls, looked up through the runtime (no libcuda link); null when
// the driver does not offer them (no driver: there is no context to keep either).
struct ContextCalls {
  PFN_cuCtxGetCurrent_v4000 get = nullptr;
  PFN_cuCtxSetCurrent_v4000 set = nullptr;
};

const ContextCalls& DriverContextCalls() {
  static const ContextCalls calls = [] {
    ContextCalls c;
    void* get = nullptr;
    void* set = nullptr;
    cudaDriverEntryPointQueryResult found_get = cudaDriverEntryPointSymbolNotFound;
    cudaDriverEntryPointQueryResult found_set = cudaDriverEntryPointSymbolNotFound;
    const bool ok =
        cudaGetDriverEntryPointByVersion("cuCtxGetCurrent", &get, 4000, cudaEnableDefault,
                                         &found_get) == cudaSuccess &&
        cudaGetDriverEntryPointByVersion("cuCtxSetCurrent", &set, 4000, cudaEnableDefault,
                                         &found_set) == cudaSuccess &&
        found_get == cudaDriverEntryPointSuccess && found_set == cudaDriverEntryPointSuccess &&
        get != nullptr && set != nullptr;
    if (ok) {
      c.get = reinterpret_cast<PFN_cuCtxGetCurrent_v4000>(get);
      c.set = reinterpret_cast<PFN_cuCtxSetCurrent_v4000>(set);
    } else {
      (void)cudaGetLastError();  // not sticky; leave no stale error for later checks
    }
    return c;
  }();
  return calls;
}

}  // namespace

ScopedCudaDevice::ScopedCudaDevice(int ordinal) {
  // The thread's current context, before anything here binds one. A thread that never used CUDA
  // has none, and cudaGetDevice still answers 0: "restoring" device 0 with cudaSetDevice would
  // then create a primary context on GPU 0 (hundreds of MiB there, or an error when GPU 0 is in
  // exclusive-process mode and used by another process). So the context itself is restored.
  const ContextCalls& calls = DriverContextCalls();
  if (calls.get != nullptr) {
    CUcontext current = nullptr;
    const CUresult got = calls.get(&current);
    if (got == CUDA_SUCCESS || got == CUDA_ERROR_NOT_INITIALIZED) {
      has_previous_context_ = true;
      previous_context_ = got == CUDA_SUCCESS ? current : nullptr;
    }
  }
  status_ = CudaStatus(cudaGetDevice(&previous_), "cudaGetDevice");
  if (!status_.ok()) {
    previous_ = -1;
    has_previous_context_ = false;
    return;
  }
  if (previous_ == ordinal && (!has_previous_context_ || previous_context_ != nullptr)) return;
  status_ = CudaStatus(cudaSetDevice(ordinal), absl::StrCat("cudaSetDevice(", ordinal, ")"));
}

ScopedCudaDevice::~ScopedCudaDevice() {
  if (has_previous_context_) {
    // A thread that had no context is left on `ordinal` (unbinding it would only make the runtime
    // bind a context again on its next call); one that had a context gets exactly that one back.
    if (previous_context_ != nullptr) (void)DriverContextCalls().set(previous_context_);
    return;
  }
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

}  // namespace kvkeep
