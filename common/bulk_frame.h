// Frames of the bulk channel (kvcache.proto, BulkRequest / BulkReply; docs/api.md §5.2), shared by
// the daemon and the client: a 4-byte little-endian length, a protobuf message of at most
// kBulkMaxMessageBytes, then the frame's raw bytes, which both sides move with readv / sendmsg
// straight between the socket and their final place (page memory, the worker's buffers).
//
//   RETURN_IF_ERROR(SendFrame(fd, request, {{keys, n}, {values, n}}));
//   ASSIGN_OR_RETURN(bool got, RecvFrame(fd, &reply));       // false: the peer closed cleanly
//   RETURN_IF_ERROR(RecvBytes(fd, {{dst_keys, n}, {dst_values, n}}));
//
// Blocking I/O on a stream socket; EINTR is retried, and a receive or send timeout set on the
// socket (SO_RCVTIMEO / SO_SNDTIMEO) ends the call DEADLINE_EXCEEDED. Stateless; thread-safe as
// long as one thread at a time uses a socket in each direction.
#ifndef KVKEEP_COMMON_BULK_FRAME_H_
#define KVKEEP_COMMON_BULK_FRAME_H_

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "google/protobuf/message_lite.h"

namespace kvkeep {

inline constexpr std::size_t kBulkMaxMessageBytes = 4 << 20;
// A request frame's message (the daemon reads at most this much per frame before acting: a write
// frame's chunk headers take ~100 bytes each).
inline constexpr std::size_t kBulkMaxRequestMessageBytes = 1 << 20;
// Raw bytes after one request frame (its chunks' keys and values). Larger ones are refused.
inline constexpr uint64_t kBulkMaxPayloadBytes = 16ull << 20;
inline constexpr std::size_t kBulkTicketBytes = 32;

// The bulk channel's Unix socket for a daemon whose gRPC socket is `grpc_socket_path`.
inline std::string BulkChannelPathFor(const std::string& grpc_socket_path) {
  return grpc_socket_path + ".bulk";
}

// Sends the frame of `message` followed by `payload` (in order), with as few system calls as the
// kernel allows. UNAVAILABLE when the peer is gone, DEADLINE_EXCEEDED on a send timeout.
absl::Status SendFrame(int fd, const google::protobuf::MessageLite& message,
                       absl::Span<const iovec> payload = {});
// Receives one frame's message: false when the peer closed the socket before its first byte;
// INVALID_ARGUMENT for a length over `max_bytes` or bytes that do not parse;
// UNAVAILABLE / DEADLINE_EXCEEDED as for RecvBytes.
absl::StatusOr<bool> RecvFrame(int fd, google::protobuf::MessageLite* message,
                               std::size_t max_bytes = kBulkMaxMessageBytes);
// Fills `to` in order from the socket. UNAVAILABLE when the peer closes first or on an error,
// DEADLINE_EXCEEDED on a receive timeout.
absl::Status RecvBytes(int fd, absl::Span<const iovec> to);
// Receives and drops `n` bytes.
absl::Status DiscardBytes(int fd, uint64_t n);

// An iovec over [data, data + n).
inline iovec Iov(const void* data, std::size_t n) { return {const_cast<void*>(data), n}; }

}  // namespace kvkeep

#endif  // KVKEEP_COMMON_BULK_FRAME_H_
