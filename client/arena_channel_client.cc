#include "client/arena_channel_client.h"

#include "common/status_macros.h"
#include "common/unix_socket.h"

#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

namespace kvkeep {
namespace {

constexpr std::size_t kMaxReplyBytes = 4096;  // the daemon's datagram limit
constexpr int kReplyTimeoutMs = 10000;

}  // namespace

absl::StatusOr<v1::ArenaChannelReply> ParseArenaChannelReply(absl::string_view datagram,
                                                             int fd_count, bool expect_arena) {
  if (datagram.empty() || datagram.size() > kMaxReplyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("arena channel reply of ", datagram.size(), " bytes"));
  }
  v1::ArenaChannelReply reply;
  if (!reply.ParseFromArray(datagram.data(), static_cast<int>(datagram.size()))) {
    return absl::InvalidArgumentError("arena channel reply is not an ArenaChannelReply");
  }
  if (reply.code() != 0) {
    if (fd_count != 0) return absl::InvalidArgumentError("a refusal came with a file descriptor");
    const int code = reply.code();
    if (code < 1 || code > 16) {
      return absl::InvalidArgumentError(absl::StrCat("arena channel reply code ", code));
    }
    return absl::Status(static_cast<absl::StatusCode>(code),
                        absl::StrCat("arena channel: ", reply.message()));
  }
  if (expect_arena != reply.has_arena() || fd_count != (expect_arena ? 1 : 0)) {
    return absl::InvalidArgumentError(absl::StrCat("arena channel reply with ", fd_count,
                                                   " file descriptors and ",
                                                   reply.has_arena() ? "an" : "no", " arena"));
  }
  return reply;
}

absl::StatusOr<std::unique_ptr<ArenaChannelClient>> ArenaChannelClient::Connect(
    const std::string& path, const std::string& ticket) {
  ASSIGN_OR_RETURN(OwnedFd fd, ConnectUnixSocket(path, SOCK_SEQPACKET, "arena channel"));
  auto client = std::unique_ptr<ArenaChannelClient>(new ArenaChannelClient(std::move(fd)));
  v1::ArenaChannelRequest request;
  request.set_attach(ticket);
  absl::MutexLock lock(&client->mu_);
  OwnedFd none;
  absl::StatusOr<v1::ArenaChannelReply> reply = client->RoundTrip(request, false, &none);
  if (!reply.ok()) return reply.status();
  client->session_id_ = reply->session_id();
  return client;
}

absl::StatusOr<ReceivedArena> ArenaChannelClient::Fetch(uint32_t arena_id) {
  v1::ArenaChannelRequest request;
  request.set_arena_id(arena_id);
  ReceivedArena out;
  absl::MutexLock lock(&mu_);
  absl::StatusOr<v1::ArenaChannelReply> reply = RoundTrip(request, true, &out.fd);
  if (!reply.ok()) return reply.status();
  if (reply->arena().arena_id() != arena_id) {
    return absl::InvalidArgumentError(absl::StrCat("asked for arena ", arena_id, ", got ",
                                                   reply->arena().arena_id()));
  }
  out.arena = std::move(*reply->mutable_arena());
  return out;
}

absl::StatusOr<v1::ArenaChannelReply> ArenaChannelClient::RoundTrip(
    const v1::ArenaChannelRequest& request, bool expect_arena, OwnedFd* fd) {
  if (!fd_.valid()) return absl::UnavailableError("the arena channel is closed");
  const std::string bytes = request.SerializeAsString();
  if (send(fd_.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL) !=
      static_cast<ssize_t>(bytes.size())) {
    fd_.reset();
    return absl::UnavailableError(absl::StrCat("arena channel send: ", std::strerror(errno)));
  }
  pollfd p{fd_.get(), POLLIN, 0};
  if (poll(&p, 1, kReplyTimeoutMs) != 1) {
    fd_.reset();
    return absl::DeadlineExceededError("no answer on the arena channel");
  }
  std::vector<char> buffer(kMaxReplyBytes + 1);
  iovec iov{buffer.data(), buffer.size()};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = recvmsg(fd_.get(), &msg, MSG_CMSG_CLOEXEC);
  if (n <= 0) {
    fd_.reset();
    return absl::UnavailableError("the daemon closed the arena channel (the session ended?)");
  }
  // Every fd received is owned here, whatever the reply says, so none leaks.
  std::vector<OwnedFd> fds;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
    const std::size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
    for (std::size_t i = 0; i < count; ++i) {
      int received;
      std::memcpy(&received, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
      fds.emplace_back(received);
    }
  }
  if (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
    return absl::InvalidArgumentError("truncated arena channel reply");
  }
  absl::StatusOr<v1::ArenaChannelReply> reply =
      ParseArenaChannelReply(absl::string_view(buffer.data(), static_cast<std::size_t>(n)),
                             static_cast<int>(fds.size()), expect_arena);
  if (reply.ok() && expect_arena) *fd = std::move(fds.front());
  return reply;
}

}  // namespace kvkeep
