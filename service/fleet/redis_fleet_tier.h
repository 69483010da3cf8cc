// The fleet tier on Redis Cluster (fleet_tier.h says what each call promises).
//
//   RedisFleetOptions options;
//   options.cluster.seeds = *ParseSeedList("10.0.0.5:6379,10.0.0.6:6379");
//   options.cluster.connection.user = "kvkeep";
//   options.cluster.connection.password = password;   // from --fleet_password_file
//   ASSIGN_OR_RETURN(std::unique_ptr<FleetTier> tier, RedisFleetTier::Create(options));
//
// Writing: PutAsync appends to a queue bounded by `max_queue_bytes` (payload bytes queued or being
// written); one writer thread takes one published prefix at a time, seals its pages
// (page_value.h: AES-256-GCM + XXH64, one pass) on up to `open_threads` threads and sends them as
// SETs, `write_batch_pages` per pipelined round (the values are written from their own memory,
// not copied into a command buffer), each round bounded by `write_timeout`; the next round is
// sealed while one is on the wire, into the buffers of earlier rounds' values (up to
// 2 x write_batch_pages values kept by the writer). The destructor stops the writer after the
// round in flight; what is still queued is discarded and counted as dropped (Flush first to
// drain).
//
// Reading: Lookup borrows two cluster clients from a pool (client_pool.h: one fetches the next
// window on a helper thread while the caller checks the current one) and asks `lookup_window`
// keys per EXISTS round. Get/GetInto borrow one client and ask `get_window` keys per GET round
// (pipelined per node); each value is received straight from the socket into one of
// 2 x get_window buffers (resp_reader.h, kept between calls) and, as soon as it is whole, checked
// and decrypted in one pass into the caller's writer on up to `open_threads` helper threads
// (open_pipeline.h), while this thread receives the next. Both stop at the first key that is
// absent, fails or does not verify. Every round is bounded by the caller's deadline.
//
// Thread-safe. mu_ protects the queue; counters_mu_ the counters; the writer's client is used
// by the writer thread only.
#ifndef KVKEEP_SERVICE_FLEET_REDIS_FLEET_TIER_H_
#define KVKEEP_SERVICE_FLEET_REDIS_FLEET_TIER_H_

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/fleet/client_pool.h"
#include "service/fleet/cluster_client.h"
#include "service/fleet/fleet_tier.h"
#include "service/fleet/node_records.h"
#include "service/fleet/open_pipeline.h"

namespace kvkeep::fleet {

struct RedisFleetOptions {
  // Seeds, ACL user and password, timeouts. Seeds required.
  ClusterOptions cluster;
  // Default: 256 MiB. Payload bytes queued or being written; PutAsync refuses beyond it.
  uint64_t max_queue_bytes = uint64_t{256} << 20;
  // Default: 16. Pages per pipelined write round.
  size_t write_batch_pages = 16;
  // Default: 2 s. Bound of one write round.
  absl::Duration write_timeout = absl::Seconds(2);
  // Default: 64. Keys asked per lookup round.
  size_t lookup_window = 64;
  // Default: 8. Keys asked per GET round. 2 x get_window value buffers per Get in flight, kept
  // between calls (16 llama3-8b values: 32 MiB).
  size_t get_window = 8;
  // Default: true. Lookup fetches the next EXISTS window on a second client while the current
  // one is checked.
  bool read_ahead = true;
  // Default: 4. Helper threads of one Get that check and decrypt values while the caller's
  // thread receives; also the threads that seal one write round.
  size_t open_threads = 4;
  // Default: false. Get opens each value on the receiving thread as soon as it is whole (no
  // helper threads, no hand-over; the next values wait in the socket buffers meanwhile).
  bool open_on_receiver = false;
  // Default: 8. Idle reader clients kept.
  size_t max_idle_clients = 8;
  // Default: zero (no expiry: Redis's maxmemory policy evicts). A TTL set on every value.
  absl::Duration value_ttl = absl::ZeroDuration();
};

class RedisFleetTier final : public FleetTier {
 public:
  // Starts the writer thread; does not contact the cluster (the first call does).
  // INVALID_ARGUMENT when there is no seed or a bound is zero.
  static absl::StatusOr<std::unique_ptr<RedisFleetTier>> Create(RedisFleetOptions options);
  ~RedisFleetTier() override;

