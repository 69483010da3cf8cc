#include "service/fleet/slot_map.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "service/fleet/key_slot.h"
#include "service/fleet/redis_reply.h"

namespace kvkeep::fleet {
namespace {

absl::Status Malformed(size_t range, absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed CLUSTER SLOTS reply: range ", range, ": ", what));
}

// A node entry [ip, port, ...]; an empty ip means the node that answered.
absl::StatusOr<NodeAddress> ParseNode(const redisReply& node, const NodeAddress& answered_by,
                                      size_t range) {
  if (node.type != REDIS_REPLY_ARRAY || node.elements < 2 ||
      node.element[0]->type != REDIS_REPLY_STRING || node.element[1]->type != REDIS_REPLY_INTEGER) {
    return Malformed(range, "a node is not [ip, port, ...]");
  }
  const long long port = node.element[1]->integer;
  if (port < 1 || port > 65535) return Malformed(range, "a node's port is outside 1..65535");
  NodeAddress address{std::string(ReplyText(*node.element[0])), static_cast<int>(port)};
  if (address.host.empty() || address.host == "?") address.host = answered_by.host;
  return address;
}

absl::StatusOr<SlotRange> ParseRange(const redisReply& entry, const NodeAddress& answered_by,
                                     size_t index) {
  if (entry.type != REDIS_REPLY_ARRAY || entry.elements < 3 ||
      entry.element[0]->type != REDIS_REPLY_INTEGER ||
      entry.element[1]->type != REDIS_REPLY_INTEGER) {
    return Malformed(index, "not [first, last, master, ...]");
  }
  const long long first = entry.element[0]->integer, last = entry.element[1]->integer;
  if (first < 0 || last >= kClusterSlots || first > last) {
    return Malformed(index, "slots outside 0..16383 or reversed");
  }
  SlotRange range;
  range.first = static_cast<uint16_t>(first);
  range.last = static_cast<uint16_t>(last);
  absl::StatusOr<NodeAddress> master = ParseNode(*entry.element[2], answered_by, index);
  if (!master.ok()) return master.status();
  range.master = *std::move(master);
  for (size_t i = 3; i < entry.elements; ++i) {
    absl::StatusOr<NodeAddress> replica = ParseNode(*entry.element[i], answered_by, index);
    if (!replica.ok()) return replica.status();
    range.replicas.push_back(*std::move(replica));
  }
  return range;
}

}  // namespace

SlotMap::SlotMap() : slot_master_(kClusterSlots, -1) {}

absl::StatusOr<SlotMap> SlotMap::FromClusterSlots(const redisReply& reply,
                                                  const NodeAddress& answered_by) {
  if (reply.type != REDIS_REPLY_ARRAY) {
    return absl::InvalidArgumentError("malformed CLUSTER SLOTS reply: not an array");
  }
  SlotMap map;
  for (size_t i = 0; i < reply.elements; ++i) {
    absl::StatusOr<SlotRange> range = ParseRange(*reply.element[i], answered_by, i);
    if (!range.ok()) return range.status();
    const int master = map.IndexOf(range->master);
    std::fill(map.slot_master_.begin() + range->first, map.slot_master_.begin() + range->last + 1,
              master);
    map.ranges_.push_back(*std::move(range));
  }
  return map;
}

int SlotMap::IndexOf(const NodeAddress& master) {
  auto it = std::find(masters_.begin(), masters_.end(), master);
  if (it != masters_.end()) return static_cast<int>(it - masters_.begin());
  masters_.push_back(master);
  return static_cast<int>(masters_.size()) - 1;
}

const NodeAddress* SlotMap::MasterOf(uint16_t slot) const {
  if (slot >= kClusterSlots || slot_master_[slot] < 0) return nullptr;
  return &masters_[slot_master_[slot]];
}

void SlotMap::Assign(uint16_t slot, const NodeAddress& master) {
  if (slot >= kClusterSlots) return;
  slot_master_[slot] = IndexOf(master);
}

int SlotMap::covered_slots() const {
  return static_cast<int>(
      std::count_if(slot_master_.begin(), slot_master_.end(), [](int32_t m) { return m >= 0; }));
}

std::vector<NodeAddress> SlotMap::Nodes() const {
  std::set<NodeAddress> nodes(masters_.begin(), masters_.end());
  for (const SlotRange& range : ranges_) nodes.insert(range.replicas.begin(), range.replicas.end());
  return {nodes.begin(), nodes.end()};
}

std::vector<NodeAddress> SlotMap::Masters() const {
  std::set<NodeAddress> masters;
  for (int32_t m : slot_master_) {
    if (m >= 0) masters.insert(masters_[m]);
  }
  return {masters.begin(), masters.end()};
}

}  // namespace kvkeep::fleet
