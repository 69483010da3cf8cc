// Reads RESP2 replies from a byte stream, our own framing in front of hiredis's reply builder, so
// that a bulk string (a GET's value) can land straight in the caller's buffer: one kernel copy,
// where hiredis 0.14 copies each value three times (16 KiB stack buffer -> growing sds -> reply).
//
//   RespReader reader;
//   auto source = [&](char* dst, size_t n) -> absl::StatusOr<size_t> { ...recv()... };
//   ASSIGN_OR_RETURN(RedisReply reply, reader.Next(source, /*sink=*/nullptr));  // any reply
//   ASSIGN_OR_RETURN(RedisReply value, reader.Next(source, &sink));  // a bulk goes to sink
//
// A bulk string reply read with a sink is not built as a hiredis string: its bytes go to the
// buffer sink.Buffer(length) returned (or are read and dropped when it returned nullptr), and the
// reply is a REDIS_REPLY_STRING with str == nullptr and len == length (the sink knows where the
// bytes are). Every other reply (nil, error, integer, status, array), and every reply read
// without a sink, is framed here (its exact extent in the stream), then built by a hiredis
// redisReader fed exactly those bytes.
//
// Errors: what the source returns (UNAVAILABLE for a closed or reset stream, DEADLINE_EXCEEDED)
// passes through; DATA_LOSS for a stream that is not RESP (an unknown type byte, a length that
// is not a number or negative, a bulk not followed by CRLF, arrays nested deeper than
// kMaxRespDepth, a header line longer than kMaxRespLine) or a reply over the limits. After any
// error the stream position is unknown: the reader must not be used again (the connection is
// dropped).
//
// Thread-compatible: one thread at a time.
#ifndef KVKEEP_SERVICE_FLEET_RESP_READER_H_
#define KVKEEP_SERVICE_FLEET_RESP_READER_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "service/fleet/redis_reply.h"

namespace kvkeep::fleet {

// Arrays nest at most this deep (hiredis 0.14 builds at most 8 levels).
inline constexpr int kMaxRespDepth = 7;
inline constexpr size_t kMaxRespLine = 64 * 1024;

// Where a bulk string reply's bytes go (see the header comment).
class BulkSink {
 public:
  virtual ~BulkSink() = default;
  // A buffer of at least `length` bytes for the value, valid until Filled (or until the reply
  // fails to arrive: then Buffer may be called again for a retry); nullptr: the bytes are read
  // and dropped (e.g. a length the caller knows is wrong).
  virtual char* Buffer(size_t length) = 0;
  // All `length` bytes are in the buffer Buffer returned.
  virtual void Filled(size_t length) = 0;
};

struct RespLimits {
  // Default: 64 MiB. The largest reply built as a hiredis object (CLUSTER SLOTS, INFO, a GET
  // read without a sink).
  size_t max_reply_bytes = size_t{64} << 20;
  // Default: 512 MiB (Redis's proto-max-bulk-len). The largest bulk string given to a sink.
  size_t max_bulk_bytes = size_t{512} << 20;
};

class RespReader {
 public:
  // Reads at most `n` bytes into `dst`: the count read (> 0), or why none can be.
  using Source = absl::FunctionRef<absl::StatusOr<size_t>(char* dst, size_t n)>;

  explicit RespReader(RespLimits limits = {});
  ~RespReader();
  RespReader(const RespReader&) = delete;
  RespReader& operator=(const RespReader&) = delete;

  // The next reply (see the header comment); `sink` may be null.
  absl::StatusOr<RedisReply> Next(Source source, BulkSink* sink);

  // Bytes received but not yet consumed by a reply.
  size_t buffered() const { return end_ - begin_; }

 private:
  // The length of the complete reply at the start of [p, p + n), nullopt while incomplete.
  absl::StatusOr<std::optional<size_t>> Frame(const char* p, size_t n, int depth) const;
  // Reads more bytes from `source` into the buffer (growing it; at most max_reply_bytes held).
  absl::Status Fill(Source source);
  // The header line of the reply at begin_ ("$<len>"), read in if needed; nullopt when the reply
  // is not a bulk string.
  absl::StatusOr<std::optional<int64_t>> PeekBulkLength(Source source, size_t* header_bytes);
  absl::StatusOr<RedisReply> ReadBulkIntoSink(Source source, BulkSink& sink, size_t header_bytes,
                                              int64_t length);
  absl::StatusOr<RedisReply> BuildWithHiredis(size_t bytes);
  void Compact();

  const RespLimits limits_;
  std::vector<char> buffer_;
  size_t begin_ = 0;  // first unread byte
  size_t end_ = 0;    // one past the last received byte
  redisReader* builder_;  // owned; builds replies from exactly one framed reply at a time
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_RESP_READER_H_
