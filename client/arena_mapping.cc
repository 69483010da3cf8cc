#include "client/arena_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvkeep {
namespace {

// A HOST_SHM arena mapped with mmap; unmapped on destruction.
class HostShmMapping final : public ArenaMapping {
 public:
  HostShmMapping(v1::ArenaExport arena, uint8_t* data, uint64_t size)
      : ArenaMapping(std::move(arena), data, size, /*device_ordinal=*/-1) {}
  ~HostShmMapping() override { munmap(data(), size()); }

  absl::Status Write(uint64_t offset, const void* src, uint64_t n) const override {
    if (arena().read_only()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "arena ", arena().arena_id(), " holds shared prefix pages and is mapped read-only"));
    }
    absl::Status range = CheckRange("write", offset, n);
    if (!range.ok()) return range;
    if (n != 0) std::memcpy(data() + offset, src, n);
    return absl::OkStatus();
  }
  absl::Status Read(uint64_t offset, void* dst, uint64_t n) const override {
    absl::Status range = CheckRange("read", offset, n);
    if (!range.ok()) return range;
    if (n != 0) std::memcpy(dst, data() + offset, n);
    return absl::OkStatus();
  }
  absl::Status Finish() const override { return absl::OkStatus(); }
};

// Maps an open host-memory fd (closed here): a named shm object or a memfd from the channel.
absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapHostFd(const v1::ArenaExport& arena,
                                                              int fd) {
  // A sharing group's arena (shared prefix pages) is mapped read-only.
  const bool read_only = arena.read_only();
  struct stat st;
  if (fstat(fd, &st) != 0 || static_cast<uint64_t>(st.st_size) != arena.size_bytes()) {
    close(fd);
    return absl::DataLossError(absl::StrCat("arena ", arena.arena_id(), " has ", st.st_size,
                                            " bytes, the export says ", arena.size_bytes()));
  }
  void* data = mmap(nullptr, arena.size_bytes(), read_only ? PROT_READ : PROT_READ | PROT_WRITE,
                    MAP_SHARED, fd, 0);
  close(fd);
  if (data == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat("mmap: ", std::strerror(errno)));
  }
  return std::make_shared<const HostShmMapping>(arena, static_cast<uint8_t*>(data),
                                                arena.size_bytes());
}

absl::StatusOr<std::shared_ptr<const ArenaMapping>> MapHostShm(const v1::ArenaExport& arena) {
  int fd = shm_open(arena.handle().c_str(), (arena.read_only() ? O_RDONLY : O_RDWR) | O_CLOEXEC,
                    0);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("shm_open(", arena.handle(), "): ", std::strerror(errno)));
  }
  return MapHostFd(arena, fd);
}

}  // namespace

absl::Status ArenaMapping::CheckRange(const char* what, uint64_t offset, uint64_t n) const {
  if (offset > size_ || n > size_ - offset) {
    return absl::OutOfRangeError(absl::StrCat(what, " of ", n, " bytes at ", offset,
                                              " outside arena ", arena_.arena_id(), " of ", size_,
                                              " bytes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const ArenaMapping>> ArenaMapping::Map(
    const v1::ArenaExport& arena) {
  switch (arena.kind()) {
    case v1::HOST_SHM:
      return MapHostShm(arena);
    case v1::CUDA_IPC:
      return MapCudaIpcArena(arena);
    case v1::HOST_MEMFD:
    case v1::CUDA_VMM_FD:
      return absl::FailedPreconditionError(absl::StrCat(
          "arena ", arena.arena_id(), " (", v1::ArenaKind_Name(arena.kind()),
          ") comes as a file descriptor over the arena channel; map it with MapFd"));
    default:
      return absl::UnimplementedError(absl::StrCat("cannot map arena kind ",
                                                   v1::ArenaKind_Name(arena.kind()),
                                                   " in this client build"));
  }
}

absl::StatusOr<std::shared_ptr<const ArenaMapping>> ArenaMapping::MapFd(
    const v1::ArenaExport& arena, OwnedFd fd) {
  if (!fd.valid()) return absl::InvalidArgumentError("no file descriptor to map");
  switch (arena.kind()) {
    case v1::HOST_MEMFD:
      return MapHostFd(arena, fd.release());
    case v1::CUDA_VMM_FD:
      return MapCudaVmmFdArena(arena, std::move(fd));
    default:
      return absl::UnimplementedError(absl::StrCat("cannot map arena kind ",
                                                   v1::ArenaKind_Name(arena.kind()),
                                                   " from a file descriptor in this client build"));
  }
}

}  // namespace kvkeep
