#include "service/fleet/node_connection.h"

#include <sys/time.h>

#include <algorithm>
#include <cerrno>

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

absl::Status NodeConnection::ArmTimeout(absl::Time deadline) {
  const absl::Duration left = std::min(options_.command_timeout, deadline - absl::Now());
  if (left <= absl::ZeroDuration()) {
    if (owed_ > 0) broken_ = true;  // replies in flight can no longer be matched
    return absl::DeadlineExceededError(absl::StrCat("redis ", address_.ToString(), ": deadline"));
  }
  if (redisSetTimeout(context_, SocketTimeout(left)) != REDIS_OK) {
    return Fail("setting the socket timeout", errno);
  }
  return absl::OkStatus();
}

absl::Status NodeConnection::Fail(absl::string_view what, int saved_errno) {
  broken_ = true;
  const std::string message =
      absl::StrCat("redis ", address_.ToString(), ": ", what, ": ", context_->errstr);
  if (IsTimeout(context_->err, saved_errno)) return absl::DeadlineExceededError(message);
  return absl::UnavailableError(message);
}

absl::Status NodeConnection::Send(absl::Span<const RedisArgs> commands, absl::Time deadline) {
  if (broken_)
    return absl::UnavailableError(absl::StrCat("redis ", address_.ToString(), ": broken"));
  std::vector<const char*> argv;
  std::vector<size_t> argvlen;
  for (const RedisArgs& command : commands) {
    argv.clear();
    argvlen.clear();
    for (absl::string_view arg : command) {
      argv.push_back(arg.data());
      argvlen.push_back(arg.size());
    }
    if (redisAppendCommandArgv(context_, static_cast<int>(argv.size()), argv.data(),
                               argvlen.data()) != REDIS_OK) {
      return Fail("formatting a command", errno);
    }
    ++owed_;  // once appended the command will be sent: a reply is owed from here on
  }
  int done = 0;
  while (done == 0) {
    if (absl::Status armed = ArmTimeout(deadline); !armed.ok()) {
      broken_ = true;
      return armed;
    }
    errno = 0;
    if (redisBufferWrite(context_, &done) != REDIS_OK) return Fail("write", errno);
  }
  return absl::OkStatus();
}

absl::StatusOr<RedisReply> NodeConnection::Receive(absl::Time deadline) {
  if (broken_)
    return absl::UnavailableError(absl::StrCat("redis ", address_.ToString(), ": broken"));
  if (owed_ == 0) return absl::FailedPreconditionError("no reply is owed");
  if (absl::Status armed = ArmTimeout(deadline); !armed.ok()) {
    broken_ = true;
    return armed;
  }
  void* raw = nullptr;
  errno = 0;
  if (redisGetReply(context_, &raw) != REDIS_OK || raw == nullptr) {
    return Fail("read", errno);
  }
  --owed_;
  return RedisReply(static_cast<redisReply*>(raw));
}

absl::StatusOr<RedisReply> NodeConnection::Call(const RedisArgs& command, absl::Time deadline) {
  absl::Status sent = Send(absl::MakeConstSpan(&command, 1), deadline);
  if (!sent.ok()) return sent;
  return Receive(deadline);
}

}  // namespace kvkeep::fleet
