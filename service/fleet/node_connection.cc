#include "service/fleet/node_connection.h"

#include <limits.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace kvkeep::fleet {
namespace {

timeval SocketTimeout(absl::Duration d) {
  // 0 would mean "no timeout" to the socket: the shortest bound is 1 ms.
  d = std::max(d, absl::Milliseconds(1));
  return absl::ToTimeval(d);
}

// Transport errors of a blocking hiredis context: a timeout shows as an I/O error with EAGAIN.
bool IsTimeout(int err, int saved_errno) {
  return (err == REDIS_ERR_IO || err == REDIS_ERR_OTHER) &&
         (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK || saved_errno == EINPROGRESS ||
          saved_errno == ETIMEDOUT);
}

}  // namespace

NodeConnection::NodeConnection(NodeAddress address, ConnectionOptions options,
                               redisContext* context)
    : address_(std::move(address)), options_(std::move(options)), context_(context) {}

NodeConnection::~NodeConnection() { redisFree(context_); }

absl::StatusOr<std::unique_ptr<NodeConnection>> NodeConnection::Connect(
    const NodeAddress& address, const ConnectionOptions& options, absl::Time deadline) {
  const absl::Duration left = std::min(options.connect_timeout, deadline - absl::Now());
  if (left <= absl::ZeroDuration()) {
    return absl::DeadlineExceededError(
        absl::StrCat("redis ", address.ToString(), ": no time left to connect"));
  }
  errno = 0;
  redisContext* context =
      redisConnectWithTimeout(address.host.c_str(), address.port, SocketTimeout(left));
  const int saved_errno = errno;
  if (context == nullptr) {
    return absl::UnavailableError(absl::StrCat("redis ", address.ToString(), ": out of memory"));
  }
  if (context->err != 0) {
    const std::string message =
        absl::StrCat("redis ", address.ToString(), ": connect: ", context->errstr);
    const bool timeout = IsTimeout(context->err, saved_errno);
    redisFree(context);
    return timeout ? absl::DeadlineExceededError(message) : absl::UnavailableError(message);
  }
  redisEnableKeepAlive(context);
  std::unique_ptr<NodeConnection> connection(new NodeConnection(address, options, context));
  if (!options.password.empty()) {
    RedisArgs auth = {"AUTH"};
    if (!options.user.empty()) auth.push_back(options.user);
    auth.push_back(options.password);
    absl::StatusOr<RedisReply> reply = connection->Call(auth, deadline);
    if (!reply.ok()) return reply.status();
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      // Never echo the password; the error text (WRONGPASS ...) does not contain it.
      return absl::UnauthenticatedError(absl::StrCat("redis ", address.ToString(), ": AUTH as \"",
                                                     options.user, "\": ", ReplyText(**reply)));
    }
  }
  return connection;
}

absl::Status NodeConnection::WaitFor(short events, absl::Time deadline) {
  const absl::Duration left = std::min(options_.command_timeout, deadline - absl::Now());
  if (left <= absl::ZeroDuration()) {
    broken_ = true;  // replies in flight can no longer be matched
    return absl::DeadlineExceededError(absl::StrCat("redis ", address_.ToString(), ": deadline"));
  }
  pollfd p{context_->fd, events, 0};
  const int ms = static_cast<int>(
      std::max<int64_t>(1, absl::ToInt64Milliseconds(left + absl::Microseconds(999))));
  int ready = 0;
  do {
    ready = poll(&p, 1, ms);
  } while (ready < 0 && errno == EINTR);
  if (ready < 0) return Fail("poll", std::strerror(errno));
  if (ready == 0) {
    broken_ = true;
    return absl::DeadlineExceededError(absl::StrCat("redis ", address_.ToString(), ": no ",
                                                    events == POLLIN ? "reply" : "progress",
                                                    " within ", absl::FormatDuration(left)));
  }
  return absl::OkStatus();  // readable/writable, or an error the next recv/send reports
}

absl::Status NodeConnection::Fail(absl::string_view what, absl::string_view why) {
  broken_ = true;
  return absl::UnavailableError(absl::StrCat("redis ", address_.ToString(), ": ", what, ": ", why));
}

