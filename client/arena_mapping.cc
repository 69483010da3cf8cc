#include "client/arena_mapping.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvkeep {

absl::StatusOr<std::unique_ptr<ArenaMapping>> ArenaMapping::Map(const v1::ArenaExport& arena) {
  if (arena.kind() != v1::HOST_SHM) {
    return absl::UnimplementedError(absl::StrCat("cannot map arena kind ",
                                                 v1::ArenaKind_Name(arena.kind()),
                                                 " in this client build"));
  }
  // A sharing group's arena (shared prefix pages) is mapped read-only.
  const bool read_only = arena.read_only();
  int fd = shm_open(arena.handle().c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC, 0);
  if (fd < 0) {
    return absl::NotFoundError(absl::StrCat("shm_open(", arena.handle(), "): ", std::strerror(errno)));
  }
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
  return std::unique_ptr<ArenaMapping>(
      new ArenaMapping(arena, static_cast<uint8_t*>(data), arena.size_bytes()));
}

ArenaMapping::~ArenaMapping() { munmap(data_, size_); }

}  // namespace kvkeep
