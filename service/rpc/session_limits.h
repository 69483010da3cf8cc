// Per-session rate limits of the worker API: token buckets of calls and of payload bytes.
//
// Every worker call is charged one call; WriteKV, ReadKV and PutStats payloads are also charged
// their bytes (keys + values, statistics). A call that names a live session of its tenant (its
// `session_id`) is charged to that session's buckets; a call without one (GetArena, GetSequence,
// ReadKV, PutStats, RegisterModel, Session itself) or naming an id that is not a live session of
// the tenant is charged to one bucket pair the tenant's session-less calls share. A bucket holds at
// most `burst` and refills at `per_second`. A charge that does not fit is refused whole (nothing
// is charged, and the caller changes nothing): RESOURCE_EXHAUSTED with a message naming the
// limit, the session, the daemon flag and when to retry.
//
//   SessionLimits limits(options);
//   limits.OpenSession("team-a", session_id);                 // on Attach
//   RETURN_IF_ERROR(limits.ChargeCall("team-a", request.session_id()));
//   RETURN_IF_ERROR(limits.ChargeBytes("team-a", chunk.session_id(), chunk.keys().size() + ...));
//   limits.CloseSession(session_id);                          // when the session ends
//
// Thread-safe.
#ifndef KVKEEP_SERVICE_RPC_SESSION_LIMITS_H_
#define KVKEEP_SERVICE_RPC_SESSION_LIMITS_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/observability/metrics.h"

namespace kvkeep {

// 0 turns a limit off. The defaults sit far above what one worker does in normal use (a decode
// step is a few calls per sequence; payloads move at memory speed at most): they stop runaway or
// hostile clients, not inference.
struct SessionLimitOptions {
  double calls_per_second = 100000;  // Default: 100k calls/s a session (--session_calls_per_second)
  double call_burst = 200000;        // Default: 200k calls (--session_call_burst)
  double bytes_per_second = 64.0 * (1ull << 30);  // Default: 64 GiB/s (--session_bytes_per_second)
  double byte_burst = 4.0 * (1ull << 30);         // Default: 4 GiB (--session_byte_burst)
  // Statistics in one PutStats chunk or one CommitTokens (serialized bytes).
  uint64_t max_stats_bytes = 4ull << 20;  // Default: 4 MiB (--max_stats_bytes)
  // ReadKV / ReadKVBatch streams one tenant may have open at once, over all its sessions. A reader
  // that stops consuming keeps its stream's message in flight pinned (reply_pins.h), uncharged
  // once its sequence is dropped: this bounds what a tenant can hold that way.
  uint32_t max_read_streams = 128;  // Default: 128 (--max_read_streams_per_tenant); 0 = unlimited
};

class SessionLimits {
 public:
  using Clock = std::function<absl::Time()>;
  explicit SessionLimits(SessionLimitOptions options, Clock clock = absl::Now);

  // Calls naming `session_id` (of `tenant`) get their own buckets from now on, full.
  void OpenSession(const std::string& tenant, const std::string& session_id);
  // Forgets the session's buckets (no-op for an unknown id).
  void CloseSession(const std::string& session_id);

  // Charges one call. OK, or RESOURCE_EXHAUSTED (nothing charged).
  absl::Status ChargeCall(const std::string& tenant, const std::string& session_id);
  // Charges `bytes` of payload. OK, or RESOURCE_EXHAUSTED (nothing charged), also when `bytes`
  // alone exceeds the burst (the message says so: no wait helps).
  absl::Status ChargeBytes(const std::string& tenant, const std::string& session_id,
                           uint64_t bytes);
  // OK, or RESOURCE_EXHAUSTED when `bytes` of statistics exceed max_stats_bytes.
  absl::Status CheckStatsBytes(uint64_t bytes) const;
  // Counts one open read stream of `tenant` until the returned holder's last copy goes (destroy
  // it before this object); RESOURCE_EXHAUSTED (nothing counted) when the tenant already has
  // max_read_streams open.
  absl::StatusOr<std::shared_ptr<const void>> OpenReadStream(const std::string& tenant);
  // Read streams `tenant` has open now.
  uint32_t open_read_streams(const std::string& tenant) const;

  // kvkeep_session_limit_rejections_total{limit} and kvkeep_session_limit_buckets.
  void WriteMetrics(ExpositionWriter* w) const;

  const SessionLimitOptions& options() const { return options_; }
  uint64_t rejections(int limit) const { return rejected_[limit].load(); }
  static constexpr int kCalls = 0, kBytes = 1, kStatsSize = 2, kReadStreams = 3;

 private:
  struct Bucket {
    double tokens = 0;
    absl::Time refilled;
  };
  struct Buckets {
    std::string tenant;
    Bucket calls, bytes;
  };
  // The buckets a call is charged to, created full for a tenant's session-less calls.
  Buckets& BucketsFor(const std::string& tenant, const std::string& session_id, std::string* who)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Takes `amount` from `bucket` or returns how long until it fits (infinite: never).
  absl::Duration Take(Bucket* bucket, double amount, double per_second, double burst,
                      absl::Time now);

  const SessionLimitOptions options_;
  const Clock clock_;
  mutable absl::Mutex mu_;
  // Keyed by session id, or by "tenant:<name>" for a tenant's session-less calls.
  absl::flat_hash_map<std::string, Buckets> buckets_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint32_t> read_streams_ ABSL_GUARDED_BY(mu_);  // open, > 0
  mutable std::atomic<uint64_t> rejected_[4] = {};
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_SESSION_LIMITS_H_
