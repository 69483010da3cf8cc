#include "service/fleet/redis_fleet_tier.h"

#include <algorithm>
#include <future>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "service/fleet/page_value.h"
#include "service/observability/log.h"

namespace kvkeep::fleet {
namespace {

// fn(0..n) on up to `threads` threads (this one included); returns when every call has.
template <typename Fn>
void ParallelFor(size_t n, size_t threads, const Fn& fn) {
  threads = std::max<size_t>(1, std::min(threads, n));
  std::vector<std::future<void>> helpers;
  for (size_t t = 1; t < threads; ++t) {
    helpers.push_back(std::async(std::launch::async, [&fn, n, t, threads] {
      for (size_t i = t; i < n; i += threads) fn(i);
    }));
  }
  for (size_t i = 0; i < n; i += threads) fn(i);
  for (std::future<void>& helper : helpers) helper.get();
}

}  // namespace

absl::StatusOr<std::unique_ptr<RedisFleetTier>> RedisFleetTier::Create(RedisFleetOptions options) {
  if (options.cluster.seeds.empty()) {
    return absl::InvalidArgumentError("the fleet tier needs at least one Redis seed node");
  }
  if (options.max_queue_bytes == 0 || options.write_batch_pages == 0 ||
      options.lookup_window == 0 || options.get_window == 0 || options.open_threads == 0 ||
      options.cluster.max_rounds <= 0) {
    return absl::InvalidArgumentError("fleet tier bounds must be positive");
  }
  return std::unique_ptr<RedisFleetTier>(new RedisFleetTier(std::move(options)));
}

RedisFleetTier::RedisFleetTier(RedisFleetOptions options)
    : options_(std::move(options)),
      readers_(options_.cluster, options_.max_idle_clients),
      writer_client_(options_.cluster),
      node_records_(options_.cluster),
      writer_([this] { WriterLoop(); }) {}

RedisFleetTier::~RedisFleetTier() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  writer_.join();
  std::deque<QueuedPrefix> left;
  {
    absl::MutexLock lock(&mu_);
    left.swap(queue_);
  }
  uint64_t discarded = 0;
  for (const QueuedPrefix& prefix : left) {
    FleetCounters dropped;
    dropped.dropped = prefix.pages.size();
    Count(prefix.scope.group, dropped);
    discarded += prefix.pages.size();
  }
  if (discarded > 0) {
    log::Warn("fleet.queue_discarded", {{"pages", static_cast<unsigned long long>(discarded)}});
  }
}

absl::Status RedisFleetTier::PutAsync(const FleetScope& scope, std::vector<FleetPage> pages) {
  if (pages.empty()) return absl::OkStatus();
  QueuedPrefix prefix{scope, std::move(pages), 0};
  for (const FleetPage& page : prefix.pages) prefix.bytes += page.payload.size();
  const size_t count = prefix.pages.size();
  {
    absl::MutexLock lock(&mu_);
    if (!stopping_ && queued_bytes_ + prefix.bytes <= options_.max_queue_bytes) {
      queued_bytes_ += prefix.bytes;
      queue_.push_back(std::move(prefix));
      return absl::OkStatus();
    }
  }
  FleetCounters dropped;
  dropped.dropped = count;
  Count(scope.group, dropped);
  return absl::ResourceExhaustedError("fleet write-behind queue is full");
}

absl::Status RedisFleetTier::Flush(absl::Time deadline) {
  absl::MutexLock lock(&mu_);
  if (!mu_.AwaitWithDeadline(absl::Condition(this, &RedisFleetTier::QueueIdle), deadline)) {
    return absl::DeadlineExceededError("fleet write-behind queue did not drain in time");
  }
  return absl::OkStatus();
}

void RedisFleetTier::WriterLoop() {
  while (true) {
    QueuedPrefix prefix;
    {
      absl::MutexLock lock(&mu_, absl::Condition(this, &RedisFleetTier::HasWorkOrStopping));
      if (stopping_) return;
      prefix = std::move(queue_.front());
      queue_.pop_front();
      ++writing_;
    }
    WritePrefix(prefix);
    absl::MutexLock lock(&mu_);
    queued_bytes_ -= prefix.bytes;
    --writing_;
  }
}

void RedisFleetTier::WritePrefix(const QueuedPrefix& prefix) {
  FleetCounters delta;
  const size_t n = prefix.pages.size();
  for (size_t begin = 0; begin < n; begin += options_.write_batch_pages) {
    WriteRound(prefix, begin, std::min(n, begin + options_.write_batch_pages), delta);
  }
  Count(prefix.scope.group, delta);
}

