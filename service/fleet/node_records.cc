// Node records (node_records.h).
#include "service/fleet/node_records.h"

#include <algorithm>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "service/fleet/redis_reply.h"
#include "service/observability/log.h"

namespace kvkeep::fleet {

namespace {

constexpr char kFormatLine[] = "v1";

bool IsHex(absl::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return absl::ascii_isxdigit(c); }) &&
         s.size() % 2 == 0;
}

// The reference value of one group or model among `values` (node -> value).
std::string Reference(const std::map<std::string, std::string>& values, const std::string& self) {
  std::map<std::string, int> votes;
  for (const auto& [node, value] : values) ++votes[value];
  int best = 0;
  for (const auto& [value, n] : votes) best = std::max(best, n);
  std::vector<std::string> leaders;
  for (const auto& [value, n] : votes) {
    if (n == best) leaders.push_back(value);
  }
  if (leaders.size() == 1) return leaders[0];
  auto mine = values.find(self);
  if (mine != values.end()) return mine->second;
  return leaders[0];
}

// Adds to `verdicts` the differences of one kind ("group" / "model") of entries.
void CompareKind(const std::vector<NodeRecord>& records, const std::string& self, bool groups,
                 std::map<std::string, std::vector<std::string>>& mismatches) {
  std::map<std::string, std::map<std::string, std::string>> by_name;  // name -> node -> value
  for (const NodeRecord& r : records) {
    for (const auto& [name, value] : groups ? r.group_fingerprints : r.layout_hashes) {
      by_name[name][r.node_name] = value;
    }
  }
  for (const auto& [name, values] : by_name) {
    const std::string reference = Reference(values, self);
    int agree = 0;
    for (const auto& [node, value] : values) agree += value == reference ? 1 : 0;
    for (const auto& [node, value] : values) {
      if (value == reference) continue;
      mismatches[node].push_back(absl::StrCat(
          groups ? "group " : "model ", name, groups ? ": fingerprint " : ": layout hash ", value,
          " differs from ", reference, " (", agree, " of ", values.size(), " nodes)"));
    }
  }
}

}  // namespace

std::string EncodeNodeRecord(const NodeRecord& record) {
  std::string out = absl::StrCat(kFormatLine, "\n");
  for (const auto& [group, fp] : record.group_fingerprints) {
    absl::StrAppend(&out, "group ", absl::BytesToHexString(group), " ", fp, "\n");
  }
  for (const auto& [model, hash] : record.layout_hashes) {
    absl::StrAppend(&out, "layout ", absl::BytesToHexString(model), " ", hash, "\n");
  }
  return out;
}

absl::StatusOr<NodeRecord> DecodeNodeRecord(const std::string& node_name,
                                            const std::string& value) {
  NodeRecord record;
  record.node_name = node_name;
  std::vector<absl::string_view> lines = absl::StrSplit(value, '\n', absl::SkipEmpty());
  if (lines.empty() || lines[0] != kFormatLine) {
    return absl::InvalidArgumentError(
        absl::StrCat("node record of ", node_name, " does not start with ", kFormatLine));
  }
  for (size_t i = 1; i < lines.size(); ++i) {
    std::vector<absl::string_view> f = absl::StrSplit(lines[i], ' ');
    if (f.size() != 3 || (f[0] != "group" && f[0] != "layout") || !IsHex(f[1]) || f[2].empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("node record of ", node_name, ": unreadable line ", i + 1));
    }
    auto& into = f[0] == "group" ? record.group_fingerprints : record.layout_hashes;
    into[absl::HexStringToBytes(f[1])] = std::string(f[2]);
  }
  return record;
}

std::vector<NodeVerdict> CompareNodeRecords(const std::vector<NodeRecord>& records,
                                            const std::string& self) {
  std::map<std::string, std::vector<std::string>> mismatches;
  CompareKind(records, self, /*groups=*/true, mismatches);
  CompareKind(records, self, /*groups=*/false, mismatches);
  std::vector<NodeVerdict> out;
  for (const NodeRecord& r : records) {
    out.push_back({r.node_name, mismatches[r.node_name]});
  }
  return out;
}

