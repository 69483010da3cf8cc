#include "gpu/cuda_arena_kind.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvkeep {
namespace {

// What `support` lacks, in the driver's own names; empty when nothing.
std::string Missing(const CudaVmmSupport& support) {
  std::vector<std::string> missing;
  if (!support.driver_entry_points) {
    missing.push_back("the driver has no cuMemCreate/cuMemExportToShareableHandle entry points");
  }
  if (!support.virtual_memory_management) {
    missing.push_back("CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED is 0");
  }
  if (!support.posix_fd_handles) {
    missing.push_back("CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED is 0");
  }
  return absl::StrJoin(missing, "; ");
}

constexpr char kVmmWhy[] =
    "CUDA_VMM_FD (cuMemCreate, exported as POSIX file descriptors over the arena channel)";
constexpr char kIpcWhy[] = "CUDA_IPC (cudaMalloc + cudaIpc handles; workers need hostIPC)";

}  // namespace

absl::StatusOr<CudaArenaKind> ParseCudaArenaKind(absl::string_view name) {
  if (name == "auto") return CudaArenaKind::kAuto;
  if (name == "vmm") return CudaArenaKind::kVmm;
  if (name == "ipc") return CudaArenaKind::kIpc;
  return absl::InvalidArgumentError(
      absl::StrCat("unknown CUDA arena kind \"", name, "\"; use auto, vmm or ipc"));
}

absl::string_view CudaArenaKindName(CudaArenaKind kind) {
  switch (kind) {
    case CudaArenaKind::kAuto: return "auto";
    case CudaArenaKind::kVmm: return "vmm";
    case CudaArenaKind::kIpc: return "ipc";
  }
  return "auto";
}

absl::StatusOr<CudaArenaChoice> ChooseCudaArenaExport(CudaArenaKind requested,
                                                      const CudaVmmSupport& support, int device) {
  const std::string missing = Missing(support);
  switch (requested) {
    case CudaArenaKind::kIpc:
      return CudaArenaChoice{ArenaExportKind::kCudaIpc,
                             absl::StrCat(kIpcWhy, ", as --cuda_arena_kind=ipc asks")};
    case CudaArenaKind::kVmm:
      if (!missing.empty()) {
        return absl::FailedPreconditionError(absl::StrCat(
            "--cuda_arena_kind=vmm: cuda:", device, " cannot export cuMemCreate arenas as POSIX "
            "file descriptors (", missing, "); use --cuda_arena_kind=auto or ipc (cudaIpc "
            "handles, which need hostIPC)"));
      }
      return CudaArenaChoice{ArenaExportKind::kCudaVmmFd, kVmmWhy};
    case CudaArenaKind::kAuto:
      if (!missing.empty()) {
        return CudaArenaChoice{ArenaExportKind::kCudaIpc,
                               absl::StrCat(kIpcWhy, ", because ", missing)};
      }
      return CudaArenaChoice{ArenaExportKind::kCudaVmmFd, kVmmWhy};
  }
  return absl::InvalidArgumentError("unknown CUDA arena kind");
}

}  // namespace kvkeep
