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
  return PrefixChain(salt->second, LayoutIdentity(model.layout()), tokens,
                     model.geometry().tokens_per_page);
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

void CacheEngine::ApplyChargesLocked(const PrefixIndex::Changes& changes) {
  for (const auto& [tenant, delta] : changes.charge) {
    auto t = tenants_.find(tenant);
    if (t == tenants_.end()) continue;
    t->second.shared_charge_bytes += delta;
    t->second.used_bytes += delta;
    used_bytes_ += delta;
  }
  used_bytes_ += changes.cached_bytes;
}

void CacheEngine::UnchargeLocked(const std::string& tenant, uint64_t pages, uint64_t page_bytes) {
  auto t = tenants_.find(tenant);
  if (t != tenants_.end()) {
    t->second.used_bytes -= pages * page_bytes;
    t->second.used_pages -= pages;
  }
  used_bytes_ -= pages * page_bytes;
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
  ApplyChargesLocked(changes);
  seq->shared = std::move(entries);
}

void CacheEngine::DropSharedHeld(Sequence* seq) {
  if (seq->shared.empty()) return;
  absl::MutexLock lock(&mu_);
  PrefixIndex::Changes changes;
  const absl::Time now = absl::Now();
  for (const auto& e : seq->shared) prefixes_.Unref(*e, seq->tenant, now, &changes);
  ApplyChargesLocked(changes);
  seq->shared.clear();
}

std::vector<uint64_t> CacheEngine::PrivatePagesOf(const Sequence& seq) {
  return seq.table.PagesFrom(static_cast<uint32_t>(seq.shared.size()));
}

