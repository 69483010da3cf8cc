#include "service/cache_engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "service/compressor.h"
#include "service/policy_convert.h"
#include "service/quota.h"
#include "service/token_auth.h"

namespace kvkeep {
namespace {

constexpr char kTenantPrefix[] = "tenant/";
constexpr char kModelPrefix[] = "model/";


std::string ModelKey(const std::string& tenant, const std::string& model) {
  return absl::StrCat(kModelPrefix, tenant, "/", model);
}

bool ValidTenantName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || (i > 0 && c == '-');
    if (!ok) return false;
  }
  return true;
}

bool ValidWorkerName(const std::string& name) {
  if (name.empty() || name.size() > 128) return false;
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-' || c == ':';
    if (!ok) return false;
  }
  return true;
}

absl::Status NoSequence(const std::string& id) {
  return absl::NotFoundError(absl::StrCat("no sequence \"", id, "\" for this tenant"));
}

}  // namespace

void ToProto(const ArenaInfo& info, v1::ArenaExport* out) {
  out->set_arena_id(info.id);
  out->set_kind(static_cast<v1::ArenaKind>(info.handle.kind));
  out->set_handle(info.handle.handle);
  out->set_size_bytes(info.handle.size_bytes);
  out->set_device_ordinal(info.handle.device_ordinal);
  out->set_device_uuid(info.handle.device_uuid);
  info.geometry.ToProto(out->mutable_geometry());
  out->set_page_count(info.page_count);
  out->set_layout_version(1);
}

CacheEngine::CacheEngine(Backend* backend, MetadataStore* store, SpillStore* spill,
                         EngineOptions options)
    : backend_(backend), store_(store), spill_(spill), options_(options), started_(absl::Now()),
      pool_(backend, options.pool), background_(std::make_unique<Executor>(1)) {
  watermarks_.set_low_free(options.low_free);
  watermarks_.set_high_free(options.high_free);
}

CacheEngine::~CacheEngine() { background_.reset(); }

absl::StatusOr<std::unique_ptr<CacheEngine>> CacheEngine::Create(Backend* backend,
                                                                 MetadataStore* store,
                                                                 EngineOptions options,
                                                                 SpillStore* spill) {
  if (options.pool.capacity_bytes == 0 || options.pool.arena_bytes == 0) {
    return absl::InvalidArgumentError("pool capacity and arena size must be > 0");
  }
  auto engine = std::unique_ptr<CacheEngine>(new CacheEngine(backend, store, spill, options));
  RETURN_IF_ERROR(engine->Load());
  RETURN_IF_ERROR(engine->LoadSpilled());
  return engine;
}

absl::Status CacheEngine::Load() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto tenants, store_->Scan(kTenantPrefix));
  for (const auto& [key, value] : tenants) {
    Tenant t;
    if (!t.record.ParseFromString(value)) {
      return absl::DataLossError("unreadable tenant record " + key);
    }
    token_to_tenant_[t.record.token_sha256()] = t.record.name();
    tenants_[t.record.name()] = std::move(t);
  }
  auto watermarks = store_->Get(kWatermarksKeyName);
  if (watermarks.ok()) {
    if (!watermarks_.ParseFromString(*watermarks)) {
      return absl::DataLossError("unreadable pool watermarks record");
    }
  } else if (!absl::IsNotFound(watermarks.status())) {
    return watermarks.status();
  }
  ASSIGN_OR_RETURN(auto models, store_->Scan(kModelPrefix));
  for (const auto& [key, value] : models) {
    v1::ModelRecord record;
    if (!record.ParseFromString(value)) return absl::DataLossError("unreadable model " + key);
    auto it = tenants_.find(record.tenant());
    if (it == tenants_.end()) continue;  // tenant deleted; the model goes with it
    ASSIGN_OR_RETURN(Model model, Model::FromLayout(record.layout()));
    const std::string name = model.name();
    it->second.models[name] = std::make_shared<const Model>(std::move(model));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> CacheEngine::AuthenticateTenant(const std::string& token) const {
  if (token.empty()) {
    return absl::UnauthenticatedError(
        "missing bearer token: send metadata \"authorization: Bearer <tenant token>\"");
  }
  std::string hash = HashToken(token);
  absl::MutexLock lock(&mu_);
  auto it = token_to_tenant_.find(hash);
  if (it == token_to_tenant_.end()) return absl::UnauthenticatedError("unknown tenant token");
  return it->second;
}

// ---- Admin ---------------------------------------------------------------------------------

v1::TenantInfo CacheEngine::TenantInfoLocked(const Tenant& t) const {
  v1::TenantInfo info;
  info.set_name(t.record.name());
  info.set_quota_bytes(t.record.quota_bytes());
  info.set_max_bytes(t.record.max_bytes());
  info.set_weight(t.record.weight());
  info.set_used_bytes(t.used_bytes);
  info.set_used_pages(t.used_pages);
  info.set_sessions(static_cast<uint32_t>(t.sessions.size()));
  info.set_sequences(static_cast<uint32_t>(t.sequences.size()));
  info.set_arenas(static_cast<uint32_t>(pool_.ArenasOf(t.record.name()).size()));
  info.set_created_unix(t.record.created_unix());
  info.set_spill_quota_bytes(t.record.spill_quota_bytes());
  info.set_spilled_bytes(t.spilled_bytes);
  return info;
}

absl::StatusOr<v1::CreateTenantReply> CacheEngine::CreateTenant(
    const v1::CreateTenantRequest& request) {
  if (!ValidTenantName(request.name())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tenant name \"", request.name(), "\" must match [a-z0-9][a-z0-9-]{0,62}"));
  }
  if (request.max_bytes() != 0 && request.quota_bytes() > request.max_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("quota_bytes ", request.quota_bytes(),
                                                   " exceeds max_bytes ", request.max_bytes()));
  }
  if (!request.token().empty() && request.token().size() < 16) {
    return absl::InvalidArgumentError("an operator-chosen token must have at least 16 characters");
  }
  std::string token = request.token().empty() ? GenerateToken() : request.token();
  absl::MutexLock lock(&mu_);
  if (tenants_.contains(request.name())) {
    return absl::AlreadyExistsError(absl::StrCat("tenant \"", request.name(), "\" exists"));
  }
  std::string hash = HashToken(token);
  if (token_to_tenant_.contains(hash)) {
    return absl::AlreadyExistsError("that token is already in use by another tenant");
  }
  uint64_t guaranteed = request.quota_bytes();
  for (const auto& [name, t] : tenants_) guaranteed += t.record.quota_bytes();
  if (guaranteed > pool_.options().capacity_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "guarantees would total ", guaranteed, " bytes, more than the pool's ",
        pool_.options().capacity_bytes));
  }
  Tenant t;
  t.record.set_name(request.name());
  t.record.set_token_sha256(hash);
  t.record.set_quota_bytes(request.quota_bytes());
  t.record.set_max_bytes(request.max_bytes());
  t.record.set_weight(request.weight() == 0 ? 1 : request.weight());
  t.record.set_created_unix(absl::ToUnixSeconds(absl::Now()));
  t.record.set_spill_quota_bytes(request.spill_quota_bytes());
  RETURN_IF_ERROR(store_->Put(kTenantPrefix + request.name(), t.record.SerializeAsString()));
  token_to_tenant_[hash] = request.name();
  v1::CreateTenantReply reply;
  *reply.mutable_tenant() = TenantInfoLocked(t);
  reply.set_token(token);
  tenants_[request.name()] = std::move(t);
  return reply;
}

