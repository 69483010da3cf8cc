#include "common/bulk_frame.h"

#include <errno.h>
#include <limits.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvkeep {
namespace {

absl::Status SocketError(const char* what, int err) {
  if (err == EAGAIN || err == EWOULDBLOCK) {
    return absl::DeadlineExceededError(absl::StrCat("bulk channel ", what, " timed out"));
  }
  return absl::UnavailableError(absl::StrCat("bulk channel ", what, ": ", std::strerror(err)));
}

// Moves the iovecs through `io` (sendmsg or readv), IOV_MAX at a time, until all are done;
// advances past partial transfers.
template <typename Io>
absl::Status TransferAll(std::vector<iovec> iov, const char* what, Io io) {
  std::size_t first = 0;
  while (first < iov.size()) {
    if (iov[first].iov_len == 0) {
      ++first;
      continue;
    }
    const int count = static_cast<int>(std::min<std::size_t>(iov.size() - first, IOV_MAX));
    const ssize_t n = io(iov.data() + first, count);
    if (n < 0) {
      if (errno == EINTR) continue;
      return SocketError(what, errno);
    }
    if (n == 0) return absl::UnavailableError(absl::StrCat("bulk channel closed during ", what));
    std::size_t left = static_cast<std::size_t>(n);
    while (left > 0 && first < iov.size()) {
      const std::size_t take = std::min(left, iov[first].iov_len);
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + take;
      iov[first].iov_len -= take;
      left -= take;
      if (iov[first].iov_len == 0) ++first;
    }
  }
  return absl::OkStatus();
}

absl::Status SendAll(int fd, std::vector<iovec> iov) {
  return TransferAll(std::move(iov), "send", [fd](iovec* v, int count) {
    msghdr msg{};
    msg.msg_iov = v;
    msg.msg_iovlen = static_cast<std::size_t>(count);
    return sendmsg(fd, &msg, MSG_NOSIGNAL);
  });
}

}  // namespace

absl::Status SendFrame(int fd, const google::protobuf::MessageLite& message,
                       absl::Span<const iovec> payload) {
  const std::size_t size = message.ByteSizeLong();
  if (size > kBulkMaxMessageBytes) {
    return absl::InvalidArgumentError(absl::StrCat("bulk frame message of ", size,
                                                   " bytes over the ", kBulkMaxMessageBytes,
                                                   "-byte limit"));
  }
  std::string head(4 + size, '\0');
  for (int i = 0; i < 4; ++i) head[i] = static_cast<char>((size >> (8 * i)) & 0xff);
  if (!message.SerializeToArray(head.data() + 4, static_cast<int>(size))) {
    return absl::InternalError("cannot serialise a bulk frame message");
  }
  std::vector<iovec> iov;
  iov.reserve(1 + payload.size());
  iov.push_back(Iov(head.data(), head.size()));
  iov.insert(iov.end(), payload.begin(), payload.end());
  return SendAll(fd, std::move(iov));
}

absl::StatusOr<bool> RecvFrame(int fd, google::protobuf::MessageLite* message,
                               std::size_t max_bytes) {
  unsigned char len[4];
  std::size_t got = 0;
  while (got < sizeof(len)) {
    const ssize_t n = read(fd, len + got, sizeof(len) - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return SocketError("receive", errno);
    // A clean close before a frame's first byte ends the conversation; inside a frame it is lost.
    if (n == 0 && got == 0) return false;
    if (n == 0) return absl::UnavailableError("bulk channel closed inside a frame");
    got += static_cast<std::size_t>(n);
  }
  const uint32_t size = uint32_t{len[0]} | uint32_t{len[1]} << 8 | uint32_t{len[2]} << 16 |
                        uint32_t{len[3]} << 24;
  if (size > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("bulk frame of ", size, " bytes over the ",
                                                   max_bytes, "-byte limit"));
  }
  std::string bytes(size, '\0');
  if (absl::Status s = RecvBytes(fd, {Iov(bytes.data(), size)}); !s.ok()) return s;
  if (!message->ParseFromString(bytes)) {
    return absl::InvalidArgumentError("bulk frame does not parse as the expected message");
  }
  return true;
}

absl::Status RecvBytes(int fd, absl::Span<const iovec> to) {
  return TransferAll(std::vector<iovec>(to.begin(), to.end()), "receive",
                     [fd](iovec* v, int count) { return readv(fd, v, count); });
}

absl::Status DiscardBytes(int fd, uint64_t n) {
  std::vector<char> sink(std::min<uint64_t>(n, 1 << 20));
  while (n > 0) {
    const std::size_t take = std::min<uint64_t>(n, sink.size());
    if (absl::Status s = RecvBytes(fd, {Iov(sink.data(), take)}); !s.ok()) return s;
    n -= take;
  }
  return absl::OkStatus();
}

}  // namespace kvkeep
