// CacheEngine: the operator side — tenants (credentials, quotas, policies) and the daemon status.
#include "service/engine/cache_engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "service/engine/cache_engine_internal.h"
#include "service/compress/policy_convert.h"
#include "service/token_auth.h"
#include "service/eviction/policy.h"
#include "service/engine/sequence_stats.h"
#include "service/observability/log.h"

namespace kvkeep {

using engine_internal::kTenantPrefix;
using engine_internal::ModelKey;
using engine_internal::NoSequence;
using engine_internal::ValidTenantName;

// ---- Admin ---------------------------------------------------------------------------------

v1::TenantInfo CacheEngine::TenantInfoLocked(const Tenant& t) const {
  v1::TenantInfo info;
  info.set_name(t.record.name());
  info.set_quota_bytes(t.record.quota_bytes());
  info.set_max_bytes(t.record.max_bytes());
  info.set_weight(t.record.weight());
  const TenantCharges charges = ledger_.ChargesOf(t.record.name());
  info.set_used_bytes(charges.used_bytes);
  info.set_used_pages(charges.used_pages);
  info.set_sessions(sessions_.SessionsOf(t.record.name()));
  info.set_sequences(static_cast<uint32_t>(t.sequences.size()));
  info.set_arenas(static_cast<uint32_t>(pool_.ArenasOf(t.record.name()).size()));
  info.set_created_unix(t.record.created_unix());
  info.set_spill_quota_bytes(t.record.spill_quota_bytes());
  info.set_spilled_bytes(charges.spilled_bytes);
  info.set_fair_share_bytes(ledger_.FairShares("")[t.record.name()]);
  info.set_pressure_evicted_pages(charges.pressure_evicted_pages);
  info.set_sharing_group(t.record.sharing_group());
  info.set_shared_charge_bytes(charges.shared_charge_bytes);
  info.set_metadata_bytes(charges.metadata_bytes);
  info.set_max_metadata_bytes(ledger_.metadata_bytes_per_tenant());
  return info;
}

absl::Status CacheEngine::ReserveAdminToken(const std::string& admin_token_hash) {
  absl::MutexLock lock(&mu_);
  auto it = token_to_tenant_.find(admin_token_hash);
  if (it != token_to_tenant_.end()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "the admin token equals the token of tenant \"", it->second,
        "\"; it would authenticate as both. Put another admin token in the admin token file "
        "(--admin_token_file) and start again"));
  }
  admin_token_hash_ = admin_token_hash;
  return absl::OkStatus();
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
  if (!request.sharing_group().empty() && !ValidTenantName(request.sharing_group())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sharing group \"", request.sharing_group(), "\" must match [a-z0-9][a-z0-9-]{0,62}"));
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
  if (!admin_token_hash_.empty() && ConstantTimeEquals(hash, admin_token_hash_)) {
    return absl::AlreadyExistsError(
        "that token is the daemon's admin token; a tenant token must differ from it");
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
  t.record.set_sharing_group(request.sharing_group());
  RETURN_IF_ERROR(EnsureGroupLocked(request.sharing_group()));  // the group's salt first
  RETURN_IF_ERROR(store_->Put(kTenantPrefix + request.name(), t.record.SerializeAsString()));
  token_to_tenant_[hash] = request.name();
  ledger_.OpenAccount(request.name(), LimitsOf(t.record));
  log::Info("tenant.create", {{"tenant", request.name()},
                              {"quota_bytes", t.record.quota_bytes()},
                              {"max_bytes", t.record.max_bytes()},
                              {"weight", t.record.weight()},
                              {"spill_quota_bytes", t.record.spill_quota_bytes()},
                              {"sharing_group", t.record.sharing_group()}});
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
    const uint32_t session_count = sessions_.SessionsOf(name);
    if (!force && (session_count != 0 || !t.sequences.empty())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tenant \"", name, "\" has ", session_count, " sessions and ", t.sequences.size(),
          " sequences; end them first or delete with force"));
    }
    // Forget the credential first: no new call of this tenant gets through from here on.
    RETURN_IF_ERROR(store_->Delete(kTenantPrefix + name));
    for (const auto& [model, m] : t.models) store_->Delete(ModelKey(name, model)).IgnoreError();
    token_to_tenant_.erase(t.record.token_sha256());
    // Their sequences are all dropped below (forced): the orphans need no separate drop.
    reply.set_sessions_ended(
        sessions_.EndTenant(name, absl::AbortedError("tenant " + name + " was deleted")));
    for (auto& [id, seq] : t.sequences) sequences.push_back(seq);
  }
  for (auto& seq : sequences) {
    absl::MutexLock seq_lock(&seq->mu);
    if (DropHeld(seq.get(), "", /*force=*/true).ok()) {
      reply.set_sequences_dropped(reply.sequences_dropped() + 1);
    }
  }
  pool_.ReleaseOwner(name).IgnoreError();  // pages were all freed above
  // The last member of a sharing group takes the group's cached prefix pages with it: nobody can
  // look them up any more.
  std::vector<uint64_t> orphaned;
  std::string group;
  {
    absl::MutexLock lock(&mu_);
    auto it = tenants_.find(name);
    if (it != tenants_.end()) group = it->second.record.sharing_group();
    tenants_.erase(name);
    ledger_.CloseAccount(name);
    bool members_left = false;
    for (const auto& [other, t] : tenants_) {
      members_left = members_left || (!group.empty() && t.record.sharing_group() == group);
    }
    if (!group.empty() && !members_left) {
      ledger_.ReleaseCachedPrefix(prefixes_.EvictGroup(group, &orphaned));
    }
  }
  log::Info("tenant.delete", {{"tenant", name}, {"force", force},
                              {"sessions_ended", reply.sessions_ended()},
                              {"sequences_dropped", reply.sequences_dropped()},
                              {"group_pages_freed", orphaned.size()}});
  if (!orphaned.empty()) {
    pool_.Free(orphaned);
    pool_.ReleaseOwner(GroupOwner(group)).IgnoreError();
  }
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
  if (request.has_sharing_group() && request.sharing_group() != record.sharing_group()) {
    if (!request.sharing_group().empty() && !ValidTenantName(request.sharing_group())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "sharing group \"", request.sharing_group(), "\" must match [a-z0-9][a-z0-9-]{0,62}"));
    }
    const uint64_t refs = prefixes_.RefsOf(request.name());
    if (refs > 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tenant ", request.name(), " holds ", refs, " references on shared prefix pages of group \"",
          record.sharing_group(), "\"; drop or compress those sequences before changing its group"));
    }
    record.set_sharing_group(request.sharing_group());
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
  // Persisted before it takes effect (a new group's salt first).
  RETURN_IF_ERROR(EnsureGroupLocked(record.sharing_group()));
  RETURN_IF_ERROR(store_->Put(kTenantPrefix + request.name(), record.SerializeAsString()));
  it->second.record = record;
  ledger_.SetLimits(request.name(), LimitsOf(record));
  log::Info("tenant.quota", {{"tenant", request.name()},
                             {"quota_bytes", record.quota_bytes()},
                             {"max_bytes", record.max_bytes()},
                             {"weight", record.weight()},
                             {"spill_quota_bytes", record.spill_quota_bytes()},
                             {"sharing_group", record.sharing_group()}});
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
  log::Info("tenant.policy", {{"tenant", request.tenant()},
                              {"policy", record.policy().ShortDebugString()}});
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
  s.set_backend_device(backend_->device());
  s.set_pool_capacity_bytes(stats.capacity_bytes);
  s.set_pool_arena_bytes(stats.arena_bytes);
  s.set_pool_used_bytes(stats.used_bytes);
  s.set_arenas(stats.arenas);
  s.set_pages_in_use(stats.used_pages);
  s.set_tenants(static_cast<uint32_t>(tenants_.size()));
  s.set_sessions(sessions_.SessionCount());
  uint32_t sequences = 0;
  for (const auto& [name, t] : tenants_) {
    sequences += static_cast<uint32_t>(t.sequences.size());
    *s.add_tenant_usage() = TenantInfoLocked(t);
  }
  std::sort(s.mutable_tenant_usage()->begin(), s.mutable_tenant_usage()->end(),
            [](const v1::TenantInfo& a, const v1::TenantInfo& b) { return a.name() < b.name(); });
  s.set_sequences(sequences);
  *s.mutable_watermarks() = watermarks_;
  s.set_spilled_bytes(ledger_.Pool().spilled_bytes);
  if (spill_ != nullptr) {
    auto spilled = spill_->List();
    if (spilled.ok()) s.set_spilled_sequences(static_cast<uint32_t>(spilled->size()));
  }
  s.set_spills(spiller_.spills());
  s.set_restores(spiller_.restores());
  s.set_spill_errors(spiller_.errors());
  s.set_pressure_policy(PressurePolicyName(options_.pressure_policy));
  const PressureRelief::Stats relief = relief_.stats();
  s.set_pressure_evicted_pages(relief.evicted_pages);
  s.set_pressure_evicted_tokens(relief.evicted_tokens);
  s.set_pressure_spills(relief.spills);
  s.set_page_cost_passes(relief.page_cost_passes);
  s.set_pressure_compressions(relief.compressions);
  s.set_pressure_compressed_pages(relief.compressed_pages);
  s.set_pressure_compressed_tokens(relief.compressed_tokens);
  const PrefixIndex::Stats shared = prefixes_.stats();
  s.set_shared_pages_referenced(shared.referenced_pages);
  s.set_shared_pages_cached(shared.cached_pages);
  s.set_shared_bytes_referenced(shared.referenced_bytes);
  s.set_shared_bytes_cached(shared.cached_bytes);
  s.set_prefix_lookups(prefix_lookups_.load());
  s.set_prefix_pages_hit(prefix_pages_hit_.load());
  s.set_prefix_pages_missed(prefix_pages_missed_.load());
  absl::flat_hash_set<std::string> groups;
  for (const auto& [name, t] : tenants_) {
    if (!t.record.sharing_group().empty()) groups.insert(t.record.sharing_group());
  }
  s.set_sharing_groups(static_cast<uint32_t>(groups.size()));
  s.set_uptime_seconds(absl::ToDoubleSeconds(absl::Now() - started_));
  return s;
}


