// CUDA_IPC arenas: device memory of kvkeepd opened with cudaIpcOpenMemHandle on the local device
// whose UUID matches the export (CMake picks this file when the CUDA backend is built).
#include <cuda.h>
#include <cuda_runtime_api.h>
#include <cudaTypedefs.h>

#include <cstring>

#include "absl/strings/str_cat.h"
#include "client/arena_mapping.h"
#include "client/cuda_device_mapping.h"
#include "common/status_macros.h"
#include "gpu/cuda/cuda_devices.h"
#include "gpu/cuda/cuda_status.h"

namespace kvkeep {
namespace {

// The extent of the allocation that contains `ptr`, from the driver API. Looked up through the
// runtime (cudaGetDriverEntryPointByVersion), so the client does not link libcuda and loads on
// machines without a driver.
absl::Status AllocationRange(void* ptr, CUdeviceptr* base, size_t* size) {
  void* fn = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  RETURN_IF_ERROR(CudaStatus(cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 3020,
                                                              cudaEnableDefault, &found),
                             "cudaGetDriverEntryPointByVersion(cuMemGetAddressRange)"));
  if (found != cudaDriverEntryPointSuccess || fn == nullptr) {
    return absl::FailedPreconditionError("the CUDA driver has no cuMemGetAddressRange");
  }
  const CUresult result = reinterpret_cast<PFN_cuMemGetAddressRange_v3020>(fn)(
      base, size, reinterpret_cast<CUdeviceptr>(ptr));
  if (result != CUDA_SUCCESS) {
    return absl::InternalError(absl::StrCat("cuMemGetAddressRange failed with CUresult ",
                                            static_cast<int>(result)));
  }
  return absl::OkStatus();
}

class CudaIpcMapping final : public CudaDeviceMapping {
 public:
  CudaIpcMapping(v1::ArenaExport arena, uint8_t* data, uint64_t size, int device)
      : CudaDeviceMapping(std::move(arena), data, size, device) {}

  // The last holder dropped it: close the import (the daemon's allocation is unaffected).
  ~CudaIpcMapping() override {
    ScopedCudaDevice on(device_ordinal());
    if (on.status().ok()) (void)cudaIpcCloseMemHandle(data());
  }
};

}  // namespace

absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapCudaIpcArena(const v1::ArenaExport& arena) {
  cudaIpcMemHandle_t handle;
  if (arena.handle().size() != sizeof(handle.reserved)) {
    return absl::InvalidArgumentError(absl::StrCat("arena ", arena.arena_id(), ": a CUDA IPC handle has ",
                                                   sizeof(handle.reserved), " bytes, the export has ",
                                                   arena.handle().size()));
  }
  if (arena.size_bytes() == 0) {
    return absl::InvalidArgumentError(absl::StrCat("arena ", arena.arena_id(), " has 0 bytes"));
  }
  std::memcpy(handle.reserved, arena.handle().data(), sizeof(handle.reserved));
  ASSIGN_OR_RETURN(const int device, FindCudaDeviceByUuid(arena.device_uuid()));
  ScopedCudaDevice on(device);
  RETURN_IF_ERROR(on.status());
  void* ptr = nullptr;
  RETURN_IF_ERROR(CudaStatus(
      cudaIpcOpenMemHandle(&ptr, handle, cudaIpcMemLazyEnablePeerAccess),
      absl::StrCat("cudaIpcOpenMemHandle of arena ", arena.arena_id(), " on cuda:", device)));
  // From here the import is owned: CudaIpcMapping closes it, also on the errors below.
  auto mapping = std::make_shared<const CudaIpcMapping>(arena, static_cast<uint8_t*>(ptr),
                                                        arena.size_bytes(), device);
  CUdeviceptr base = 0;
  size_t bytes = 0;
  RETURN_IF_ERROR(AllocationRange(ptr, &base, &bytes));
  // The driver may round an allocation up; a smaller one (or an interior pointer) would let
  // writes at the export's offsets land outside it.
  if (base != reinterpret_cast<CUdeviceptr>(ptr) || bytes < arena.size_bytes()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "arena ", arena.arena_id(), ": the mapped allocation has ", bytes,
        " bytes from its base, the export says ", arena.size_bytes()));
  }
  return std::shared_ptr<const ArenaMapping>(std::move(mapping));
}

}  // namespace kvkeep
