// CacheEngine: shared prefixes of sharing groups (design.md §7) — publishing a sequence's first
// full pages to its tenant's group, attaching them to new sequences, reference counts, fair
// charging, copy-on-write, and freeing the unreferenced ones under pressure. The data structure
// and the charging arithmetic are in service/prefix_index.h.
#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "service/engine/cache_engine.h"
#include "service/engine/cache_engine_internal.h"
#include "service/fleet/fleet_keys.h"
#include "service/fleet/layout_hash.h"
#include "service/observability/log.h"
#include "service/token_auth.h"

namespace kvkeep {

using engine_internal::kGroupPrefix;

namespace {

// The most token ids one prefix may carry (as AllocatePages' default bound on tokens).
constexpr int kMaxPrefixTokens = 1 << 20;

}  // namespace

absl::Status CacheEngine::EnsureGroupLocked(const std::string& group) {
  if (group.empty() || group_salts_.contains(group)) return absl::OkStatus();
  v1::SharingGroupRecord record;
  record.set_name(group);
  const std::string salt = absl::HexStringToBytes(RandomHex(32));  // 32 CSPRNG bytes
  record.set_salt(salt);
  record.set_created_unix(absl::ToUnixSeconds(absl::Now()));
  RETURN_IF_ERROR(store_->Put(kGroupPrefix + group, record.SerializeAsString()));
  group_salts_[group] = salt;
  return absl::OkStatus();
}

absl::StatusOr<v1::ArenaExport> CacheEngine::ExportArenaFor(const std::string& tenant,
                                                            uint32_t arena_id) const {
  absl::StatusOr<ArenaInfo> info = pool_.GetArena(tenant, arena_id);
  bool read_only = false;
  if (absl::IsPermissionDenied(info.status())) {
    std::string group;
    {
      absl::MutexLock lock(&mu_);
      auto t = tenants_.find(tenant);
      if (t != tenants_.end()) group = t->second.record.sharing_group();
    }
    if (!group.empty()) {
      absl::StatusOr<ArenaInfo> shared = pool_.GetArena(GroupOwner(group), arena_id);
      if (shared.ok()) {
        info = std::move(shared);
        read_only = true;
      }
    }
  }
  if (!info.ok()) return info.status();
  v1::ArenaExport out;
  ToProto(*info, &out);
  out.set_read_only(read_only);
  return out;
}

absl::StatusOr<std::pair<v1::ArenaExport, int>> CacheEngine::ArenaFdFor(
    const std::string& tenant, const std::string& session_id, uint32_t arena_id) const {
  if (session_id.empty()) return absl::NotFoundError("no session");
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, session_id));
  ASSIGN_OR_RETURN(v1::ArenaExport out, ExportArenaFor(tenant, arena_id));
  std::string owner = tenant;
  if (out.read_only()) {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(tenant);
    if (t == tenants_.end()) return absl::NotFoundError(absl::StrCat("no arena ", arena_id));
    owner = GroupOwner(t->second.record.sharing_group());
  }
  ASSIGN_OR_RETURN(int fd, pool_.DupExportFd(owner, arena_id, out.read_only()));
  return std::make_pair(std::move(out), fd);
}

absl::StatusOr<PagePool::Location> CacheEngine::LocatePage(const std::string& tenant,
                                                           uint64_t page) const {
  absl::StatusOr<PagePool::Location> loc = pool_.Locate(tenant, page);
  if (!absl::IsPermissionDenied(loc.status())) return loc;
  std::string group;
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(tenant);
    if (t != tenants_.end()) group = t->second.record.sharing_group();
  }
  if (group.empty()) return loc;
  absl::StatusOr<PagePool::Location> shared = pool_.Locate(GroupOwner(group), page);
  return shared.ok() ? shared : loc;  // another owner's page answers as before
}

absl::Status CacheEngine::AddArenas(const std::string& tenant, v1::PageTable* table) const {
  std::vector<uint32_t> ids;
  for (const auto& head : table->heads()) {
    for (uint64_t page : head.pages()) ids.push_back(PageRef::Unpack(page).arena);
  }
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (uint32_t id : ids) {
    ASSIGN_OR_RETURN(*table->add_arenas(), ExportArenaFor(tenant, id));
  }
  return absl::OkStatus();
}