// ---- Operator views of sequences and policies ----------------------------------------------

namespace {

// FindSequence answers UNAUTHENTICATED for an unknown tenant (a worker whose tenant was deleted);
// an operator naming a tenant that does not exist gets NOT_FOUND.
absl::Status AdminLookupError(const absl::Status& status, const std::string& tenant) {
  if (absl::IsUnauthenticated(status)) {
    return absl::NotFoundError(absl::StrCat("no tenant \"", tenant, "\""));
  }
  return status;
}

}  // namespace

absl::StatusOr<v1::SequenceDetail> CacheEngine::AdminGetSequence(const v1::SequenceRef& ref) {
  auto found = FindSequence(ref.tenant(), ref.sequence_id());
  if (!found.ok()) return AdminLookupError(found.status(), ref.tenant());
  std::shared_ptr<Sequence> seq = std::move(*found);
  v1::SequenceDetail detail;
  *detail.mutable_info() = InfoOf(*seq);
  const Model& model = *seq->model;
  detail.set_layers(model.layers());
  detail.set_kv_heads(model.kv_heads());
  detail.set_tokens_per_page(model.geometry().tokens_per_page);
  detail.set_page_bytes(model.geometry().page_bytes);
  absl::ReaderMutexLock seq_lock(&seq->mu);
  if (seq->dropped) return NoSequence(ref.sequence_id());
  detail.set_next_position(static_cast<uint64_t>(seq->table.next_position()));
  absl::flat_hash_set<uint32_t> arenas;
  for (uint32_t h = 0; h < seq->table.heads(); ++h) {
    const auto& head = seq->table.head(h);
    if (seq->spilled) break;
    v1::HeadSummary* hs = detail.add_heads();
    hs->set_layer(h / model.kv_heads());
    hs->set_kv_head(h % model.kv_heads());
    hs->set_token_count(head.count);
    hs->set_capacity(static_cast<uint32_t>(seq->table.capacity(h)));
    hs->set_pages(static_cast<uint32_t>(head.pages.size()));
    for (uint64_t page : head.pages) arenas.insert(PageRef::Unpack(page).arena);
  }
  detail.mutable_arena_ids()->Add(arenas.begin(), arenas.end());
  std::sort(detail.mutable_arena_ids()->begin(), detail.mutable_arena_ids()->end());
  uint32_t stats_layers = 0;
  for (const LayerStatistics& l : seq->stats.layers) {
    if (!l.window_queries.empty() || l.query_count > 0 || !l.attention_mass.empty() ||
        !l.sketch.empty()) {
      ++stats_layers;
    }
  }
  detail.set_stats_layers(stats_layers);
  detail.set_stats_bytes(seq->stats.bytes());
  SessionRegistry::Holders holders = sessions_.HoldersOf(seq->tenant, seq->id);
  if (holders.has_owner) detail.set_owner_worker(holders.owner_worker);
  for (const std::string& worker : holders.lease_workers) detail.add_lease_workers(worker);
  absl::MutexLock lock(&mu_);
  auto t = tenants_.find(ref.tenant());
  if (t != tenants_.end()) *detail.mutable_policy() = t->second.record.policy();
  return detail;
}