v1::ListTenantsReply CacheEngine::ListTenants() const {
  absl::MutexLock lock(&mu_);
  v1::ListTenantsReply reply;
  for (const auto& [name, t] : tenants_) *reply.add_tenants() = TenantInfoLocked(t);
  std::sort(reply.mutable_tenants()->begin(), reply.mutable_tenants()->end(),
            [](const v1::TenantInfo& a, const v1::TenantInfo& b) { return a.name() < b.name(); });
  return reply;
}

absl::StatusOr<v1::DeleteTenantReply> CacheEngine::DeleteTenant(const std::string& name,
                                                                bool force) {
  v1::DeleteTenantReply reply;
  std::vector<std::shared_ptr<Sequence>> sequences;
  {
    absl::MutexLock lock(&mu_);
    auto it = tenants_.find(name);
    if (it == tenants_.end()) return absl::NotFoundError(absl::StrCat("no tenant \"", name, "\""));
    Tenant& t = it->second;
    if (!force && (!t.sessions.empty() || !t.sequences.empty())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tenant \"", name, "\" has ", t.sessions.size(), " sessions and ", t.sequences.size(),
          " sequences; end them first or delete with force"));
    }
    // Forget the credential first: no new call of this tenant gets through from here on.
    RETURN_IF_ERROR(store_->Delete(kTenantPrefix + name));
    for (const auto& [model, m] : t.models) store_->Delete(ModelKey(name, model)).IgnoreError();
    token_to_tenant_.erase(t.record.token_sha256());
    std::vector<std::string> ids(t.sessions.begin(), t.sessions.end());
    for (const std::string& id : ids) {
      auto s = sessions_.find(id);
      if (s != sessions_.end() && s->second.sink != nullptr) {
        s->second.sink->End(absl::AbortedError("tenant " + name + " was deleted"));
      }
      std::vector<std::shared_ptr<Sequence>> unused;
      EndSessionLocked(id, &unused);
    }
    reply.set_sessions_ended(static_cast<uint32_t>(ids.size()));
    for (auto& [id, seq] : t.sequences) sequences.push_back(seq);
  }
  for (auto& seq : sequences) {
    absl::MutexLock seq_lock(&seq->mu);
    if (DropHeld(seq.get(), "", /*force=*/true).ok()) {
      reply.set_sequences_dropped(reply.sequences_dropped() + 1);
    }
  }
  pool_.ReleaseOwner(name).IgnoreError();  // pages were all freed above
  absl::MutexLock lock(&mu_);
  tenants_.erase(name);
  return reply;
}

absl::StatusOr<v1::TenantInfo> CacheEngine::SetQuota(const v1::SetQuotaRequest& request) {
  absl::MutexLock lock(&mu_);
  auto it = tenants_.find(request.name());
  if (it == tenants_.end()) {
    return absl::NotFoundError(absl::StrCat("no tenant \"", request.name(), "\""));
  }
  v1::TenantRecord record = it->second.record;
  if (request.has_quota_bytes()) record.set_quota_bytes(request.quota_bytes());
  if (request.has_max_bytes()) record.set_max_bytes(request.max_bytes());
  if (request.has_spill_quota_bytes()) record.set_spill_quota_bytes(request.spill_quota_bytes());
  if (request.has_weight()) {
    if (request.weight() == 0) return absl::InvalidArgumentError("weight must be >= 1");
    record.set_weight(request.weight());
  }
  if (record.max_bytes() != 0 && record.quota_bytes() > record.max_bytes()) {
    return absl::InvalidArgumentError(absl::StrCat("quota_bytes ", record.quota_bytes(),
                                                   " exceeds max_bytes ", record.max_bytes()));
  }
  uint64_t guaranteed = record.quota_bytes();
  for (const auto& [name, t] : tenants_) {
    if (name != request.name()) guaranteed += t.record.quota_bytes();
  }
  if (guaranteed > pool_.options().capacity_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "guarantees would total ", guaranteed, " bytes, more than the pool's ",
        pool_.options().capacity_bytes));
  }
  // Persisted before it takes effect.
  RETURN_IF_ERROR(store_->Put(kTenantPrefix + request.name(), record.SerializeAsString()));
  it->second.record = record;
  return TenantInfoLocked(it->second);
}

