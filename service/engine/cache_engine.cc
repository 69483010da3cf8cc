#include "service/engine/cache_engine.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/failure_reason.h"
#include "common/status_macros.h"
#include "service/engine/create_reply_size.h"
#include "service/engine/metadata_charge.h"
#include "service/observability/log.h"
#include "service/engine/cache_engine_internal.h"
#include "service/fleet/group_keys.h"
#include "service/compress/compressor.h"
#include "service/compress/policy_convert.h"
#include "service/pool/quota.h"
#include "service/token_auth.h"

namespace kvkeep {
using engine_internal::kTenantPrefix;
using engine_internal::kModelPrefix;
using engine_internal::ModelKey;
using engine_internal::ValidWorkerName;
using engine_internal::NoSequence;

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
      pool_(backend, options.pool),
      ledger_(options.pool.capacity_bytes, options.max_metadata_bytes_per_tenant),
      sessions_(options.max_sessions_per_tenant),
      spiller_(spill, backend, &pool_, &ledger_, &sessions_, this),
      background_(std::make_unique<Executor>(1)),
      relief_(options.pressure_policy, backend, &pool_, &ledger_, &sessions_, &spiller_, this,
              background_.get()) {
  watermarks_.set_low_free(options.low_free);
  watermarks_.set_high_free(options.high_free);
}

CacheEngine::~CacheEngine() {
  StopFleetNodeRecord();
  background_.reset();
}

absl::StatusOr<std::unique_ptr<CacheEngine>> CacheEngine::Create(Backend* backend,
                                                                 MetadataStore* store,
                                                                 EngineOptions options,
                                                                 SpillStore* spill) {
  if (options.pool.capacity_bytes == 0 || options.pool.arena_bytes == 0) {
    return absl::InvalidArgumentError("pool capacity and arena size must be > 0");
  }
  auto engine = std::unique_ptr<CacheEngine>(new CacheEngine(backend, store, spill, options));
  absl::Status loaded = engine->Load();
  if (loaded.ok()) loaded = engine->LoadSpilled();
  if (!loaded.ok()) {
    // DATA_LOSS (an unreadable record) or the store's error: the daemon does not start.
    log::Error("engine.load_failed", {{"status", loaded}});
    return loaded;
  }
  engine->StartFleetNodeRecord();
  log::Info("engine.loaded", {{"tenants", engine->ListTenants().tenants_size()},
                              {"pressure_policy", PressurePolicyName(options.pressure_policy)},
                              {"pool_capacity_bytes", options.pool.capacity_bytes}});
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
    ledger_.OpenAccount(t.record.name(), LimitsOf(t.record));
    tenants_[t.record.name()] = std::move(t);
  }
  ASSIGN_OR_RETURN(auto groups, store_->Scan(engine_internal::kGroupPrefix));
  for (const auto& [key, value] : groups) {
    v1::SharingGroupRecord record;
    if (!record.ParseFromString(value) || record.salt().size() != 32) {
      return absl::DataLossError("unreadable sharing group record " + key);
    }
    group_salts_[record.name()] = record.salt();
    if (!record.fleet_secret().empty()) {  // fleet tier: the operator's group secret
      ASSIGN_OR_RETURN(fleet::GroupKeys keys, fleet::DeriveGroupKeys(record.fleet_secret()));
      group_fleet_keys_[record.name()] = std::make_shared<const fleet::GroupKeys>(std::move(keys));
    }
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
    // Registered before this start: charged without admission (the tenant holds it already).
    ledger_.AdjustMetadata(record.tenant(), 0, ModelHeapBytes(model));
    it->second.models[name] = std::make_shared<const Model>(std::move(model));
  }
  return absl::OkStatus();
}

TenantLimits CacheEngine::LimitsOf(const v1::TenantRecord& record) {
  return {.guarantee_bytes = record.quota_bytes(),
          .max_bytes = record.max_bytes(),
          .weight = record.weight() == 0 ? 1 : record.weight(),
          .spill_quota_bytes = record.spill_quota_bytes()};
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

// ---- Sessions ------------------------------------------------------------------------------

absl::StatusOr<CacheEngine::Attached> CacheEngine::Attach(const std::string& tenant,
                                                          const std::string& worker_name,
                                                          SessionSink* sink) {
  if (!ValidWorkerName(worker_name)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker name \"", worker_name, "\" must match [A-Za-z0-9._:-]{1,128}"));
  }
  // Under mu_: a tenant deleted meanwhile cannot gain a session.
  absl::MutexLock lock(&mu_);
  if (!tenants_.contains(tenant)) return absl::UnauthenticatedError("tenant no longer exists");
  ASSIGN_OR_RETURN(SessionRegistry::Attached attached,
                   sessions_.Attach(tenant, worker_name, sink));
  Attached out;
  out.session_id = std::move(attached.session_id);
  out.superseded_session_id = std::move(attached.superseded_session_id);
  out.adopted_sequences = attached.adopted_sequences;
  out.arenas = pool_.ArenasOf(tenant);
  return out;
}