absl::StatusOr<std::vector<NodeRecord>> ReadNodeRecords(RedisClusterClient& client,
                                                        absl::Time deadline) {
  const std::string set_key = kNodeSetKey;
  std::vector<KeyedCommand> list = {{set_key, {"SMEMBERS", set_key}}};
  std::vector<absl::StatusOr<RedisReply>> listed = client.Execute(list, deadline);
  if (!listed[0].ok()) return listed[0].status();
  const redisReply& members = **listed[0];
  if (members.type == REDIS_REPLY_ERROR) return ErrorReplyStatus(ReplyText(members));
  std::vector<std::string> names;
  for (size_t i = 0; i < members.elements; ++i) {
    names.push_back(std::string(ReplyText(*members.element[i])));
  }
  std::sort(names.begin(), names.end());
  std::vector<std::string> keys;
  for (const std::string& n : names) keys.push_back(absl::StrCat(kNodeRecordPrefix, n));
  std::vector<KeyedCommand> gets;
  for (const std::string& k : keys) gets.push_back({k, {"GET", k}});
  std::vector<absl::StatusOr<RedisReply>> values = client.Execute(gets, deadline);
  std::vector<NodeRecord> out;
  std::vector<std::string> gone;
  for (size_t i = 0; i < names.size(); ++i) {
    if (!values[i].ok() || (*values[i])->type == REDIS_REPLY_ERROR) continue;
    if ((*values[i])->type == REDIS_REPLY_NIL) {
      gone.push_back(names[i]);
      continue;
    }
    absl::StatusOr<NodeRecord> r =
        DecodeNodeRecord(names[i], std::string(ReplyText(**values[i])));
    if (r.ok()) {
      out.push_back(*std::move(r));
    } else {
      log::Warn("fleet.node_record_unreadable", {{"node", names[i]}, {"status", r.status()}});
    }
  }
  if (!gone.empty()) {  // expired records: forget their names (best effort)
    std::vector<KeyedCommand> removes;
    for (const std::string& n : gone) removes.push_back({set_key, {"SREM", set_key, n}});
    client.Execute(removes, deadline);
  }
  return out;
}

NodeRecordPublisher::NodeRecordPublisher(ClusterOptions options, absl::Duration period,
                                         absl::Duration ttl)
    : period_(period), ttl_(ttl), client_(std::move(options)), thread_([this] { Loop(); }) {}

NodeRecordPublisher::~NodeRecordPublisher() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  thread_.join();
}

void NodeRecordPublisher::SetSource(Source source) {
  {
    absl::MutexLock lock(&source_mu_);
    source_ = std::move(source);
  }
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void NodeRecordPublisher::Wake() {
  absl::MutexLock lock(&mu_);
  wake_ = true;
}

void NodeRecordPublisher::Loop() {
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      auto woken = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_ || wake_; };
      mu_.AwaitWithTimeout(absl::Condition(&woken), period_);
      if (stopping_) return;
      wake_ = false;
    }
    PublishOnce();
  }
}

void NodeRecordPublisher::PublishOnce() {
  NodeRecord record;
  {
    absl::MutexLock lock(&source_mu_);
    if (!source_) return;
    record = source_();
  }
  if (record.node_name.empty()) return;
  const std::string key = absl::StrCat(kNodeRecordPrefix, record.node_name);
  const std::string value = EncodeNodeRecord(record);
  const std::string ttl_ms = absl::StrCat(absl::ToInt64Milliseconds(ttl_));
  const std::string set_key = kNodeSetKey;
  std::vector<KeyedCommand> commands = {
      {key, {"SET", key, value, "PX", ttl_ms}},
      {set_key, {"SADD", set_key, record.node_name}}};
  std::vector<absl::StatusOr<RedisReply>> replies =
      client_.Execute(commands, absl::Now() + absl::Seconds(2));
  for (const auto& reply : replies) {
    absl::Status failed = reply.ok() ? absl::OkStatus() : reply.status();
    if (reply.ok() && (*reply)->type == REDIS_REPLY_ERROR) {
      failed = ErrorReplyStatus(ReplyText(**reply));
    }
    if (!failed.ok()) {
      log::Warn("fleet.node_record_failed", {{"node", record.node_name}, {"status", failed}});
      return;
    }
  }
}

}  // namespace kvkeep::fleet
