// Memory backends: where arenas live and how bytes get in and out of them.
//
// This header is host-only and never includes CUDA headers. The service sees one interface;
// `CreateBackend` (backend_factory.cc) is the only place that knows whether CUDA was compiled in.
//
//   ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend, CreateBackend({.kind = BackendKind::kAuto}));
//   ASSIGN_OR_RETURN(std::unique_ptr<Arena> arena, backend->CreateArena(64 << 20));
//   RETURN_IF_ERROR(backend->Write(*arena, offset, bytes.data(), bytes.size()));
#ifndef KVKEEP_GPU_BACKEND_H_
#define KVKEEP_GPU_BACKEND_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvkeep {

class DeviceLayerScorer;  // gpu/device_scoring.h

// kHostShm (named POSIX shm) is no longer produced: host arenas are anonymous memfds (kHostMemfd)
// handed to workers as file descriptors over the arena channel (service/rpc/arena_channel.h).
enum class ArenaExportKind { kHostShm = 1, kCudaIpc = 2, kCudaVmmFd = 3, kHostMemfd = 4 };

// What a worker needs to map an arena (the wire form is kvkeep.v1.ArenaExport).
struct ArenaHandle {
  ArenaExportKind kind = ArenaExportKind::kHostShm;
  std::string handle;        // cudaIpcMemHandle_t bytes; empty for fd-passed kinds
  std::size_t size_bytes = 0;
  int device_ordinal = -1;   // -1: host memory
  std::string device_uuid;   // empty for host memory
};

// One contiguous exportable allocation. Owned by the service's page pool; destroyed (unmapped,
// unlinked / cudaFree'd) when the pool drops it. Workers that still map it keep their mapping.
// Not thread-safe for concurrent destruction; concurrent Write/Read of disjoint ranges is fine.
class Arena {
 public:
  virtual ~Arena() = default;
  virtual const ArenaHandle& handle() const = 0;
  std::size_t size() const { return handle().size_bytes; }
  // The file descriptor workers map the arena through (kHostMemfd: the memfd, sealed against
  // shrinking and growing; kCudaVmmFd: the cuMem shareable handle), owned by the arena and valid
  // while it lives: callers dup() it while they hold the arena. -1 for kinds exported by handle.
  virtual int export_fd() const { return -1; }
};

// One move of CopyBatch: n bytes from [src_offset, src_offset + n) of *src to
// [dst_offset, dst_offset + n) of *dst. Both arenas must belong to the backend that runs the batch;
// they are borrowed for the duration of the call.
struct CopyOp {
  const Arena* src = nullptr;
  std::size_t src_offset = 0;
  Arena* dst = nullptr;
  std::size_t dst_offset = 0;
  std::size_t n = 0;
};

// A memory backend. Thread-safe: all methods may be called concurrently.
class Backend {
 public:
  virtual ~Backend() = default;

  // "cpu" or "cuda".
  virtual std::string name() const = 0;

  // A new zero-filled arena of `bytes` bytes, exportable to workers of one tenant.
  // RESOURCE_EXHAUSTED when the memory cannot be had; INVALID_ARGUMENT for 0 bytes.
  virtual absl::StatusOr<std::unique_ptr<Arena>> CreateArena(std::size_t bytes) = 0;

  // Copies host bytes into / out of an arena. OUT_OF_RANGE when [offset, offset + n) is not inside.
  virtual absl::Status Write(Arena& arena, std::size_t offset, const void* src, std::size_t n) = 0;
  virtual absl::Status Read(const Arena& arena, std::size_t offset, void* dst,
                            std::size_t n) const = 0;

  // Copies n bytes inside or across arenas of this backend, like memmove: overlapping ranges
  // are fine. OUT_OF_RANGE when either range is not inside its arena.
  virtual absl::Status Copy(const Arena& src, std::size_t src_offset, Arena& dst,
                            std::size_t dst_offset, std::size_t n) = 0;

  // Many copies as ONE parallel assignment (in-place per-head compaction is a batch of token-run
  // moves): every destination byte receives the value its source byte held BEFORE the batch began,
  // whatever the order of `ops`, so a move may read bytes another move of the batch overwrites.
  // Destination ranges must be pairwise disjoint; sources may overlap anything. Ops with n == 0
  // are ignored. All ops are checked before any byte moves: INVALID_ARGUMENT (a null or foreign
  // arena, overlapping destinations) or OUT_OF_RANGE (a range outside its arena) change nothing.
  // The CPU backend runs the ops one by one (through a host copy of the sources when a source
  // overlaps a destination); the CUDA backend runs ONE kernel launch over all ops (two, through a
  // device scratch buffer, when a source overlaps a destination). Results are bit-identical.
  // The default runs CheckCopyBatch, then Copy per op, staging through Read/Write on overlap.
  virtual absl::Status CopyBatch(absl::Span<const CopyOp> ops);