absl::StatusOr<v1::Policy> CacheEngine::SetPolicy(const v1::SetPolicyRequest& request) {
  RETURN_IF_ERROR(ValidatePolicyProto(request.policy()));
  absl::MutexLock lock(&mu_);
  auto it = tenants_.find(request.tenant());
  if (it == tenants_.end()) {
    return absl::NotFoundError(absl::StrCat("no tenant \"", request.tenant(), "\""));
  }
  v1::TenantRecord record = it->second.record;
  *record.mutable_policy() = request.policy();
  // Persisted before it takes effect.
  RETURN_IF_ERROR(store_->Put(kTenantPrefix + request.tenant(), record.SerializeAsString()));
  it->second.record = record;
  return record.policy();
}

absl::StatusOr<v1::Policy> CacheEngine::GetPolicy(const std::string& tenant) const {
  absl::MutexLock lock(&mu_);
  auto it = tenants_.find(tenant);
  if (it == tenants_.end()) return absl::NotFoundError(absl::StrCat("no tenant \"", tenant, "\""));
  return it->second.record.policy();
}

v1::DaemonStatus CacheEngine::Status() const {
  PoolStats stats = pool_.Stats();
  absl::MutexLock lock(&mu_);
  v1::DaemonStatus s;
  s.set_version(KVKEEP_VERSION);
  s.set_backend(backend_->name());
  s.set_pool_capacity_bytes(stats.capacity_bytes);
  s.set_pool_arena_bytes(stats.arena_bytes);
  s.set_pool_used_bytes(stats.used_bytes);
  s.set_arenas(stats.arenas);
  s.set_pages_in_use(stats.used_pages);
  s.set_tenants(static_cast<uint32_t>(tenants_.size()));
  s.set_sessions(static_cast<uint32_t>(sessions_.size()));
  uint32_t sequences = 0;
  for (const auto& [name, t] : tenants_) {
    sequences += static_cast<uint32_t>(t.sequences.size());
    *s.add_tenant_usage() = TenantInfoLocked(t);
  }
  std::sort(s.mutable_tenant_usage()->begin(), s.mutable_tenant_usage()->end(),
            [](const v1::TenantInfo& a, const v1::TenantInfo& b) { return a.name() < b.name(); });
  s.set_sequences(sequences);
  *s.mutable_watermarks() = watermarks_;
  uint64_t spilled_bytes = 0;
  for (const auto& [name, t] : tenants_) spilled_bytes += t.spilled_bytes;
  s.set_spilled_bytes(spilled_bytes);
  if (spill_ != nullptr) {
    auto spilled = spill_->List();
    if (spilled.ok()) s.set_spilled_sequences(static_cast<uint32_t>(spilled->size()));
  }
  s.set_spills(spills_.load());
  s.set_restores(restores_.load());
  s.set_spill_errors(spill_errors_.load());
  s.set_uptime_seconds(absl::ToDoubleSeconds(absl::Now() - started_));
  return s;
}

// ---- Sessions ------------------------------------------------------------------------------

absl::StatusOr<CacheEngine::Attached> CacheEngine::Attach(const std::string& tenant,
                                                          const std::string& worker_name,
                                                          SessionSink* sink) {
  if (!ValidWorkerName(worker_name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker name \"", worker_name, "\" must match [A-Za-z0-9._:-]{1,128}"));
  }
  absl::MutexLock lock(&mu_);
  auto t = tenants_.find(tenant);
  if (t == tenants_.end()) return absl::UnauthenticatedError("tenant no longer exists");
  Attached out;
  Session session;
  session.id = RandomHex(16);
  session.tenant = tenant;
  session.worker_name = worker_name;
  session.sink = sink;
  // Supersede an older session of the same worker: it ends, its sequences move here.
  for (const std::string& old_id : t->second.sessions) {
    auto old = sessions_.find(old_id);
    if (old == sessions_.end() || old->second.worker_name != worker_name) continue;
    Session& o = old->second;
    out.superseded_session_id = o.id;
    for (const std::string& seq_id : o.owned) {
      auto s = t->second.sequences.find(seq_id);
      if (s == t->second.sequences.end()) continue;
      s->second->owner_session = session.id;
      session.owned.insert(seq_id);
      ++out.adopted_sequences;
    }
    for (const std::string& seq_id : o.leased) {
      auto s = t->second.sequences.find(seq_id);
      if (s == t->second.sequences.end()) continue;
      s->second->leases.erase(o.id);
      s->second->leases.insert(session.id);
      session.leased.insert(seq_id);
    }
    if (o.sink != nullptr) {
      o.sink->End(absl::AbortedError(absl::StrCat("superseded by a newer session of worker \"",
                                                  worker_name, "\"")));
    }
    t->second.sessions.erase(old_id);
    sessions_.erase(old);
    break;
  }
  out.session_id = session.id;
  t->second.sessions.insert(session.id);
  sessions_[session.id] = std::move(session);
  out.arenas = pool_.ArenasOf(tenant);
  return out;
}

void CacheEngine::EndSessionLocked(const std::string& session_id,
                                   std::vector<std::shared_ptr<Sequence>>* drop) {
  auto it = sessions_.find(session_id);
  if (it == sessions_.end()) return;
  Session& s = it->second;
  auto t = tenants_.find(s.tenant);
  if (t != tenants_.end()) {
    for (const std::string& seq_id : s.leased) {
      auto q = t->second.sequences.find(seq_id);
      if (q != t->second.sequences.end()) q->second->leases.erase(session_id);
    }
    for (const std::string& seq_id : s.owned) {
      auto q = t->second.sequences.find(seq_id);
      if (q == t->second.sequences.end()) continue;
      q->second->owner_session.clear();
      if (!q->second->retain && q->second->leases.empty()) drop->push_back(q->second);
    }
    t->second.sessions.erase(session_id);
  }
  sessions_.erase(it);
}

void CacheEngine::DropOrphans(const std::vector<std::shared_ptr<Sequence>>& drop) {
  for (const auto& seq : drop) {
    absl::MutexLock seq_lock(&seq->mu);
    // Skipped when someone leased it meanwhile; it is dropped when that lease ends.
    DropHeld(seq.get(), "", /*force=*/false).IgnoreError();
  }
}

