// The fleet tier: shared prompt prefixes of sharing groups, kept in a store all nodes reach
// (Redis Cluster, redis_fleet_tier.h), so a prompt published on one node is found on the others.
//
//   FleetScope scope = ...;                                  // fleet_scope.h
//   std::vector<std::string> names = scope.KeyNames(tokens); // one per full page
//   tier.PutAsync(scope, {{names[0], payload0}, ...});       // returns at once
//   size_t present = tier.Lookup(scope, names, absl::Now() + absl::Milliseconds(50));
//   std::vector<std::string> payloads = tier.Get(scope, names, deadline);  // verified, in order
//
// What is acknowledged when:
//   * PutAsync OK means only "queued in this process's memory": nothing is in the cluster yet and
//     nothing survives a restart. The writer sends it later; a write that fails (cluster down,
//     timeout, refused) is counted (write_errors) and logged, never reported to the caller, and
//     the pages are not retried (the next publish of the same prefix writes them again).
//     RESOURCE_EXHAUSTED: the queue's byte bound is reached; nothing of this call was queued
//     (counted as dropped). PutAsync never touches the network: its cost is a lock and a move.
//   * Flush OK: everything queued before the call has been written or has failed (and was
//     counted). DEADLINE_EXCEEDED when the queue did not drain in time.
//   * Lookup and Get answer what the cluster held when asked; a page written by another node a
//     moment earlier may not be seen yet, and a key Redis evicted is simply absent.
// A lookup never fails: an unreachable, failing-over or slow cluster, an error reply, a missing
// key or a value that does not verify all end the run there (a shorter reuse). Nothing but a
// verified payload of the expected shape is ever returned.
//
// Thread-safe: every method may be called from any thread.
#ifndef KVKEEP_SERVICE_FLEET_FLEET_TIER_H_
#define KVKEEP_SERVICE_FLEET_FLEET_TIER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "service/fleet/fleet_scope.h"
#include "service/fleet/node_records.h"

namespace kvkeep::fleet {

// One page to publish: its key name (FleetScope::KeyNames) and its payload (page_value.h:
// every (layer, KV head) page of the token page, layer-major).
struct FleetPage {
  std::string key_name;
  std::string payload;
};

// Receives the payloads GetInto reads: bytes [offset, offset + bytes.size()) of the payload of
// key_names[page], in increasing offsets for one page, pieces of at most 64 KiB; different pages
// are written concurrently from the tier's threads. The bytes are decrypted but NOT yet verified
// when written (see GetInto). An error ends the run at that page.
class PayloadWriter {
 public:
  virtual ~PayloadWriter() = default;
  virtual absl::Status Write(size_t page, uint64_t offset, absl::string_view bytes) = 0;
  // Host memory where bytes [offset, offset + size) of `page`'s payload go, when the writer has
  // it (contiguous, writable, until the run ends): the tier then decrypts straight into it and
  // does not call Write for those bytes (no copy out of a buffer of its own). nullptr (the
  // default): the tier decrypts into its own buffer and calls Write. Same threads, same
  // not-yet-verified contract as Write.
  virtual char* Destination(size_t /*page*/, uint64_t /*offset*/, size_t /*size*/) {
    return nullptr;
  }
};

// Counters since the tier started, per group or summed.
struct FleetCounters {
  uint64_t lookups = 0;        // Lookup and Get calls
  uint64_t hit_pages = 0;      // pages found: present (Lookup) or verified and returned (Get)
  uint64_t misses = 0;         // calls whose run ended at an absent key before the last one
  uint64_t corrupt = 0;        // values that did not verify (any verdict but ok): misses too
  uint64_t read_errors = 0;    // calls cut short by the cluster (unreachable, timeout, error)
  uint64_t bytes_read = 0;     // payload bytes returned by Get
  uint64_t pages_written = 0;  // pages the cluster acknowledged
  uint64_t bytes_written = 0;  // their value bytes (payload + 80 bytes each)
  uint64_t write_errors = 0;   // pages whose write failed
  uint64_t dropped = 0;        // pages not queued (queue full) or discarded at shutdown

  void Add(const FleetCounters& o);
};

// The cluster as this daemon sees it (for `kvkeepctl fleet status` and /metrics).
struct FleetNodeStatus {
  std::string address;  // host:port
  std::string role;     // "master" or "replica"
  int slots = 0;        // slots it serves (masters)
};
struct FleetClusterStatus {
  bool reachable = false;  // some node gave the slot map
  std::string error;       // why not, when unreachable
  int covered_slots = 0;   // of 16384
  std::vector<FleetNodeStatus> nodes;
  uint64_t queued_bytes = 0;  // write-behind queue
};

class FleetTier {
 public:
  virtual ~FleetTier() = default;

  // Queues `pages` of `scope` for writing (see the header comment).
  virtual absl::Status PutAsync(const FleetScope& scope, std::vector<FleetPage> pages) = 0;
  // Waits until every page queued before the call has been written or has failed.
  virtual absl::Status Flush(absl::Time deadline) = 0;

  // How many of key_names[0..) are present in the cluster, consecutively from the first:
  // existence checks pipelined per cluster node, a window at a time, stopping at the first miss.
  virtual size_t Lookup(const FleetScope& scope, absl::Span<const std::string> key_names,
                        absl::Time deadline) = 0;
  // The verified payloads of the longest run key_names[0..m) that are present and verify.
  virtual std::vector<std::string> Get(const FleetScope& scope,
                                       absl::Span<const std::string> key_names,
                                       absl::Time deadline) = 0;
  // Get without payload strings: each value is checked and decrypted in one pass straight into
  // `writer` (e.g. into pool pages), on the tier's threads while later values still arrive.
  // Returns m: the payloads of key_names[0..m) were written whole and verified (checksum, header,
  // size and GCM tag), exactly as Get would have returned them. Whatever was written for pages
  // m and later is unverified garbage: the caller must discard it, never serve it.
  virtual size_t GetInto(const FleetScope& scope, absl::Span<const std::string> key_names,
                         absl::Time deadline, PayloadWriter& writer) = 0;

  virtual FleetCounters Counters() const = 0;
  virtual std::map<std::string, FleetCounters> CountersByGroup() const = 0;
  // Loads the slot map afresh (bounded by `deadline`) and reports it.
  virtual FleetClusterStatus ClusterStatus(absl::Time deadline) = 0;

  // Node records (node_records.h). What this node publishes as kvkeep:node:<name>: written at
  // once and every 20 s (TTL 60 s) on the tier's own thread while set; nullptr stops it (and
  // waits for a call of the old source in progress). The source must not call into the tier.
  virtual void SetNodeRecordSource(std::function<NodeRecord()> source) = 0;
  // Writes the record again soon (on the tier's thread), e.g. after a group's secret changed.
  virtual void RefreshNodeRecord() = 0;
  // Every node's record in the cluster (this node's included once written).
  virtual absl::StatusOr<std::vector<NodeRecord>> NodeRecords(absl::Time deadline) = 0;
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_FLEET_TIER_H_
