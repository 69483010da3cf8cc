// CacheEngine: the fleet tier's part of shared prefixes (docs/fleet.md §9): group secrets, the
// cluster lookup of LookupPrefix, the import of a prompt's pages before CreateSequence, and the
// write-behind of published pages. The cluster is only ever reached outside mu_; everything here
// degrades to "fewer pages reused", never to an error of the worker's call.
#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "service/engine/cache_engine.h"
#include "service/engine/cache_engine_internal.h"
#include "service/fleet/fleet_keys.h"
#include "service/fleet/group_keys.h"
#include "service/fleet/layout_hash.h"
#include "service/observability/log.h"

namespace kvkeep {

namespace {

constexpr size_t kMaxGroupNameBytes = 256;
constexpr size_t kMaxGroupSecretBytes = 4096;

// Writes fleet payloads into pool pages: payload c's (layer, KV head) page h, at
// [h × page_bytes, (h + 1) × page_bytes) of the payload (the head tables' order, layer-major),
// goes to where[c × heads + h]. Called concurrently for different payloads (disjoint pages).
class PoolPageWriter final : public fleet::PayloadWriter {
 public:
  PoolPageWriter(Backend& backend, const std::vector<PagePool::Location>& where, uint32_t heads,
                 uint64_t page_bytes)
      : backend_(backend), where_(where), heads_(heads), page_bytes_(page_bytes) {}

  absl::Status Write(size_t payload, uint64_t offset, absl::string_view bytes) override {
    while (!bytes.empty()) {
      const uint64_t h = offset / page_bytes_, in_page = offset % page_bytes_;
      if (h >= heads_ || (payload + 1) * heads_ > where_.size()) {
        return absl::OutOfRangeError("fleet payload past its pool pages");
      }
      const size_t n = static_cast<size_t>(std::min<uint64_t>(bytes.size(), page_bytes_ - in_page));
      const PagePool::Location& loc = where_[payload * heads_ + h];
      if (absl::Status io = backend_.Write(*loc.arena, loc.offset + in_page, bytes.data(), n);
          !io.ok()) {
        return io;
      }
      bytes.remove_prefix(n);
      offset += n;
    }
    return absl::OkStatus();
  }

