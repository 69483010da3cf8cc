// The CUDA driver calls kvkeep needs for virtual-memory-managed arenas (cuMemCreate, export and
// import as POSIX file descriptors, map, access), looked up once through the runtime
// (cudaGetDriverEntryPointByVersion) instead of linking libcuda: the daemon, the client and the
// test binaries then still load on machines without an NVIDIA driver (CI, this build machine),
// where they must answer "no CUDA device" or skip, not fail to start.
//
//   ASSIGN_OR_RETURN(const CudaDriverApi* cu, CudaDriver());
//   RETURN_IF_ERROR(CuStatus(cu->mem_create(&handle, bytes, &prop, 0), "cuMemCreate"));
//   ASSIGN_OR_RETURN(CudaVmmSupport support, QueryCudaVmmSupport(device));
//
// Thread-safe: the table is built once and never changes.
#ifndef KVKEEP_GPU_CUDA_CUDA_DRIVER_API_H_
#define KVKEEP_GPU_CUDA_CUDA_DRIVER_API_H_

#include <cuda.h>
#include <cudaTypedefs.h>

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "gpu/cuda_arena_kind.h"

namespace kvkeep {

// Driver entry points, every one non-null in a table CudaDriver() hands out.
struct CudaDriverApi {
  PFN_cuGetErrorName_v6000 get_error_name = nullptr;
  PFN_cuDeviceGet_v2000 device_get = nullptr;
  PFN_cuDeviceGetAttribute_v2000 device_get_attribute = nullptr;
  PFN_cuMemGetAllocationGranularity_v10020 mem_get_allocation_granularity = nullptr;
  PFN_cuMemCreate_v10020 mem_create = nullptr;
  PFN_cuMemRelease_v10020 mem_release = nullptr;
  PFN_cuMemAddressReserve_v10020 mem_address_reserve = nullptr;
  PFN_cuMemAddressFree_v10020 mem_address_free = nullptr;
  PFN_cuMemMap_v10020 mem_map = nullptr;
  PFN_cuMemUnmap_v10020 mem_unmap = nullptr;
  PFN_cuMemSetAccess_v10020 mem_set_access = nullptr;
  PFN_cuMemGetAccess_v10020 mem_get_access = nullptr;
  PFN_cuMemExportToShareableHandle_v10020 mem_export_to_shareable_handle = nullptr;
  PFN_cuMemImportFromShareableHandle_v10020 mem_import_from_shareable_handle = nullptr;
};

// The table, loaded on first use. FAILED_PRECONDITION naming the first missing entry point when
// there is no driver or it is older than CUDA 10.2 (the first with cuMemCreate).
absl::StatusOr<const CudaDriverApi*> CudaDriver();

// OK for CUDA_SUCCESS; otherwise "<what>: <CUDA_ERROR_...>" with a code that follows the error
// (out of memory -> RESOURCE_EXHAUSTED, invalid value or handle -> INVALID_ARGUMENT, not
// permitted -> PERMISSION_DENIED, not supported / no device / not initialized ->
// FAILED_PRECONDITION, the rest INTERNAL).
absl::Status CuStatus(CUresult result, absl::string_view what);

// What device `ordinal` (this process's numbering) offers for CUDA_VMM_FD arenas: the driver's
// entry points and the two device attributes. A driver without the entry points is not an error
// (driver_entry_points = false); FAILED_PRECONDITION when there is no device at all.
absl::StatusOr<CudaVmmSupport> QueryCudaVmmSupport(int ordinal);

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_CUDA_DRIVER_API_H_