std::vector<std::string> CacheEngine::PrefixKeysLocked(const Tenant& t, const Model& model,
                                                       absl::Span<const uint32_t> tokens) const {
  const std::string& group = t.record.sharing_group();
  auto salt = group_salts_.find(group);
  if (group.empty() || salt == group_salts_.end()) return {};
  // A group with a fleet secret keys its prefixes as the fleet does (docs/fleet.md §3): the
  // derived chain salt (group_salts_) and the canonical layout hash, so local keys and Redis
  // keys are one chain.
  const std::string layout = group_fleet_keys_.contains(group)
                                 ? fleet::FleetLayoutHash(model.layout())
                                 : LayoutIdentity(model.layout());
  return PrefixChain(salt->second, layout, tokens, model.geometry().tokens_per_page);
}

std::vector<std::shared_ptr<PrefixEntry>> CacheEngine::MatchPrefixLocked(
    const Tenant& t, const Model& model, absl::Span<const uint32_t> tokens) {
  const uint64_t full_pages = tokens.size() / model.geometry().tokens_per_page;
  std::vector<std::string> keys = PrefixKeysLocked(t, model, tokens);
  std::vector<std::shared_ptr<PrefixEntry>> matched =
      prefixes_.Match(t.record.sharing_group(), keys);
  ++prefix_lookups_;
  prefix_pages_hit_ += matched.size();
  prefix_pages_missed_ += full_pages - matched.size();
  return matched;
}

void CacheEngine::AttachSharedLocked(Sequence* seq,
                                     std::vector<std::shared_ptr<PrefixEntry>> entries) {
  // Not visible to any other thread yet: its mu is not taken (mu_ is held; the order is
  // Sequence::mu before mu_).
  const uint32_t tpp = seq->model->geometry().tokens_per_page;
  const uint32_t count = static_cast<uint32_t>(entries.size()) * tpp;
  std::vector<int32_t> positions(count);
  for (uint32_t i = 0; i < count; ++i) positions[i] = static_cast<int32_t>(i);
  for (uint32_t h = 0; h < seq->table.heads(); ++h) {
    std::vector<uint64_t> pages;
    pages.reserve(entries.size());
    for (const auto& e : entries) pages.push_back(e->pages[h]);
    // Sizes match by construction (one page per entry, tpp tokens each).
    seq->table.RestoreHead(h, std::move(pages), count, positions).IgnoreError();
  }
  seq->table.set_next_position(count);
  PrefixIndex::Changes changes;
  for (const auto& e : entries) prefixes_.Ref(*e, seq->tenant, &changes);
  ledger_.ApplyPrefixChanges(changes);
  seq->shared = std::move(entries);
}

void CacheEngine::DropSharedHeld(Sequence* seq) {
  if (seq->shared.empty()) return;
  absl::MutexLock lock(&mu_);
  PrefixIndex::Changes changes;
  const absl::Time now = absl::Now();
  for (const auto& e : seq->shared) prefixes_.Unref(*e, seq->tenant, now, &changes);
  ledger_.ApplyPrefixChanges(changes);
  seq->shared.clear();
}

std::vector<uint64_t> CacheEngine::PrivatePagesOf(const Sequence& seq) {
  return seq.table.PagesFrom(static_cast<uint32_t>(seq.shared.size()));
}

uint64_t CacheEngine::ReleaseTable(Sequence* seq) {
  std::vector<uint64_t> private_pages = PrivatePagesOf(*seq);
  DropSharedHeld(seq);
  seq->table.Release();
  pool_.Free(private_pages);
  return private_pages.size();
}

absl::Status CacheEngine::UnshareHeld(Sequence* seq) {
  const uint32_t shared = static_cast<uint32_t>(seq->shared.size());
  if (shared == 0) return absl::OkStatus();
  const PageGeometry& g = seq->model->geometry();
  const uint32_t heads = seq->table.heads();
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> new_arenas;
  RETURN_IF_ERROR(
      AllocateCharged(seq->tenant, g, uint64_t{shared} * heads, &pages, &new_arenas));
  // Sources head-major (page i of head h), as the destinations.
  std::vector<uint64_t> from;
  from.reserve(pages.size());
  for (uint32_t h = 0; h < heads; ++h) {
    for (uint32_t i = 0; i < shared; ++i) from.push_back(seq->table.head(h).pages[i]);
  }
  absl::Status status = pool_.CopyPages(from, pages, g.page_bytes);
  if (!status.ok()) {
    log::Error("engine.internal", {{"where", "Unshare"}, {"tenant", seq->tenant},
                                   {"sequence", seq->id}, {"status", status}});
    pool_.Free(pages);
    ledger_.ReleasePages(seq->tenant, pages.size(), g.page_bytes);
    return absl::InternalError(absl::StrCat("copying the shared prefix of ", seq->id,
                                            " failed (nothing changed): ", status.message()));
  }
  for (uint32_t h = 0; h < heads; ++h) {
    for (uint32_t i = 0; i < shared; ++i) seq->table.SetPage(h, i, pages[size_t{h} * shared + i]);
  }
  DropSharedHeld(seq);
  return absl::OkStatus();
}