void RedisFleetTier::WriteRound(const QueuedPrefix& prefix, size_t begin, size_t end,
                                FleetCounters& delta) {
  const FleetScope& scope = prefix.scope;
  std::vector<std::string> values;
  values.reserve(end - begin);
  for (size_t i = begin; i < end; ++i) {
    const FleetPage& page = prefix.pages[i];
    absl::StatusOr<std::string> value = SealPageValue(scope.shape, scope.layout_hash, page.key_name,
                                                      page.payload, scope.keys->value_key);
    if (!value.ok()) {
      log::Error("fleet.seal_failed", {{"group", scope.group}, {"status", value.status()}});
      delta.write_errors += end - begin;
      return;
    }
    values.push_back(*std::move(value));
  }
  const std::string ttl_ms = absl::StrCat(absl::ToInt64Milliseconds(options_.value_ttl));
  std::vector<KeyedCommand> commands;
  for (size_t i = begin; i < end; ++i) {
    const std::string& key = prefix.pages[i].key_name;
    KeyedCommand command{key, {"SET", key, values[i - begin]}};
    if (options_.value_ttl > absl::ZeroDuration()) {
      command.args.push_back("PX");
      command.args.push_back(ttl_ms);
    }
    commands.push_back(std::move(command));
  }
  auto replies = writer_client_.Execute(commands, absl::Now() + options_.write_timeout);
  absl::Status failure;
  for (size_t k = 0; k < replies.size(); ++k) {
    if (replies[k].ok() && (*replies[k])->type != REDIS_REPLY_ERROR) {
      ++delta.pages_written;
      delta.bytes_written += values[k].size();
      continue;
    }
    ++delta.write_errors;
    if (failure.ok()) {
      failure = replies[k].ok() ? ErrorReplyStatus(ReplyText(**replies[k])) : replies[k].status();
    }
  }
  NoteWriteHealth(failure.ok(), failure);
}

void RedisFleetTier::NoteWriteHealth(bool ok, const absl::Status& failure) {
  if (ok == !writer_failing_) return;
  writer_failing_ = !ok;
  if (ok) {
    log::Info("fleet.write_recovered", {});
  } else {
    log::Warn("fleet.write_failed", {{"status", failure}});
  }
}

template <typename Prepare, typename Accept>
RedisFleetTier::RunEnd RedisFleetTier::ReadRun(absl::Span<const std::string> key_names,
                                               absl::string_view command, size_t window,
                                               absl::Time deadline, Prepare prepare,
                                               Accept accept) {
  if (key_names.empty()) return RunEnd::kComplete;
  // With read_ahead two clients take turns: while this thread judges one window's replies
  // (checksums and decryption for GET), the next window is fetched on another thread. A run that
  // ends early has fetched at most one window too many; the fetch in flight is awaited (bounded by
  // `deadline`).
  ClusterClientPool::Lease first = readers_.Borrow(), second = readers_.Borrow();
  RedisClusterClient* const clients[2] = {&*first, &*second};
  auto fetch = [&key_names, command, window, deadline](size_t start, RedisClusterClient* client) {
    std::vector<KeyedCommand> commands;
    for (size_t i = start; i < std::min(key_names.size(), start + window); ++i) {
      commands.push_back({key_names[i], {command, key_names[i]}});
    }
    return client->Execute(commands, deadline);
  };
  std::vector<absl::StatusOr<RedisReply>> replies = fetch(0, clients[0]);
  for (size_t start = 0, turn = 0; start < key_names.size(); start += window, turn ^= 1) {
    std::future<std::vector<absl::StatusOr<RedisReply>>> next;
    if (options_.read_ahead && start + window < key_names.size()) {
      next = std::async(std::launch::async, fetch, start + window, clients[turn ^ 1]);
    }
    prepare(start, replies);
    for (size_t i = start; i < std::min(key_names.size(), start + window); ++i) {
      absl::StatusOr<RedisReply>& reply = replies[i - start];
      if (!reply.ok() || (*reply)->type == REDIS_REPLY_ERROR) return RunEnd::kError;
      const RunEnd end_here = accept(i, **reply);
      if (end_here != RunEnd::kComplete) return end_here;
    }
    if (next.valid()) {
      replies = next.get();
    } else if (start + window < key_names.size()) {
      replies = fetch(start + window, clients[0]);
    }
  }
  return RunEnd::kComplete;
}

size_t RedisFleetTier::Lookup(const FleetScope& scope, absl::Span<const std::string> key_names,
                              absl::Time deadline) {
  size_t present = 0;
  auto exists = [&](size_t, const redisReply& reply) {
    if (reply.type != REDIS_REPLY_INTEGER || reply.integer != 1) return RunEnd::kMiss;
    ++present;
    return RunEnd::kComplete;
  };
  auto nothing_to_prepare = [](size_t, std::vector<absl::StatusOr<RedisReply>>&) {};
  const RunEnd end =
      ReadRun(key_names, "EXISTS", options_.lookup_window, deadline, nothing_to_prepare, exists);
  FleetCounters delta;
  delta.lookups = 1;
  delta.hit_pages = present;
  delta.misses = end == RunEnd::kMiss ? 1 : 0;
  delta.read_errors = end == RunEnd::kError ? 1 : 0;
  Count(scope.group, delta);
  return present;
}