 private:
  Backend& backend_;
  const std::vector<PagePool::Location>& where_;
  const uint64_t heads_;
  const uint64_t page_bytes_;
};

}  // namespace

absl::StatusOr<v1::SetGroupSecretReply> CacheEngine::SetGroupSecret(
    const v1::SetGroupSecretRequest& r) {
  if (r.group().empty() || r.group().size() > kMaxGroupNameBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the group name must be 1..", kMaxGroupNameBytes, " bytes, not ", r.group().size()));
  }
  if (r.secret().size() > kMaxGroupSecretBytes) {
    return absl::InvalidArgumentError(absl::StrCat("the group secret is ", r.secret().size(),
                                                   " bytes; at most ", kMaxGroupSecretBytes));
  }
  absl::StatusOr<fleet::GroupKeys> derived = fleet::DeriveGroupKeys(r.secret());
  if (!derived.ok()) return derived.status();
  auto keys = std::make_shared<const fleet::GroupKeys>(*std::move(derived));
  v1::SetGroupSecretReply reply;
  reply.set_group(r.group());
  reply.set_fingerprint(keys->fingerprint);
  std::vector<uint64_t> freed;
  {
    absl::MutexLock lock(&mu_);
    auto existing = group_fleet_keys_.find(r.group());
    if (existing != group_fleet_keys_.end() && existing->second->value_key == keys->value_key) {
      return reply;  // the same secret: nothing changes
    }
    v1::SharingGroupRecord record;
    record.set_name(r.group());
    record.set_salt(keys->chain_salt);
    record.set_created_unix(absl::ToUnixSeconds(absl::Now()));
    record.set_fleet_secret(r.secret());
    if (absl::Status put = store_->Put(engine_internal::kGroupPrefix + r.group(),
                                       record.SerializeAsString());
        !put.ok()) {
      return put;
    }
    group_salts_[r.group()] = keys->chain_salt;
    group_fleet_keys_[r.group()] = keys;
    // Entries under the old salt can never match again; referenced ones go when released.
    const uint64_t evicted = prefixes_.EvictGroup(r.group(), &freed);
    ledger_.ReleaseCachedPrefix(evicted);
    reply.set_evicted_bytes(evicted);
    reply.set_changed(true);
  }
  pool_.Free(freed);
  if (options_.fleet != nullptr) options_.fleet->RefreshNodeRecord();  // peers see it soon
  log::Info("fleet.group_secret_set", {{"group", r.group()},
                                       {"fingerprint", keys->fingerprint},
                                       {"evicted_bytes", reply.evicted_bytes()}});
  return reply;
}

std::vector<std::string> CacheEngine::GroupFingerprints() const {
  std::vector<std::string> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [group, keys] : group_fleet_keys_) {
    out.push_back(absl::StrCat(group, "=", keys->fingerprint));
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> CacheEngine::ModelLayoutHashes() const {
  std::vector<std::string> out;
  absl::MutexLock lock(&mu_);
  for (const auto& [name, tenant] : tenants_) {
    for (const auto& [model_name, model] : tenant.models) {
      out.push_back(absl::StrCat(
          model_name, "=",
          absl::BytesToHexString(fleet::FleetLayoutHash(model->layout()).substr(0, 8))));
    }
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

fleet::NodeRecord CacheEngine::FleetNodeRecord() const {
  fleet::NodeRecord record;
  record.node_name = options_.fleet_node_name;
  absl::MutexLock lock(&mu_);
  for (const auto& [group, keys] : group_fleet_keys_) {
    record.group_fingerprints[group] = keys->fingerprint;
  }
  for (const auto& [name, tenant] : tenants_) {
    for (const auto& [model_name, model] : tenant.models) {
      record.layout_hashes[model_name] =
          absl::BytesToHexString(fleet::FleetLayoutHash(model->layout()).substr(0, 8));
    }
  }
  return record;
}

void CacheEngine::StartFleetNodeRecord() {
  if (options_.fleet == nullptr) return;
  options_.fleet->SetNodeRecordSource([this] { return FleetNodeRecord(); });
}

void CacheEngine::StopFleetNodeRecord() {
  if (options_.fleet != nullptr) options_.fleet->SetNodeRecordSource(nullptr);
}

std::optional<fleet::FleetScope> CacheEngine::FleetScopeLocked(const std::string& group,
                                                               const Model& model) const {
  if (options_.fleet == nullptr || group.empty()) return std::nullopt;
  auto keys = group_fleet_keys_.find(group);
  if (keys == group_fleet_keys_.end()) return std::nullopt;
  fleet::FleetScope scope;
  scope.group = group;
  scope.keys = keys->second;
  scope.layout_hash = fleet::FleetLayoutHash(model.layout());
  scope.shape = fleet::PageShape::Of(model.layout());
  if (scope.shape.payload_bytes() != uint64_t{model.head_tables()} * model.geometry().page_bytes) {
    return std::nullopt;  // a layout the value format cannot hold: no fleet for it
  }
  return scope;
}

std::optional<fleet::FleetScope> CacheEngine::FleetScopeOf(const std::string& tenant,
                                                           const Model& model) const {
  absl::MutexLock lock(&mu_);
  auto t = tenants_.find(tenant);
  if (t == tenants_.end()) return std::nullopt;
  return FleetScopeLocked(t->second.record.sharing_group(), model);
}

uint32_t CacheEngine::ImportFleetPrefix(const std::string& tenant,
                                        const v1::CreateSequenceRequest& r,
                                        uint32_t* local_pages) {
  *local_pages = 0;
  if (options_.fleet == nullptr || r.prefix_token_ids_size() == 0) return 0;
  std::optional<fleet::FleetScope> scope;
  std::vector<std::string> keys;
  std::shared_ptr<const Model> model;
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(tenant);
    if (t == tenants_.end()) return 0;
    auto m = t->second.models.find(r.model());
    if (m == t->second.models.end()) return 0;
    model = m->second;
    scope = FleetScopeLocked(t->second.record.sharing_group(), *model);
    if (!scope.has_value()) return 0;
    keys = PrefixKeysLocked(t->second, *model, r.prefix_token_ids());
    *local_pages = static_cast<uint32_t>(prefixes_.Match(scope->group, keys).size());
  }
  if (*local_pages >= keys.size()) return 0;
  std::vector<std::string> names;
  names.reserve(keys.size() - *local_pages);
  for (size_t i = *local_pages; i < keys.size(); ++i) {
    names.push_back(fleet::FleetKeyName(scope->layout_hash, keys[i]));
  }
  const absl::Time deadline = absl::Now() + options_.fleet_fetch_timeout;
  // How far the cluster holds the prompt, so the pool pages are taken for those only.
  const size_t present = options_.fleet->Lookup(*scope, names, deadline);
  if (present == 0) return 0;
  const PageGeometry& g = model->geometry();
  const uint32_t heads = model->head_tables();
  const std::string owner = GroupOwner(scope->group);
  const std::vector<uint64_t> pages = AllocateFleetImport(owner, g, heads, present);
  const size_t fits = pages.size() / heads;
  if (fits < present) {
    log::Warn("fleet.import_short_of_pool", {{"group", scope->group},
                                             {"present", static_cast<unsigned long long>(present)},
                                             {"imported", static_cast<unsigned long long>(fits)}});
  }
  if (fits == 0) return 0;
  std::vector<PagePool::Location> where;
  where.reserve(pages.size());
  for (uint64_t page : pages) {
    absl::StatusOr<PagePool::Location> loc = pool_.Locate(owner, page);
    if (!loc.ok()) {
      log::Error("engine.internal", {{"where", "ImportFleetPrefix"}, {"status", loc.status()}});
      pool_.Free(pages);
      return 0;
    }
    where.push_back(*loc);
  }
  // Each value is checked and decrypted straight into its pool pages (still unpublished: a value
  // that does not verify leaves garbage there, and those pages are freed, never served).
  PoolPageWriter writer(*backend_, where, heads, g.page_bytes);
  const size_t verified = options_.fleet->GetInto(
      *scope, absl::MakeConstSpan(names).subspan(0, fits), deadline, writer);
  return InsertFleetPages(*scope, *model, keys, *local_pages, pages, verified);
}

std::vector<uint64_t> CacheEngine::AllocateFleetImport(const std::string& owner,
                                                       const PageGeometry& g, uint32_t heads,
                                                       size_t wanted) {
  const uint64_t count = uint64_t{wanted} * heads;
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> new_arenas;
  if (pool_.Allocate(owner, g, count, &pages, &new_arenas).ok()) return pages;
  pages.clear();
  if (ReleaseCachedPrefixes(count * g.page_bytes) > 0 &&
      pool_.Allocate(owner, g, count, &pages, &new_arenas).ok()) {
    return pages;
  }
  // Short of pool: the token pages that fit, in prompt order (a shorter reuse, not none).
  pages.clear();
  for (size_t c = 0; c < wanted; ++c) {
    std::vector<uint64_t> one;
    if (!pool_.Allocate(owner, g, heads, &one, &new_arenas).ok()) break;
    pages.insert(pages.end(), one.begin(), one.end());
  }
  return pages;
}

uint32_t CacheEngine::InsertFleetPages(const fleet::FleetScope& scope, const Model& model,
                                       const std::vector<std::string>& keys, uint32_t first,
                                       const std::vector<uint64_t>& pages, size_t verified) {
  const PageGeometry& g = model.geometry();
  const uint32_t heads = model.head_tables();
  // Pages of values that did not arrive or verify: never published.
  std::vector<uint64_t> to_free(pages.begin() + verified * heads, pages.end());
  {
    absl::MutexLock lock(&mu_);
    uint64_t new_entry_bytes = 0;
    for (size_t c = 0; c < verified; ++c) {
      std::vector<uint64_t> mine(pages.begin() + c * heads, pages.begin() + (c + 1) * heads);
      const std::string& key = keys[first + c];
      if (prefixes_.Find(scope.group, key) != nullptr) {  // another worker was quicker
        to_free.insert(to_free.end(), mine.begin(), mine.end());
        continue;
      }
      auto entry = std::make_shared<PrefixEntry>();
      entry->group = scope.group;
      entry->key = key;
      entry->depth = first + static_cast<uint32_t>(c);
      entry->pages = std::move(mine);
      entry->bytes = uint64_t{heads} * g.page_bytes;
      entry->last_release = absl::Now();  // not the first to go under pressure
      new_entry_bytes += entry->bytes;
      prefixes_.Insert(std::move(entry));
    }
    ledger_.AddCachedPrefix(new_entry_bytes);  // cached until a sequence references them
  }
  pool_.Free(to_free);
  return static_cast<uint32_t>(verified);
}

void CacheEngine::PutFleetPages(const Sequence& seq, const fleet::FleetScope& scope,
                                const std::vector<std::string>& keys, uint32_t first,
                                uint32_t full) {
  const PageGeometry& g = seq.model->geometry();
  const uint32_t heads = seq.table.heads();
  const std::string owner = GroupOwner(scope.group);
  std::vector<fleet::FleetPage> out;
  for (uint32_t i = first; i < full && i < seq.shared.size(); ++i) {
    fleet::FleetPage page;
    page.key_name = fleet::FleetKeyName(scope.layout_hash, keys[i]);
    page.payload.resize(uint64_t{heads} * g.page_bytes);
    for (uint32_t h = 0; h < heads; ++h) {
      absl::StatusOr<PagePool::Location> loc = pool_.Locate(owner, seq.shared[i]->pages[h]);
      absl::Status io = loc.ok() ? backend_->Read(*loc->arena, loc->offset,
                                                  page.payload.data() + h * g.page_bytes,
                                                  g.page_bytes)
                                 : loc.status();
      if (!io.ok()) {
        log::Error("engine.internal", {{"where", "PutFleetPages"}, {"status", io}});
        return;
      }
    }
    out.push_back(std::move(page));
  }
  if (out.empty()) return;
  const size_t n = out.size();
  if (absl::Status queued = options_.fleet->PutAsync(scope, std::move(out)); !queued.ok()) {
    // Counted as dropped by the tier; never the worker's error (its local publish succeeded).
    log::Warn("fleet.publish_dropped",
              {{"group", scope.group}, {"pages", n}, {"status", queued}});
  }
}

namespace {

void CountersToProto(const std::string& group, const fleet::FleetCounters& c,
                     v1::FleetCountersProto* out) {
  out->set_group(group);
  out->set_lookups(c.lookups);
  out->set_hit_pages(c.hit_pages);
  out->set_misses(c.misses);
  out->set_corrupt(c.corrupt);
  out->set_read_errors(c.read_errors);
  out->set_bytes_read(c.bytes_read);
  out->set_pages_written(c.pages_written);
  out->set_bytes_written(c.bytes_written);
  out->set_write_errors(c.write_errors);
  out->set_dropped(c.dropped);
}

// Fills out.peers (every other node's record and what differs from the fleet's majority) and
// out.mismatches (this node's own differences). This node's record is its live one, not the
// copy in the cluster (which may be up to 20 s old or not written yet).
void AddFleetPeers(fleet::FleetTier& tier, fleet::NodeRecord self, absl::Time deadline,
                   v1::FleetStatus& out) {
  absl::StatusOr<std::vector<fleet::NodeRecord>> records = tier.NodeRecords(deadline);
  if (!records.ok()) {
    out.set_peers_error(std::string(records.status().message()));
    return;
  }
  std::erase_if(*records,
                [&](const fleet::NodeRecord& r) { return r.node_name == self.node_name; });
  records->push_back(self);
  const std::vector<fleet::NodeVerdict> verdicts =
      fleet::CompareNodeRecords(*records, self.node_name);
  for (size_t i = 0; i < records->size(); ++i) {
    const fleet::NodeRecord& r = (*records)[i];
    if (r.node_name == self.node_name) {
      for (const std::string& m : verdicts[i].mismatches) out.add_mismatches(m);
      continue;
    }
    v1::FleetPeer* peer = out.add_peers();
    peer->set_node_name(r.node_name);
    for (const auto& [g, fp] : r.group_fingerprints) peer->add_groups(absl::StrCat(g, "=", fp));
    for (const auto& [m, h] : r.layout_hashes) peer->add_layouts(absl::StrCat(m, "=", h));
    for (const std::string& m : verdicts[i].mismatches) peer->add_mismatches(m);
  }
}

}  // namespace

absl::StatusOr<v1::FleetStatus> CacheEngine::FleetStatus(absl::Time deadline) const {
  if (options_.fleet == nullptr) {
    return absl::FailedPreconditionError(
        "this daemon has no fleet tier (kvkeepd --fleet_redis is not set)");
  }
  const fleet::FleetClusterStatus cluster = options_.fleet->ClusterStatus(deadline);
  v1::FleetStatus out;
  out.set_node_name(options_.fleet_node_name);
  out.set_reachable(cluster.reachable);
  out.set_error(cluster.error);
  out.set_covered_slots(cluster.covered_slots);
  for (const fleet::FleetNodeStatus& node : cluster.nodes) {
    v1::FleetNode* n = out.add_nodes();
    n->set_address(node.address);
    n->set_role(node.role);
    n->set_slots(node.slots);
  }
  out.set_queued_bytes(cluster.queued_bytes);
  CountersToProto("", options_.fleet->Counters(), out.mutable_total());
  for (const auto& [group, counters] : options_.fleet->CountersByGroup()) {
    CountersToProto(group, counters, out.add_groups());
  }
  for (const std::string& g : GroupFingerprints()) out.add_group_fingerprints(g);
  AddFleetPeers(*options_.fleet, FleetNodeRecord(), deadline, out);
  return out;
}

}  // namespace kvkeep