absl::StatusOr<v1::CompressReply> CacheEngine::AdminCompress(
    const v1::CompressSequenceRequest& request) {
  auto found = FindSequence(request.tenant(), request.sequence_id());
  if (!found.ok()) return AdminLookupError(found.status(), request.tenant());
  std::shared_ptr<Sequence> seq = std::move(*found);
  absl::MutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  return CompressHeld(seq.get(), request.policy());
}

absl::StatusOr<v1::ValidatePolicyReply> CacheEngine::ValidatePolicy(
    const v1::SetPolicyRequest& request) const {
  RETURN_IF_ERROR(ValidatePolicyProto(request.policy()));
  v1::ValidatePolicyReply reply;
  {
    absl::MutexLock lock(&mu_);
    auto it = tenants_.find(request.tenant());
    if (it == tenants_.end()) {
      return absl::NotFoundError(absl::StrCat("no tenant \"", request.tenant(), "\""));
    }
    *reply.mutable_current() = it->second.record.policy();
  }
  const v1::Policy& p = request.policy();
  *reply.mutable_policy() = p;
  // As a Compress request with no fields of its own would see it; a placeholder budget stands in
  // when the policy has none, so the remaining fields are still checked as a whole.
  v1::Policy with_budget = p;
  if (!p.has_keep_ratio() && !p.has_max_tokens()) with_budget.set_keep_ratio(1);
  ASSIGN_OR_RETURN(ResolvedPolicy resolved, ResolvePolicy(v1::Policy(), with_budget));
  reply.set_scorer(std::string(eviction::ScorerName(resolved.policy.scorer)));
  reply.set_allocation(std::string(eviction::AllocationName(resolved.policy.allocation)));
  reply.set_has_budget(p.has_keep_ratio() || p.has_max_tokens());
  reply.set_decode_time_eviction(p.has_max_tokens());
  const eviction::Needs needs = eviction::ScorerNeeds(resolved.policy.scorer);
  if (needs.window_queries) reply.add_needs("window_queries");
  if (needs.query_moments) reply.add_needs("query_moments");
  if (needs.attention_mass) reply.add_needs("attention_mass");
  return reply;
}

}  // namespace kvkeep