uint64_t CacheEngine::ReleaseCachedPrefixes(uint64_t want_bytes) {
  std::vector<uint64_t> pages;
  uint64_t freed = 0;
  {
    absl::MutexLock lock(&mu_);
    freed = prefixes_.EvictUnreferenced(want_bytes, &pages);
    ledger_.ReleaseCachedPrefix(freed);
  }
  pool_.Free(pages);
  return freed;
}

absl::StatusOr<v1::LookupPrefixReply> CacheEngine::LookupPrefix(
    const std::string& tenant, const v1::LookupPrefixRequest& r) {
  if (r.token_ids_size() > kMaxPrefixTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(r.token_ids_size(), " token ids; at most ", kMaxPrefixTokens));
  }
  uint32_t local = 0, tpp = 0;
  std::optional<fleet::FleetScope> scope;
  std::vector<std::string> fleet_names;  // the prompt's pages past the local match
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(tenant);
    if (t == tenants_.end()) return absl::UnauthenticatedError("tenant no longer exists");
    auto m = t->second.models.find(r.model());
    if (m == t->second.models.end()) {
      return absl::NotFoundError(absl::StrCat(
          "no model \"", r.model(), "\" registered for this tenant; call RegisterModel"));
    }
    const auto matched = MatchPrefixLocked(t->second, *m->second, r.token_ids());
    local = static_cast<uint32_t>(matched.size());
    tpp = m->second->geometry().tokens_per_page;
    scope = FleetScopeLocked(t->second.record.sharing_group(), *m->second);
    if (scope.has_value()) {
      const std::vector<std::string> keys = PrefixKeysLocked(t->second, *m->second, r.token_ids());
      for (size_t i = local; i < keys.size(); ++i) {
        fleet_names.push_back(fleet::FleetKeyName(scope->layout_hash, keys[i]));
      }
    }
  }
  // The cluster outside mu_, bounded: a miss, timeout or down cluster is 0 more pages.
  uint32_t in_fleet = 0;
  if (!fleet_names.empty()) {
    in_fleet = static_cast<uint32_t>(options_.fleet->Lookup(
        *scope, fleet_names, absl::Now() + options_.fleet_lookup_timeout));
  }
  v1::LookupPrefixReply reply;
  reply.set_matched_pages(local + in_fleet);
  reply.set_matched_tokens((local + in_fleet) * tpp);
  reply.set_local_tokens(local * tpp);
  reply.set_fleet_tokens(in_fleet * tpp);
  return reply;
}

