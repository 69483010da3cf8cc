// The host backend: arenas are anonymous memfds (memfd_create: no name in /dev/shm, nothing left
// after a crash), sealed against shrinking and growing, mapped by the daemon and, through fds the
// arena channel passes (SCM_RIGHTS), by the owning tenant's workers. Always built; it is also the reference
// the CUDA backend is checked against.
#ifndef KVKEEP_GPU_CPU_CPU_BACKEND_H_
#define KVKEEP_GPU_CPU_CPU_BACKEND_H_

#include <memory>
#include <string>

#include "gpu/backend.h"

namespace kvkeep {

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const BackendOptions& options);

// Unlinks "/dev/shm/<prefix>.*" objects left behind by an older daemon (named shm arenas) that
// died with this prefix.
// Returns how many were removed. The daemon calls RemoveStaleArenas(const BackendOptions&)
// (gpu/backend.h), which does this whatever the backend; tests and tools that know they used the
// host backend may call this one.
int RemoveStaleArenas(const std::string& shm_prefix);

// Host pointer of a host-backend arena (for the client library's tests and for the CPU scorers);
// nullptr when `arena` is not a host arena.
void* HostArenaData(const Arena& arena);

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CPU_CPU_BACKEND_H_
