#include "service/fleet/redis_fleet_tier.h"

#include <algorithm>
#include <cstring>
#include <future>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "service/fleet/open_pipeline.h"
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
      value_buffers_(2 * options_.get_window),
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
  const size_t batch = options_.write_batch_pages;
  // Round k+1 is sealed (on up to open_threads threads) while round k is on the wire; the sealed
  // values' buffers are reused round after round (spare_values_).
  std::vector<absl::StatusOr<std::string>> sealed =
      SealRound(prefix, 0, std::min(n, batch), TakeSpareValues(std::min(n, batch)));
  for (size_t begin = 0; begin < n; begin += batch) {
    const size_t end = std::min(n, begin + batch);
    std::future<std::vector<absl::StatusOr<std::string>>> next;
    if (end < n) {
      const size_t next_end = std::min(n, end + batch);
      next = std::async(std::launch::async,
                        [this, &prefix, end, next_end,
                         buffers = TakeSpareValues(next_end - end)]() mutable {
                          return SealRound(prefix, end, next_end, std::move(buffers));
                        });
    }
    WriteRound(prefix, begin, sealed, delta);
    GiveSpareValues(sealed);
    if (next.valid()) sealed = next.get();
  }
  Count(prefix.scope.group, delta);
}

std::vector<std::string> RedisFleetTier::TakeSpareValues(size_t count) {
  std::vector<std::string> buffers(count);
  for (size_t k = 0; k < count && !spare_values_.empty(); ++k) {
    buffers[k] = std::move(spare_values_.back());
    spare_values_.pop_back();
  }
  return buffers;
}

void RedisFleetTier::GiveSpareValues(std::vector<absl::StatusOr<std::string>>& values) {
  for (absl::StatusOr<std::string>& value : values) {
    if (value.ok() && spare_values_.size() < 2 * options_.write_batch_pages) {
      spare_values_.push_back(*std::move(value));
    }
  }
  values.clear();
}

std::vector<absl::StatusOr<std::string>> RedisFleetTier::SealRound(
    const QueuedPrefix& prefix, size_t begin, size_t end, std::vector<std::string> buffers) {
  const FleetScope& scope = prefix.scope;
  std::vector<absl::StatusOr<std::string>> values(end - begin, absl::UnknownError("not sealed"));
  buffers.resize(end - begin);
  ParallelFor(end - begin, options_.open_threads, [&](size_t k) {
    const FleetPage& page = prefix.pages[begin + k];
    absl::Status sealed = SealPageValueInto(scope.shape, scope.layout_hash, page.key_name,
                                            page.payload, scope.keys->value_key, &buffers[k]);
    values[k] = sealed.ok() ? absl::StatusOr<std::string>(std::move(buffers[k]))
                            : absl::StatusOr<std::string>(sealed);
  });
  return values;
}

