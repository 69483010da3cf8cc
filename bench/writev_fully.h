// Writes a gather list to a socket whole: the raw-socket baselines of kvkeep-bench io and
// kvkeep-grpc-floor send each chunk's keys and values with one writev.
#ifndef KVKEEP_BENCH_WRITEV_FULLY_H_
#define KVKEEP_BENCH_WRITEV_FULLY_H_

#include <sys/uio.h>

#include <cerrno>
#include <cstddef>

namespace kvkeep::bench {

// Writes every byte of iov[0, count) to `fd`, resuming after partial writes and EINTR (the
// entries are advanced in place). False on any other error; errno says which.
inline bool WritevFully(int fd, iovec* iov, int count) {
  while (count > 0) {
    ssize_t written = writev(fd, iov, count);
    if (written < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    while (count > 0 && static_cast<size_t>(written) >= iov->iov_len) {
      written -= static_cast<ssize_t>(iov->iov_len);
      ++iov;
      --count;
    }
    if (count > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + written;
      iov->iov_len -= static_cast<size_t>(written);
    }
  }
  return true;
}

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_WRITEV_FULLY_H_
