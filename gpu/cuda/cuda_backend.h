// The CUDA backend: arenas are zero-filled device memory on one device, exported with the device's
// UUID (a worker maps by identity, not ordinal) in one of two ways (options.cuda_arena_kind,
// gpu/cuda_arena_kind.h):
//  CUDA_VMM_FD: cuMemCreate allocations mapped with cuMemMap, exported as POSIX file descriptors
//    (cuMemExportToShareableHandle) that the arena channel passes to the tenant's workers;
//  CUDA_IPC: cudaMalloc + cudaIpcGetMemHandle, the fallback where the device or driver lacks the
//    virtual memory API (workers then need hostIPC).
// Either way an arena is an ordinary device pointer here. Host bytes move through a small pool of
// pinned staging buffers, each with its own stream; CopyBatch is one kernel launch
// (gpu/cuda/batch_copy.cuh).
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Backend> cuda,
//                    CreateCudaBackend({.kind = BackendKind::kCuda, .cuda_device = 0}));
//   ASSIGN_OR_RETURN(std::unique_ptr<Arena> arena, cuda->CreateArena(64 << 20));
//   RETURN_IF_ERROR(cuda->Write(*arena, 0, bytes.data(), bytes.size()));
//
// Thread-safe: every call leases its own stream and staging buffers (up to kMaxStreamSlots at
// once; further callers wait for one). Every call returns when its work on the device is done, so
// a worker that maps the arena sees the bytes once the RPC that wrote them has answered.
// Built only when nvcc was found; gpu/backend_factory.cc is the only caller.
#ifndef KVKEEP_GPU_CUDA_CUDA_BACKEND_H_
#define KVKEEP_GPU_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "gpu/backend.h"

namespace kvkeep {

// FAILED_PRECONDITION "no CUDA device ..." (with the CUDA error) when the runtime finds no driver
// or no device, and "--cuda_arena_kind=vmm: ..." when VMM arenas are demanded of a device or
// driver that cannot export them; INVALID_ARGUMENT when options.cuda_device is not a visible
// device's ordinal. device() names the arena export chosen and why.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options);

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_CUDA_BACKEND_H_
