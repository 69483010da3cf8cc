#include "common/unix_socket.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvkeep {
namespace {

// The address of `path`, or INVALID_ARGUMENT.
absl::StatusOr<sockaddr_un> AddressOf(const std::string& path, absl::string_view what) {
  sockaddr_un addr{};
  if (path.empty() || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " socket path '", path,
                                                   "' is empty or longer than a Unix socket allows"));
  }
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  return addr;
}

}  // namespace

absl::StatusOr<OwnedFd> ListenUnixSocket(const std::string& path, int type,
                                         absl::string_view what) {
  absl::StatusOr<sockaddr_un> addr = AddressOf(path, what);
  if (!addr.ok()) return addr.status();
  OwnedFd fd(socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd.valid()) {
    return absl::UnavailableError(absl::StrCat("socket(AF_UNIX): ", std::strerror(errno)));
  }
  unlink(path.c_str());
  if (bind(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0 ||
      chmod(path.c_str(), 0660) != 0 || listen(fd.get(), 128) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", what, " ", path, ": ", std::strerror(errno)));
  }
  return fd;
}

absl::StatusOr<OwnedFd> ConnectUnixSocket(const std::string& path, int type,
                                          absl::string_view what) {
  absl::StatusOr<sockaddr_un> addr = AddressOf(path, what);
  if (!addr.ok()) return addr.status();
  OwnedFd fd(socket(AF_UNIX, type | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&*addr), sizeof(*addr)) != 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to the ", what, " ", path, ": ", std::strerror(errno)));
  }
  return fd;
}

}  // namespace kvkeep