void CacheEngine::EndSession(const std::string& session_id) {
  std::vector<std::shared_ptr<Sequence>> drop;
  {
    absl::MutexLock lock(&mu_);
    EndSessionLocked(session_id, &drop);
  }
  DropOrphans(drop);
}

void CacheEngine::EndAllSessions(const absl::Status& status) {
  std::vector<std::shared_ptr<Sequence>> drop;
  {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> ids;
    for (auto& [id, s] : sessions_) {
      if (s.sink != nullptr) s.sink->End(status);
      ids.push_back(id);
    }
    for (const auto& id : ids) EndSessionLocked(id, &drop);
  }
  DropOrphans(drop);
}

absl::Status CacheEngine::CheckSessionIfGiven(const std::string& tenant,
                                              const std::string& id) const {
  if (id.empty()) return absl::OkStatus();
  absl::MutexLock lock(&mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end() || it->second.tenant != tenant) {
    return absl::NotFoundError(absl::StrCat("no live session \"", id, "\" for this tenant"));
  }
  return absl::OkStatus();
}

absl::StatusOr<CacheEngine::Session*> CacheEngine::FindSessionLocked(const std::string& tenant,
                                                                     const std::string& id) {
  auto it = sessions_.find(id);
  if (id.empty()) {
    return absl::InvalidArgumentError("session_id is required (from the Session stream)");
  }
  if (it == sessions_.end() || it->second.tenant != tenant) {
    return absl::NotFoundError(absl::StrCat("no live session \"", id, "\" for this tenant"));
  }
  return &it->second;
}

// ---- Models and arenas ---------------------------------------------------------------------

absl::StatusOr<v1::RegisterModelReply> CacheEngine::RegisterModel(const std::string& tenant,
                                                                  Model model) {
  absl::MutexLock lock(&mu_);
  auto t = tenants_.find(tenant);
  if (t == tenants_.end()) return absl::UnauthenticatedError("tenant no longer exists");
  v1::RegisterModelReply reply;
  reply.set_model(model.name());
  auto existing = t->second.models.find(model.name());
  if (existing != t->second.models.end()) {
    if (!existing->second->SameLayout(model.layout())) {
      return absl::AlreadyExistsError(absl::StrCat(
          "model \"", model.name(), "\" is registered with a different layout"));
    }
    if (model.wo_gram_count() == 0) {
      reply.set_created(false);
      reply.set_wo_grams(static_cast<uint32_t>(existing->second->wo_gram_count()));
      existing->second->geometry().ToProto(reply.mutable_geometry());
      return reply;
    }
    // Same layout with Grams: the newer set replaces the old (sequences keep the model they had).
  } else {
    v1::ModelRecord record;
    record.set_tenant(tenant);
    *record.mutable_layout() = model.layout();
    RETURN_IF_ERROR(store_->Put(ModelKey(tenant, model.name()), record.SerializeAsString()));
    reply.set_created(true);
  }
  reply.set_wo_grams(static_cast<uint32_t>(model.wo_gram_count()));
  model.geometry().ToProto(reply.mutable_geometry());
  const std::string name = model.name();  // before the move below
  t->second.models[name] = std::make_shared<const Model>(std::move(model));
  return reply;
}

absl::StatusOr<v1::ArenaExport> CacheEngine::GetArena(const std::string& tenant,
                                                      uint32_t arena_id) const {
  ASSIGN_OR_RETURN(ArenaInfo info, pool_.GetArena(tenant, arena_id));
  v1::ArenaExport out;
  ToProto(info, &out);
  return out;
}

// ---- Sequences -----------------------------------------------------------------------------

absl::StatusOr<std::shared_ptr<CacheEngine::Sequence>> CacheEngine::FindSequence(
    const std::string& tenant, const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto t = tenants_.find(tenant);
  if (t == tenants_.end()) return absl::UnauthenticatedError("tenant no longer exists");
  auto it = t->second.sequences.find(id);
  if (it == t->second.sequences.end()) return NoSequence(id);
  return it->second;
}

void CacheEngine::TableToProto(const Sequence& seq, bool with_positions,
                               v1::PageTable* out) const {
  out->set_sequence_id(seq.id);
  out->set_model(seq.model->name());
  out->set_next_position(static_cast<uint64_t>(seq.table.next_position()));
  out->set_tier(seq.spilled ? v1::TIER_SPILLED : v1::TIER_DEVICE);
  const uint32_t kv_heads = seq.model->kv_heads();
  for (uint32_t h = 0; h < seq.table.heads(); ++h) {
    const auto& head = seq.table.head(h);
    v1::HeadTable* ht = out->add_heads();
    ht->set_layer(h / kv_heads);
    ht->set_kv_head(h % kv_heads);
    ht->set_token_count(head.count);
    ht->set_capacity(static_cast<uint32_t>(seq.table.capacity(h)));
    ht->mutable_pages()->Add(head.pages.begin(), head.pages.end());
    if (with_positions) ht->mutable_positions()->Add(head.positions.begin(), head.positions.end());
  }
}

absl::StatusOr<v1::PageTable> CacheEngine::CreateSequence(
    const std::string& tenant, const v1::CreateSequenceRequest& request) {
  std::shared_ptr<Sequence> seq;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(Session * session, FindSessionLocked(tenant, request.session_id()));
    Tenant& t = tenants_[tenant];
    auto m = t.models.find(request.model());
    if (m == t.models.end()) {
      return absl::NotFoundError(absl::StrCat(
          "no model \"", request.model(), "\" registered for this tenant; call RegisterModel"));
    }
    seq = std::make_shared<Sequence>("seq-" + RandomHex(12), tenant, m->second);
    seq->owner_session = session->id;
    seq->leases.insert(session->id);
    seq->retain = request.retain();
    seq->last_access = absl::Now();
    session->owned.insert(seq->id);
    session->leased.insert(seq->id);
    t.sequences[seq->id] = seq;
  }
  // Not under mu_: the lock order is Sequence::mu before CacheEngine::mu_.
  v1::PageTable table;
  absl::ReaderMutexLock seq_lock(&seq->mu);
  TableToProto(*seq, false, &table);
  return table;
}

