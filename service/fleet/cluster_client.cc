#include "service/fleet/cluster_client.h"

#include <set>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "service/fleet/key_slot.h"
#include "service/fleet/redirection.h"

namespace kvkeep::fleet {
namespace {

bool IsTransportFailure(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsDeadlineExceeded(status);
}

}  // namespace

RedisClusterClient::RedisClusterClient(ClusterOptions options) : options_(std::move(options)) {}

absl::StatusOr<NodeConnection*> RedisClusterClient::ConnectionTo(const NodeAddress& node,
                                                                 absl::Time deadline) {
  auto open = connections_.find(node);
  if (open != connections_.end() && !open->second->broken()) return open->second.get();
  if (open != connections_.end()) connections_.erase(open);
  auto delay = retry_after_.find(node);
  if (delay != retry_after_.end()) {
    if (absl::Now() < delay->second) {
      return absl::UnavailableError(
          absl::StrCat("redis ", node.ToString(), ": failed recently, not retried yet"));
    }
    retry_after_.erase(delay);
  }
  ++stats_.connects;
  absl::StatusOr<std::unique_ptr<NodeConnection>> connection =
      NodeConnection::Connect(node, options_.connection, deadline);
  if (!connection.ok()) {
    if (IsTransportFailure(connection.status())) MarkFailed(node);
    return connection.status();
  }
  NodeConnection* raw = connection->get();
  connections_[node] = *std::move(connection);
  return raw;
}

void RedisClusterClient::MarkFailed(const NodeAddress& node) {
  ++stats_.transport_errors;
  connections_.erase(node);
  retry_after_[node] = absl::Now() + options_.node_retry_delay;
}

absl::StatusOr<RedisReply> RedisClusterClient::ExecuteOn(const NodeAddress& node,
                                                         const RedisArgs& command,
                                                         absl::Time deadline) {
  absl::StatusOr<NodeConnection*> connection = ConnectionTo(node, deadline);
  if (!connection.ok()) return connection.status();
  absl::StatusOr<RedisReply> reply = (*connection)->Call(command, deadline);
  if (!reply.ok() && IsTransportFailure(reply.status())) MarkFailed(node);
  return reply;
}

absl::Status RedisClusterClient::Refresh(absl::Time deadline) {
  // Candidates in order of preference, each once.
  std::vector<NodeAddress> candidates;
  std::set<NodeAddress> seen;
  auto add = [&](const NodeAddress& node) {
    if (seen.insert(node).second) candidates.push_back(node);
  };
  for (const auto& [node, connection] : connections_) add(node);
  for (const NodeAddress& node : map_.Masters()) add(node);
  for (const NodeAddress& node : map_.Nodes()) add(node);
  for (const NodeAddress& node : options_.seeds) add(node);

  absl::Status last = absl::UnavailableError("redis: no seed node configured");
  for (const NodeAddress& node : candidates) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError("redis: deadline passed while loading the slot map");
    }
    absl::StatusOr<RedisReply> reply = ExecuteOn(node, {"CLUSTER", "SLOTS"}, deadline);
    if (!reply.ok()) {
      last = reply.status();
      continue;
    }
    if ((*reply)->type == REDIS_REPLY_ERROR) {
      last = ErrorReplyStatus(ReplyText(**reply));
      continue;
    }
    absl::StatusOr<SlotMap> map = SlotMap::FromClusterSlots(**reply, node);
    if (!map.ok()) {
      last = map.status();
      continue;
    }
    // A node that lost contact with the cluster may answer with no slots: ask the next one.
    if (map->covered_slots() == 0) {
      last = absl::UnavailableError(absl::StrCat("redis ", node.ToString(), ": covers no slot"));
      continue;
    }
    map_ = *std::move(map);
    map_loaded_ = true;
    ++stats_.refreshes;
    return absl::OkStatus();
  }
  return absl::UnavailableError(absl::StrCat("redis: no node gave the slot map: ", last.message()));
}

std::vector<absl::StatusOr<RedisReply>> RedisClusterClient::Execute(
    absl::Span<const KeyedCommand> commands, absl::Time deadline) {
  if (commands.empty()) return {};
  std::vector<absl::StatusOr<RedisReply>> results;  // replies are move-only: no fill constructor
  results.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) {
    results.emplace_back(absl::UnavailableError("redis: command not sent"));
  }
  std::vector<Pending> pending;
  pending.reserve(commands.size());
  for (size_t i = 0; i < commands.size(); ++i) pending.push_back({i, std::nullopt});

  bool refresh = !map_loaded_;
  for (int round = 0; round < options_.max_rounds && !pending.empty(); ++round) {
    if (absl::Now() >= deadline) break;
    if (refresh) {
      absl::Status refreshed = Refresh(deadline);
      if (!refreshed.ok() && !map_loaded_) {
        for (const Pending& p : pending) results[p.index] = refreshed;
        return results;
      }
    }
    RoundOutcome outcome = RunRound(commands, std::move(pending), results, deadline);
    pending = std::move(outcome.retry);
    refresh = outcome.refresh;
  }
  if (absl::Now() >= deadline) {
    for (const Pending& p : pending) {
      results[p.index] = absl::DeadlineExceededError(absl::StrCat(
          "redis: deadline passed; last failure: ", results[p.index].status().message()));
    }
  }
  return results;
}

