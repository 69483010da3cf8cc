#include "service/engine/session_registry.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/failure_reason.h"
#include "service/observability/log.h"
#include "service/token_auth.h"

namespace kvkeep {

SessionRegistry::SessionRegistry(uint32_t max_sessions_per_tenant)
    : max_sessions_per_tenant_(max_sessions_per_tenant) {}

// ---- Sessions ------------------------------------------------------------------------------

absl::StatusOr<SessionRegistry::Attached> SessionRegistry::Attach(const std::string& tenant,
                                                                  const std::string& worker,
                                                                  SessionSink* sink) {
  absl::MutexLock lock(&mu_);
  absl::flat_hash_set<std::string>& mine = by_tenant_[tenant];
  std::string old_id;
  for (const std::string& id : mine) {
    auto it = sessions_.find(id);
    if (it != sessions_.end() && it->second.worker == worker) {
      old_id = id;
      break;
    }
  }
  if (old_id.empty() && mine.size() >= max_sessions_per_tenant_) {
    const size_t count = mine.size();
    if (mine.empty()) by_tenant_.erase(tenant);
    return WithReason(absl::ResourceExhaustedError(absl::StrCat(
                          "tenant ", tenant, " has ", count, " sessions, the most allowed (",
                          max_sessions_per_tenant_, ")")),
                      FailureReason::kMetadataLimit);
  }
  Session fresh;
  fresh.id = RandomHex(16);
  fresh.tenant = tenant;
  fresh.worker = worker;
  fresh.sink = sink;
  Attached out;
  out.session_id = fresh.id;
  if (!old_id.empty()) {
    // Supersede the older session of the same worker: it ends, its sequences move here.
    auto old = sessions_.find(old_id);
    out.superseded_session_id = old_id;
    out.adopted_sequences = AdoptLocked(old->second, fresh);
    if (old->second.sink != nullptr) {
      old->second.sink->End(absl::AbortedError(
          absl::StrCat("superseded by a newer session of worker \"", worker, "\"")));
    }
    mine.erase(old_id);
    sessions_.erase(old);
    log::Info("session.supersede", {{"tenant", tenant}, {"worker", worker},
                                    {"adopted_sequences", out.adopted_sequences}});
  }
  mine.insert(fresh.id);
  sessions_[fresh.id] = std::move(fresh);
  log::Info("session.attach", {{"tenant", tenant}, {"worker", worker},
                               {"superseded", !out.superseded_session_id.empty()}});
  return out;
}

uint32_t SessionRegistry::AdoptLocked(Session& old, Session& fresh) {
  uint32_t adopted = 0;
  for (const std::string& seq : old.owned) {
    auto hold = holds_.find(SequenceKey(old.tenant, seq));
    if (hold == holds_.end()) continue;
    hold->second.owner_session = fresh.id;
    fresh.owned.insert(seq);
    ++adopted;
  }
  for (const std::string& seq : old.leased) {
    auto hold = holds_.find(SequenceKey(old.tenant, seq));
    if (hold == holds_.end()) continue;
    hold->second.leases.erase(old.id);
    hold->second.leases.insert(fresh.id);
    fresh.leased.insert(seq);
  }
  return adopted;
}

SessionRegistry::Ended SessionRegistry::EndLocked(const std::string& session_id) {
  auto it = sessions_.find(session_id);
  Session& s = it->second;
  Ended ended{s.tenant, s.worker, {}};
  for (const std::string& seq : s.leased) {
    auto hold = holds_.find(SequenceKey(s.tenant, seq));
    if (hold != holds_.end()) hold->second.leases.erase(session_id);
  }
  for (const std::string& seq : s.owned) {
    auto hold = holds_.find(SequenceKey(s.tenant, seq));
    if (hold == holds_.end()) continue;
    hold->second.owner_session.clear();
    if (!hold->second.retain && hold->second.leases.empty()) ended.orphans.push_back(seq);
  }
  auto tenant = by_tenant_.find(s.tenant);
  if (tenant != by_tenant_.end()) {
    tenant->second.erase(session_id);
    if (tenant->second.empty()) by_tenant_.erase(tenant);
  }
  sessions_.erase(it);
  return ended;
}

std::optional<SessionRegistry::Ended> SessionRegistry::End(const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  if (!sessions_.contains(session_id)) return std::nullopt;
  Ended ended = EndLocked(session_id);
  log::Info("session.end", {{"tenant", ended.tenant}, {"worker", ended.worker},
                            {"reason", "closed"}, {"orphans_dropped", ended.orphans.size()}});
  return ended;
}

std::vector<SessionRegistry::Ended> SessionRegistry::EndAll(const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> ids;
  for (auto& [id, s] : sessions_) {
    if (s.sink != nullptr) s.sink->End(status);
    ids.push_back(id);
  }
  std::vector<Ended> out;
  for (const std::string& id : ids) {
    out.push_back(EndLocked(id));
    log::Info("session.end", {{"tenant", out.back().tenant}, {"worker", out.back().worker},
                              {"reason", "shutdown"}});
  }
  return out;
}

uint32_t SessionRegistry::EndTenant(const std::string& tenant, const absl::Status& status) {
  absl::MutexLock lock(&mu_);
  auto it = by_tenant_.find(tenant);
  if (it == by_tenant_.end()) return 0;
  std::vector<std::string> ids(it->second.begin(), it->second.end());
  for (const std::string& id : ids) {
    auto s = sessions_.find(id);
    if (s == sessions_.end()) continue;
    if (s->second.sink != nullptr) s->second.sink->End(status);
    Ended ended = EndLocked(id);
    log::Info("session.end", {{"tenant", tenant}, {"worker", ended.worker},
                              {"reason", "tenant_deleted"}});
  }
  return static_cast<uint32_t>(ids.size());
}

const SessionRegistry::Session* SessionRegistry::FindLocked(const std::string& tenant,
                                                            const std::string& session_id) const {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end() || it->second.tenant != tenant) return nullptr;
  return &it->second;
}