absl::StatusOr<v1::PageTableDelta> CacheEngine::AllocatePages(const std::string& tenant,
                                                              const v1::AllocateRequest& request) {
  if (request.tokens() == 0 || request.tokens() > options_.max_tokens_per_allocation) {
    return absl::InvalidArgumentError(absl::StrCat("tokens = ", request.tokens(), " (must be 1..",
                                                   options_.max_tokens_per_allocation, ")"));
  }
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, request.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, request.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  const PageGeometry& geometry = seq->model->geometry();
  uint64_t total_pages = 0;
  std::vector<uint32_t> need = seq->table.PagesNeeded(request.tokens(), &total_pages);
  for (uint32_t h = 0; h < need.size(); ++h) {
    if (seq->table.capacity(h) + uint64_t{need[h]} * geometry.tokens_per_page > UINT32_MAX) {
      return absl::InvalidArgumentError("a head of this sequence would pass 2^32 tokens");
    }
  }
  v1::PageTableDelta delta;
  delta.set_sequence_id(seq->id);
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> new_arenas;
  RETURN_IF_ERROR(AllocateCharged(tenant, geometry, total_pages, &pages, &new_arenas));
  {
    absl::MutexLock lock(&mu_);
    seq->last_access = absl::Now();
    delta.set_tenant_used_bytes(tenants_[tenant].used_bytes);
  }
  for (const ArenaInfo& arena : new_arenas) ToProto(arena, delta.add_new_arenas());
  const uint32_t kv_heads = seq->model->kv_heads();
  size_t next = 0;
  for (uint32_t h = 0; h < need.size(); ++h) {
    if (need[h] == 0) continue;
    absl::Span<const uint64_t> mine(pages.data() + next, need[h]);
    next += need[h];
    seq->table.AppendPages(h, mine);
    v1::HeadTable* ht = delta.add_heads();
    ht->set_layer(h / kv_heads);
    ht->set_kv_head(h % kv_heads);
    ht->set_token_count(seq->table.head(h).count);
    ht->set_capacity(static_cast<uint32_t>(seq->table.capacity(h)));
    ht->mutable_pages()->Add(mine.begin(), mine.end());
  }
  return delta;
}

absl::Status CacheEngine::AllocateCharged(const std::string& tenant, const PageGeometry& geometry,
                                          uint64_t count, std::vector<uint64_t>* pages,
                                          std::vector<ArenaInfo>* new_arenas) {
  if (count == 0) return absl::OkStatus();
  const uint64_t bytes = count * geometry.page_bytes;
  absl::Status status;
  for (int attempt = 0; attempt < 2; ++attempt) {
    // Charge the tenant first so concurrent allocations cannot both pass the check.
    {
      absl::MutexLock lock(&mu_);
      Tenant& t = tenants_[tenant];
      uint64_t reserved_for_others = 0;
      for (const auto& [name, other] : tenants_) {
        if (name != tenant && other.record.quota_bytes() > other.used_bytes) {
          reserved_for_others += other.record.quota_bytes() - other.used_bytes;
        }
      }
      TenantUsage usage{tenant, t.record.quota_bytes(), t.record.max_bytes(), t.used_bytes};
      status = CheckAdmission(usage, bytes, pool_.options().capacity_bytes, used_bytes_,
                              reserved_for_others);
      if (status.ok()) {
        t.used_bytes += bytes;
        t.used_pages += count;
        used_bytes_ += bytes;
      }
    }
    if (status.ok()) {
      status = pool_.Allocate(tenant, geometry, count, pages, new_arenas);
      absl::MutexLock lock(&mu_);
      Tenant& t = tenants_[tenant];
      if (!status.ok()) {
        t.used_bytes -= bytes;
        t.used_pages -= count;
        used_bytes_ -= bytes;
      } else {
        for (const ArenaInfo& arena : *new_arenas) {
          for (const std::string& sid : t.sessions) {
            auto s = sessions_.find(sid);
            if (s != sessions_.end() && s->second.sink != nullptr) {
              s->second.sink->ArenaAdded(arena);
            }
          }
        }
      }
    }
    if (status.ok()) {
      MaybeRelievePressureLater();
      return status;
    }
    // A tenant's own hard maximum is not pool pressure; anything else may be relieved by
    // spilling cold sequences, once.
    if (attempt > 0 || status.message().find("quota exceeded") != absl::string_view::npos ||
        RelievePressure(bytes) == 0) {
      break;
    }
  }
  return status;
}

absl::StatusOr<v1::CommitReply> CacheEngine::CommitTokens(const std::string& tenant,
                                                          const v1::CommitRequest& request) {
  if (request.tokens() == 0) return absl::InvalidArgumentError("tokens must be > 0");
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, request.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, request.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  // Statistics are checked against the table as it will be, before anything changes. One entry
  // per layer: each is validated against what is stored, so two for one layer could not be.
  absl::flat_hash_set<uint32_t> layers;
  for (const v1::LayerStats& layer : request.stats()) {
    if (!layers.insert(layer.layer()).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stats carries layer ", layer.layer(), " twice; send one LayerStats per layer"));
    }
  }
  for (const v1::LayerStats& layer : request.stats()) {
    RETURN_IF_ERROR(ValidateLayerStats(*seq->model, seq->table, seq->stats, layer,
                                       request.tokens()));
  }
  RETURN_IF_ERROR(seq->table.Commit(request.tokens(), request.positions()));
  for (const v1::LayerStats& layer : request.stats()) {
    // Validated above against the same table and stats: cannot fail.
    ApplyLayerStats(*seq->model, seq->table, layer, &seq->stats).IgnoreError();
  }
  v1::Policy policy;
  {
    absl::MutexLock lock(&mu_);
    seq->last_access = absl::Now();
    auto t = tenants_.find(tenant);
    if (t != tenants_.end()) policy = t->second.record.policy();
  }
  v1::CommitReply reply;
  // Decode-time eviction: a head past the tenant's max_tokens by a page is compressed back to it.
  if (policy.has_max_tokens()) {
    const uint64_t trigger =
        uint64_t{policy.max_tokens()} + seq->model->geometry().tokens_per_page;
    if (seq->table.max_count() >= trigger) {
      auto compressed = CompressHeld(seq.get(), v1::Policy());
      if (compressed.ok()) {
        *reply.mutable_compressed() = std::move(*compressed);
      } else {
        reply.set_compress_error(compressed.status().ToString());
      }
    }
  }
  reply.set_token_count(seq->table.max_count());
  reply.set_next_position(static_cast<uint64_t>(seq->table.next_position()));
  return reply;
}