RedisClusterClient::RoundOutcome RedisClusterClient::RunRound(
    absl::Span<const KeyedCommand> commands, std::vector<Pending> pending,
    std::vector<absl::StatusOr<RedisReply>>& results, absl::Time deadline) {
  RoundOutcome outcome;
  // Group by target node.
  std::map<NodeAddress, std::vector<Pending>> by_node;
  for (Pending& p : pending) {
    if (p.ask.has_value()) {
      NodeAddress target = *p.ask;
      by_node[target].push_back(std::move(p));
      continue;
    }
    const uint16_t slot = KeySlot(commands[p.index].key);
    const NodeAddress* master = map_.MasterOf(slot);
    if (master == nullptr) {
      results[p.index] =
          absl::UnavailableError(absl::StrCat("redis: slot ", slot, " is not covered"));
      outcome.retry.push_back(std::move(p));
      outcome.refresh = true;
      continue;
    }
    by_node[*master].push_back(std::move(p));
  }
  // Write every node's pipeline before reading any reply, so the nodes work in parallel.
  std::vector<std::pair<NodeConnection*, const std::vector<Pending>*>> sent;
  std::vector<RedisArgs> batch;
  for (const auto& [node, items] : by_node) {
    absl::StatusOr<NodeConnection*> connection = ConnectionTo(node, deadline);
    absl::Status status = connection.status();
    if (connection.ok()) {
      batch.clear();
      for (const Pending& p : items) {
        if (p.ask.has_value()) batch.push_back({"ASKING"});
        batch.push_back(commands[p.index].args);
      }
      status = (*connection)->Send(batch, deadline);
      if (status.ok()) {
        sent.emplace_back(*connection, &items);
        continue;
      }
      MarkFailed(node);
    }
    for (const Pending& p : items) {
      results[p.index] = status;
      outcome.retry.push_back({p.index, std::nullopt});
    }
    outcome.refresh = true;
  }
  std::vector<NodeOutcome> outcomes(sent.size());
  bool any_sink = false;
  for (const auto& [connection, items] : sent) {
    for (const Pending& p : *items) any_sink = any_sink || commands[p.index].sink != nullptr;
  }
  if (options_.parallel_receive && any_sink && sent.size() > 1) {
    // Node 0 on this thread, every other node on one of its own.
    std::vector<std::thread> readers;
    readers.reserve(sent.size() - 1);
    for (size_t k = 1; k < sent.size(); ++k) {
      readers.emplace_back([&, k] {
        outcomes[k] = ReceiveReplies(*sent[k].first, commands, *sent[k].second, results, deadline);
      });
    }
    outcomes[0] = ReceiveReplies(*sent[0].first, commands, *sent[0].second, results, deadline);
    for (std::thread& reader : readers) reader.join();
  } else {
    for (size_t k = 0; k < sent.size(); ++k) {
      outcomes[k] = ReceiveReplies(*sent[k].first, commands, *sent[k].second, results, deadline);
    }
  }
  for (size_t k = 0; k < sent.size(); ++k) {
    NodeOutcome& node = outcomes[k];
    stats_.moved += node.moved.size();
    stats_.asks += node.asks;
    for (const auto& [slot, target] : node.moved) map_.Assign(slot, target);
    if (node.failed) {
      const NodeAddress address = sent[k].first->address();  // MarkFailed destroys the connection
      MarkFailed(address);
    }
    outcome.refresh = outcome.refresh || node.round.refresh;
    for (Pending& p : node.round.retry) outcome.retry.push_back(std::move(p));
  }
  return outcome;
}

RedisClusterClient::NodeOutcome RedisClusterClient::ReceiveReplies(
    NodeConnection& connection, absl::Span<const KeyedCommand> commands,
    const std::vector<Pending>& sent, std::vector<absl::StatusOr<RedisReply>>& results,
    absl::Time deadline) {
  NodeOutcome node;
  RoundOutcome& outcome = node.round;
  for (size_t k = 0; k < sent.size(); ++k) {
    const Pending& p = sent[k];
    BulkSink* const sink = commands[p.index].sink;
    absl::StatusOr<RedisReply> reply = connection.Receive(deadline, p.ask ? nullptr : sink);
    if (p.ask.has_value() && reply.ok()) reply = connection.Receive(deadline, sink);  // ASKING's
    if (!reply.ok()) {
      // The connection is broken: this and every later command of the pipeline go again.
      node.failed = true;
      for (size_t rest = k; rest < sent.size(); ++rest) {
        results[sent[rest].index] = reply.status();
        outcome.retry.push_back({sent[rest].index, std::nullopt});
      }
      outcome.refresh = true;
      return node;
    }
    if ((*reply)->type != REDIS_REPLY_ERROR) {
      results[p.index] = *std::move(reply);
      continue;
    }
    const absl::string_view text = ReplyText(**reply);
    if (std::optional<Redirection> redirection = ParseRedirection(text)) {
      if (redirection->kind == Redirection::Kind::kMoved) {
        node.moved.emplace_back(redirection->slot, redirection->target);
        outcome.refresh = true;
        outcome.retry.push_back({p.index, std::nullopt});
      } else {
        ++node.asks;
        outcome.retry.push_back({p.index, redirection->target});
      }
      results[p.index] = ErrorReplyStatus(text);
      continue;
    }
    const absl::Status status = ErrorReplyStatus(text);
    if (absl::IsUnavailable(status)) {  // CLUSTERDOWN, TRYAGAIN, LOADING, ...: try again
      results[p.index] = status;
      outcome.retry.push_back({p.index, std::nullopt});
      outcome.refresh = true;
      continue;
    }
    results[p.index] = *std::move(reply);  // a final error reply, for the caller to read
  }
  return node;
}

}  // namespace kvkeep::fleet
