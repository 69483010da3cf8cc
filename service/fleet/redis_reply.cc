#include "service/fleet/redis_reply.h"

#include "absl/strings/str_cat.h"

namespace kvkeep::fleet {

absl::Status ErrorReplyStatus(absl::string_view error) {
  const absl::string_view word = error.substr(0, error.find(' '));
  const std::string message = absl::StrCat("redis: ", error);
  if (word == "NOPERM") return absl::PermissionDeniedError(message);
  if (word == "NOAUTH" || word == "WRONGPASS") return absl::UnauthenticatedError(message);
  if (word == "CLUSTERDOWN" || word == "TRYAGAIN" || word == "LOADING" || word == "MASTERDOWN" ||
      word == "BUSY") {
    return absl::UnavailableError(message);
  }
  if (word == "MOVED" || word == "ASK") return absl::AbortedError(message);
  return absl::FailedPreconditionError(message);
}

}  // namespace kvkeep::fleet