void RedisFleetTier::WriteRound(const QueuedPrefix& prefix, size_t begin,
                                const std::vector<absl::StatusOr<std::string>>& values,
                                FleetCounters& delta) {
  const FleetScope& scope = prefix.scope;
  for (const absl::StatusOr<std::string>& value : values) {
    if (!value.ok()) {
      log::Error("fleet.seal_failed", {{"group", scope.group}, {"status", value.status()}});
      delta.write_errors += values.size();
      return;
    }
  }
  const std::string ttl_ms = absl::StrCat(absl::ToInt64Milliseconds(options_.value_ttl));
  std::vector<KeyedCommand> commands;
  for (size_t k = 0; k < values.size(); ++k) {
    const std::string& key = prefix.pages[begin + k].key_name;
    KeyedCommand command{key, {"SET", key, *values[k]}};
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
      delta.bytes_written += values[k]->size();
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

template <typename Accept>
RedisFleetTier::RunEnd RedisFleetTier::ReadRun(absl::Span<const std::string> key_names,
                                               absl::string_view command, size_t window,
                                               absl::Time deadline, Accept accept) {
  if (key_names.empty()) return RunEnd::kComplete;
  // With read_ahead two clients take turns: while this thread judges one window's replies, the
  // next window is fetched on another thread. A run that
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
  const RunEnd end = ReadRun(key_names, "EXISTS", options_.lookup_window, deadline, exists);
  FleetCounters delta;
  delta.lookups = 1;
  delta.hit_pages = present;
  delta.misses = end == RunEnd::kMiss ? 1 : 0;
  delta.read_errors = end == RunEnd::kError ? 1 : 0;
  Count(scope.group, delta);
  return present;
}

namespace {

// Get's writer: each payload into its own string.
class StringPayloads final : public PayloadWriter {
 public:
  StringPayloads(size_t pages, size_t payload_bytes)
      : payloads(pages), payload_bytes_(payload_bytes) {}
  absl::Status Write(size_t page, uint64_t offset, absl::string_view bytes) override {
    std::string& payload = payloads[page];
    if (payload.size() != payload_bytes_) payload.resize(payload_bytes_);
    if (offset + bytes.size() > payload.size()) {
      return absl::OutOfRangeError("fleet payload written past its size");
    }
    std::memcpy(payload.data() + offset, bytes.data(), bytes.size());
    return absl::OkStatus();
  }
  // Decrypted straight into the string (sized here, by the one thread opening this page).
  char* Destination(size_t page, uint64_t offset, size_t size) override {
    std::string& payload = payloads[page];
    if (payload.size() != payload_bytes_) payload.resize(payload_bytes_);
    return offset + size <= payload.size() ? payload.data() + offset : nullptr;
  }
  std::vector<std::string> payloads;

 private:
  const size_t payload_bytes_;
};

}  // namespace

std::vector<std::string> RedisFleetTier::Get(const FleetScope& scope,
                                             absl::Span<const std::string> key_names,
                                             absl::Time deadline) {
  StringPayloads strings(key_names.size(), scope.shape.payload_bytes());
  const size_t verified = GetInto(scope, key_names, deadline, strings);
  strings.payloads.resize(verified);
  return std::move(strings.payloads);
}

size_t RedisFleetTier::GetInto(const FleetScope& scope, absl::Span<const std::string> key_names,
                               absl::Time deadline, PayloadWriter& writer) {
  const size_t n = key_names.size();
  const size_t window = options_.get_window;
  RunEnd end = RunEnd::kComplete;
  size_t stop = n;      // the first page whose reply ended the run (absent, error)
  size_t verified = 0;  // pages [0, verified) opened and verified
  {
    // Values are received straight into 2 x window buffers and opened on helper threads as
    // each one is whole, while this thread receives the next; a window is asked for once the
    // buffers it needs are free again.
    OpenPipeline pipeline(scope, key_names, writer,
                          {options_.open_on_receiver ? 0 : options_.open_threads, 2 * window},
                          &value_buffers_);
    ClusterClientPool::Lease client = readers_.Borrow();
    for (size_t first = 0; first < n && end == RunEnd::kComplete && !pipeline.AnyRefused();
         first += window) {
      const size_t count = std::min(window, n - first);
      pipeline.WaitForSlots(first, count);
      std::vector<KeyedCommand> commands;
      commands.reserve(count);
      for (size_t i = first; i < first + count; ++i) {
        commands.push_back({key_names[i], {"GET", key_names[i]}, pipeline.SinkFor(i)});
      }
      const std::vector<absl::StatusOr<RedisReply>> replies = client->Execute(commands, deadline);
      for (size_t k = 0; k < count; ++k) {
        const absl::StatusOr<RedisReply>& reply = replies[k];
        if (!reply.ok() || (*reply)->type == REDIS_REPLY_ERROR) {
          end = RunEnd::kError;
        } else if ((*reply)->type != REDIS_REPLY_STRING) {
          end = RunEnd::kMiss;  // nil: absent (or evicted)
        } else {
          continue;  // received into its buffer and being opened, or dropped for its size
        }
        stop = first + k;
        break;
      }
    }
    pipeline.Finish();
    for (; verified < stop; ++verified) {
      const OpenPipeline::PageEnd page_end = pipeline.end(verified);
      if (page_end == OpenPipeline::PageEnd::kOk) continue;
      // Refused values (checksum, header, size, tag) are misses, never served.
      const bool corrupt = page_end == OpenPipeline::PageEnd::kRefused ||
                           page_end == OpenPipeline::PageEnd::kWrongSize;
      end = corrupt ? RunEnd::kCorrupt : RunEnd::kError;
      if (corrupt) {
        const PageValueVerdict verdict = page_end == OpenPipeline::PageEnd::kWrongSize
                                             ? PageValueVerdict::kShort
                                             : pipeline.verdict(verified);
        log::Warn("fleet.value_refused",
                  {{"group", scope.group},
                   {"page", static_cast<unsigned long long>(verified)},
                   {"verdict", PageValueVerdictName(verdict)}});
      }
      break;
    }
  }
  FleetCounters delta;
  delta.lookups = 1;
  delta.hit_pages = verified;
  delta.bytes_read = verified * scope.shape.payload_bytes();
  delta.misses = end == RunEnd::kMiss || end == RunEnd::kCorrupt ? 1 : 0;
  delta.corrupt = end == RunEnd::kCorrupt ? 1 : 0;
  delta.read_errors = end == RunEnd::kError ? 1 : 0;
  Count(scope.group, delta);
  return verified;
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
