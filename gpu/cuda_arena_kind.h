// Which export the CUDA backend gives its arenas: the decision, apart from the device.
//
// The CUDA backend asks the driver what the device supports (gpu/cuda/cuda_driver_api.h,
// QueryCudaVmmSupport) and hands the answer here as plain booleans, so the rule is tested on
// machines without a GPU (gpu/cuda_arena_kind_test.cc).
//
//   ASSIGN_OR_RETURN(CudaArenaKind requested, ParseCudaArenaKind(flag));      // "auto|vmm|ipc"
//   ASSIGN_OR_RETURN(CudaArenaChoice choice,
//                    ChooseCudaArenaExport(requested, support, /*device=*/0));
//   if (choice.kind == ArenaExportKind::kCudaVmmFd) ...                      // cuMemCreate arenas
//
// Host-only (no CUDA headers); pure functions, thread-safe.
#ifndef KVKEEP_GPU_CUDA_ARENA_KIND_H_
#define KVKEEP_GPU_CUDA_ARENA_KIND_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "gpu/backend.h"

namespace kvkeep {

// What the driver and the device offer for exporting cuMemCreate allocations as POSIX fds.
struct CudaVmmSupport {
  // The driver has the cuMem* entry points (cuMemCreate, cuMemExportToShareableHandle, ...).
  bool driver_entry_points = false;  // Default: false
  // CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED.
  bool virtual_memory_management = false;  // Default: false
  // CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED.
  bool posix_fd_handles = false;  // Default: false
};

// The export chosen and one line saying why (for the backend's device() line and the logs).
struct CudaArenaChoice {
  ArenaExportKind kind = ArenaExportKind::kCudaIpc;
  std::string why;
};

// "auto", "vmm" or "ipc"; INVALID_ARGUMENT naming the accepted values otherwise.
absl::StatusOr<CudaArenaKind> ParseCudaArenaKind(absl::string_view name);
// The flag value of `kind` ("auto", "vmm", "ipc").
absl::string_view CudaArenaKindName(CudaArenaKind kind);

// kAuto: kCudaVmmFd when every field of `support` is true, else kCudaIpc (the why names what
// is missing). kIpc: kCudaIpc. kVmm: kCudaVmmFd, or FAILED_PRECONDITION naming the device and
// what it lacks when a field is false. `device` is the ordinal, for messages only.
absl::StatusOr<CudaArenaChoice> ChooseCudaArenaExport(CudaArenaKind requested,
                                                      const CudaVmmSupport& support, int device);

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_ARENA_KIND_H_