absl::Status CacheEngine::PutStats(const std::string& tenant, const v1::StatsChunk& chunk) {
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, chunk.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  return ApplyLayerStats(*seq->model, seq->table, chunk.stats(), &seq->stats);
}

absl::StatusOr<v1::CompressReply> CacheEngine::Compress(const std::string& tenant,
                                                        const v1::CompressRequest& request) {
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, request.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, request.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  return CompressHeld(seq.get(), request.policy());
}

absl::StatusOr<v1::CompressReply> CacheEngine::CompressHeld(Sequence* seq,
                                                            const v1::Policy& policy) {
  v1::Policy tenant_default;
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(seq->tenant);
    if (t != tenants_.end()) tenant_default = t->second.record.policy();
  }
  ASSIGN_OR_RETURN(ResolvedPolicy resolved, ResolvePolicy(policy, tenant_default));
  // Scoring memory is reused per thread: executor threads for Compress, gRPC threads for the
  // decode-time eviction inside CommitTokens.
  thread_local CompressScratch scratch;
  ASSIGN_OR_RETURN(CompressOutcome outcome,
                   CompressSequence(*seq->model, seq->table, seq->stats, resolved.policy,
                                    resolved.budget, *backend_, pool_, scratch));
  const PageGeometry& geometry = seq->model->geometry();
  if (!outcome.freed_pages.empty()) {
    const uint64_t pages = outcome.freed_pages.size();
    const uint64_t bytes = pages * geometry.page_bytes;
    pool_.Free(outcome.freed_pages);
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(seq->tenant);
    if (t != tenants_.end()) {
      t->second.used_bytes -= bytes;
      t->second.used_pages -= pages;
    }
    used_bytes_ -= bytes;
  }
  v1::CompressReply reply;
  TableToProto(*seq, /*with_positions=*/true, reply.mutable_table());
  ToProto(outcome, resolved.policy, geometry, reply.mutable_summary());
  return reply;
}

absl::Status CacheEngine::WriteChunk(const std::string& tenant, const v1::KvChunk& chunk) {
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, chunk.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, chunk.sequence_id()));
  const Model& model = *seq->model;
  const PageGeometry& g = model.geometry();
  if (chunk.layer() >= model.layers() || chunk.kv_head() >= model.kv_heads()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", chunk.layer(), ", kv_head ", chunk.kv_head(), " outside model \"", model.name(),
        "\" (", model.layers(), " layers, ", model.kv_heads(), " KV heads)"));
  }
  if (chunk.token_count() == 0) return absl::InvalidArgumentError("token_count must be > 0");
  const uint64_t want = uint64_t{chunk.token_count()} * g.token_bytes;
  if (chunk.keys().size() != want || chunk.values().size() != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk of ", chunk.token_count(), " tokens needs ", want, " bytes of keys and of values (",
        g.head_dim, " x ", DTypeSize(g.dtype), "-byte elements per token); got ",
        chunk.keys().size(), " and ", chunk.values().size()));
  }
  if (chunk.positions_size() != 0 || chunk.page() != 0) {
    return absl::InvalidArgumentError("positions and page are ReadKV fields; CommitTokens sets positions");
  }
  absl::ReaderMutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  const uint32_t head = chunk.layer() * model.kv_heads() + chunk.kv_head();
  absl::Status io;
  RETURN_IF_ERROR(seq->table.ForEachSegment(
      head, chunk.token_offset(), chunk.token_count(),
      [&](uint64_t page, uint32_t slot, uint32_t n, uint64_t done) {
        if (!io.ok()) return;
        Arena* arena = pool_.ArenaOf(page);
        const uint64_t base = uint64_t{PageRef::Unpack(page).index} * g.page_bytes;
        const uint64_t off = slot * g.token_bytes;
        io = backend_->Write(*arena, base + off, chunk.keys().data() + done * g.token_bytes,
                             n * g.token_bytes);
        if (io.ok()) {
          io = backend_->Write(*arena, base + g.value_offset + off,
                               chunk.values().data() + done * g.token_bytes, n * g.token_bytes);
        }
      }));
  return io;
}

absl::StatusOr<v1::PageTable> CacheEngine::GetSequence(const std::string& tenant,
                                                       const std::string& sequence_id,
                                                       bool with_positions) {
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, sequence_id));
  absl::ReaderMutexLock seq_lock(&seq->mu);
  if (seq->dropped) return NoSequence(sequence_id);
  v1::PageTable table;
  TableToProto(*seq, with_positions, &table);
  return table;
}

