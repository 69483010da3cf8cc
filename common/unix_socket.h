// Unix sockets of the daemon's side channels (the arena channel, the bulk channel): one place for
// the path check, the listener's mode 0660 and the messages a failure gives.
//
//   ASSIGN_OR_RETURN(OwnedFd listener, ListenUnixSocket(path, SOCK_STREAM, "bulk channel"));
//   ASSIGN_OR_RETURN(OwnedFd fd, ConnectUnixSocket(path, SOCK_SEQPACKET, "arena channel"));
//
// Stateless; thread-safe.
#ifndef KVKEEP_COMMON_UNIX_SOCKET_H_
#define KVKEEP_COMMON_UNIX_SOCKET_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/owned_fd.h"

namespace kvkeep {

// A non-blocking listener of `type` (SOCK_STREAM, SOCK_SEQPACKET) bound to `path` with mode 0660;
// a leftover file at `path` is removed first (the caller proves it unused). INVALID_ARGUMENT for
// an empty path or one too long for a Unix socket, UNAVAILABLE when it cannot be bound. `what`
// names the socket in messages.
absl::StatusOr<OwnedFd> ListenUnixSocket(const std::string& path, int type, absl::string_view what);

// A blocking socket of `type` connected to `path`. INVALID_ARGUMENT for an unusable path,
// UNAVAILABLE when nothing listens there.
absl::StatusOr<OwnedFd> ConnectUnixSocket(const std::string& path, int type, absl::string_view what);

}  // namespace kvkeep

#endif  // KVKEEP_COMMON_UNIX_SOCKET_H_
