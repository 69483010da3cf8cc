// What every CUDA arena mapping of a worker shares (CUDA builds only): copies between the mapped
// device memory and host or device memory of this process on the calling thread's per-thread
// default stream (ArenaMapping::Write/Read/Finish), and the refusal to write into a sharing
// group's arena. Subclasses own how the memory was mapped and unmap it in their destructor:
// CudaIpcMapping (client/cuda_arena_mapping.cc) and CudaVmmMapping
// (client/cuda_vmm_arena_mapping.cc). Thread-safe as ArenaMapping says.
#ifndef KVKEEP_CLIENT_CUDA_DEVICE_MAPPING_H_
#define KVKEEP_CLIENT_CUDA_DEVICE_MAPPING_H_

#include <cuda_runtime_api.h>

#include "absl/strings/str_cat.h"
#include "client/arena_mapping.h"
#include "common/status_macros.h"
#include "gpu/cuda/cuda_devices.h"
#include "gpu/cuda/cuda_status.h"

namespace kvkeep {

class CudaDeviceMapping : public ArenaMapping {
 public:
  // PERMISSION_DENIED for a sharing group's arena (read_only in the export).
  absl::Status Write(uint64_t offset, const void* src, uint64_t n) const override {
    if (arena().read_only()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "arena ", arena().arena_id(), " holds shared prefix pages and is mapped read-only"));
    }
    RETURN_IF_ERROR(CheckRange("write", offset, n));
    if (n == 0) return absl::OkStatus();
    ScopedCudaDevice on(device_ordinal());
    RETURN_IF_ERROR(on.status());
    return CudaStatus(cudaMemcpyAsync(data() + offset, src, n, cudaMemcpyDefault,
                                      cudaStreamPerThread),
                      absl::StrCat("cudaMemcpyAsync into a ", v1::ArenaKind_Name(arena().kind()),
                                   " arena"));
  }

  absl::Status Read(uint64_t offset, void* dst, uint64_t n) const override {
    RETURN_IF_ERROR(CheckRange("read", offset, n));
    if (n == 0) return absl::OkStatus();
    ScopedCudaDevice on(device_ordinal());
    RETURN_IF_ERROR(on.status());
    return CudaStatus(cudaMemcpyAsync(dst, data() + offset, n, cudaMemcpyDefault,
                                      cudaStreamPerThread),
                      absl::StrCat("cudaMemcpyAsync from a ", v1::ArenaKind_Name(arena().kind()),
                                   " arena"));
  }

  absl::Status Finish() const override {
    ScopedCudaDevice on(device_ordinal());
    RETURN_IF_ERROR(on.status());
    return CudaStatus(cudaStreamSynchronize(cudaStreamPerThread), "cudaStreamSynchronize");
  }

 protected:
  using ArenaMapping::ArenaMapping;
};

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_CUDA_DEVICE_MAPPING_H_