absl::StatusOr<v1::PageTable> CacheEngine::Acquire(const std::string& tenant,
                                                   const v1::AcquireRequest& r) {
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, r.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  if (seq->dropped) return NoSequence(r.sequence_id());
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, r.session_id()));
  if (seq->spilled) RETURN_IF_ERROR(RestoreHeld(seq.get()));  // transparent restore
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(Session * session, FindSessionLocked(tenant, r.session_id()));
    seq->leases.insert(session->id);
    session->leased.insert(seq->id);
    seq->last_access = absl::Now();
  }
  v1::PageTable table;
  TableToProto(*seq, r.with_positions(), &table);
  // A worker acquiring another session's sequence may not have mapped its arenas yet.
  absl::flat_hash_set<uint32_t> arenas;
  for (const auto& head : table.heads()) {
    for (uint64_t page : head.pages()) arenas.insert(PageRef::Unpack(page).arena);
  }
  for (uint32_t id : arenas) {
    ASSIGN_OR_RETURN(ArenaInfo info, pool_.GetArena(tenant, id));
    ToProto(info, table.add_arenas());
  }
  return table;
}

absl::StatusOr<v1::ReleaseReply> CacheEngine::Release(const std::string& tenant,
                                                      const v1::ReleaseRequest& r) {
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, r.sequence_id()));
  bool orphan = false;
  v1::ReleaseReply reply;
  {
    absl::MutexLock lock(&mu_);
    ASSIGN_OR_RETURN(Session * session, FindSessionLocked(tenant, r.session_id()));
    if (!seq->leases.erase(session->id)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "session ", session->id, " holds no lease on sequence ", seq->id));
    }
    session->leased.erase(seq->id);
    reply.set_leases_left(static_cast<uint32_t>(seq->leases.size()));
    orphan = seq->owner_session.empty() && seq->leases.empty() && !seq->retain;
  }
  if (orphan) DropOrphans({seq});
  return reply;
}

absl::StatusOr<v1::DropReply> CacheEngine::Drop(const std::string& tenant,
                                                const v1::DropRequest& r) {
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, r.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, r.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  if (seq->dropped) return NoSequence(r.sequence_id());
  return DropHeld(seq.get(), r.session_id(), /*force=*/false);
}

absl::StatusOr<v1::DropReply> CacheEngine::DropHeld(Sequence* seq,
                                                    const std::string& caller_session,
                                                    bool force) {
  if (seq->dropped) return NoSequence(seq->id);
  const uint64_t pages = seq->table.page_count();
  const uint64_t bytes = pages * seq->model->geometry().page_bytes;
  {
    absl::MutexLock lock(&mu_);
    if (!force) {
      for (const std::string& holder : seq->leases) {
        if (holder != caller_session) {
          return absl::FailedPreconditionError(absl::StrCat(
              "sequence ", seq->id, " is leased by session ", holder, "; it must Release first"));
        }
      }
    }
  }
  if (seq->spilled) {
    absl::Status deleted = spill_->Delete(seq->tenant, seq->id);
    if (!deleted.ok() && !absl::IsNotFound(deleted)) {
      ++spill_errors_;
      return deleted;  // still listed and restorable; the caller may retry
    }
  }
  {
    absl::MutexLock lock(&mu_);
    if (seq->spilled) {
      auto t = tenants_.find(seq->tenant);
      if (t != tenants_.end()) t->second.spilled_bytes -= seq->spilled_bytes;
    }
    auto t = tenants_.find(seq->tenant);
    if (t != tenants_.end()) {
      t->second.sequences.erase(seq->id);
      t->second.used_bytes -= bytes;
      t->second.used_pages -= pages;
    }
    used_bytes_ -= bytes;
    for (const std::string& holder : seq->leases) {
      auto s = sessions_.find(holder);
      if (s != sessions_.end()) s->second.leased.erase(seq->id);
    }
    auto owner = sessions_.find(seq->owner_session);
    if (owner != sessions_.end()) owner->second.owned.erase(seq->id);
    seq->leases.clear();
  }
  pool_.Free(seq->table.AllPages());
  seq->dropped = true;
  v1::DropReply reply;
  reply.set_pages_freed(static_cast<uint32_t>(pages));
  reply.set_bytes_freed(bytes);
  return reply;
}

// ---- Reads ---------------------------------------------------------------------------------

namespace {

uint64_t ChunkBudget(uint32_t requested, uint64_t max_message_bytes) {
  // Leave room for the message envelope under the gRPC limit.
  const uint64_t cap = max_message_bytes > (64 << 10) ? max_message_bytes - (64 << 10) : 4096;
  const uint64_t want = requested == 0 ? (1 << 20) : requested;
  return std::min(want, cap);
}

}  // namespace

class SequenceReadCursor final : public CacheEngine::ReadCursor {
 public:
  SequenceReadCursor(std::shared_ptr<CacheEngine::Sequence> seq, Backend* backend,
                     const PagePool* pool, std::vector<uint32_t> heads, uint32_t token_begin,
                     uint32_t token_end, uint64_t chunk_bytes)
      : seq_(std::move(seq)), backend_(backend), pool_(pool), heads_(std::move(heads)),
        token_begin_(token_begin), token_end_(token_end), chunk_bytes_(chunk_bytes),
        next_token_(token_begin) {}

  absl::StatusOr<bool> Next(v1::KvChunk* chunk) override {
    absl::ReaderMutexLock lock(&seq_->mu);
    if (seq_->dropped || seq_->spilled) {
      return absl::AbortedError("sequence was dropped or spilled during the read");
    }
    const PageGeometry& g = seq_->model->geometry();
    const uint32_t per_chunk =
        static_cast<uint32_t>(std::max<uint64_t>(1, chunk_bytes_ / (2 * g.token_bytes)));
    while (head_index_ < heads_.size()) {
      const uint32_t h = heads_[head_index_];
      const auto& head = seq_->table.head(h);
      const uint32_t end = std::min(token_end_, head.count);
      if (next_token_ >= end) {
        ++head_index_;
        next_token_ = token_begin_;
        continue;
      }
      const uint32_t n = std::min(per_chunk, end - next_token_);
      chunk->Clear();
      chunk->set_sequence_id(seq_->id);
      chunk->set_layer(h / seq_->model->kv_heads());
      chunk->set_kv_head(h % seq_->model->kv_heads());
      chunk->set_token_offset(next_token_);
      chunk->set_token_count(n);
      std::string* keys = chunk->mutable_keys();
      std::string* values = chunk->mutable_values();
      keys->resize(n * g.token_bytes);
      values->resize(n * g.token_bytes);
      absl::Status io;
      absl::Status walk = seq_->table.ForEachSegment(
          h, next_token_, n, [&](uint64_t page, uint32_t slot, uint32_t k, uint64_t done) {
            if (!io.ok()) return;
            const Arena* arena = pool_->ArenaOf(page);
            const uint64_t base = uint64_t{PageRef::Unpack(page).index} * g.page_bytes;
            io = backend_->Read(*arena, base + slot * g.token_bytes,
                                keys->data() + done * g.token_bytes, k * g.token_bytes);
            if (io.ok()) {
              io = backend_->Read(*arena, base + g.value_offset + slot * g.token_bytes,
                                  values->data() + done * g.token_bytes, k * g.token_bytes);
            }
          });
      if (!walk.ok()) return walk;
      if (!io.ok()) return io;
      chunk->mutable_positions()->Add(head.positions.begin() + next_token_,
                                      head.positions.begin() + next_token_ + n);
      next_token_ += n;
      return true;
    }
    return false;
  }

