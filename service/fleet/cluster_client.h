// A Redis Cluster client on hiredis 0.14 (which has no cluster support): slot routing, the slot
// map, redirections, reconnects and failover, pipelined per node, bounded in time.
//
//   RedisClusterClient client({.seeds = seeds, .connection = {.user = "kvkeep", ...}});
//   std::vector<KeyedCommand> commands = {{key_a, {"EXISTS", key_a}}, {key_b, {"GET", key_b}}};
//   auto replies = client.Execute(commands, absl::Now() + absl::Milliseconds(50));
//   // replies[i]: the reply to commands[i], or the status of why it has none
//
// Execute routes each command by its key's slot (key_slot.h) to the slot's master in the map
// (slot_map.h), loaded by CLUSTER SLOTS from a known node or a seed on first use. In each round
// it sends every node's commands as one pipeline, all nodes' pipelines written before any reply
// is read, then reads the replies:
//   * MOVED: the slot's master is updated at once, the map is refreshed before the next round,
//     and the command goes again;
//   * ASK: the command goes again, to the named node only, preceded by ASKING;
//   * CLUSTERDOWN/TRYAGAIN/LOADING, a refused or lost connection, a timeout: the connection is
//     dropped, the node is not tried again for `node_retry_delay`, the map is refreshed (a
//     replica promoted after its master's failure appears there), and the command goes again;
//   * any other reply (error replies included) is final.
// At most `max_rounds` rounds, and never past the deadline: a command still without a reply
// then has the status of its last failure (DEADLINE_EXCEEDED once the deadline passed).
// Replicas are never read from (no READONLY): a value comes from its slot's master.
//
// Thread-compatible: one thread at a time (hold one client per thread; redis_fleet_tier.h
// keeps a pool of them).
#ifndef KVKEEP_SERVICE_FLEET_CLUSTER_CLIENT_H_
#define KVKEEP_SERVICE_FLEET_CLUSTER_CLIENT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "service/fleet/node_address.h"
#include "service/fleet/node_connection.h"
#include "service/fleet/redis_reply.h"
#include "service/fleet/slot_map.h"

namespace kvkeep::fleet {

struct ClusterOptions {
  // Nodes to load the slot map from when no known node answers. Required.
  std::vector<NodeAddress> seeds;
  // Default: see ConnectionOptions.
  ConnectionOptions connection;
  // Default: 4. Rounds of one Execute (first try, redirections, retries after failures).
  int max_rounds = 4;
  // Default: 100 ms. After a node failed to connect or answer, how long it is skipped (its
  // commands fail at once with UNAVAILABLE) - so an outage costs lookups nothing but a refusal.
  absl::Duration node_retry_delay = absl::Milliseconds(100);
  // Default: true. In a round whose commands have sinks (GET values, resp_reader.h), each node's
  // replies are read on a thread of their own, so every master streams its values at once
  // instead of waiting, its socket buffers full, until the nodes before it are read. Rounds
  // without sinks (EXISTS, SET, CLUSTER ...) are read node by node on the calling thread.
  bool parallel_receive = true;
};

// One command and the key that routes it (borrowed views: they must outlive the call).
struct KeyedCommand {
  absl::string_view key;
  RedisArgs args;
  // Default: null. Where a bulk string reply's bytes go (resp_reader.h: the reply is then a
  // string with str == nullptr). A command retried after a redirection or failure asks the
  // sink for a buffer again. Borrowed: must outlive the call.
  BulkSink* sink = nullptr;
};

// Counters since construction.
struct ClusterClientStats {
  uint64_t refreshes = 0;         // slot maps loaded
  uint64_t moved = 0;             // MOVED redirections followed
  uint64_t asks = 0;              // ASK redirections followed
  uint64_t connects = 0;          // connections opened (the first and every reconnect)
  uint64_t transport_errors = 0;  // refused/lost connections and timeouts
};

class RedisClusterClient {
 public:
  explicit RedisClusterClient(ClusterOptions options);
  RedisClusterClient(const RedisClusterClient&) = delete;
  RedisClusterClient& operator=(const RedisClusterClient&) = delete;

  // Loads the slot map (CLUSTER SLOTS) from the first node that answers: known masters, then
  // every other node of the current map, then the seeds. OK: the map is replaced. UNAVAILABLE
  // (the last node's failure) when none answers; the old map stays.
  absl::Status Refresh(absl::Time deadline);

  // The replies to `commands`, in order (see the header comment). Each entry is OK with the
  // reply (which may be an error reply: type REDIS_REPLY_ERROR), or the failure that left the
  // command without one.
  std::vector<absl::StatusOr<RedisReply>> Execute(absl::Span<const KeyedCommand> commands,
                                                  absl::Time deadline);

  // One command to one given node (CLUSTER INFO, INFO, ...): no routing, no retry.
  absl::StatusOr<RedisReply> ExecuteOn(const NodeAddress& node, const RedisArgs& command,
                                       absl::Time deadline);

  // The current map (empty before the first successful Refresh or Execute).
  const SlotMap& slot_map() const { return map_; }
  const ClusterClientStats& stats() const { return stats_; }

 private:
  // One command still to be sent: its index in the Execute call and, after ASK, its target.
  struct Pending {
    size_t index;
    std::optional<NodeAddress> ask;
  };
  // What a round found out.
  struct RoundOutcome {
    std::vector<Pending> retry;
    bool refresh = false;
  };
  // What reading one node's replies found out, applied to the client (map, connections, stats)
  // by the calling thread once every node's replies are in: nodes may be read concurrently.
  struct NodeOutcome {
    RoundOutcome round;
    bool failed = false;                                // the connection broke
    std::vector<std::pair<uint16_t, NodeAddress>> moved;  // MOVED slot -> new master
    uint64_t asks = 0;
  };

  // The open connection to `node`, connecting when there is none; UNAVAILABLE at once while the
  // node is in its retry delay.
  absl::StatusOr<NodeConnection*> ConnectionTo(const NodeAddress& node, absl::Time deadline);
  // Drops the connection to `node` after `failure` and starts its retry delay.
  void MarkFailed(const NodeAddress& node);
  // Sends every pending command to its node, reads the replies, fills `results`.
  RoundOutcome RunRound(absl::Span<const KeyedCommand> commands, std::vector<Pending> pending,
                        std::vector<absl::StatusOr<RedisReply>>& results, absl::Time deadline);
  // Reads the replies of the commands `sent` to `connection`, in order. Touches nothing of the
  // client but `connection` and results[i] of the commands sent (so one thread per node may
  // run it at once).
  static NodeOutcome ReceiveReplies(NodeConnection& connection,
                                    absl::Span<const KeyedCommand> commands,
                                    const std::vector<Pending>& sent,
                                    std::vector<absl::StatusOr<RedisReply>>& results,
                                    absl::Time deadline);

  const ClusterOptions options_;
  SlotMap map_;
  bool map_loaded_ = false;
  std::map<NodeAddress, std::unique_ptr<NodeConnection>> connections_;
  std::map<NodeAddress, absl::Time> retry_after_;  // nodes in their retry delay
  ClusterClientStats stats_;
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_CLUSTER_CLIENT_H_
