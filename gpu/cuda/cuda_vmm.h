// Device memory through the driver's virtual memory management API, shareable as a POSIX file
// descriptor: the daemon's CUDA_VMM_FD arenas (CudaVmmAllocation) and a worker's mapping of one
// (CudaVmmImport). Once mapped, data() is an ordinary device pointer of this process: runtime
// copies, memsets and kernels use it like cudaMalloc'd memory.
//
// Daemon:
//   ASSIGN_OR_RETURN(auto alloc, CudaVmmAllocation::Create(/*device=*/0, bytes));
//   int fd = alloc->export_fd();            // dup()ed and sent over the arena channel
// Worker (fd received over the arena channel; the local ordinal found by the export's UUID):
//   ASSIGN_OR_RETURN(auto mapped, CudaVmmImport::Map(fd, ordinal, export.size_bytes(),
//                                                    /*read_only=*/export.read_only()));
//
// Sizes are rounded up to the device's minimum allocation granularity
// (cuMemGetAllocationGranularity, CU_MEM_ALLOC_GRANULARITY_MINIMUM) on both sides, so a worker
// maps exactly the allocation the daemon made from the size in the export.
//
// Lifetime: the physical memory lives while any of the daemon's handle, an exported fd or a
// mapping (in any process) does; dropping the daemon's arena while a worker still maps it is
// safe (unlike cudaFree under a cudaIpc import) and frees the memory when the worker unmaps.
//
// Callers make the device current first (ScopedCudaDevice or cudaSetDevice): the driver calls
// need the device's primary context. Neither class is copyable; both are thread-compatible
// (const access from many threads is fine, destruction is the owner's).
#ifndef KVKEEP_GPU_CUDA_CUDA_VMM_H_
#define KVKEEP_GPU_CUDA_CUDA_VMM_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"

namespace kvkeep {

// A reserved virtual range with one allocation mapped on it; unmapped and freed on destruction.
class CudaVmmRange;

class CudaVmmAllocation {
 public:
  // A new allocation of at least `bytes` (> 0) on device `ordinal`, requested exportable as a
  // POSIX fd, mapped read-write here, and exported. NOT zero-filled (the backend does that on its
  // stream). RESOURCE_EXHAUSTED when the device is out of memory; FAILED_PRECONDITION when the
  // driver or device cannot (QueryCudaVmmSupport says why beforehand); INVALID_ARGUMENT for 0.
  static absl::StatusOr<std::unique_ptr<CudaVmmAllocation>> Create(int ordinal, std::size_t bytes);
  ~CudaVmmAllocation();
  CudaVmmAllocation(const CudaVmmAllocation&) = delete;
  CudaVmmAllocation& operator=(const CudaVmmAllocation&) = delete;

  uint8_t* data() const;
  // The allocation's size: `bytes` rounded up to the granularity.
  std::size_t allocated_bytes() const;
  // The shareable fd, owned here (closed on destruction); callers dup() it.
  int export_fd() const { return export_fd_; }

 private:
  CudaVmmAllocation() = default;

  unsigned long long handle_ = 0;  // CUmemGenericAllocationHandle; 0: none
  int export_fd_ = -1;
  std::unique_ptr<CudaVmmRange> range_;
};

class CudaVmmImport {
 public:
  // Imports the allocation behind `fd` (not closed here) and maps `bytes` (rounded up to the
  // granularity) of it on local device `ordinal`, read-write or, when `read_only`, with
  // CU_MEM_ACCESS_FLAGS_PROT_READ. A driver that refuses read-only device access gets read-write
  // and device_read_only() says false (the client still refuses writes through its API).
  // INVALID_ARGUMENT when the fd is not an exported allocation or the allocation is smaller than
  // `bytes` says; FAILED_PRECONDITION when the driver cannot; RESOURCE_EXHAUSTED for address
  // space.
  static absl::StatusOr<std::unique_ptr<CudaVmmImport>> Map(int fd, int ordinal, std::size_t bytes,
                                                             bool read_only);
  ~CudaVmmImport();
  CudaVmmImport(const CudaVmmImport&) = delete;
  CudaVmmImport& operator=(const CudaVmmImport&) = delete;

  uint8_t* data() const;
  std::size_t mapped_bytes() const;
  // Whether the device mapping itself is read-only (cuMemGetAccess answers PROT_READ).
  bool device_read_only() const { return device_read_only_; }

 private:
  CudaVmmImport() = default;

  std::unique_ptr<CudaVmmRange> range_;
  bool device_read_only_ = false;
};

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_CUDA_VMM_H_