 private:
  const std::shared_ptr<CacheEngine::Sequence> seq_;
  Backend* const backend_;
  const PagePool* const pool_;
  const std::vector<uint32_t> heads_;
  const uint32_t token_begin_, token_end_;
  const uint64_t chunk_bytes_;
  size_t head_index_ = 0;
  uint32_t next_token_;
};

class PageReadCursor final : public CacheEngine::ReadCursor {
 public:
  PageReadCursor(std::string tenant, std::vector<uint64_t> pages, Backend* backend,
                 const PagePool* pool)
      : tenant_(std::move(tenant)), pages_(std::move(pages)), backend_(backend), pool_(pool) {}

  absl::StatusOr<bool> Next(v1::KvChunk* chunk) override {
    if (next_ >= pages_.size()) return false;
    const uint64_t page = pages_[next_++];
    // Checked again at read time: the page must still be this tenant's and allocated.
    ASSIGN_OR_RETURN(PagePool::Location loc, pool_->Locate(tenant_, page));
    chunk->Clear();
    chunk->set_page(page);
    chunk->set_token_count(loc.geometry.tokens_per_page);
    std::string* keys = chunk->mutable_keys();
    std::string* values = chunk->mutable_values();
    keys->resize(loc.geometry.value_offset);
    values->resize(loc.geometry.value_offset);
    RETURN_IF_ERROR(backend_->Read(*loc.arena, loc.offset, keys->data(), keys->size()));
    RETURN_IF_ERROR(backend_->Read(*loc.arena, loc.offset + loc.geometry.value_offset,
                                   values->data(), values->size()));
    return true;
  }

 private:
  const std::string tenant_;
  const std::vector<uint64_t> pages_;
  Backend* const backend_;
  const PagePool* const pool_;
  size_t next_ = 0;
};

absl::StatusOr<std::unique_ptr<CacheEngine::ReadCursor>> CacheEngine::OpenRead(
    const std::string& tenant, const v1::ReadRequest& r) {
  if (r.pages_size() > 0) {
    if (!r.sequence_id().empty()) {
      return absl::InvalidArgumentError("give either sequence_id or pages, not both");
    }
    // Validate every page before streaming any.
    for (uint64_t page : r.pages()) {
      ASSIGN_OR_RETURN(PagePool::Location loc, pool_.Locate(tenant, page));
      if (2 * loc.geometry.value_offset + 1024 > options_.max_message_bytes) {
        return absl::InvalidArgumentError("a page does not fit one message; read by sequence");
      }
    }
    return std::unique_ptr<ReadCursor>(new PageReadCursor(
        tenant, std::vector<uint64_t>(r.pages().begin(), r.pages().end()), backend_, &pool_));
  }
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, r.sequence_id()));
  const Model& model = *seq->model;
  const uint32_t layer_end = r.layer_end() == 0 ? model.layers() : r.layer_end();
  const uint32_t head_end = r.kv_head_end() == 0 ? model.kv_heads() : r.kv_head_end();
  if (r.layer_begin() >= layer_end || layer_end > model.layers()) {
    return absl::OutOfRangeError(absl::StrCat("layers [", r.layer_begin(), ", ", layer_end,
                                              ") outside 0..", model.layers()));
  }
  if (r.kv_head_begin() >= head_end || head_end > model.kv_heads()) {
    return absl::OutOfRangeError(absl::StrCat("KV heads [", r.kv_head_begin(), ", ", head_end,
                                              ") outside 0..", model.kv_heads()));
  }
  const uint32_t token_end = r.token_end() == 0 ? UINT32_MAX : r.token_end();
  if (r.token_begin() > token_end) {
    return absl::InvalidArgumentError("token_begin is after token_end");
  }
  {
    absl::ReaderMutexLock lock(&seq->mu);
    RETURN_IF_ERROR(OnDevice(*seq));
    if (r.token_begin() > seq->table.max_count()) {
      return absl::OutOfRangeError(absl::StrCat("token_begin ", r.token_begin(),
                                                " is past the ", seq->table.max_count(),
                                                " committed tokens"));
    }
  }
  const uint64_t budget = ChunkBudget(r.max_chunk_bytes(), options_.max_message_bytes);
  if (2 * model.geometry().token_bytes > budget) {
    return absl::InvalidArgumentError("max_chunk_bytes is smaller than one token's keys+values");
  }
  std::vector<uint32_t> heads;
  for (uint32_t l = r.layer_begin(); l < layer_end; ++l) {
    for (uint32_t k = r.kv_head_begin(); k < head_end; ++k) heads.push_back(l * model.kv_heads() + k);
  }
  return std::unique_ptr<ReadCursor>(new SequenceReadCursor(
      std::move(seq), backend_, &pool_, std::move(heads), r.token_begin(), token_end, budget));
}

}  // namespace kvkeep
