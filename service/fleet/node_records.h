// Node records: how nodes of a fleet see each other's group secrets and model layouts, so a node
// whose secret or layout differs from its peers' is named (`kvkeepctl fleet status`) instead of
// being a silent miss (docs/fleet.md §9 item 6, §11).
//
//   NodeRecord me{"node-a", {{"team", "9f..."}}, {{"llama3-8b", "1c..."}}};
//   std::string value = EncodeNodeRecord(me);           // SET kvkeep:node:node-a value EX 60
//   absl::StatusOr<NodeRecord> peer = DecodeNodeRecord(name, value);
//   std::vector<NodeVerdict> verdicts = CompareNodeRecords(records, "node-a");
//
// Keys in the cluster: `kvkeep:node:<node_name>` (one per node, TTL 60 s, refreshed every 20 s
// by NodeRecordPublisher) and the set `kvkeep:nodes` of node names (SADD on every refresh; a
// name whose record expired is removed by the next reader, SREM). Each is a single key, so every
// command is single-slot and needs no hash tag in cluster mode.
//
// Pure functions here are thread-safe; NodeRecordPublisher is thread-safe (source_mu_ guards the
// source and is held while the source runs, so clearing it waits for a call in progress).
#ifndef KVKEEP_SERVICE_FLEET_NODE_RECORDS_H_
#define KVKEEP_SERVICE_FLEET_NODE_RECORDS_H_

#include <functional>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "service/fleet/cluster_client.h"

namespace kvkeep::fleet {

inline constexpr char kNodeRecordPrefix[] = "kvkeep:node:";
inline constexpr char kNodeSetKey[] = "kvkeep:nodes";

// What one node publishes: its groups' secret fingerprints and its models' layout hashes (hex).
struct NodeRecord {
  std::string node_name;
  std::map<std::string, std::string> group_fingerprints;  // group -> fingerprint
  std::map<std::string, std::string> layout_hashes;       // model name -> layout hash
};

// Text form, one entry a line: "v1", then "group <name-hex> <fingerprint>" and
// "layout <name-hex> <hash>" (names hex-encoded, so any byte is safe).
std::string EncodeNodeRecord(const NodeRecord& record);
// INVALID_ARGUMENT when `value` is not a record of this format.
absl::StatusOr<NodeRecord> DecodeNodeRecord(const std::string& node_name, const std::string& value);

// One node's differences from the fleet. For each group (model) the reference value is the one
// held by the most nodes that have the group (model); on a tie, `self`'s value when it has one
// (else the smallest). A node whose value differs from the reference gets a line such as
// "group team: fingerprint 1234 differs from 9abc (2 of 3 nodes)".
struct NodeVerdict {
  std::string node_name;
  std::vector<std::string> mismatches;
};
std::vector<NodeVerdict> CompareNodeRecords(const std::vector<NodeRecord>& records,
                                            const std::string& self);

// Every node record in the cluster: SMEMBERS kvkeep:nodes, then GET of each record; names
// whose record is gone (expired) are removed from the set. Unreadable records are skipped.
// UNAVAILABLE/DEADLINE_EXCEEDED when the set cannot be read.
absl::StatusOr<std::vector<NodeRecord>> ReadNodeRecords(RedisClusterClient& client,
                                                        absl::Time deadline);

// Writes this node's record now and then every `period` on its own thread, while a source is set.
class NodeRecordPublisher {
 public:
  using Source = std::function<NodeRecord()>;
  // Default: 20 s period, 60 s TTL, 2 s per write.
  NodeRecordPublisher(ClusterOptions options, absl::Duration period = absl::Seconds(20),
                      absl::Duration ttl = absl::Seconds(60));
  // Stops the thread; waits for a write in progress (bounded: 2 s per write).
  ~NodeRecordPublisher();

  // Sets (or, with nullptr, clears) what to publish; a new source is written at once. Clearing
  // waits for a call of the old source in progress. The source must not call into the tier.
  void SetSource(Source source);
  // Writes the record again now (on the publisher's thread).
  void Wake();

 private:
  void Loop();
  // Writes the record of the current source (none: nothing). Publisher thread only.
  void PublishOnce();

  // Constant after construction
  const absl::Duration period_;
  const absl::Duration ttl_;

  RedisClusterClient client_;  // publisher thread only

  absl::Mutex source_mu_;
  Source source_ ABSL_GUARDED_BY(source_mu_);

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool wake_ ABSL_GUARDED_BY(mu_) = false;

  std::thread thread_;  // last: started when everything above exists
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_NODE_RECORDS_H_
