#include "service/arena_channel/arena_channel_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/unix_socket.h"
#include "service/arena_channel/arena_channel_wire.h"
#include "service/observability/log.h"

namespace kvkeep {
namespace {

// Sends one datagram, with `fd` attached when >= 0. Never blocks: false when the peer is gone or
// does not read its replies.
bool SendReply(int socket_fd, const std::string& reply, int fd) {
  iovec iov{const_cast<char*>(reply.data()), reply.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    msg.msg_control = control;
    msg.msg_controllen = sizeof(control);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
  }
  return sendmsg(socket_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL) == static_cast<ssize_t>(reply.size());
}

int PeerUid(int fd) {
  ucred cred{};
  socklen_t len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
  return static_cast<int>(cred.uid);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ArenaChannelServer>> ArenaChannelServer::Start(
    const std::string& path, const ArenaFdSource* source) {
  ASSIGN_OR_RETURN(OwnedFd listener, ListenUnixSocket(path, SOCK_SEQPACKET, "arena channel"));
  OwnedFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) return absl::UnavailableError(absl::StrCat("eventfd: ", std::strerror(errno)));
  auto server = std::unique_ptr<ArenaChannelServer>(
      new ArenaChannelServer(path, std::move(listener), std::move(wake), source));
  server->thread_ = std::thread([s = server.get()] { s->Loop(); });
  log::Info("arena_channel.bound", {{"address", path}, {"mode", "0660"}});
  return server;
}

ArenaChannelServer::ArenaChannelServer(std::string path, OwnedFd listener, OwnedFd wake,
                                       const ArenaFdSource* source)
    : path_(std::move(path)),
      listener_(std::move(listener)),
      wake_(std::move(wake)),
      handler_(&tickets_, source) {}

ArenaChannelServer::~ArenaChannelServer() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof(one));
  if (thread_.joinable()) thread_.join();
  connections_.clear();
  unlink(path_.c_str());
}

void ArenaChannelServer::EndSession(const std::string& session_id) {
  tickets_.EndSession(session_id);
  {
    absl::MutexLock lock(&mu_);
    ended_sessions_.push_back(session_id);
  }
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof(one));
}

void ArenaChannelServer::Loop() {
  std::vector<pollfd> fds;
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    Prune();
    fds.clear();
    fds.push_back({listener_.get(), POLLIN, 0});
    fds.push_back({wake_.get(), POLLIN, 0});
    for (const auto& c : connections_) fds.push_back({c->fd.get(), POLLIN, 0});
    // Wakes at least once a second to close connections that never attached.
    if (poll(fds.data(), fds.size(), 1000) < 0 && errno != EINTR) return;
    if (fds[1].revents & POLLIN) {
      uint64_t count;
      (void)!read(wake_.get(), &count, sizeof(count));
    }
    // Connections first (their indexes match fds), then new ones.
    std::vector<std::unique_ptr<Connection>> kept;
    for (std::size_t i = 0; i < connections_.size(); ++i) {
      const short ev = fds[i + 2].revents;
      if (ev == 0 || Serve(*connections_[i])) kept.push_back(std::move(connections_[i]));
    }
    connections_ = std::move(kept);
    if (fds[0].revents & POLLIN) Accept();
  }
}

void ArenaChannelServer::Accept() {
  while (true) {
    OwnedFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!fd.valid()) return;  // EAGAIN: none left (other errors: try again on the next poll)
    if (connections_.size() >= kMaxConnections) {
      log::Warn("arena_channel.refused", {{"reason", "too many connections"}});
      continue;  // closed
    }
    auto c = std::make_unique<Connection>();
    c->state.peer_uid = PeerUid(fd.get());
    c->fd = std::move(fd);
    c->opened = absl::Now();
    connections_.push_back(std::move(c));
  }
}

bool ArenaChannelServer::Serve(Connection& c) {
  // One byte more than the limit, so an oversized datagram is seen as such (and refused).
  char buffer[kArenaChannelMaxMessageBytes + 1];
  while (true) {
    // No control buffer: fds a peer sends are discarded by the kernel (MSG_CTRUNC).
    ssize_t n = recv(c.fd.get(), buffer, sizeof(buffer), MSG_DONTWAIT);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    if (n == 0) return false;  // the peer closed
    ArenaChannelOutcome out =
        handler_.Handle(c.state, absl::string_view(buffer, static_cast<std::size_t>(n)));
    if (!SendReply(c.fd.get(), out.reply, out.fd.get()) || out.close) return false;
  }
}

void ArenaChannelServer::Prune() {
  std::vector<std::string> ended;
  {
    absl::MutexLock lock(&mu_);
    ended.swap(ended_sessions_);
  }
  const absl::Time deadline = absl::Now() - kAttachTimeout;
  auto gone = [&](const std::unique_ptr<Connection>& c) {
    if (!c->state.session.has_value()) return c->opened < deadline;
    return std::find(ended.begin(), ended.end(), c->state.session->session_id) != ended.end();
  };
  connections_.erase(std::remove_if(connections_.begin(), connections_.end(), gone),
                     connections_.end());
}

}  // namespace kvkeep