absl::Status SessionRegistry::CheckLiveLocked(const std::string& tenant,
                                              const std::string& session_id) const {
  if (session_id.empty()) {
    return absl::InvalidArgumentError("session_id is required (from the Session stream)");
  }
  if (FindLocked(tenant, session_id) == nullptr) {
    return absl::NotFoundError(
        absl::StrCat("no live session \"", session_id, "\" for this tenant"));
  }
  return absl::OkStatus();
}

absl::Status SessionRegistry::CheckIfGiven(const std::string& tenant,
                                           const std::string& session_id) const {
  if (session_id.empty()) return absl::OkStatus();
  absl::ReaderMutexLock lock(&mu_);
  return CheckLiveLocked(tenant, session_id);
}

absl::Status SessionRegistry::CheckLive(const std::string& tenant,
                                        const std::string& session_id) const {
  absl::ReaderMutexLock lock(&mu_);
  return CheckLiveLocked(tenant, session_id);
}

uint32_t SessionRegistry::SessionsOf(const std::string& tenant) const {
  absl::ReaderMutexLock lock(&mu_);
  auto it = by_tenant_.find(tenant);
  return it == by_tenant_.end() ? 0 : static_cast<uint32_t>(it->second.size());
}

uint32_t SessionRegistry::SessionCount() const {
  absl::ReaderMutexLock lock(&mu_);
  return static_cast<uint32_t>(sessions_.size());
}

void SessionRegistry::AnnounceArena(const std::string& tenant, const ArenaInfo& arena) {
  absl::ReaderMutexLock lock(&mu_);
  auto it = by_tenant_.find(tenant);
  if (it == by_tenant_.end()) return;
  for (const std::string& id : it->second) {
    auto s = sessions_.find(id);
    if (s != sessions_.end() && s->second.sink != nullptr) s->second.sink->ArenaAdded(arena);
  }
}

// ---- Sequences -----------------------------------------------------------------------------

absl::Status SessionRegistry::AddSequence(const std::string& tenant, const std::string& sequence,
                                          const std::string& session_id, bool retain,
                                          absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (absl::Status live = CheckLiveLocked(tenant, session_id); !live.ok()) return live;
  Session& s = sessions_[session_id];
  Hold& hold = holds_[SequenceKey(tenant, sequence)];
  hold.owner_session = session_id;
  hold.leases.insert(session_id);
  hold.retain = retain;
  hold.last_access = now;
  s.owned.insert(sequence);
  s.leased.insert(sequence);
  return absl::OkStatus();
}

