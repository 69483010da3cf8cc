// CUDA_VMM_FD arenas: kvkeepd's cuMemCreate allocations, received as POSIX file descriptors over
// the arena channel, imported (cuMemImportFromShareableHandle) and mapped (cuMemMap +
// cuMemSetAccess) on the local device whose UUID matches the export. A sharing group's arena is
// mapped with read access only. CMake picks this file when the CUDA backend is built.
#include <unistd.h>

#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/arena_mapping.h"
#include "client/cuda_device_mapping.h"
#include "common/status_macros.h"
#include "gpu/cuda/cuda_devices.h"
#include "gpu/cuda/cuda_vmm.h"

namespace kvkeep {
namespace {

class CudaVmmMapping final : public CudaDeviceMapping {
 public:
  CudaVmmMapping(v1::ArenaExport arena, std::unique_ptr<CudaVmmImport> import, int device)
      : CudaDeviceMapping(arena, import->data(), arena.size_bytes(), device),
        import_(std::move(import)) {}

  // The last holder dropped it: unmap (the daemon's allocation is unaffected; the memory goes
  // when the daemon and every worker have let go of it).
  ~CudaVmmMapping() override {
    ScopedCudaDevice on(device_ordinal());
    import_.reset();
  }

 private:
  std::unique_ptr<CudaVmmImport> import_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapCudaVmmFdArena(const v1::ArenaExport& arena,
                                                                      OwnedFd fd) {
  if (arena.size_bytes() == 0) {
    return absl::InvalidArgumentError(absl::StrCat("arena ", arena.arena_id(), " has 0 bytes"));
  }
  ASSIGN_OR_RETURN(const int device, FindCudaDeviceByUuid(arena.device_uuid()));
  ScopedCudaDevice on(device);
  RETURN_IF_ERROR(on.status());
  auto import = CudaVmmImport::Map(fd.get(), device, arena.size_bytes(), arena.read_only());
  // The import holds the allocation now (or failed): the fd is not needed either way.
  fd.reset();
  if (!import.ok()) {
    return absl::Status(import.status().code(),
                        absl::StrCat("arena ", arena.arena_id(), " (CUDA_VMM_FD) on cuda:", device,
                                     ": ", import.status().message()));
  }
  return std::shared_ptr<const ArenaMapping>(
      std::make_shared<const CudaVmmMapping>(arena, *std::move(import), device));
}

}  // namespace kvkeep