std::vector<std::string> RedisFleetTier::Get(const FleetScope& scope,
                                             absl::Span<const std::string> key_names,
                                             absl::Time deadline) {
  std::vector<std::string> payloads;
  FleetCounters delta;
  delta.lookups = 1;
  // A window's values are checked and decrypted on up to `open_threads` threads, then taken in
  // order until the first that did not verify.
  size_t window_start = 0;
  std::vector<PageValueVerdict> verdicts;
  std::vector<std::string> opened;
  auto open_window = [&](size_t start, std::vector<absl::StatusOr<RedisReply>>& replies) {
    window_start = start;
    verdicts.assign(replies.size(), PageValueVerdict::kOtherVersion);
    opened.assign(replies.size(), std::string());
    ParallelFor(replies.size(), options_.open_threads, [&](size_t k) {
      if (!replies[k].ok() || (*replies[k])->type != REDIS_REPLY_STRING) return;
      verdicts[k] = OpenPageValue(ReplyText(**replies[k]), scope.shape, scope.layout_hash,
                                  key_names[start + k], scope.keys->value_key, &opened[k]);
    });
  };
  auto verified = [&](size_t i, const redisReply& reply) {
    if (reply.type != REDIS_REPLY_STRING) return RunEnd::kMiss;
    const size_t k = i - window_start;
    if (verdicts[k] != PageValueVerdict::kOk) {
      log::Warn("fleet.value_refused", {{"group", scope.group},
                                        {"page", static_cast<unsigned long long>(i)},
                                        {"verdict", PageValueVerdictName(verdicts[k])}});
      return RunEnd::kCorrupt;
    }
    delta.bytes_read += opened[k].size();
    payloads.push_back(std::move(opened[k]));
    return RunEnd::kComplete;
  };
  const RunEnd end =
      ReadRun(key_names, "GET", options_.get_window, deadline, open_window, verified);
  delta.hit_pages = payloads.size();
  delta.misses = end == RunEnd::kMiss || end == RunEnd::kCorrupt ? 1 : 0;
  delta.corrupt = end == RunEnd::kCorrupt ? 1 : 0;
  delta.read_errors = end == RunEnd::kError ? 1 : 0;
  Count(scope.group, delta);
  return payloads;
}

void RedisFleetTier::Count(const std::string& group, const FleetCounters& delta) {
  absl::MutexLock lock(&counters_mu_);
  counters_[group].Add(delta);
}

FleetCounters RedisFleetTier::Counters() const {
  FleetCounters total;
  absl::MutexLock lock(&counters_mu_);
  for (const auto& [group, counters] : counters_) total.Add(counters);
  return total;
}

std::map<std::string, FleetCounters> RedisFleetTier::CountersByGroup() const {
  absl::MutexLock lock(&counters_mu_);
  return counters_;
}

FleetClusterStatus RedisFleetTier::ClusterStatus(absl::Time deadline) {
  FleetClusterStatus status;
  {
    absl::MutexLock lock(&mu_);
    status.queued_bytes = queued_bytes_;
  }
  ClusterClientPool::Lease client = readers_.Borrow();
  const absl::Status refreshed = client->Refresh(deadline);
  if (!refreshed.ok()) {
    status.error = std::string(refreshed.message());
    return status;
  }
  status.reachable = true;
  const SlotMap& map = client->slot_map();
  status.covered_slots = map.covered_slots();
  std::map<NodeAddress, FleetNodeStatus> nodes;
  for (const SlotRange& range : map.ranges()) {
    FleetNodeStatus& master = nodes[range.master];
    master.address = range.master.ToString();
    master.role = "master";
    master.slots += range.last - range.first + 1;
    for (const NodeAddress& replica : range.replicas) {
      nodes[replica] = FleetNodeStatus{replica.ToString(), "replica", 0};
    }
  }
  for (auto& [address, node] : nodes) status.nodes.push_back(std::move(node));
  return status;
}

void RedisFleetTier::SetNodeRecordSource(std::function<NodeRecord()> source) {
  node_records_.SetSource(std::move(source));
}

absl::StatusOr<std::vector<NodeRecord>> RedisFleetTier::NodeRecords(absl::Time deadline) {
  ClusterClientPool::Lease client = readers_.Borrow();
  return ReadNodeRecords(*client, deadline);
}

}  // namespace kvkeep::fleet