void SessionRegistry::AddRestorable(const std::string& tenant, const std::string& sequence,
                                    absl::Time created) {
  absl::MutexLock lock(&mu_);
  Hold& hold = holds_[SequenceKey(tenant, sequence)];
  hold.retain = true;  // nobody owns it after a restart; it waits to be acquired or dropped
  hold.last_access = created;
}

void SessionRegistry::RemoveSequence(const std::string& tenant, const std::string& sequence) {
  absl::MutexLock lock(&mu_);
  auto hold = holds_.find(SequenceKey(tenant, sequence));
  if (hold == holds_.end()) return;
  for (const std::string& holder : hold->second.leases) {
    auto s = sessions_.find(holder);
    if (s != sessions_.end()) s->second.leased.erase(sequence);
  }
  auto owner = sessions_.find(hold->second.owner_session);
  if (owner != sessions_.end()) owner->second.owned.erase(sequence);
  holds_.erase(hold);
}

absl::Status SessionRegistry::Lease(const std::string& tenant, const std::string& sequence,
                                    const std::string& session_id, absl::Time now) {
  absl::MutexLock lock(&mu_);
  if (absl::Status live = CheckLiveLocked(tenant, session_id); !live.ok()) return live;
  Hold& hold = holds_[SequenceKey(tenant, sequence)];
  hold.leases.insert(session_id);
  hold.last_access = now;
  sessions_[session_id].leased.insert(sequence);
  return absl::OkStatus();
}

absl::StatusOr<SessionRegistry::Unleased> SessionRegistry::Unlease(
    const std::string& tenant, const std::string& sequence, const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  if (absl::Status live = CheckLiveLocked(tenant, session_id); !live.ok()) return live;
  auto hold = holds_.find(SequenceKey(tenant, sequence));
  if (hold == holds_.end() || !hold->second.leases.erase(session_id)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "session ", session_id, " holds no lease on sequence ", sequence));
  }
  sessions_[session_id].leased.erase(sequence);
  const Hold& h = hold->second;
  return Unleased{static_cast<uint32_t>(h.leases.size()),
                  h.owner_session.empty() && h.leases.empty() && !h.retain};
}

std::string SessionRegistry::OtherLeaseHolder(const std::string& tenant,
                                              const std::string& sequence,
                                              const std::string& caller) const {
  absl::ReaderMutexLock lock(&mu_);
  auto hold = holds_.find(SequenceKey(tenant, sequence));
  if (hold == holds_.end()) return "";
  for (const std::string& holder : hold->second.leases) {
    if (holder != caller) return holder;
  }
  return "";
}

bool SessionRegistry::Leased(const std::string& tenant, const std::string& sequence) const {
  absl::ReaderMutexLock lock(&mu_);
  auto hold = holds_.find(SequenceKey(tenant, sequence));
  return hold != holds_.end() && !hold->second.leases.empty();
}

void SessionRegistry::Touch(const std::string& tenant, const std::string& sequence,
                            absl::Time now) {
  absl::MutexLock lock(&mu_);
  auto hold = holds_.find(SequenceKey(tenant, sequence));
  if (hold != holds_.end()) hold->second.last_access = now;
}

absl::Time SessionRegistry::LastAccess(const std::string& tenant,
                                       const std::string& sequence) const {
  absl::ReaderMutexLock lock(&mu_);
  auto hold = holds_.find(SequenceKey(tenant, sequence));
  return hold == holds_.end() ? absl::InfinitePast() : hold->second.last_access;
}

std::string SessionRegistry::WorkerOfLocked(const std::string& session_id) const {
  auto s = sessions_.find(session_id);
  return s == sessions_.end() ? "" : s->second.worker;
}

SessionRegistry::Holders SessionRegistry::HoldersOf(const std::string& tenant,
                                                    const std::string& sequence) const {
  absl::ReaderMutexLock lock(&mu_);
  Holders out;
  auto hold = holds_.find(SequenceKey(tenant, sequence));
  if (hold == holds_.end()) return out;
  const Hold& h = hold->second;
  out.leases = static_cast<uint32_t>(h.leases.size());
  out.retain = h.retain;
  out.has_owner = !h.owner_session.empty();
  out.last_access = h.last_access;
  if (out.has_owner) out.owner_worker = WorkerOfLocked(h.owner_session);
  for (const std::string& lease : h.leases) out.lease_workers.push_back(WorkerOfLocked(lease));
  std::sort(out.lease_workers.begin(), out.lease_workers.end());
  return out;
}

}  // namespace kvkeep
