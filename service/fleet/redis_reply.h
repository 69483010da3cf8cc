// Ownership of hiredis replies and the meaning of Redis error replies as absl::Status.
//
//   RedisReply reply(static_cast<redisReply*>(redisCommand(ctx, "PING")));
//   absl::Status status = ErrorReplyStatus(reply->str);   // for a REDIS_REPLY_ERROR
//
// Thread-compatible (a reply is owned by one caller).
#ifndef KVKEEP_SERVICE_FLEET_REDIS_REPLY_H_
#define KVKEEP_SERVICE_FLEET_REDIS_REPLY_H_

#include <hiredis/hiredis.h>

#include <memory>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace kvkeep::fleet {

struct RedisReplyDeleter {
  void operator()(redisReply* reply) const { freeReplyObject(reply); }
};
// A reply owned by its holder (freed with freeReplyObject). Never null where a function returns
// one with OK.
using RedisReply = std::unique_ptr<redisReply, RedisReplyDeleter>;

// The bytes of a string, status or error reply (empty for other types).
inline absl::string_view ReplyText(const redisReply& reply) {
  return reply.str != nullptr ? absl::string_view(reply.str, reply.len) : absl::string_view();
}

// The status an error reply stands for, by its first word:
//   NOPERM                                 PERMISSION_DENIED (the ACL refuses the key/command)
//   NOAUTH, WRONGPASS                       UNAUTHENTICATED
//   CLUSTERDOWN, TRYAGAIN, LOADING,
//   MASTERDOWN, BUSY                        UNAVAILABLE (transient: retry later)
//   MOVED, ASK                              ABORTED (a redirection the caller did not follow)
//   anything else                           FAILED_PRECONDITION
// The message is "redis: " + the error text.
absl::Status ErrorReplyStatus(absl::string_view error);

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_REDIS_REPLY_H_
