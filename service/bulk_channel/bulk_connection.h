// One attached connection of the bulk channel (kvcache.proto, BulkRequest; docs/api.md §5.2):
// serves a session's writes and reads until the peer closes, the socket is shut down (the
// session ended, the daemon stops) or a frame cannot be read.
//
// Writes receive each chunk's keys and values straight into its pages (CacheEngine::
// PinWriteTargets: the pages are pinned, the sequence's lock is not held while the bytes arrive);
// where the backend's memory is not host-writable (CUDA) through one staging buffer. Reads send
// each chunk from pinned page memory (ReadCursor::NextReferencedBatch) with one sendmsg per frame.
// Every frame is charged to the limits as the gRPC bytes path is (session_limits.h): a write batch
// one call and each chunk its bytes, to the session the chunk names (none: the tenant's
// session-less buckets), as WriteKV; a read one call, its chunks' bytes and one open read stream
// while it runs, to the tenant's session-less buckets, as ReadKV.
//
//   BulkConnection connection(fd, engine, limits, {tenant, session_id});
//   absl::Status why = connection.Serve();   // OK: the peer closed between frames
//
// One thread per connection; the engine and limits are thread-safe.
#ifndef KVKEEP_SERVICE_BULK_CHANNEL_BULK_CONNECTION_H_
#define KVKEEP_SERVICE_BULK_CHANNEL_BULK_CONNECTION_H_

#include <sys/uio.h>

#include <cstdint>
#include <atomic>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "kvkeep/v1/kvcache.pb.h"
#include "service/engine/cache_engine.h"
#include "service/rpc/session_limits.h"

namespace kvkeep {

// The channel's counters, for /metrics (BulkChannelServer::WriteMetrics). Lock-free.
struct BulkChannelStats {
  std::atomic<uint64_t> write_bytes{0}, read_bytes{0};    // keys + values moved
  std::atomic<uint64_t> write_chunks{0}, read_chunks{0};
  std::atomic<uint64_t> write_errors{0}, read_errors{0};  // batches / reads that ended non-OK
};

struct BulkPeer {
  std::string tenant;
  std::string session_id;
};

class BulkConnection {
 public:
  // Read replies carry up to this many bytes of chunks per frame.
  static constexpr uint64_t kReadFrameBytes = 8ull << 20;

  // `limits` and `stats` may be null. `fd` stays the caller's.
  BulkConnection(int fd, CacheEngine* engine, SessionLimits* limits, BulkChannelStats* stats,
                 BulkPeer peer);

  absl::Status Serve();

 private:
  absl::Status OnWrite(const v1::BulkWrite& write);
  absl::Status OnEndWrites();
  absl::Status OnRead(const v1::ReadRequest& request);
  // Receives `n` raw bytes into nothing (a refused chunk's).
  void AddDiscard(uint64_t n, std::vector<iovec>* iov);
  // Records the batch's failure at chunk `index` unless an earlier chunk failed already.
  void FailChunk(uint64_t index, const absl::Status& status);
  // The reply that ends a read with `status`.
  absl::Status EndRead(const absl::Status& status);

  const int fd_;
  CacheEngine* const engine_;
  SessionLimits* const limits_;
  BulkChannelStats* const stats_;
  const BulkPeer peer_;
  // The writes since the last end_writes: chunks seen, what was written, the first failure.
  uint64_t write_index_ = 0;
  v1::WriteSummary written_;
  static constexpr uint64_t kNoFailure = ~uint64_t{0};
  absl::Status write_error_;
  uint64_t write_error_index_ = kNoFailure;
  std::vector<char> discard_;  // receives refused chunks' bytes (reused)
  std::vector<char> staging_;  // a chunk's bytes for backends without host-writable pages
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_BULK_CHANNEL_BULK_CONNECTION_H_
