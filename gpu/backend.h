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

namespace kvkeep {

enum class ArenaExportKind { kHostShm = 1, kCudaIpc = 2, kCudaVmmFd = 3 };

// What a worker needs to map an arena (the wire form is kvkeep.v1.ArenaExport).
struct ArenaHandle {
  ArenaExportKind kind = ArenaExportKind::kHostShm;
  std::string handle;        // shm object name, or cudaIpcMemHandle_t bytes
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

  // Copies n bytes inside or across arenas of this backend (used by compaction).
  virtual absl::Status Copy(const Arena& src, std::size_t src_offset, Arena& dst,
                            std::size_t dst_offset, std::size_t n) = 0;
};

enum class BackendKind { kAuto, kCpu, kCuda };

struct BackendOptions {
  BackendKind kind = BackendKind::kAuto;  // Default: CUDA when compiled in and a device is present
  // Prefix of shared-memory object names (host backend). Objects are named
  // "/<prefix>.<32 random hex digits>"; objects with this prefix left by a crashed daemon are
  // removed by RemoveStaleArenas().
  std::string shm_prefix = "kvkeep";  // Default: "kvkeep"
  int cuda_device = 0;                // Default: device 0
};

// kCpu always works; kAuto falls back to the CPU; kCuda answers UNIMPLEMENTED when built without
// CUDA and FAILED_PRECONDITION when no device is present.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options);

absl::StatusOr<BackendKind> ParseBackendKind(const std::string& name);

// Checks [offset, offset + n) against an arena of `size` bytes without overflow.
inline bool RangeInside(std::size_t size, std::size_t offset, std::size_t n) {
  return offset <= size && n <= size - offset;
}

}  // namespace kvkeep

#endif  // KVKEEP_GPU_BACKEND_H_
