// CUDA arenas (CUDA_IPC, CUDA_VMM_FD) in a client built without CUDA (CMake picks this file when
// nvcc was not found).
#include "absl/strings/str_cat.h"
#include "client/arena_mapping.h"

namespace kvkeep {

absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapCudaIpcArena(const v1::ArenaExport& arena) {
  return absl::UnimplementedError(absl::StrCat(
      "arena ", arena.arena_id(), " is CUDA_IPC device memory (", arena.device_uuid(),
      ") but this kvkeep client was built without CUDA; rebuild it with nvcc available "
      "(KVKEEP_ENABLE_CUDA=ON) or use the bytes path (WriteKV/ReadKV)"));
}

absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapCudaVmmFdArena(const v1::ArenaExport& arena,
                                                                      OwnedFd fd) {
  fd.reset();
  return absl::UnimplementedError(absl::StrCat(
      "arena ", arena.arena_id(), " is CUDA_VMM_FD device memory (", arena.device_uuid(),
      ") but this kvkeep client was built without CUDA; rebuild it with nvcc available "
      "(KVKEEP_ENABLE_CUDA=ON) or use the bytes path (WriteKV/ReadKV)"));
}

}  // namespace kvkeep
