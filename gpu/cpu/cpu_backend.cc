#include "gpu/cpu/cpu_backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "common/status_macros.h"

namespace kvkeep {
namespace {

// An anonymous memfd arena: the daemon's mapping plus the fd workers receive (dup'ed).
class ShmArena final : public Arena {
 public:
  ShmArena(ArenaHandle handle, void* data, int fd) : handle_(std::move(handle)), data_(data), fd_(fd) {}
  ~ShmArena() override {
    munmap(data_, handle_.size_bytes);
    close(fd_);
  }
  const ArenaHandle& handle() const override { return handle_; }
  int export_fd() const override { return fd_; }
  uint8_t* data() const { return static_cast<uint8_t*>(data_); }

 private:
  const ArenaHandle handle_;
  void* const data_;
  const int fd_;
};

// The host arena behind `arena`, or INVALID_ARGUMENT when it belongs to another backend.
absl::StatusOr<ShmArena*> Own(const Arena& arena) {
  auto* shm = dynamic_cast<const ShmArena*>(&arena);
  if (shm == nullptr) {
    return absl::InvalidArgumentError("arena does not belong to the cpu backend");
  }
  return const_cast<ShmArena*>(shm);
}

class CpuBackend final : public Backend {
 public:
  CpuBackend() = default;

  std::string name() const override { return "cpu"; }

  absl::StatusOr<std::unique_ptr<Arena>> CreateArena(std::size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("arena size must be > 0");
    int fd = memfd_create("kvkeep-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
      return absl::ResourceExhaustedError(
          absl::StrCat("memfd_create failed: ", std::strerror(errno)));
    }
    // Sealed against shrinking (a worker's ftruncate would make the daemon's accesses fault) and
    // growing; the seals themselves are sealed.
    if (ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
        fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
      int err = errno;
      close(fd);
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot size memfd arena of ", bytes, " bytes: ", std::strerror(err)));
    }
    void* data = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (data == MAP_FAILED) {
      int err = errno;
      close(fd);
      return absl::ResourceExhaustedError(
          absl::StrCat("mmap of ", bytes, " bytes failed: ", std::strerror(err)));
    }
    ArenaHandle handle;
    handle.kind = ArenaExportKind::kHostMemfd;
    handle.size_bytes = bytes;
    return std::make_unique<ShmArena>(std::move(handle), data, fd);
  }

  absl::Status Write(Arena& arena, std::size_t offset, const void* src, std::size_t n) override {
    ASSIGN_OR_RETURN(ShmArena * owned, Own(arena));
    ShmArena& a = *owned;
    if (!RangeInside(a.size(), offset, n)) {
      return absl::OutOfRangeError(absl::StrCat("write of ", n, " bytes at ", offset,
                                                " outside arena of ", a.size(), " bytes"));
    }
    std::memcpy(a.data() + offset, src, n);
    return absl::OkStatus();
  }

  absl::Status Read(const Arena& arena, std::size_t offset, void* dst,
                    std::size_t n) const override {
    ASSIGN_OR_RETURN(const ShmArena* owned, Own(arena));
    const ShmArena& a = *owned;
    if (!RangeInside(a.size(), offset, n)) {
      return absl::OutOfRangeError(absl::StrCat("read of ", n, " bytes at ", offset,
                                                " outside arena of ", a.size(), " bytes"));
    }
    std::memcpy(dst, a.data() + offset, n);
    return absl::OkStatus();
  }

  const void* HostAddress(const Arena& arena) const override {
    absl::StatusOr<ShmArena*> owned = Own(arena);
    return owned.ok() ? (*owned)->data() : nullptr;
  }

  void* WritableHostAddress(Arena& arena) override {
    absl::StatusOr<ShmArena*> owned = Own(arena);
    return owned.ok() ? (*owned)->data() : nullptr;
  }

  absl::Status Copy(const Arena& src, std::size_t src_offset, Arena& dst, std::size_t dst_offset,
                    std::size_t n) override {
    ASSIGN_OR_RETURN(const ShmArena* s, Own(src));
    ASSIGN_OR_RETURN(ShmArena * d, Own(dst));
    if (!RangeInside(s->size(), src_offset, n) || !RangeInside(d->size(), dst_offset, n)) {
      return absl::OutOfRangeError(absl::StrCat("copy of ", n, " bytes from ", src_offset,
                                                " to ", dst_offset, " outside arenas of ",
                                                s->size(), " and ", d->size(), " bytes"));
    }
    std::memmove(d->data() + dst_offset, s->data() + src_offset, n);
    return absl::OkStatus();
  }

  absl::Status CopyBatch(absl::Span<const CopyOp> ops) override {
    // Every arena and range is checked before the first byte moves.
    for (const CopyOp& op : ops) {
      if (op.src != nullptr) RETURN_IF_ERROR(Own(*op.src).status());
      if (op.dst != nullptr) RETURN_IF_ERROR(Own(*op.dst).status());
    }
    bool overlap = false;
    RETURN_IF_ERROR(CheckCopyBatch(ops, &overlap));
    auto src_of = [](const CopyOp& op) {
      return static_cast<const ShmArena*>(op.src)->data() + op.src_offset;
    };
    auto dst_of = [](const CopyOp& op) {
      return static_cast<const ShmArena*>(op.dst)->data() + op.dst_offset;
    };
    if (!overlap) {
      // No source is written by the batch: any order is the parallel assignment.
      for (const CopyOp& op : ops) {
        if (op.n != 0) std::memcpy(dst_of(op), src_of(op), op.n);
      }
      return absl::OkStatus();
    }
    // Gather every source first, then scatter (the same two phases as the CUDA kernel launches).
    std::size_t total = 0;
    for (const CopyOp& op : ops) {
      if (op.n > SIZE_MAX - total) return absl::ResourceExhaustedError("copy batch too large");
      total += op.n;
    }
    std::vector<uint8_t> scratch(total);
    std::size_t at = 0;
    for (const CopyOp& op : ops) {
      if (op.n != 0) std::memcpy(scratch.data() + at, src_of(op), op.n);
      at += op.n;
    }
    at = 0;
    for (const CopyOp& op : ops) {
      if (op.n != 0) std::memcpy(dst_of(op), scratch.data() + at, op.n);
      at += op.n;
    }
    return absl::OkStatus();
  }

};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCpuBackend(const BackendOptions& options) {
  if (options.shm_prefix.empty() || options.shm_prefix.find('/') != std::string::npos) {
    return absl::InvalidArgumentError("shm prefix must be non-empty and contain no '/'");
  }
  return std::unique_ptr<Backend>(new CpuBackend());
}

int RemoveStaleArenas(const std::string& shm_prefix) {
  int removed = 0;
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return 0;
  const std::string lead = shm_prefix + ".";
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (absl::StartsWith(name, lead) && shm_unlink(("/" + name).c_str()) == 0) ++removed;
  }
  closedir(dir);
  return removed;
}

void* HostArenaData(const Arena& arena) {
  auto* shm = dynamic_cast<const ShmArena*>(&arena);
  return shm == nullptr ? nullptr : shm->data();
}

}  // namespace kvkeep