absl::Status CacheEngine::CheckPublishable(const Sequence& seq, uint32_t full) {
  const uint32_t tpp = seq.model->geometry().tokens_per_page;
  // Every page to publish must be full and hold the tokens at their original positions in every
  // head (no compression, no re-positioning).
  for (uint32_t h = 0; h < seq.table.heads(); ++h) {
    const auto& head = seq.table.head(h);
    if (head.count < uint64_t{full} * tpp) {
      return absl::FailedPreconditionError(absl::StrCat(
          "page ", head.count / tpp, " of head ", h, " is not full: ", head.count,
          " committed tokens, publishing ", full, " pages needs ", uint64_t{full} * tpp));
    }
    for (uint32_t j = 0; j < full * tpp; ++j) {
      if (head.positions[j] != static_cast<int32_t>(j)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "head ", h, " holds position ", head.positions[j], " at token ", j,
            " (compressed or re-positioned): only an unmodified prefix can be shared"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<CacheEngine::PublishPlan> CacheEngine::PlanPublish(
    const std::string& tenant, const Sequence& seq, absl::Span<const uint32_t> tokens,
    uint32_t full) {
  absl::MutexLock lock(&mu_);
  auto t = tenants_.find(tenant);
  if (t == tenants_.end()) return absl::UnauthenticatedError("tenant no longer exists");
  PublishPlan plan;
  plan.group = t->second.record.sharing_group();
  if (plan.group.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "tenant ", tenant, " is in no sharing group; an operator sets one (SetQuota)"));
  }
  plan.keys = PrefixKeysLocked(t->second, *seq.model, tokens);
  if (plan.keys.size() != full) {
    log::Error("engine.internal", {{"where", "PublishPrefix"}, {"tenant", tenant},
                                   {"error", "sharing group has no salt"}});
    return absl::InternalError("sharing group has no salt");
  }
  plan.full = full;
  plan.first = static_cast<uint32_t>(std::min<size_t>(seq.shared.size(), full));
  for (uint32_t i = 0; i < plan.first; ++i) {
    if (seq.shared[i]->key != plan.keys[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the token ids of page ", i, " differ from those of the shared page the sequence "
          "already holds there"));
    }
  }
  for (uint32_t i = plan.first; i < full; ++i) {
    if (prefixes_.Find(plan.group, plan.keys[i]) == nullptr) plan.missing.push_back(i);
  }
  return plan;
}

absl::Status CacheEngine::CopyToGroup(const Sequence& seq, const PublishPlan& plan,
                                      const std::vector<uint32_t>& indices,
                                      absl::flat_hash_map<uint32_t, std::vector<uint64_t>>* copies) {
  const PageGeometry& g = seq.model->geometry();
  const uint32_t heads = seq.table.heads();
  const uint64_t count = uint64_t{indices.size()} * heads;
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> new_arenas;
  absl::Status allocated = pool_.Allocate(GroupOwner(plan.group), g, count, &pages, &new_arenas);
  if (!allocated.ok() && ReleaseCachedPrefixes(count * g.page_bytes) > 0) {
    pages.clear();
    new_arenas.clear();
    allocated = pool_.Allocate(GroupOwner(plan.group), g, count, &pages, &new_arenas);
  }
  if (!allocated.ok()) return allocated;
  // Sources: page indices[c] of every head; destinations entry-major (c × heads + h).
  std::vector<uint64_t> from;
  from.reserve(count);
  for (uint32_t i : indices) {
    for (uint32_t h = 0; h < heads; ++h) from.push_back(seq.table.head(h).pages[i]);
  }
  absl::Status io = pool_.CopyPages(from, pages, g.page_bytes);
  if (!io.ok()) {
    pool_.Free(pages);
    log::Error("engine.internal", {{"where", "PublishPrefix"}, {"tenant", seq.tenant},
                                   {"sequence", seq.id}, {"status", io}});
    return absl::InternalError(absl::StrCat("copying prefix pages failed (nothing changed): ",
                                            io.message()));
  }
  for (size_t c = 0; c < indices.size(); ++c) {
    (*copies)[indices[c]].assign(pages.begin() + c * heads, pages.begin() + (c + 1) * heads);
  }
  return absl::OkStatus();
}

bool CacheEngine::CommitPublishLocked(Sequence* seq, const PublishPlan& plan,
                                      absl::flat_hash_map<uint32_t, std::vector<uint64_t>>* copies,
                                      std::vector<uint32_t>* missing, PublishOutcome* out) {
  // Everything or nothing: a page present when planned may have been freed since (unreferenced
  // cached pages go under pressure); then the caller copies it and tries again.
  for (uint32_t i = plan.first; i < plan.full; ++i) {
    if (!copies->contains(i) && prefixes_.Find(plan.group, plan.keys[i]) == nullptr) {
      missing->push_back(i);
    }
  }
  if (!missing->empty()) return false;
  const PageGeometry& g = seq->model->geometry();
  const uint32_t heads = seq->table.heads();
  PrefixIndex::Changes changes;
  uint64_t new_entry_bytes = 0;
  for (uint32_t i = plan.first; i < plan.full; ++i) {
    std::vector<uint64_t> mine;
    if (auto copy = copies->find(i); copy != copies->end()) {
      mine = std::move(copy->second);
      copies->erase(copy);
    }
    std::shared_ptr<PrefixEntry> entry = prefixes_.Find(plan.group, plan.keys[i]);
    if (entry == nullptr) {
      auto fresh = std::make_shared<PrefixEntry>();
      fresh->group = plan.group;
      fresh->key = plan.keys[i];
      fresh->depth = i;
      fresh->pages = std::move(mine);
      fresh->bytes = uint64_t{heads} * g.page_bytes;
      entry = prefixes_.Insert(fresh);
      new_entry_bytes += entry->bytes;  // cached until referenced below
      ++out->published;
    } else {
      out->to_free.insert(out->to_free.end(), mine.begin(), mine.end());  // not needed
      ++out->adopted;
    }
    prefixes_.Ref(*entry, seq->tenant, &changes);
    for (uint32_t h = 0; h < heads; ++h) {
      out->to_free.push_back(seq->table.head(h).pages[i]);
      seq->table.SetPage(h, i, entry->pages[h]);
    }
    seq->shared.push_back(std::move(entry));
  }
  for (auto& [i, pages] : *copies) {
    out->to_free.insert(out->to_free.end(), pages.begin(), pages.end());
  }
  copies->clear();
  ledger_.PublishPages(seq->tenant, uint64_t{plan.full - plan.first} * heads, g.page_bytes,
                       new_entry_bytes, changes);
  return true;
}

absl::StatusOr<v1::PublishPrefixReply> CacheEngine::PublishPrefix(
    const std::string& tenant, const v1::PublishPrefixRequest& r) {
  if (r.token_ids_size() > kMaxPrefixTokens) {
    return absl::InvalidArgumentError(
        absl::StrCat(r.token_ids_size(), " token ids; at most ", kMaxPrefixTokens));
  }
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, r.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, r.sequence_id()));
  absl::MutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(tenant);
    if (t != tenants_.end() && t->second.record.sharing_group().empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tenant ", tenant, " is in no sharing group; an operator sets one (SetQuota)"));
    }
  }
  const uint32_t tpp = seq->model->geometry().tokens_per_page;
  const uint32_t full = static_cast<uint32_t>(r.token_ids_size()) / tpp;
  if (full == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        r.token_ids_size(), " token ids do not fill one page of ", tpp,
        " tokens; only full pages are shared"));
  }
  RETURN_IF_ERROR(CheckPublishable(*seq, full));
  ASSIGN_OR_RETURN(PublishPlan plan, PlanPublish(tenant, *seq, r.token_ids(), full));
  // Copies of the pages the group lacks are made first, outside mu_ (seq->mu keeps the table);
  // nothing changes until every page the call needs is at hand.
  absl::flat_hash_map<uint32_t, std::vector<uint64_t>> copies;
  std::vector<uint32_t> need = plan.missing;
  PublishOutcome outcome;
  for (int round = 0;; ++round) {
    if (!need.empty()) {
      absl::Status copied = CopyToGroup(*seq, plan, need, &copies);
      if (!copied.ok()) {
        for (auto& [i, pages] : copies) pool_.Free(pages);
        return copied;
      }
    }
    need.clear();
    absl::MutexLock lock(&mu_);
    if (CommitPublishLocked(seq.get(), plan, &copies, &need, &outcome)) break;
    if (round == 2) {
      for (auto& [i, pages] : copies) pool_.Free(pages);
      return absl::AbortedError(
          "the group's prefix pages kept being freed while publishing; nothing was published, "
          "try again");
    }
  }
  pool_.Free(outcome.to_free);
  // Fleet tier: the shared pages this call added, queued for the cluster (write-behind; the
  // reply does not wait for it). seq->mu is held (the pages stay referenced), mu_ is not.
  if (options_.fleet != nullptr) {
    if (std::optional<fleet::FleetScope> scope = FleetScopeOf(tenant, *seq->model)) {
      PutFleetPages(*seq, *scope, plan.keys, plan.first, plan.full);
    }
  }
  v1::PublishPrefixReply reply;
  const TenantCharges charges = ledger_.ChargesOf(tenant);
  reply.set_tenant_used_bytes(charges.used_bytes);
  reply.set_tenant_shared_charge_bytes(charges.shared_charge_bytes);
  reply.set_published_pages(outcome.published);
  reply.set_adopted_pages(outcome.adopted);
  reply.set_shared_pages(static_cast<uint32_t>(seq->shared.size()));
  TableToProto(*seq, /*with_positions=*/false, reply.mutable_table());
  RETURN_IF_ERROR(AddArenas(tenant, reply.mutable_table()));
  return reply;
}

}  // namespace kvkeep
