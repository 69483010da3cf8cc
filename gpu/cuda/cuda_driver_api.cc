#include "gpu/cuda/cuda_driver_api.h"

#include <cuda_runtime_api.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/cuda/cuda_devices.h"
#include "gpu/cuda/cuda_status.h"

namespace kvkeep {
namespace {

// Looks up `name` as the driver offered it in CUDA `version`; a clear status when it cannot.
template <typename Fn>
absl::Status Load(const char* name, int version, Fn* out) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  const cudaError_t err =
      cudaGetDriverEntryPointByVersion(name, &fn, version, cudaEnableDefault, &found);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky; leave no stale error for later checks
    return absl::FailedPreconditionError(absl::StrCat(
        "no CUDA driver entry point ", name, ": cudaGetDriverEntryPointByVersion: ",
        cudaGetErrorName(err), ": ", cudaGetErrorString(err)));
  }
  if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the CUDA driver has no ", name,
        found == cudaDriverEntryPointVersionNotSufficent ? " (driver too old)" : ""));
  }
  *out = reinterpret_cast<Fn>(fn);
  return absl::OkStatus();
}

absl::Status LoadAll(CudaDriverApi& api) {
  RETURN_IF_ERROR(Load("cuGetErrorName", 6000, &api.get_error_name));
  RETURN_IF_ERROR(Load("cuDeviceGet", 2000, &api.device_get));
  RETURN_IF_ERROR(Load("cuDeviceGetAttribute", 2000, &api.device_get_attribute));
  RETURN_IF_ERROR(
      Load("cuMemGetAllocationGranularity", 10020, &api.mem_get_allocation_granularity));
  RETURN_IF_ERROR(Load("cuMemCreate", 10020, &api.mem_create));
  RETURN_IF_ERROR(Load("cuMemRelease", 10020, &api.mem_release));
  RETURN_IF_ERROR(Load("cuMemAddressReserve", 10020, &api.mem_address_reserve));
  RETURN_IF_ERROR(Load("cuMemAddressFree", 10020, &api.mem_address_free));
  RETURN_IF_ERROR(Load("cuMemMap", 10020, &api.mem_map));
  RETURN_IF_ERROR(Load("cuMemUnmap", 10020, &api.mem_unmap));
  RETURN_IF_ERROR(Load("cuMemSetAccess", 10020, &api.mem_set_access));
  RETURN_IF_ERROR(Load("cuMemGetAccess", 10020, &api.mem_get_access));
  RETURN_IF_ERROR(
      Load("cuMemExportToShareableHandle", 10020, &api.mem_export_to_shareable_handle));
  RETURN_IF_ERROR(
      Load("cuMemImportFromShareableHandle", 10020, &api.mem_import_from_shareable_handle));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<const CudaDriverApi*> CudaDriver() {
  // Built once; a failed load is remembered too (no driver does not appear later).
  static const absl::StatusOr<const CudaDriverApi*> table =
      []() -> absl::StatusOr<const CudaDriverApi*> {
    static CudaDriverApi api;
    RETURN_IF_ERROR(LoadAll(api));
    return &api;
  }();
  return table;
}

absl::Status CuStatus(CUresult result, absl::string_view what) {
  if (result == CUDA_SUCCESS) return absl::OkStatus();
  const char* name = nullptr;
  auto driver = CudaDriver();
  if (driver.ok()) (void)(*driver)->get_error_name(result, &name);
  std::string message = absl::StrCat(what, ": ", name != nullptr ? name : "CUresult ",
                                     name != nullptr ? "" : absl::StrCat(static_cast<int>(result)));
  switch (result) {
    case CUDA_ERROR_OUT_OF_MEMORY:
      return absl::ResourceExhaustedError(message);
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_INVALID_HANDLE:
      return absl::InvalidArgumentError(message);
    case CUDA_ERROR_NOT_PERMITTED:
      return absl::PermissionDeniedError(message);
    case CUDA_ERROR_NOT_SUPPORTED:
    case CUDA_ERROR_NO_DEVICE:
    case CUDA_ERROR_INVALID_DEVICE:
    case CUDA_ERROR_NOT_INITIALIZED:
    case CUDA_ERROR_DEINITIALIZED:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::StatusOr<CudaVmmSupport> QueryCudaVmmSupport(int ordinal) {
  ASSIGN_OR_RETURN(int count, CudaDeviceCount());
  if (ordinal < 0 || ordinal >= count) {
    return absl::InvalidArgumentError(
        absl::StrCat("cuda:", ordinal, " is not a visible device (", count, " visible)"));
  }
  CudaVmmSupport support;
  auto driver = CudaDriver();
  if (!driver.ok()) return support;  // an old driver: the cudaIpc path still works
  const CudaDriverApi& cu = **driver;
  support.driver_entry_points = true;
  // The runtime initialised the driver (CudaDeviceCount); cuDeviceGet maps the ordinal.
  CUdevice device = 0;
  RETURN_IF_ERROR(
      CuStatus(cu.device_get(&device, ordinal), absl::StrCat("cuDeviceGet(", ordinal, ")")));
  int value = 0;
  RETURN_IF_ERROR(CuStatus(
      cu.device_get_attribute(&value, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED,
                              device),
      "cuDeviceGetAttribute(VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED)"));
  support.virtual_memory_management = value != 0;
  value = 0;
  RETURN_IF_ERROR(CuStatus(
      cu.device_get_attribute(
          &value, CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED, device),
      "cuDeviceGetAttribute(HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED)"));
  support.posix_fd_handles = value != 0;
  return support;
}

}  // namespace kvkeep