absl::Status NodeConnection::WriteAll(std::vector<iovec>& iov, absl::Time deadline) {
  size_t first = 0;
  while (first < iov.size()) {
    msghdr message{};
    message.msg_iov = iov.data() + first;
    message.msg_iovlen = std::min<size_t>(iov.size() - first, IOV_MAX);
    const ssize_t sent = sendmsg(context_->fd, &message, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return Fail("write", std::strerror(errno));
      if (absl::Status ready = WaitFor(POLLOUT, deadline); !ready.ok()) return ready;
      continue;
    }
    for (size_t n = static_cast<size_t>(sent); n > 0;) {
      const size_t take = std::min(n, iov[first].iov_len);
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + take;
      iov[first].iov_len -= take;
      n -= take;
      if (iov[first].iov_len == 0) ++first;
    }
    while (first < iov.size() && iov[first].iov_len == 0) ++first;
  }
  return absl::OkStatus();
}

absl::Status NodeConnection::Send(absl::Span<const RedisArgs> commands, absl::Time deadline) {
  if (broken_)
    return absl::UnavailableError(absl::StrCat("redis ", address_.ToString(), ": broken"));
  if (absl::Now() >= deadline) {
    broken_ = true;
    return absl::DeadlineExceededError(absl::StrCat("redis ", address_.ToString(), ": deadline"));
  }
  // RESP: "*<argc>\r\n" then "$<len>\r\n<arg>\r\n" per argument. Small pieces are copied into
  // `framing`; arguments of kBorrowBytes or more are sent from the caller's memory.
  constexpr size_t kBorrowBytes = 4096;
  struct Piece {
    const char* borrowed;  // nullptr: `length` bytes of framing at `offset`
    size_t offset, length;
  };
  std::string framing;
  std::vector<Piece> pieces;
  auto own = [&](absl::string_view bytes) {
    if (!pieces.empty() && pieces.back().borrowed == nullptr) {
      pieces.back().length += bytes.size();
    } else {
      pieces.push_back({nullptr, framing.size(), bytes.size()});
    }
    framing.append(bytes.data(), bytes.size());
  };
  for (const RedisArgs& command : commands) {
    own(absl::StrCat("*", command.size(), "\r\n"));
    for (absl::string_view arg : command) {
      own(absl::StrCat("$", arg.size(), "\r\n"));
      if (arg.size() >= kBorrowBytes) {
        pieces.push_back({arg.data(), 0, arg.size()});
      } else {
        own(arg);
      }
      own("\r\n");
    }
  }
  std::vector<iovec> iov;
  iov.reserve(pieces.size());
  for (const Piece& piece : pieces) {
    const char* base = piece.borrowed != nullptr ? piece.borrowed : framing.data() + piece.offset;
    if (piece.length > 0) iov.push_back({const_cast<char*>(base), piece.length});
  }
  owed_ += commands.size();  // once any byte may be on the wire, the replies are owed
  return WriteAll(iov, deadline);
}

absl::StatusOr<RedisReply> NodeConnection::Receive(absl::Time deadline, BulkSink* sink) {
  if (broken_)
    return absl::UnavailableError(absl::StrCat("redis ", address_.ToString(), ": broken"));
  if (owed_ == 0) return absl::FailedPreconditionError("no reply is owed");
  if (absl::Now() >= deadline) {
    broken_ = true;
    return absl::DeadlineExceededError(absl::StrCat("redis ", address_.ToString(), ": deadline"));
  }
  auto source = [this, deadline](char* dst, size_t n) -> absl::StatusOr<size_t> {
    while (true) {
      const ssize_t got = recv(context_->fd, dst, n, MSG_DONTWAIT);
      if (got > 0) return static_cast<size_t>(got);
      if (got == 0) return Fail("read", "connection closed by the server");
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return Fail("read", std::strerror(errno));
      if (absl::Status ready = WaitFor(POLLIN, deadline); !ready.ok()) return ready;
    }
  };
  absl::StatusOr<RedisReply> reply = reader_.Next(source, sink);
  if (!reply.ok()) {
    broken_ = true;
    if (absl::IsDeadlineExceeded(reply.status()) || absl::IsUnavailable(reply.status())) {
      return reply.status();
    }
    // Not RESP (or out of memory): the stream cannot be trusted any more.
    return absl::UnavailableError(
        absl::StrCat("redis ", address_.ToString(), ": ", reply.status().message()));
  }
  --owed_;
  return reply;
}

absl::StatusOr<RedisReply> NodeConnection::Call(const RedisArgs& command, absl::Time deadline) {
  absl::Status sent = Send(absl::MakeConstSpan(&command, 1), deadline);
  if (!sent.ok()) return sent;
  return Receive(deadline);
}

}  // namespace kvkeep::fleet
