// The arena channel's wire rules (kvcache.proto, ArenaChannelRequest / ArenaChannelReply): one
// protobuf message per SOCK_SEQPACKET datagram, at most kArenaChannelMaxMessageBytes, and the
// parsing of a request datagram, which is the only untrusted input the channel reads (fuzzed by
// tests/fuzz/fuzz_arena_channel.cc).
//
//   ASSIGN_OR_RETURN(v1::ArenaChannelRequest request, ParseArenaChannelRequest(datagram));
//
// Stateless; thread-safe.
#ifndef KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_CHANNEL_WIRE_H_
#define KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_CHANNEL_WIRE_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep {

inline constexpr std::size_t kArenaChannelMaxMessageBytes = 4096;
inline constexpr std::size_t kAttachTicketBytes = 32;
// The arena channel's socket path for a daemon whose gRPC socket is `grpc_socket_path`.
inline std::string ArenaChannelPathFor(const std::string& grpc_socket_path) {
  return grpc_socket_path + ".arenas";
}

// One request datagram: INVALID_ARGUMENT (saying what was wrong) when it is empty, longer than
// the limit, not an ArenaChannelRequest, sets no request, or carries a ticket that is not
// kAttachTicketBytes long.
absl::StatusOr<v1::ArenaChannelRequest> ParseArenaChannelRequest(absl::string_view datagram);

// A reply with `code` and `message` (and nothing else): what a refused request gets.
std::string EncodeArenaChannelError(absl::StatusCode code, absl::string_view message);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ARENA_CHANNEL_ARENA_CHANNEL_WIRE_H_
