#include "service/rpc/session_limits.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/failure_reason.h"

namespace kvkeep {
namespace {

std::string Seconds(absl::Duration d) {
  return absl::StrFormat("%.3f s", std::max(0.001, absl::ToDoubleSeconds(d)));
}

// Every refusal of these limits: RESOURCE_EXHAUSTED typed kSessionLimit, so /metrics and callers
// tell it from a quota or pool shortage without reading the message.
absl::Status LimitExceeded(std::string message) {
  return WithReason(absl::ResourceExhaustedError(message), FailureReason::kSessionLimit);
}

}  // namespace

SessionLimits::SessionLimits(SessionLimitOptions options, Clock clock)
    : options_(options), clock_(std::move(clock)) {}

void SessionLimits::OpenSession(const std::string& tenant, const std::string& session_id) {
  const absl::Time now = clock_();
  absl::MutexLock lock(&mu_);
  Buckets& b = buckets_[session_id];
  b.tenant = tenant;
  b.calls = {options_.call_burst, now};
  b.bytes = {options_.byte_burst, now};
}

void SessionLimits::CloseSession(const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  buckets_.erase(session_id);
}

SessionLimits::Buckets& SessionLimits::BucketsFor(const std::string& tenant,
                                                  const std::string& session_id,
                                                  std::string* who) {
  if (!session_id.empty()) {
    auto it = buckets_.find(session_id);
    if (it != buckets_.end() && it->second.tenant == tenant) {
      *who = absl::StrCat("session ", session_id, " of tenant ", tenant);
      return it->second;
    }
  }
  *who = absl::StrCat("the session-less calls of tenant ", tenant);
  const std::string key = "tenant:" + tenant;
  auto [it, inserted] = buckets_.try_emplace(key);
  if (inserted) {
    const absl::Time now = clock_();
    it->second.tenant = tenant;
    it->second.calls = {options_.call_burst, now};
    it->second.bytes = {options_.byte_burst, now};
  }
  return it->second;
}

absl::Duration SessionLimits::Take(Bucket* bucket, double amount, double per_second, double burst,
                                   absl::Time now) {
  if (now > bucket->refilled) {
    bucket->tokens = std::min(
        burst, bucket->tokens + per_second * absl::ToDoubleSeconds(now - bucket->refilled));
    bucket->refilled = now;
  }
  if (amount > burst) return absl::InfiniteDuration();
  if (bucket->tokens >= amount) {
    bucket->tokens -= amount;
    return absl::ZeroDuration();
  }
  return absl::Seconds((amount - bucket->tokens) / per_second);
}

absl::Status SessionLimits::ChargeCall(const std::string& tenant, const std::string& session_id) {
  if (options_.calls_per_second <= 0) return absl::OkStatus();
  const absl::Time now = clock_();
  absl::MutexLock lock(&mu_);
  std::string who;
  Buckets& b = BucketsFor(tenant, session_id, &who);
  absl::Duration wait =
      Take(&b.calls, 1, options_.calls_per_second, options_.call_burst, now);
  if (wait == absl::ZeroDuration()) return absl::OkStatus();
  rejected_[kCalls].fetch_add(1);
  return LimitExceeded(absl::StrCat(
      "call rate limit: ", who, " made more than ", options_.calls_per_second,
      " calls/s (burst ", options_.call_burst, "; kvkeepd --session_calls_per_second); retry after ",
      Seconds(wait)));
}

absl::Status SessionLimits::ChargeBytes(const std::string& tenant, const std::string& session_id,
                                        uint64_t bytes) {
  if (options_.bytes_per_second <= 0 || bytes == 0) return absl::OkStatus();
  const absl::Time now = clock_();
  absl::MutexLock lock(&mu_);
  std::string who;
  Buckets& b = BucketsFor(tenant, session_id, &who);
  absl::Duration wait = Take(&b.bytes, static_cast<double>(bytes), options_.bytes_per_second,
                             options_.byte_burst, now);
  if (wait == absl::ZeroDuration()) return absl::OkStatus();
  rejected_[kBytes].fetch_add(1);
  if (wait == absl::InfiniteDuration()) {
    return LimitExceeded(absl::StrCat(
        "byte rate limit: ", bytes, " payload bytes in one message exceed the burst of ",
        options_.byte_burst, " bytes (kvkeepd --session_byte_burst) for ", who,
        "; send smaller chunks"));
  }
  return LimitExceeded(absl::StrCat(
      "byte rate limit: ", who, " moved more than ", options_.bytes_per_second,
      " payload bytes/s (burst ", options_.byte_burst,
      "; kvkeepd --session_bytes_per_second); retry after ", Seconds(wait)));
}

absl::Status SessionLimits::CheckStatsBytes(uint64_t bytes) const {
  if (options_.max_stats_bytes == 0 || bytes <= options_.max_stats_bytes) return absl::OkStatus();
  rejected_[kStatsSize].fetch_add(1);
  return LimitExceeded(absl::StrCat(
      "statistics of ", bytes, " bytes in one request exceed the limit of ",
      options_.max_stats_bytes, " bytes (kvkeepd --max_stats_bytes); send one layer per chunk"));
}

absl::StatusOr<std::shared_ptr<const void>> SessionLimits::OpenReadStream(
    const std::string& tenant) {
  {
    absl::MutexLock lock(&mu_);
    uint32_t& open = read_streams_[tenant];
    if (options_.max_read_streams != 0 && open >= options_.max_read_streams) {
      if (open == 0) read_streams_.erase(tenant);
      rejected_[kReadStreams].fetch_add(1);
      return LimitExceeded(absl::StrCat(
          "read stream limit: tenant ", tenant, " already has ", options_.max_read_streams,
          " ReadKV/ReadKVBatch streams open (kvkeepd --max_read_streams_per_tenant); finish or "
          "cancel one (a reader that stops consuming keeps its stream open) and retry"));
    }
    ++open;
  }
  return std::shared_ptr<const void>(nullptr, [this, tenant](const void*) {
    absl::MutexLock lock(&mu_);
    auto it = read_streams_.find(tenant);
    if (it != read_streams_.end() && --it->second == 0) read_streams_.erase(it);
  });
}

uint32_t SessionLimits::open_read_streams(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  auto it = read_streams_.find(tenant);
  return it == read_streams_.end() ? 0 : it->second;
}

void SessionLimits::WriteMetrics(ExpositionWriter* w) const {
  w->Family("kvkeep_session_limit_rejections_total", "counter",
            "Worker calls refused by the per-session limits (RESOURCE_EXHAUSTED), by limit");
  static const char* kNames[] = {"calls", "bytes", "stats_size", "read_streams"};
  for (int i = 0; i < 4; ++i) {
    w->Sample("kvkeep_session_limit_rejections_total", {{"limit", kNames[i]}},
              static_cast<double>(rejected_[i].load()));
  }
  size_t buckets = 0;
  {
    absl::MutexLock lock(&mu_);
    buckets = buckets_.size();
  }
  w->Family("kvkeep_session_limit_buckets", "gauge",
            "Rate-limit bucket pairs held (live sessions and tenants' session-less calls)");
  w->Sample("kvkeep_session_limit_buckets", {}, static_cast<double>(buckets));
  uint64_t streams = 0;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& [tenant, open] : read_streams_) streams += open;
  }
  w->Family("kvkeep_read_streams_open", "gauge",
            "ReadKV/ReadKVBatch streams open, over all tenants (--max_read_streams_per_tenant "
            "bounds each tenant's)");
  w->Sample("kvkeep_read_streams_open", {}, static_cast<double>(streams));
}

}  // namespace kvkeep
