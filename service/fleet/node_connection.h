// One connection to one Redis node, with a bound on every call. hiredis 0.14 only connects; the
// commands are written with writev (large arguments, e.g. a SET's value, are sent from the
// caller's memory, not copied) and the replies read by our RespReader (resp_reader.h), which can
// put a GET's value straight into the caller's buffer.
//
//   ASSIGN_OR_RETURN(auto conn, NodeConnection::Connect(address, options, deadline));
//   RETURN_IF_ERROR(conn->Send({{"EXISTS", key1}, {"GET", key2}}, deadline));  // pipelined
//   ASSIGN_OR_RETURN(RedisReply first, conn->Receive(deadline));
//   ASSIGN_OR_RETURN(RedisReply second, conn->Receive(deadline, &sink));  // value into sink
//
// Timeouts: connecting waits at most min(connect_timeout, deadline - now); every wait for the
// socket at most min(command_timeout, deadline - now), so a call never passes its deadline (a
// large value arriving slowly is cut at the deadline, not only per read).
//
// After a transport failure (UNAVAILABLE: refused, reset, closed, or a stream that is not RESP;
// DEADLINE_EXCEEDED: a timeout) the connection is broken(): replies still owed are lost, so the
// owner drops it and connects again. An error *reply* (e.g. MOVED, NOPERM) is a reply, not a
// failure.
//
// Thread-compatible: one thread at a time.
#ifndef KVKEEP_SERVICE_FLEET_NODE_CONNECTION_H_
#define KVKEEP_SERVICE_FLEET_NODE_CONNECTION_H_

#include <sys/uio.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "service/fleet/node_address.h"
#include "service/fleet/redis_reply.h"
#include "service/fleet/resp_reader.h"

namespace kvkeep::fleet {

// The arguments of one command, borrowed: they must outlive the Send that takes them.
using RedisArgs = std::vector<absl::string_view>;

struct ConnectionOptions {
  // Default: 200 ms. Connecting to one node (TCP connect + AUTH).
  absl::Duration connect_timeout = absl::Milliseconds(200);
  // Default: 500 ms. One socket read or write.
  absl::Duration command_timeout = absl::Milliseconds(500);
  // Default: empty (no AUTH). An ACL user; with `password`, the connection runs
  // AUTH user password; with only `password`, AUTH password (the default user).
  std::string user;
  // Default: empty (no AUTH).
  std::string password;
};

class NodeConnection {
 public:
  // Connects and authenticates. UNAVAILABLE when the node cannot be reached, DEADLINE_EXCEEDED
  // when it does not answer in time, UNAUTHENTICATED when AUTH is refused.
  static absl::StatusOr<std::unique_ptr<NodeConnection>> Connect(const NodeAddress& address,
                                                                 const ConnectionOptions& options,
                                                                 absl::Time deadline);

  ~NodeConnection();
  NodeConnection(const NodeConnection&) = delete;
  NodeConnection& operator=(const NodeConnection&) = delete;

  // Appends `commands` and writes them all to the socket. OK: sent, one reply per command is
  // owed. UNAVAILABLE / DEADLINE_EXCEEDED: broken.
  absl::Status Send(absl::Span<const RedisArgs> commands, absl::Time deadline);
  // The next owed reply (an error reply is OK: check reply->type). With a sink, a bulk string
  // reply's bytes go to it (resp_reader.h: the reply then has str == nullptr). FAILED_PRECONDITION
  // when none is owed; UNAVAILABLE / DEADLINE_EXCEEDED: broken.
  absl::StatusOr<RedisReply> Receive(absl::Time deadline, BulkSink* sink = nullptr);
  // Send + Receive of one command.
  absl::StatusOr<RedisReply> Call(const RedisArgs& command, absl::Time deadline);

  bool broken() const { return broken_; }
  size_t owed_replies() const { return owed_; }
  const NodeAddress& address() const { return address_; }

 private:
  NodeConnection(NodeAddress address, ConnectionOptions options, redisContext* context);
  // Waits until the socket is ready for `events` (POLLIN / POLLOUT), at most
  // min(command_timeout, deadline - now): DEADLINE_EXCEEDED (broken) when it is not.
  absl::Status WaitFor(short events, absl::Time deadline);
  // Writes every byte of `iov`, in order.
  absl::Status WriteAll(std::vector<struct iovec>& iov, absl::Time deadline);
  // Marks the connection broken and returns UNAVAILABLE: what failed and why.
  absl::Status Fail(absl::string_view what, absl::string_view why);

  const NodeAddress address_;
  const ConnectionOptions options_;
  redisContext* const context_;  // owned (its socket; its buffers are not used)
  RespReader reader_;
  size_t owed_ = 0;
  bool broken_ = false;
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_NODE_CONNECTION_H_