  absl::Status PutAsync(const FleetScope& scope, std::vector<FleetPage> pages) override;
  absl::Status Flush(absl::Time deadline) override;
  size_t Lookup(const FleetScope& scope, absl::Span<const std::string> key_names,
                absl::Time deadline) override;
  std::vector<std::string> Get(const FleetScope& scope, absl::Span<const std::string> key_names,
                               absl::Time deadline) override;
  size_t GetInto(const FleetScope& scope, absl::Span<const std::string> key_names,
                 absl::Time deadline, PayloadWriter& writer) override;
  FleetCounters Counters() const override;
  std::map<std::string, FleetCounters> CountersByGroup() const override;
  FleetClusterStatus ClusterStatus(absl::Time deadline) override;
  void SetNodeRecordSource(std::function<NodeRecord()> source) override;
  void RefreshNodeRecord() override { node_records_.Wake(); }
  absl::StatusOr<std::vector<NodeRecord>> NodeRecords(absl::Time deadline) override;

 private:
  // One PutAsync call's pages.
  struct QueuedPrefix {
    FleetScope scope;
    std::vector<FleetPage> pages;
    uint64_t bytes = 0;
  };
  // How a run of reads ended.
  enum class RunEnd { kComplete, kMiss, kCorrupt, kError };

  explicit RedisFleetTier(RedisFleetOptions options);

  void WriterLoop();
  // Seals and writes one prefix's pages, counting the outcome.
  void WritePrefix(const QueuedPrefix& prefix);
  // The sealed values of pages [begin, end) of `prefix` (sealed on up to open_threads threads),
  // each sealed into the matching string of `buffers` (reused when it has the value's size).
  std::vector<absl::StatusOr<std::string>> SealRound(const QueuedPrefix& prefix, size_t begin,
                                                     size_t end, std::vector<std::string> buffers);
  // `count` strings for SealRound: spare ones first, then empty ones. Writer thread only.
  std::vector<std::string> TakeSpareValues(size_t count);
  // Keeps the sealed strings of `values` (up to 2 x write_batch_pages kept) and clears it.
  // Writer thread only.
  void GiveSpareValues(std::vector<absl::StatusOr<std::string>>& values);
  // Writes the sealed `values` of pages [begin, begin + values.size()), adding the outcome to
  // `delta`.
  void WriteRound(const QueuedPrefix& prefix, size_t begin,
                  const std::vector<absl::StatusOr<std::string>>& values, FleetCounters& delta);
  bool QueueIdle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return queue_.empty() && writing_ == 0;
  }
  bool HasWorkOrStopping() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !queue_.empty() || stopping_;
  }

  // Runs `command` ("EXISTS") over key_names `window` keys at a time; `accept(i, reply)` judges
  // each reply in order and returns how the run goes on (kComplete: continue).
  template <typename Accept>
  RunEnd ReadRun(absl::Span<const std::string> key_names, absl::string_view command, size_t window,
                 absl::Time deadline, Accept accept);
  void Count(const std::string& group, const FleetCounters& delta);
  // Logs a write failure when the writer goes from healthy to failing, and the recovery.
  void NoteWriteHealth(bool ok, const absl::Status& failure);

  // Constant after construction
  const RedisFleetOptions options_;

  ClusterClientPool readers_;
  ValueBufferCache value_buffers_;  // GetInto's value buffers, kept between calls
  RedisClusterClient writer_client_;  // writer thread only
  bool writer_failing_ = false;       // writer thread only
  // Sealed-value buffers kept between rounds and prefixes (at most 2 x write_batch_pages values:
  // 64 MiB for llama3-8b), so sealing does not fault in fresh memory for every value.
  std::vector<std::string> spare_values_;  // writer thread only

  absl::Mutex mu_;
  std::deque<QueuedPrefix> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // queued + being written
  int writing_ ABSL_GUARDED_BY(mu_) = 0;            // prefixes taken by the writer, not done
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  mutable absl::Mutex counters_mu_;
  std::map<std::string, FleetCounters> counters_ ABSL_GUARDED_BY(counters_mu_);

  NodeRecordPublisher node_records_;  // its own client and thread

  std::thread writer_;  // last: started when everything above exists
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_REDIS_FLEET_TIER_H_
