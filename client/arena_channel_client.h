// The worker's end of the daemon's arena channel (kvcache.proto, "The arena channel"): connects
// to the SOCK_SEQPACKET socket next to the gRPC one, attaches with the Session's one-time ticket,
// then receives one arena fd (SCM_RIGHTS) per request. Arenas are never opened by name.
//
//   ASSIGN_OR_RETURN(auto channel, ArenaChannelClient::Connect(started.arena_socket(),
//                                                              started.attach_ticket()));
//   ASSIGN_OR_RETURN(ReceivedArena got, channel->Fetch(arena_id));
//   ASSIGN_OR_RETURN(auto mapping, ArenaMapping::MapFd(got.arena, std::move(got.fd)));
//
// Thread-safe: Fetch serializes request/reply pairs under mu_.
#ifndef KVKEEP_CLIENT_ARENA_CHANNEL_CLIENT_H_
#define KVKEEP_CLIENT_ARENA_CHANNEL_CLIENT_H_

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/owned_fd.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep {

struct ReceivedArena {
  v1::ArenaExport arena;
  OwnedFd fd;
};

// One reply datagram with `fd_count` fds attached: the reply, or INVALID_ARGUMENT (unparseable,
// too long, an OK arena reply without exactly one fd or with an fd on an error) / the daemon's
// refusal as a status (code and message from the reply). Shared with the fuzz target.
absl::StatusOr<v1::ArenaChannelReply> ParseArenaChannelReply(absl::string_view datagram,
                                                             int fd_count, bool expect_arena);

class ArenaChannelClient {
 public:
  // Connects and attaches: UNAVAILABLE when the socket cannot be reached, the daemon's status
  // (NOT_FOUND for a used or unknown ticket) when it refuses.
  static absl::StatusOr<std::unique_ptr<ArenaChannelClient>> Connect(const std::string& path,
                                                                     const std::string& ticket);
  // The arena's export and fd: PERMISSION_DENIED (another tenant's), NOT_FOUND, UNAVAILABLE
  // (the connection is gone: the session ended).
  absl::StatusOr<ReceivedArena> Fetch(uint32_t arena_id);
  const std::string& session_id() const { return session_id_; }

 private:
  explicit ArenaChannelClient(OwnedFd fd) : fd_(std::move(fd)) {}
  // One request, one reply (and its fd) under mu_.
  absl::StatusOr<v1::ArenaChannelReply> RoundTrip(const v1::ArenaChannelRequest& request,
                                                  bool expect_arena, OwnedFd* fd)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;
  OwnedFd fd_ ABSL_GUARDED_BY(mu_);
  std::string session_id_;  // set in Connect
};

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_ARENA_CHANNEL_CLIENT_H_