uint64_t CacheEngine::ReleaseTableHeld(Sequence* seq) {
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
  absl::Status status;
  for (uint32_t h = 0; h < heads && status.ok(); ++h) {
    for (uint32_t i = 0; i < shared && status.ok(); ++i) {
      const uint64_t src = seq->table.head(h).pages[i];
      const uint64_t dst = pages[size_t{h} * shared + i];
      status = backend_->Copy(*pool_.ArenaOf(src), uint64_t{PageRef::Unpack(src).index} * g.page_bytes,
                              *pool_.ArenaOf(dst), uint64_t{PageRef::Unpack(dst).index} * g.page_bytes,
                              g.page_bytes);
    }
  }
  if (!status.ok()) {
    pool_.Free(pages);
    absl::MutexLock lock(&mu_);
    UnchargeLocked(seq->tenant, pages.size(), g.page_bytes);
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
    used_bytes_ -= freed;
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
  absl::MutexLock lock(&mu_);
  auto t = tenants_.find(tenant);
  if (t == tenants_.end()) return absl::UnauthenticatedError("tenant no longer exists");
  auto m = t->second.models.find(r.model());
  if (m == t->second.models.end()) {
    return absl::NotFoundError(absl::StrCat(
        "no model \"", r.model(), "\" registered for this tenant; call RegisterModel"));
  }
  const auto matched = MatchPrefixLocked(t->second, *m->second, r.token_ids());
  v1::LookupPrefixReply reply;
  reply.set_matched_pages(static_cast<uint32_t>(matched.size()));
  reply.set_matched_tokens(static_cast<uint32_t>(matched.size()) *
                           m->second->geometry().tokens_per_page);
  return reply;
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
  const PageGeometry& g = seq->model->geometry();
  const uint32_t tpp = g.tokens_per_page;
  const uint32_t heads = seq->table.heads();
  const uint32_t full = static_cast<uint32_t>(r.token_ids_size()) / tpp;
  if (full == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        r.token_ids_size(), " token ids do not fill one page of ", tpp,
        " tokens; only full pages are shared"));
  }
  // Every page to publish must be full and hold the tokens at their original positions in every
  // head (no compression, no re-positioning).
  for (uint32_t h = 0; h < heads; ++h) {
    const auto& head = seq->table.head(h);
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
  std::string group;
  std::vector<std::string> keys;
  std::vector<bool> present(full, false);
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(tenant);
    if (t == tenants_.end()) return absl::UnauthenticatedError("tenant no longer exists");
    group = t->second.record.sharing_group();
    if (group.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "tenant ", tenant, " is in no sharing group; an operator sets one (SetQuota)"));
    }
    keys = PrefixKeysLocked(t->second, *seq->model, r.token_ids());
    if (keys.size() != full) return absl::InternalError("sharing group has no salt");
    for (size_t i = 0; i < seq->shared.size() && i < full; ++i) {
      if (seq->shared[i]->key != keys[i]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "the token ids of page ", i, " differ from those of the shared page the sequence "
            "already holds there"));
      }
    }
    for (uint32_t i = static_cast<uint32_t>(seq->shared.size()); i < full; ++i) {
      present[i] = prefixes_.Find(group, keys[i]) != nullptr;
    }
  }
  const uint32_t first = static_cast<uint32_t>(seq->shared.size());
  // Copy the pages the group lacks into its arena (outside mu_).
  std::vector<uint32_t> to_copy;
  for (uint32_t i = first; i < full; ++i) {
    if (!present[i]) to_copy.push_back(i);
  }
  std::vector<uint64_t> copies;  // to_copy.size() × heads, entry-major
  if (!to_copy.empty()) {
    const uint64_t count = uint64_t{to_copy.size()} * heads;
    std::vector<ArenaInfo> new_arenas;
    absl::Status allocated = pool_.Allocate(GroupOwner(group), g, count, &copies, &new_arenas);
    if (!allocated.ok() && ReleaseCachedPrefixes(count * g.page_bytes) > 0) {
      copies.clear();
      new_arenas.clear();
      allocated = pool_.Allocate(GroupOwner(group), g, count, &copies, &new_arenas);
    }
    if (!allocated.ok()) return allocated;
    absl::Status io;
    for (size_t c = 0; c < to_copy.size() && io.ok(); ++c) {
      for (uint32_t h = 0; h < heads && io.ok(); ++h) {
        const uint64_t src = seq->table.head(h).pages[to_copy[c]];
        const uint64_t dst = copies[c * heads + h];
        io = backend_->Copy(*pool_.ArenaOf(src), uint64_t{PageRef::Unpack(src).index} * g.page_bytes,
                            *pool_.ArenaOf(dst), uint64_t{PageRef::Unpack(dst).index} * g.page_bytes,
                            g.page_bytes);
      }
    }
    if (!io.ok()) {
      pool_.Free(copies);
      return absl::InternalError(absl::StrCat("copying prefix pages failed (nothing changed): ",
                                              io.message()));
    }
  }
  // Insert (or adopt what another publisher inserted meanwhile), reference, re-point the table.
  v1::PublishPrefixReply reply;
  std::vector<uint64_t> to_free;       // the sequence's private copies, and unused copies
  uint32_t published = 0, adopted = 0;
  {
    absl::MutexLock lock(&mu_);
    PrefixIndex::Changes changes;
    size_t c = 0;
    for (uint32_t i = first; i < full; ++i) {
      std::shared_ptr<PrefixEntry> entry;
      std::vector<uint64_t> mine;
      if (!present[i]) {
        mine.assign(copies.begin() + c * heads, copies.begin() + (c + 1) * heads);
        ++c;
      }
      entry = prefixes_.Find(group, keys[i]);
      if (entry == nullptr && mine.empty()) {
        // It was present when looked at, but freed (unreferenced) since: publish our own copy.
        std::vector<uint64_t> one;
        std::vector<ArenaInfo> new_arenas;
        if (!pool_.Allocate(GroupOwner(group), g, heads, &one, &new_arenas).ok()) break;
        absl::Status io;
        for (uint32_t h = 0; h < heads && io.ok(); ++h) {
          const uint64_t src = seq->table.head(h).pages[i];
          io = backend_->Copy(*pool_.ArenaOf(src),
                              uint64_t{PageRef::Unpack(src).index} * g.page_bytes,
                              *pool_.ArenaOf(one[h]),
                              uint64_t{PageRef::Unpack(one[h]).index} * g.page_bytes,
                              g.page_bytes);
        }
        if (!io.ok()) {
          pool_.Free(one);
          break;
        }
        mine = std::move(one);
      }
      if (entry == nullptr) {
        auto fresh = std::make_shared<PrefixEntry>();
        fresh->group = group;
        fresh->key = keys[i];
        fresh->depth = i;
        fresh->pages = std::move(mine);
        fresh->bytes = uint64_t{heads} * g.page_bytes;
        entry = prefixes_.Insert(fresh);
        used_bytes_ += entry->bytes;  // cached until referenced below
        ++published;
      } else {
        to_free.insert(to_free.end(), mine.begin(), mine.end());  // lost a race: not needed
        ++adopted;
      }
      prefixes_.Ref(*entry, tenant, &changes);
      for (uint32_t h = 0; h < heads; ++h) {
        to_free.push_back(seq->table.head(h).pages[i]);
        seq->table.SetPage(h, i, entry->pages[h]);
      }
      UnchargeLocked(tenant, heads, g.page_bytes);
      seq->shared.push_back(std::move(entry));
    }
    // Copies not used because the loop stopped early.
    for (size_t k = c * heads; k < copies.size(); ++k) to_free.push_back(copies[k]);
    ApplyChargesLocked(changes);
    auto t = tenants_.find(tenant);
    if (t != tenants_.end()) {
      reply.set_tenant_used_bytes(t->second.used_bytes);
      reply.set_tenant_shared_charge_bytes(t->second.shared_charge_bytes);
    }
  }
  pool_.Free(to_free);
  reply.set_published_pages(published);
  reply.set_adopted_pages(adopted);
  reply.set_shared_pages(static_cast<uint32_t>(seq->shared.size()));
  TableToProto(*seq, /*with_positions=*/false, reply.mutable_table());
  RETURN_IF_ERROR(AddArenas(tenant, reply.mutable_table()));
  if (seq->shared.size() < full) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "published ", seq->shared.size(), " of ", full,
        " pages: no pool room for a copy of the rest (the published ones stay shared)"));
  }
  return reply;
}

}  // namespace kvkeep
