// A worker's mapping of one exported arena: host memory (HOST_MEMFD, an fd from the arena
// channel; HOST_SHM of older daemons, by name) or, in builds with CUDA, device memory of another
// process on the local device whose UUID matches the export (CUDA_VMM_FD, an fd from the arena
// channel, imported with cuMemImportFromShareableHandle; CUDA_IPC, opened by handle). Handed out
// as shared_ptr<const ArenaMapping>: the mapping is closed (munmap / cuMemUnmap /
// cudaIpcCloseMemHandle) when the last holder drops it, so a copy in progress pins it; holders
// must drop it without holding a lock others wait on.
//
//   ASSIGN_OR_RETURN(std::shared_ptr<const ArenaMapping> m, ArenaMapping::Map(arena_export));
//   RETURN_IF_ERROR(m->Write(page_offset, keys, n));   // host memcpy, or cudaMemcpyAsync
//   RETURN_IF_ERROR(m->Finish());                      // CUDA: waits for this thread's copies
//
// Thread-safe: Write/Read/Finish may run concurrently on disjoint ranges.
#ifndef KVKEEP_CLIENT_ARENA_MAPPING_H_
#define KVKEEP_CLIENT_ARENA_MAPPING_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "common/owned_fd.h"
#include "kvkeep/v1/common.pb.h"

namespace kvkeep {

class ArenaMapping {
 public:
  // Maps an export read-write, or, HOST_SHM, read-only (PROT_READ) when `arena.read_only()` (a
  // sharing group's arena: Write answers PERMISSION_DENIED, and writing through data() faults;
  // CUDA_IPC: Write answers PERMISSION_DENIED, the device mapping itself stays writable).
  //  HOST_SHM: NOT_FOUND when the object is gone; DATA_LOSS when its size differs from the export.
  //  CUDA_IPC: UNIMPLEMENTED in a client built without CUDA; INVALID_ARGUMENT for a malformed
  //    handle or UUID; NOT_FOUND when no visible device has the export's UUID; FAILED_PRECONDITION
  //    when there is no device or the mapped allocation is smaller than the export says.
  //  Other kinds: UNIMPLEMENTED.
  //  HOST_MEMFD: FAILED_PRECONDITION: these come as fds over the arena channel, use MapFd.
  static absl::StatusOr<std::shared_ptr<const ArenaMapping>> Map(const v1::ArenaExport& arena);
  // Maps an export that came as a file descriptor over the arena channel (the fd is closed once
  // mapped). Read-only when `arena.read_only()`: Write answers PERMISSION_DENIED, and
  //  HOST_MEMFD: mapped PROT_READ (and the daemon sends an O_RDONLY fd); DATA_LOSS when the fd's
  //    size differs from the export.
  //  CUDA_VMM_FD: mapped with CU_MEM_ACCESS_FLAGS_PROT_READ where the driver allows it (device
  //    writes then fault); the daemon cannot make the fd itself read-only. UNIMPLEMENTED in a
  //    client built without CUDA; INVALID_ARGUMENT for a malformed UUID, an empty arena, or an fd
  //    the driver does not take for an allocation of the export's size; NOT_FOUND when no visible
  //    device has the export's UUID; FAILED_PRECONDITION when there is no device or the driver
  //    lacks the virtual memory API.
  //  Other kinds: UNIMPLEMENTED.
  static absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapFd(const v1::ArenaExport& arena,
                                                                   OwnedFd fd);
  virtual ~ArenaMapping() = default;
  ArenaMapping(const ArenaMapping&) = delete;
  ArenaMapping& operator=(const ArenaMapping&) = delete;

  // The first byte: a host pointer (HOST_MEMFD, HOST_SHM) or a device pointer valid in this
  // process (CUDA_VMM_FD, CUDA_IPC, on device_ordinal()). Valid while this mapping lives.
  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const v1::ArenaExport& arena() const { return arena_; }
  // The local ordinal of the device the arena is mapped on; -1 for host memory.
  int device_ordinal() const { return device_ordinal_; }
  bool on_device() const { return device_ordinal_ >= 0; }

  // Copies n bytes from `src` into [offset, offset + n) / from there into `dst`. `src` and `dst`
  // may be host memory (pageable or pinned) or, for CUDA arenas, device memory of this process
  // (cudaMemcpyDefault); device memory must be ready (synchronize the stream that produced it).
  // CUDA copies are enqueued on the calling thread's per-thread default stream of the arena's
  // device: call Finish() from the same thread before relying on the bytes or reusing `src` /
  // `dst` (also for pageable host memory: CUDA only says such a cudaMemcpyAsync "might be"
  // synchronous). OUT_OF_RANGE outside the arena; nothing is copied then.
  virtual absl::Status Write(uint64_t offset, const void* src, uint64_t n) const = 0;
  virtual absl::Status Read(uint64_t offset, void* dst, uint64_t n) const = 0;
  // Waits for the copies this thread enqueued on this mapping's device. OK at once for host memory.
  virtual absl::Status Finish() const = 0;

 protected:
  ArenaMapping(v1::ArenaExport arena, uint8_t* data, uint64_t size, int device_ordinal)
      : arena_(std::move(arena)), data_(data), size_(size), device_ordinal_(device_ordinal) {}
  // OUT_OF_RANGE when [offset, offset + n) is not inside the mapping.
  absl::Status CheckRange(const char* what, uint64_t offset, uint64_t n) const;

 private:
  const v1::ArenaExport arena_;
  uint8_t* const data_;
  const uint64_t size_;
  const int device_ordinal_;
};

// CUDA_IPC mapping (client/cuda_arena_mapping.cc with CUDA, cuda_arena_mapping_none.cc without).
absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapCudaIpcArena(const v1::ArenaExport& arena);
// CUDA_VMM_FD mapping of an fd from the arena channel (closed here, whatever the outcome):
// client/cuda_vmm_arena_mapping.cc with CUDA, UNIMPLEMENTED in cuda_arena_mapping_none.cc without.
absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapCudaVmmFdArena(const v1::ArenaExport& arena,
                                                                      OwnedFd fd);

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_ARENA_MAPPING_H_