std::vector<std::shared_ptr<CacheEngine::Sequence>> CacheEngine::OrphansLocked(
    const std::vector<SessionRegistry::Ended>& ended) {
  std::vector<std::shared_ptr<Sequence>> drop;
  for (const SessionRegistry::Ended& e : ended) {
    auto t = tenants_.find(e.tenant);
    if (t == tenants_.end()) continue;
    for (const std::string& id : e.orphans) {
      auto q = t->second.sequences.find(id);
      if (q != t->second.sequences.end()) drop.push_back(q->second);
    }
  }
  return drop;
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
    std::optional<SessionRegistry::Ended> ended = sessions_.End(session_id);
    if (!ended.has_value()) return;
    drop = OrphansLocked({*ended});
  }
  DropOrphans(drop);
}

void CacheEngine::EndAllSessions(const absl::Status& status) {
  std::vector<std::shared_ptr<Sequence>> drop;
  {
    absl::MutexLock lock(&mu_);
    drop = OrphansLocked(sessions_.EndAll(status));
  }
  DropOrphans(drop);
}

absl::Status CacheEngine::CheckSessionIfGiven(const std::string& tenant,
                                              const std::string& id) const {
  return sessions_.CheckIfGiven(tenant, id);
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
    RETURN_IF_ERROR(ledger_.ChargeMetadata(tenant, ModelHeapBytes(model)));
    ledger_.ReleaseMetadata(tenant, ModelHeapBytes(*existing->second));
  } else {
    // The layout and Grams are daemon heap of this tenant's: charged before anything is stored.
    RETURN_IF_ERROR(ledger_.ChargeMetadata(tenant, ModelHeapBytes(model)));
    v1::ModelRecord record;
    record.set_tenant(tenant);
    *record.mutable_layout() = model.layout();
    if (absl::Status stored =
            store_->Put(ModelKey(tenant, model.name()), record.SerializeAsString());
        !stored.ok()) {
      ledger_.ReleaseMetadata(tenant, ModelHeapBytes(model));
      return stored;
    }
    reply.set_created(true);
  }
  reply.set_wo_grams(static_cast<uint32_t>(model.wo_gram_count()));
  model.geometry().ToProto(reply.mutable_geometry());
  const std::string name = model.name();  // before the move below
  t->second.models[name] = std::make_shared<const Model>(std::move(model));
  // A new layout: the node record (fleet/node_records.h) is written again now, not at the next
  // 20 s refresh, so peers can compare layouts at once. RefreshNodeRecord only wakes the tier's
  // thread (a leaf lock); that thread reads the record under mu_, after this call released it.
  if (reply.created() && options_.fleet != nullptr) options_.fleet->RefreshNodeRecord();
  return reply;
}

absl::StatusOr<v1::ArenaExport> CacheEngine::GetArena(const std::string& tenant,
                                                      uint32_t arena_id) const {
  // Its own arena, or (read-only) one of its sharing group's.
  return ExportArenaFor(tenant, arena_id);
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
  const uint32_t shared = static_cast<uint32_t>(seq.shared.size());
  out->set_shared_tokens(shared * seq.model->geometry().tokens_per_page);
  for (uint32_t h = 0; h < seq.table.heads(); ++h) {
    const auto& head = seq.table.head(h);
    v1::HeadTable* ht = out->add_heads();
    ht->set_shared_pages(shared);
    ht->set_layer(h / kv_heads);
    ht->set_kv_head(h % kv_heads);
    ht->set_token_count(head.count);
    ht->set_capacity(static_cast<uint32_t>(seq.table.capacity(h)));
    ht->mutable_pages()->Add(head.pages.begin(), head.pages.end());
    if (with_positions) ht->mutable_positions()->Add(head.positions.begin(), head.positions.end());
  }
}

