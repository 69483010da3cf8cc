#include "service/arena_channel/arena_channel_wire.h"

#include "absl/strings/str_cat.h"

namespace kvkeep {

absl::StatusOr<v1::ArenaChannelRequest> ParseArenaChannelRequest(absl::string_view datagram) {
  if (datagram.empty()) return absl::InvalidArgumentError("empty arena channel request");
  if (datagram.size() > kArenaChannelMaxMessageBytes) {
    return absl::InvalidArgumentError(absl::StrCat("arena channel request of ", datagram.size(),
                                                   " bytes; the limit is ",
                                                   kArenaChannelMaxMessageBytes));
  }
  v1::ArenaChannelRequest request;
  if (!request.ParseFromArray(datagram.data(), static_cast<int>(datagram.size()))) {
    return absl::InvalidArgumentError("arena channel request is not an ArenaChannelRequest");
  }
  switch (request.request_case()) {
    case v1::ArenaChannelRequest::kAttach:
      if (request.attach().size() != kAttachTicketBytes) {
        return absl::InvalidArgumentError(absl::StrCat("attach ticket of ", request.attach().size(),
                                                       " bytes; tickets have ",
                                                       kAttachTicketBytes));
      }
      return request;
    case v1::ArenaChannelRequest::kArenaId:
      return request;
    default:
      return absl::InvalidArgumentError("arena channel request names neither attach nor arena_id");
  }
}

std::string EncodeArenaChannelError(absl::StatusCode code, absl::string_view message) {
  v1::ArenaChannelReply reply;
  reply.set_code(static_cast<int>(code));
  reply.set_message(std::string(message));
  return reply.SerializeAsString();
}

}  // namespace kvkeep
