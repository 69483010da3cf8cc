// Which Redis Cluster node serves each of the 16384 slots, as CLUSTER SLOTS reports it.
//
//   ASSIGN_OR_RETURN(SlotMap map, SlotMap::FromClusterSlots(*reply));
//   const NodeAddress* master = map.MasterOf(KeySlot(key));   // null: slot not covered
//
// CLUSTER SLOTS answers an array of ranges, each [first, last, master, replica...], every node
// [ip, port, id, (Redis 7: networking metadata)]. A range whose master has an empty ip (Redis's
// "unknown endpoint") is served by the node that answered (`answered_by`).
//
// A plain value, thread-compatible. Routing is O(1) (a slot -> node index table).
#ifndef KVKEEP_SERVICE_FLEET_SLOT_MAP_H_
#define KVKEEP_SERVICE_FLEET_SLOT_MAP_H_

#include <hiredis/hiredis.h>

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "service/fleet/node_address.h"

namespace kvkeep::fleet {

struct SlotRange {
  uint16_t first = 0;
  uint16_t last = 0;  // inclusive
  NodeAddress master;
  std::vector<NodeAddress> replicas;
};

class SlotMap {
 public:
  SlotMap();  // no slot covered

  // INVALID_ARGUMENT naming the problem for a reply that is not a well-formed CLUSTER SLOTS
  // answer (not an array, a range outside 0..16383 or reversed, a node without ip/port).
  static absl::StatusOr<SlotMap> FromClusterSlots(const redisReply& reply,
                                                  const NodeAddress& answered_by);

  // The master serving `slot`, or null when no range covers it. Valid until the map changes.
  const NodeAddress* MasterOf(uint16_t slot) const;
  // A MOVED redirection: `slot` is served by `master` from now on.
  void Assign(uint16_t slot, const NodeAddress& master);

  // Slots some master covers (16384 on a healthy cluster).
  int covered_slots() const;
  // Every node named (masters and replicas), each once, in address order.
  std::vector<NodeAddress> Nodes() const;
  // The distinct masters (in address order).
  std::vector<NodeAddress> Masters() const;
  const std::vector<SlotRange>& ranges() const { return ranges_; }

 private:
  // The index of `master` in masters_ (appended when new).
  int IndexOf(const NodeAddress& master);

  std::vector<SlotRange> ranges_;     // as reported (MOVED updates only slot_master_)
  std::vector<NodeAddress> masters_;  // distinct masters, in the order first seen
  std::vector<int32_t> slot_master_;  // per slot: index into masters_, -1 when uncovered
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_SLOT_MAP_H_