absl::StatusOr<v1::PageTable> CacheEngine::CreateSequence(
    const std::string& tenant, const v1::CreateSequenceRequest& request, bool chunked_reply) {
  if (request.prefix_token_ids_size() > int64_t{options_.max_tokens_per_allocation}) {
    return absl::InvalidArgumentError(absl::StrCat(
        request.prefix_token_ids_size(), " prefix token ids; at most ",
        options_.max_tokens_per_allocation));
  }
  // Fleet tier: the prompt's pages this node lacks come from the cluster first, outside mu_,
  // into the group's index; the match below then finds them like local ones.
  uint32_t local_pages = 0;
  const uint32_t fleet_pages = ImportFleetPrefix(tenant, request, &local_pages);
  std::shared_ptr<Sequence> seq;
  {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(sessions_.CheckLive(tenant, request.session_id()));
    Tenant& t = tenants_[tenant];
    auto m = t.models.find(request.model());
    if (m == t.models.end()) {
      return absl::NotFoundError(absl::StrCat(
          "no model \"", request.model(), "\" registered for this tenant; call RegisterModel"));
    }
    if (t.sequences.size() >= options_.max_sequences_per_tenant) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "tenant ", tenant, " holds ", t.sequences.size(), " sequences, the most allowed (",
          options_.max_sequences_per_tenant, "); drop some first"));
    }
    // A shared prefix of the tenant's sharing group, when asked for and found.
    std::vector<std::shared_ptr<PrefixEntry>> matched;
    if (request.prefix_token_ids_size() > 0) {
      matched = MatchPrefixLocked(t, *m->second, request.prefix_token_ids());
      RETURN_IF_ERROR(
          ledger_.AdmitSharedCharge(tenant, prefixes_.ChargeIfAttached(matched, tenant)));
    }
    // Nothing is created that the caller could not learn of (a unary reply must fit one message)
    // or that its tenant is not charged for (the sequence's heap).
    if (!chunked_reply) {
      RETURN_IF_ERROR(CheckCreateReplyFits(*m->second, static_cast<uint32_t>(matched.size()),
                                           options_.max_message_bytes));
    }
    const uint64_t heap = EmptySequenceBytes(*m->second);
    RETURN_IF_ERROR(ledger_.ChargeMetadata(tenant, heap));
    seq = std::make_shared<Sequence>("seq-" + RandomHex(12), tenant, m->second, heap);
    // The session was checked above under mu_, and sessions end under mu_: this cannot fail.
    if (absl::Status added = sessions_.AddSequence(tenant, seq->id, request.session_id(),
                                                   request.retain(), absl::Now());
        !added.ok()) {
      ledger_.ReleaseMetadata(tenant, heap);
      return added;
    }
    if (!matched.empty()) AttachSharedLocked(seq.get(), std::move(matched));
    t.sequences[seq->id] = seq;
  }
  // Not under mu_: the lock order is Sequence::mu before CacheEngine::mu_.
  v1::PageTable table;
  absl::ReaderMutexLock seq_lock(&seq->mu);
  TableToProto(*seq, false, &table);
  if (fleet_pages > 0 && seq->shared.size() > local_pages) {
    const uint32_t from_fleet =
        std::min<uint32_t>(static_cast<uint32_t>(seq->shared.size()) - local_pages, fleet_pages);
    table.set_fleet_tokens(from_fleet * seq->model->geometry().tokens_per_page);
  }
  if (!seq->shared.empty()) RETURN_IF_ERROR(AddArenas(tenant, &table));
  return table;
}

absl::StatusOr<v1::PageTableDelta> CacheEngine::AllocatePages(const std::string& tenant,
                                                              const v1::AllocateRequest& request,
                                                              bool chunked_reply) {
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
  const uint64_t max_pages =
      chunked_reply ? options_.max_pages_per_chunked_request : options_.max_pages_per_request;
  if (max_pages != 0 && total_pages > max_pages) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "request size limit: ", request.tokens(), " tokens need ", total_pages,
        " pages over all heads, more than the ", max_pages,
        chunked_reply ? " one AllocatePagesStream" : " one AllocatePages",
        " may add (kvkeepd --max_pages_per_request",
        chunked_reply ? "" : "; AllocatePagesStream sends larger replies in chunks",
        "); allocate in smaller steps"));
  }
  for (uint32_t h = 0; h < need.size(); ++h) {
    if (seq->table.capacity(h) + uint64_t{need[h]} * geometry.tokens_per_page > UINT32_MAX) {
      return absl::InvalidArgumentError("a head of this sequence would pass 2^32 tokens");
    }
  }
  v1::PageTableDelta delta;
  delta.set_sequence_id(seq->id);
  // The page ids and token positions the table will hold (RechargeMetadata below makes the
  // charge exact).
  const uint64_t table_growth =
      total_pages * (sizeof(uint64_t) + uint64_t{geometry.tokens_per_page} * sizeof(int32_t));
  RETURN_IF_ERROR(ledger_.ChargeMetadata(tenant, table_growth));
  seq->metadata_bytes += table_growth;
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> new_arenas;
  if (absl::Status allocated = AllocateCharged(tenant, geometry, total_pages, &pages, &new_arenas);
      !allocated.ok()) {
    RechargeMetadata(ledger_, *seq);
    return allocated;
  }
  sessions_.Touch(tenant, seq->id, absl::Now());
  delta.set_tenant_used_bytes(ledger_.ChargesOf(tenant).used_bytes);
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
  RechargeMetadata(ledger_, *seq);
  return delta;
}