  // The device address of the arena's first byte (CUDA: a device pointer in this process, for
  // device kernels such as the scorers); nullptr for host backends. The pointer stays valid while
  // the arena lives.
  virtual const void* DeviceAddress(const Arena& arena) const { return nullptr; }
  // The host address of the arena's first byte when the host can read its memory in place
  // (CPU backend: the daemon's mapping), valid while the arena lives; nullptr when only Read can
  // reach it (CUDA). ReadKV replies reference page memory through it (service/engine/reply_pins.h).
  virtual const void* HostAddress(const Arena& arena) const { return nullptr; }
  // The same address for writing (the bulk channel receives bytes straight into pages,
  // service/bulk_channel); nullptr where the host cannot write the arena's memory in place.
  virtual void* WritableHostAddress(Arena& arena) { return nullptr; }
  // The CUDA device ordinal arenas live on; -1 for host memory.
  virtual int device_ordinal() const { return -1; }
  // One line naming where arenas live, for status and logs: "host shared memory", or
  // "cuda:0 NVIDIA H100 80GB HBM3 (GPU-8d0f...)".
  virtual std::string device() const { return "host shared memory"; }
  // Scores layers on the device that holds the arenas (gpu/device_scoring.h), owned by the
  // backend; nullptr when the backend cannot (the compressor then scores on the CPU).
  virtual DeviceLayerScorer* layer_scorer() { return nullptr; }
};

// The checks CopyBatch promises, shared by every backend: OK, or INVALID_ARGUMENT / OUT_OF_RANGE as
// documented there. Sets *sources_overlap_destinations (when non-null) to whether some op's source
// range overlaps some op's destination range in the same arena, i.e. whether a staged (two-phase)
// schedule is needed.
absl::Status CheckCopyBatch(absl::Span<const CopyOp> ops, bool* sources_overlap_destinations);

enum class BackendKind { kAuto, kCpu, kCuda };

// How the CUDA backend allocates and exports arenas (gpu/cuda_arena_kind.h chooses):
//  kVmm: cuMemCreate allocations exported as POSIX file descriptors (ArenaExportKind::kCudaVmmFd),
//    handed to workers over the arena channel like host memfds: no hostIPC, no shared uid;
//  kIpc: cudaMalloc + cudaIpcGetMemHandle (kCudaIpc), the fallback for devices or drivers without
//    the virtual memory management API;
//  kAuto: kVmm when the device supports it, else kIpc.
// Host backends ignore it.
enum class CudaArenaKind { kAuto, kVmm, kIpc };

struct BackendOptions {
  BackendKind kind = BackendKind::kAuto;  // Default: CUDA when compiled in and a device is present
  // Prefix of the shared-memory object names that daemons before the memfd arenas used: objects
  // with this prefix left by such a daemon are removed by RemoveStaleArenas(const BackendOptions&).
  // Host arenas are now anonymous memfds (nothing in /dev/shm; freed with the last fd).
  std::string shm_prefix = "kvkeep";  // Default: "kvkeep"
  // CUDA device ordinal (as this process numbers them) for kCuda and kAuto.
  int cuda_device = 0;                // Default: device 0
  // How CUDA arenas are allocated and exported (kVmm answers FAILED_PRECONDITION on a device
  // without the virtual memory management API or POSIX-fd handles).
  CudaArenaKind cuda_arena_kind = CudaArenaKind::kAuto;  // Default: kAuto
};

// kCpu always works; kAuto falls back to the CPU and says why: in `fallback_reason` when given
// (the daemon logs it), else as one line on stderr;
// kCuda answers UNIMPLEMENTED when built without CUDA, FAILED_PRECONDITION "no CUDA device ..."
// (with the CUDA error) when no device is present and INVALID_ARGUMENT for a cuda_device that is
// not a visible device's ordinal (kAuto too, when devices are present). cuda_arena_kind kVmm on
// a device without the virtual memory API or POSIX-fd handles: FAILED_PRECONDITION
// "--cuda_arena_kind=vmm: ..." (kAuto too, when a device is present: no fallback to the CPU).
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options,
                                                       std::string* fallback_reason = nullptr);

// Removes what a daemon that died with these options left behind; call it before CreateBackend,
// and only when no live process uses options.shm_prefix (the daemon holds its data dir's lock).
// Host: unlinks the shared-memory objects "/<shm_prefix>.*". CUDA: device memory is released
// with its process, so there is nothing more. The host objects are removed whatever
// options.kind says: the dead daemon may have run on the host backend (kAuto without a device,
// or another --backend). Returns how many objects were removed; 0 for a prefix CreateBackend
// would refuse (empty, or holding '/').
int RemoveStaleArenas(const BackendOptions& options);

// Whether this build has the CUDA backend (for tests and status lines).
bool CudaBackendCompiled();

absl::StatusOr<BackendKind> ParseBackendKind(const std::string& name);

// Checks [offset, offset + n) against an arena of `size` bytes without overflow.
inline bool RangeInside(std::size_t size, std::size_t offset, std::size_t n) {
  return offset <= size && n <= size - offset;
}

}  // namespace kvkeep

#endif  // KVKEEP_GPU_BACKEND_H_
