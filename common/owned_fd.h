// OwnedFd: one file descriptor, closed when the owner goes. Move-only.
//
//   OwnedFd fd(memfd_create("x", MFD_CLOEXEC));
//   if (!fd.valid()) return ...;
//   SendFd(socket, fd.get());          // borrowed
//   int raw = fd.release();            // the caller closes it now
#ifndef KVKEEP_COMMON_OWNED_FD_H_
#define KVKEEP_COMMON_OWNED_FD_H_

#include <unistd.h>

#include <utility>

namespace kvkeep {

class OwnedFd {
 public:
  OwnedFd() = default;
  explicit OwnedFd(int fd) : fd_(fd) {}
  OwnedFd(OwnedFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  OwnedFd& operator=(OwnedFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  OwnedFd(const OwnedFd&) = delete;
  OwnedFd& operator=(const OwnedFd&) = delete;
  ~OwnedFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace kvkeep

#endif  // KVKEEP_COMMON_OWNED_FD_H_