absl::Status CacheEngine::AllocateCharged(const std::string& tenant, const PageGeometry& geometry,
                                          uint64_t count, std::vector<uint64_t>* pages,
                                          std::vector<ArenaInfo>* new_arenas) {
  if (count == 0) return absl::OkStatus();
  absl::Status status;
  for (int attempt = 0; attempt < 2; ++attempt) {
    // Charged first (admission and charge in one step of the ledger) so that concurrent
    // allocations cannot both pass the check.
    status = ledger_.ChargePages(tenant, count, geometry.page_bytes);
    if (status.ok()) {
      status = pool_.Allocate(tenant, geometry, count, pages, new_arenas);
      if (!status.ok()) ledger_.ReleasePages(tenant, count, geometry.page_bytes);
    }
    if (status.ok()) {
      for (const ArenaInfo& arena : *new_arenas) sessions_.AnnounceArena(tenant, arena);
      relief_.MaybeRelieveLater();
      return status;
    }
    // A tenant's own hard maximum is not pool pressure; anything else may be relieved by
    // spilling cold sequences, once (unreferenced cached shared prefix pages go first).
    if (attempt > 0 || ReasonOf(status) == FailureReason::kTenantMax ||
        relief_.RelieveForAllocation(count * geometry.page_bytes, tenant) == 0) {
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
  uint64_t stats_growth = 0;
  for (const v1::LayerStats& layer : request.stats()) {
    RETURN_IF_ERROR(ValidateLayerStats(*seq->model, seq->table, seq->stats, layer,
                                       request.tokens()));
    stats_growth += MaxStatsGrowthBytes(*seq->model, seq->stats, layer);
  }
  RETURN_IF_ERROR(ledger_.ChargeMetadata(tenant, stats_growth));
  seq->metadata_bytes += stats_growth;
  if (absl::Status committed = seq->table.Commit(request.tokens(), request.positions());
      !committed.ok()) {
    RechargeMetadata(ledger_, *seq);
    return committed;
  }
  for (const v1::LayerStats& layer : request.stats()) {
    // Validated above against the same table and stats: cannot fail.
    ApplyLayerStats(*seq->model, seq->table, layer, &seq->stats).IgnoreError();
  }
  RechargeMetadata(ledger_, *seq);
  sessions_.Touch(tenant, seq->id, absl::Now());
  v1::Policy policy;
  {
    absl::MutexLock lock(&mu_);
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

absl::Status CacheEngine::WriteChunk(const std::string& tenant, const v1::KvChunk& chunk) {
  return WriteChunkBytes(tenant, chunk, chunk.keys(), chunk.values());
}

absl::Status CacheEngine::WriteChunkBytes(const std::string& tenant, const v1::KvChunk& chunk,
                                          absl::string_view keys, absl::string_view values) {
  const absl::string_view key_pieces[] = {keys};
  const absl::string_view value_pieces[] = {values};
  return WriteChunkPieces(tenant, chunk, key_pieces, value_pieces);
}

namespace {

// Reads the concatenation of `pieces` front to back, writing each run where it belongs.
class PieceReader {
 public:
  explicit PieceReader(absl::Span<const absl::string_view> pieces) : pieces_(pieces) {}

  // Writes the next `n` bytes to [offset, offset + n) of `arena` (the caller checked that the
  // pieces hold them).
  absl::Status WriteNext(Backend& backend, Arena& arena, uint64_t offset, uint64_t n) {
    while (n > 0) {
      const absl::string_view piece = pieces_[index_];
      const uint64_t take = std::min<uint64_t>(n, piece.size() - at_);
      if (take > 0) RETURN_IF_ERROR(backend.Write(arena, offset, piece.data() + at_, take));
      offset += take;
      n -= take;
      at_ += take;
      if (at_ == piece.size()) {
        ++index_;
        at_ = 0;
      }
    }
    return absl::OkStatus();
  }

 private:
  const absl::Span<const absl::string_view> pieces_;
  size_t index_ = 0;
  uint64_t at_ = 0;
};

uint64_t BytesIn(absl::Span<const absl::string_view> pieces) {
  uint64_t n = 0;
  for (absl::string_view p : pieces) n += p.size();
  return n;
}

// What every bytes-path write checks before the sequence's lock: the head inside the model, a
// token count, key and value byte counts that make those tokens, no ReadKV-only field.
absl::Status CheckWriteChunk(const Model& model, const v1::KvChunk& chunk, uint64_t key_bytes,
                             uint64_t value_bytes) {
  const PageGeometry& g = model.geometry();
  if (chunk.layer() >= model.layers() || chunk.kv_head() >= model.kv_heads()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer ", chunk.layer(), ", kv_head ", chunk.kv_head(), " outside model \"", model.name(),
        "\" (", model.layers(), " layers, ", model.kv_heads(), " KV heads)"));
  }
  if (chunk.token_count() == 0) return absl::InvalidArgumentError("token_count must be > 0");
  const uint64_t want = uint64_t{chunk.token_count()} * g.token_bytes;
  if (key_bytes != want || value_bytes != want) {
    return absl::InvalidArgumentError(absl::StrCat(
        "chunk of ", chunk.token_count(), " tokens needs ", want, " bytes of keys and of values (",
        g.head_dim, " x ", DTypeSize(g.dtype), "-byte elements per token); got ",
        key_bytes, " and ", value_bytes));
  }
  if (chunk.positions_size() != 0 || chunk.page() != 0) {
    return absl::InvalidArgumentError("positions and page are ReadKV fields; CommitTokens sets positions");
  }
  return absl::OkStatus();
}

// Under the sequence's lock: the chunk's slots are none of the shared prefix's (read-only) pages.
absl::Status CheckOwnSlots(const Sequence& seq, const v1::KvChunk& chunk)
    ABSL_SHARED_LOCKS_REQUIRED(seq.mu) {
  const uint64_t shared_slots =
      uint64_t{seq.shared.size()} * seq.model->geometry().tokens_per_page;
  if (chunk.token_offset() < shared_slots) {
    return absl::PermissionDeniedError(absl::StrCat(
        "slots [0, ", shared_slots, ") of sequence ", seq.id,
        " are shared prefix pages of the sharing group (read-only); write from slot ",
        shared_slots, " on"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CacheEngine::WriteChunkPieces(const std::string& tenant, const v1::KvChunk& chunk,
                                           absl::Span<const absl::string_view> keys,
                                           absl::Span<const absl::string_view> values) {
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, chunk.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, chunk.sequence_id()));
  const Model& model = *seq->model;
  const PageGeometry& g = model.geometry();
  RETURN_IF_ERROR(CheckWriteChunk(model, chunk, BytesIn(keys), BytesIn(values)));
  absl::ReaderMutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  RETURN_IF_ERROR(CheckOwnSlots(*seq, chunk));
  const uint32_t head = chunk.layer() * model.kv_heads() + chunk.kv_head();
  absl::Status io;
  PieceReader key_reader(keys), value_reader(values);
  RETURN_IF_ERROR(seq->table.ForEachSegment(
      head, chunk.token_offset(), chunk.token_count(),
      [&](uint64_t page, uint32_t slot, uint32_t n, uint64_t) {
        if (!io.ok()) return;
        Arena* arena = pool_.ArenaOf(page);
        const uint64_t base = uint64_t{PageRef::Unpack(page).index} * g.page_bytes;
        const uint64_t off = slot * g.token_bytes;
        io = key_reader.WriteNext(*backend_, *arena, base + off, n * g.token_bytes);
        if (io.ok()) {
          io = value_reader.WriteNext(*backend_, *arena, base + g.value_offset + off,
                                      n * g.token_bytes);
        }
      }));
  return io;
}

absl::StatusOr<WriteTargets> CacheEngine::PinWriteTargets(const std::string& tenant,
                                                          const v1::KvChunk& chunk,
                                                          uint64_t key_bytes,
                                                          uint64_t value_bytes) {
  RETURN_IF_ERROR(CheckSessionIfGiven(tenant, chunk.session_id()));
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, chunk.sequence_id()));
  const Model& model = *seq->model;
  const PageGeometry& g = model.geometry();
  RETURN_IF_ERROR(CheckWriteChunk(model, chunk, key_bytes, value_bytes));
  absl::ReaderMutexLock seq_lock(&seq->mu);
  RETURN_IF_ERROR(OnDevice(*seq));
  RETURN_IF_ERROR(CheckOwnSlots(*seq, chunk));
  const uint32_t head = chunk.layer() * model.kv_heads() + chunk.kv_head();
  WriteTargets targets;
  std::vector<uint64_t> pages;
  bool in_place = true;
  RETURN_IF_ERROR(seq->table.ForEachSegment(
      head, chunk.token_offset(), chunk.token_count(),
      [&](uint64_t page, uint32_t slot, uint32_t n, uint64_t) {
        Arena* arena = pool_.ArenaOf(page);
        char* host = arena == nullptr ? nullptr
                                      : static_cast<char*>(backend_->WritableHostAddress(*arena));
        if (host == nullptr) in_place = false;
        if (!in_place) return;
        char* at = host + uint64_t{PageRef::Unpack(page).index} * g.page_bytes +
                   uint64_t{slot} * g.token_bytes;
        const uint64_t bytes = uint64_t{n} * g.token_bytes;
        targets.keys.emplace_back(at, bytes);
        targets.values.emplace_back(at + g.value_offset, bytes);
        pages.push_back(page);
      }));
  if (!in_place) {
    return absl::UnimplementedError(absl::StrCat(
        "the ", backend_->name(), " backend's pages cannot be written in place by the host"));
  }
  targets.hold = PinPages(&pool_, std::move(pages));
  return targets;
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
  RETURN_IF_ERROR(sessions_.CheckLive(tenant, r.session_id()));
  if (seq->spilled) RETURN_IF_ERROR(RestoreHeld(seq.get()));  // transparent restore
  RETURN_IF_ERROR(sessions_.Lease(tenant, seq->id, r.session_id(), absl::Now()));
  v1::PageTable table;
  TableToProto(*seq, r.with_positions(), &table);
  // A worker acquiring another session's sequence may not have mapped its arenas yet (shared
  // prefix pages: the group's arenas, read-only).
  RETURN_IF_ERROR(AddArenas(tenant, &table));
  return table;
}

absl::StatusOr<v1::ReleaseReply> CacheEngine::Release(const std::string& tenant,
                                                      const v1::ReleaseRequest& r) {
  ASSIGN_OR_RETURN(auto seq, FindSequence(tenant, r.sequence_id()));
  ASSIGN_OR_RETURN(SessionRegistry::Unleased unleased,
                   sessions_.Unlease(tenant, seq->id, r.session_id()));
  v1::ReleaseReply reply;
  reply.set_leases_left(unleased.leases_left);
  if (unleased.orphan) DropOrphans({seq});
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
  // Shared prefix pages are not the sequence's to free: it drops its references on them.
  const std::vector<uint64_t> private_pages = PrivatePagesOf(*seq);
  const uint64_t pages = private_pages.size();
  const uint64_t page_bytes = seq->model->geometry().page_bytes;
  if (!force) {
    const std::string holder = sessions_.OtherLeaseHolder(seq->tenant, seq->id, caller_session);
    if (!holder.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sequence ", seq->id, " is leased by session ", holder, "; it must Release first"));
    }
  }
  // A spilled sequence's disk copy goes first: when that fails it stays listed and restorable,
  // and the caller may retry.
  RETURN_IF_ERROR(spiller_.DeleteCopyForDrop(seq));
  {
    absl::MutexLock lock(&mu_);
    auto t = tenants_.find(seq->tenant);
    if (t != tenants_.end()) t->second.sequences.erase(seq->id);
    ledger_.ReleasePages(seq->tenant, pages, page_bytes);
    ledger_.ReleaseMetadata(seq->tenant, seq->metadata_bytes);
    sessions_.RemoveSequence(seq->tenant, seq->id);
  }
  seq->metadata_bytes = 0;
  DropSharedHeld(seq);
  pool_.Free(private_pages);
  seq->dropped = true;
  v1::DropReply reply;
  reply.set_pages_freed(static_cast<uint32_t>(pages));
  reply.set_bytes_freed(pages * page_bytes);
  return reply;
}

}  // namespace kvkeep
