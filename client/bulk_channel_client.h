// The worker's end of the daemon's bulk channel (kvcache.proto, "The bulk channel"; docs/api.md
// §5.2): connects to the Unix stream socket next to the gRPC one, attaches with the Session's
// one-time bulk ticket, then moves keys and values as raw bytes: writes are sent from the
// caller's buffers with one sendmsg per frame, reads are received straight into the places the
// caller names (KvChunkPlacer) or into one reused buffer (KvChunkSink).
//
//   ASSIGN_OR_RETURN(auto bulk, BulkChannelClient::Connect(started.bulk_socket(),
//                                                          started.bulk_ticket()));
//   ASSIGN_OR_RETURN(v1::WriteSummary s, bulk->Write(chunks));
//   RETURN_IF_ERROR(bulk->Read(request, &placer, nullptr));
//
// Not thread-safe: one call at a time (kvkeep::Client holds it under a lock). After a transport
// failure (broken()) the connection is unusable; the daemon's refusals leave it usable.
#ifndef KVKEEP_CLIENT_BULK_CHANNEL_CLIENT_H_
#define KVKEEP_CLIENT_BULK_CHANNEL_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "common/owned_fd.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep {

// A chunk to write whose bytes stay in the caller's memory until the write returns.
struct WriteChunkRef {
  const v1::KvChunk* header;  // every field but keys and values (ignored)
  absl::string_view keys;
  absl::string_view values;
};

// Where one read chunk's bytes go: `keys` and `values` each hold the chunk's key / value bytes.
struct KvChunkPlace {
  char* keys;
  char* values;
};
// Names the place of each read chunk, in order, before its bytes arrive (header: every field but
// keys and values). A non-OK status ends the read with it (the rest is received and dropped).
using KvChunkPlacer = std::function<absl::StatusOr<KvChunkPlace>(
    const v1::KvChunk& header, uint64_t key_bytes, uint64_t value_bytes)>;
// Receives read chunks as views valid during the call (see client.h, KvChunkSink).
using KvChunkSink = std::function<absl::Status(const v1::KvChunk& header,
                                               absl::Span<const absl::string_view> keys,
                                               absl::Span<const absl::string_view> values)>;

class BulkChannelClient {
 public:
  // Each send and receive must progress within this long, or the call fails DEADLINE_EXCEEDED.
  static constexpr int kStallSeconds = 60;

  // Connects and attaches: UNAVAILABLE when the socket cannot be reached, the daemon's status
  // (NOT_FOUND for a used, unknown or ended ticket) when it refuses.
  static absl::StatusOr<std::unique_ptr<BulkChannelClient>> Connect(const std::string& path,
                                                                   const std::string& ticket);

  // Writes the chunks in frames of at most kBulkMaxPayloadBytes (a larger chunk:
  // INVALID_ARGUMENT, nothing sent). The daemon's summary, or its status for the first failing
  // chunk ("chunk <i>: ..."; earlier chunks stay written).
  absl::StatusOr<v1::WriteSummary> Write(absl::Span<const WriteChunkRef> chunks);
  // A ReadKV over the channel: each chunk's bytes received straight into `place`'s answer, or,
  // with `sink` instead, into a reused buffer handed to the sink.
  absl::Status Read(const v1::ReadRequest& request, const KvChunkPlacer* place,
                    const KvChunkSink* sink);

  bool broken() const { return broken_; }
  const std::string& session_id() const { return session_id_; }

 private:
  explicit BulkChannelClient(OwnedFd fd) : fd_(std::move(fd)) {}
  // `status` from the transport: marks the connection broken and returns it.
  absl::Status Broken(absl::Status status);

  OwnedFd fd_;
  std::string session_id_;
  bool broken_ = false;
  std::vector<char> buffer_;  // sink reads and dropped bytes
};

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_BULK_CHANNEL_CLIENT_H_
