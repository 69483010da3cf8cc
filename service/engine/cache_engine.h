// The daemon's state and rules: tenants, worker sessions, models, sequences and their pages.
//
// Every method takes the caller's tenant (already authenticated by the RPC layer) and checks every
// id against it; a sequence or session of another tenant is NOT_FOUND, an arena or page of another
// tenant PERMISSION_DENIED. Every request is validated before anything changes: a failed call
// leaves the state as it was.
//
//   ASSIGN_OR_RETURN(auto engine, CacheEngine::Create(backend.get(), store.get(), options));
//   ASSIGN_OR_RETURN(std::string tenant, engine->AuthenticateTenant(token));
//   ASSIGN_OR_RETURN(auto attached, engine->Attach(tenant, "worker-0", sink));
//
// Thread-safe. Lock order:
//   Sequence::mu -> CacheEngine::mu_ -> SessionRegistry::mu_ -> Ledger::mu_ -> PagePool::mu_.
// The engine is a façade over its parts, each the one owner of its rule:
//   Ledger (ledger.h)                      every charge of tenants and the pool, and admission;
//   SessionRegistry (session_registry.h)   sessions, leases, owners, retain, last access;
//   Spiller (spiller.h)                    moving sequences to the spill tier and back;
//   PressureRelief (pressure_relief.h)     freeing pool room (cached prefixes, pages, spills);
//   Sequence (sequence.h)                  a sequence's table and statistics, under its mu;
//   PagePool, PrefixIndex (service/pool/)  pages and shared prefix pages.
// The engine keeps the tenants (records, models, sequence maps), the credentials, the prefix
// index and the sharing groups' salts under mu_, and implements the two Host interfaces through
// which the Spiller and PressureRelief reach them.
// Where v1:: protos stop: at this class. Its public methods take and return the RPC protos (the
// RPC layer, tests, bench and fuzz call them); the parts below speak kvkeep's own types
// (TenantLimits, TenantCharges, SessionRegistry::Holders, ...), and the engine converts between
// the two in its own methods (TenantInfoLocked, InfoOf, LimitsOf).
#ifndef KVKEEP_SERVICE_ENGINE_CACHE_ENGINE_H_
#define KVKEEP_SERVICE_ENGINE_CACHE_ENGINE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "kvkeep/v1/admin.pb.h"
#include "kvkeep/v1/kvcache.pb.h"
#include "kvkeep/v1/records.pb.h"
#include "service/executor.h"
#include "service/engine/ledger.h"
#include "service/engine/pressure_relief.h"
#include "service/engine/reply_pins.h"
#include "service/engine/sequence.h"
#include "service/engine/spiller.h"
#include "service/engine/session_registry.h"
#include "service/engine/model_layout.h"
#include "service/pool/page_costs.h"
#include "service/pool/page_pool.h"
#include "service/pool/pool_shares.h"
#include "service/pool/prefix_index.h"
#include "service/engine/sequence_stats.h"
#include "service/fleet/fleet_scope.h"
#include "service/fleet/fleet_tier.h"
#include "service/engine/sequence_table.h"
#include "service/engine/session_sink.h"
#include "service/storage/metadata_store.h"
#include "service/storage/spill_store.h"

namespace kvkeep {

struct EngineOptions {
  PoolOptions pool;
  uint64_t max_message_bytes = 4 << 20;  // Default: gRPC's 4 MiB
  uint32_t max_tokens_per_allocation = 1u << 20;  // Default: 1M tokens per AllocatePages call
  // Default: 0 = no limit. Pages one AllocatePages may add over all heads (RESOURCE_EXHAUSTED
  // beyond, nothing allocated); the server derives it from the message limit.
  uint64_t max_pages_per_request = 0;
  // Default: 0 = no limit. The same bound for AllocatePagesStream, whose reply is chunked and so
  // never limited by the message size; the server sets it only from an explicit
  // --max_pages_per_request.
  uint64_t max_pages_per_chunked_request = 0;
  // Bounds on what one tenant can make the daemon hold in its heap (hostile or buggy workers).
  uint32_t max_sequences_per_tenant = 1u << 16;  // Default: 65536
  uint32_t max_sessions_per_tenant = 4096;       // Default: 4096
  double low_free = 0.05;   // Default: spill when less than 5 % of the pool is free...
  double high_free = 0.10;  // Default: ...until 10 % is free (overridden by persisted values)
  // How pool pressure frees pages (docs/architecture.md, "Pool allocation"): kLru spills whole
  // least-recently-used sequences (lossless, restorable); kCapacity first drops the globally
  // cheapest whole pages by capacity cost (lossy), then spills.
  PressurePolicy pressure_policy = PressurePolicy::kLru;  // Default: lru
  // The most daemon heap (page tables, statistics, model layouts) one tenant may make the daemon
  // hold (service/engine/metadata_charge.h); 0 = unbounded. Default: 256 MiB.
  uint64_t max_metadata_bytes_per_tenant = uint64_t{256} << 20;
  // ---- Fleet tier (docs/fleet.md; cache_engine_fleet.cc) ----
  // Default: null = no fleet tier. Must outlive the engine.
  fleet::FleetTier* fleet = nullptr;
  // Default: 50 ms. Bound of LookupPrefix's existence checks in the cluster.
  absl::Duration fleet_lookup_timeout = absl::Milliseconds(50);
  // Default: 1 s. Bound of CreateSequence's fetch of a prefix's page values from the cluster.
  absl::Duration fleet_fetch_timeout = absl::Seconds(1);
  std::string fleet_node_name;  // this daemon's name in the fleet (kvkeepd --node_name)
};

// Fills an ArenaExport from what the pool knows.
void ToProto(const ArenaInfo& info, v1::ArenaExport* out);

// Metadata-store key of the persisted pool watermarks.
inline constexpr char kWatermarksKeyName[] = "pool/watermarks";

class CacheEngine : private Spiller::Host, private PressureRelief::Host {
 public:
  // Restores tenants, models, watermarks from `store` and lists the spilled sequences of `spill`
  // as restorable. `spill` may be null (no spill tier: Spill answers FAILED_PRECONDITION).
  // `backend`, `store` and `spill` must outlive the engine.
  static absl::StatusOr<std::unique_ptr<CacheEngine>> Create(Backend* backend,
                                                             MetadataStore* store,
                                                             EngineOptions options,
                                                             SpillStore* spill = nullptr);
  ~CacheEngine();

  // The tenant owning `token`; UNAUTHENTICATED when no tenant has it.
  absl::StatusOr<std::string> AuthenticateTenant(const std::string& token) const;
  // The admin token's hash (docs/api.md): no tenant token may equal it. FAILED_PRECONDITION when
  // a tenant loaded from the store already has it (the daemon must not start: the token would
  // authenticate as both); CreateTenant refuses it from then on.
  absl::Status ReserveAdminToken(const std::string& admin_token_hash);

  // ---- Admin -------------------------------------------------------------------------------
  absl::StatusOr<v1::CreateTenantReply> CreateTenant(const v1::CreateTenantRequest& request);
  v1::ListTenantsReply ListTenants() const;
  absl::StatusOr<v1::DeleteTenantReply> DeleteTenant(const std::string& name, bool force);
  absl::StatusOr<v1::TenantInfo> SetQuota(const v1::SetQuotaRequest& request);
  // The tenant's default eviction policy: validated, persisted, then in effect.
  absl::StatusOr<v1::Policy> SetPolicy(const v1::SetPolicyRequest& request);
  absl::StatusOr<v1::Policy> GetPolicy(const std::string& tenant) const;
  v1::DaemonStatus Status() const;
  v1::ListSequencesReply ListSequences(const std::string& tenant) const;
  absl::StatusOr<v1::Watermarks> SetWatermarks(const v1::Watermarks& watermarks);
  // Operator versions of Spill / Restore / Drop (no session; Drop may force past leases).
  absl::StatusOr<v1::SpillReply> AdminSpill(const v1::SequenceRef& ref);
  absl::StatusOr<v1::SequenceInfo> AdminRestore(const v1::SequenceRef& ref);
  absl::StatusOr<v1::DropReply> AdminDrop(const v1::SequenceRef& ref);
  // The operator's view of one sequence. NOT_FOUND (tenant or sequence).
  absl::StatusOr<v1::SequenceDetail> AdminGetSequence(const v1::SequenceRef& ref);
  // The worker Compress path without a session (Compress's errors; an unknown tenant is
  // NOT_FOUND). Runs on the calling thread: call it from an executor.
  absl::StatusOr<v1::CompressReply> AdminCompress(const v1::CompressSequenceRequest& request);
  // SetPolicy's checks, nothing applied. NOT_FOUND (tenant), INVALID_ARGUMENT.
  absl::StatusOr<v1::ValidatePolicyReply> ValidatePolicy(const v1::SetPolicyRequest& request) const;

  // ---- Sessions ----------------------------------------------------------------------------
  struct Attached {
    std::string session_id;
    std::vector<ArenaInfo> arenas;
    std::string superseded_session_id;
    uint32_t adopted_sequences = 0;
  };
  // Opens a session. A live session of the same tenant and worker name is ended (its sink gets
  // ABORTED) and its sequences and leases move to the new one. `sink` must stay valid until
  // EndSession(session_id) returns.
  absl::StatusOr<Attached> Attach(const std::string& tenant, const std::string& worker_name,
                                  SessionSink* sink);
  // Ends a session: its leases are released and the sequences it created without `retain` are
  // dropped (unless another session leases them). No-op for an unknown or superseded session.
  void EndSession(const std::string& session_id);
  // Ends every session with `status` (daemon shutdown).
  void EndAllSessions(const absl::Status& status);

  // ---- Worker API --------------------------------------------------------------------------
  absl::StatusOr<v1::RegisterModelReply> RegisterModel(const std::string& tenant, Model model);
  absl::StatusOr<v1::ArenaExport> GetArena(const std::string& tenant, uint32_t arena_id) const;
  // The arena channel's answer (service/arena_channel): the export and a new fd (the caller closes
  // it) of an arena `tenant` may map, for live session `session_id`: its own read-write, its
  // sharing group's read-only (an O_RDONLY fd). Errors as GetArena; NOT_FOUND for a session that
  // is not live; FAILED_PRECONDITION for an arena exported by handle (CUDA IPC).
  absl::StatusOr<std::pair<v1::ArenaExport, int>> ArenaFdFor(const std::string& tenant,
                                                             const std::string& session_id,
                                                             uint32_t arena_id) const;
  // `chunked_reply`: the reply travels in chunks (CreateSequenceStream), so the check that the
  // unary reply fits one message (create_reply_size.h) does not apply.
  absl::StatusOr<v1::PageTable> CreateSequence(const std::string& tenant,
                                               const v1::CreateSequenceRequest& request,
                                               bool chunked_reply = false);
  // `chunked_reply`: the reply travels in chunks (AllocatePagesStream): the pages limit is
  // max_pages_per_chunked_request instead of max_pages_per_request.
  absl::StatusOr<v1::PageTableDelta> AllocatePages(const std::string& tenant,
                                                   const v1::AllocateRequest& request,
                                                   bool chunked_reply = false);
  absl::StatusOr<v1::CommitReply> CommitTokens(const std::string& tenant,
                                               const v1::CommitRequest& request);
  // Stores one layer's query statistics. INVALID_ARGUMENT (shapes, NaN/Inf), NOT_FOUND.
  absl::Status PutStats(const std::string& tenant, const v1::StatsChunk& chunk);
  // Scores, selects and compacts a sequence in place (service/compressor.h); frees the emptied
  // pages and un-charges the tenant. Runs on the calling thread: call it from an executor.
  absl::StatusOr<v1::CompressReply> Compress(const std::string& tenant,
                                             const v1::CompressRequest& request);
  // Writes one chunk of the bytes path.
  absl::Status WriteChunk(const std::string& tenant, const v1::KvChunk& chunk);
  // WriteChunk with the key and value bytes apart from the message (WriteKV's parser reads them
  // straight from the received gRPC buffers): `header`'s own keys and values are ignored.
  absl::Status WriteChunkBytes(const std::string& tenant, const v1::KvChunk& header,
                               absl::string_view keys, absl::string_view values);
  // WriteChunkBytes with each byte field in pieces (concatenated in order they are the field):
  // the views into the received gRPC slices, written to the pages without gathering them first.
  absl::Status WriteChunkPieces(const std::string& tenant, const v1::KvChunk& header,
                                absl::Span<const absl::string_view> keys,
                                absl::Span<const absl::string_view> values);
  // The bulk channel's write (service/bulk_channel): checks the chunk as WriteChunkPieces does,
  // with `key_bytes` and `value_bytes` still to come, and returns where they go in page memory,
  // the pages pinned (reply_pins.h) until the last copy of `hold` goes, so the caller receives the
  // bytes straight into them without holding the sequence's lock. UNIMPLEMENTED where the
  // backend's memory cannot be written by the host in place (CUDA): use WriteChunkBytes.
  absl::StatusOr<WriteTargets> PinWriteTargets(const std::string& tenant,
                                               const v1::KvChunk& header, uint64_t key_bytes,
                                               uint64_t value_bytes);
  absl::StatusOr<v1::PageTable> GetSequence(const std::string& tenant,
                                            const std::string& sequence_id, bool with_positions);
  absl::StatusOr<v1::PageTable> Acquire(const std::string& tenant, const v1::AcquireRequest& r);
  absl::StatusOr<v1::ReleaseReply> Release(const std::string& tenant, const v1::ReleaseRequest& r);
  absl::StatusOr<v1::DropReply> Drop(const std::string& tenant, const v1::DropRequest& r);
  // Moves a sequence to the spill tier (durable before OK) and frees its device pages.
  absl::StatusOr<v1::SpillReply> Spill(const std::string& tenant, const v1::SpillRequest& r);
  // Brings a spilled sequence back (checksums verified).
  absl::StatusOr<v1::PageTable> Restore(const std::string& tenant, const v1::RestoreRequest& r);

  // ---- Shared prefixes (sharing groups; service/cache_engine_share.cc) ----------------------
  // Publishes the sequence's first full pages to the tenant's sharing group (copied once, or
  // adopted when the group has them) and points the sequence at the shared pages.
  absl::StatusOr<v1::PublishPrefixReply> PublishPrefix(const std::string& tenant,
                                                       const v1::PublishPrefixRequest& r);
  // Leading full pages of the tokens that the tenant's group holds (0 outside any group).
  absl::StatusOr<v1::LookupPrefixReply> LookupPrefix(const std::string& tenant,
                                                     const v1::LookupPrefixRequest& r);
  // Where a page's bytes are, for `tenant`: one of its own pages, or a shared prefix page of its
  // sharing group. Errors as PagePool::Locate.
  absl::StatusOr<PagePool::Location> LocatePage(const std::string& tenant,
                                                uint64_t page) const override;

  // ReadKV as a cursor: each Next() fills one chunk of at most the requested size; returns false
  // when done. Created after validating the request.
  class ReadCursor {
   public:
    virtual ~ReadCursor() = default;
    virtual absl::StatusOr<bool> Next(v1::KvChunk* chunk) = 0;
    // As Next, with the chunk's bytes as views (reply_pins.h): into pinned page memory where the
    // backend allows it (sequence reads on the CPU backend), else into strings the chunk owns.
    virtual absl::StatusOr<bool> NextReferenced(ReadChunk* chunk);
    // Several NextReferenced chunks at once (KvBatch.ReadKVBatch): fills chunks[0, n) with the
    // next chunks whose encoded sizes (keys, values, 5 bytes per position, 64 for the rest) sum to
    // at most `budget` (at least one while any is left; entries reused) and returns n, 0 at the
    // end. A sequence read takes its lock once for all, so no pin of this read is held while it
    // waits for the lock (a Compress holding it waits for pins). Default: one NextReferenced.
    virtual absl::StatusOr<size_t> NextReferencedBatch(std::vector<ReadChunk>* chunks,
                                                       uint64_t budget);
  };
  absl::StatusOr<std::unique_ptr<ReadCursor>> OpenRead(const std::string& tenant,
                                                       const v1::ReadRequest& request);

  // ---- Fleet tier (cache_engine_fleet.cc, docs/fleet.md) ------------------------------------
  // Stores a sharing group's secret; derives its chain salt and value key. INVALID_ARGUMENT
  // (empty or too long group name, secret too short or too long), the store's error.
  absl::StatusOr<v1::SetGroupSecretReply> SetGroupSecret(const v1::SetGroupSecretRequest& r);
  // "group=fingerprint" of every group with a secret, sorted.
  std::vector<std::string> GroupFingerprints() const;
  // "model=layout hash (16 hex)" of every registered model, sorted, deduplicated.
  std::vector<std::string> ModelLayoutHashes() const;
  // The cluster as this daemon sees it and its fleet counters. FAILED_PRECONDITION without a
  // fleet tier. Contacts the cluster (bounded by `deadline`): call it from an executor.
  absl::StatusOr<v1::FleetStatus> FleetStatus(absl::Time deadline) const;

  uint64_t max_message_bytes() const { return options_.max_message_bytes; }
  const PagePool& pool() const { return pool_; }

  // A sequence (sequence.h): its table and statistics under its own mu. Who holds it is the
  // SessionRegistry's; what it is charged, the Ledger's.
  using Sequence = ::kvkeep::Sequence;

 private:
  // A tenant's record and what it has; its charges are the Ledger's, its sessions the
  // SessionRegistry's.
  struct Tenant {
    v1::TenantRecord record;
    absl::flat_hash_map<std::string, std::shared_ptr<Sequence>> sequences;
    absl::flat_hash_map<std::string, std::shared_ptr<const Model>> models;
  };
  // The ledger's view of a tenant record.
  static TenantLimits LimitsOf(const v1::TenantRecord& record);

  CacheEngine(Backend* backend, MetadataStore* store, SpillStore* spill, EngineOptions options);
  absl::Status Load();

  // The tenant's sequence; NOT_FOUND otherwise.
  absl::StatusOr<std::shared_ptr<Sequence>> FindSequence(const std::string& tenant,
                                                         const std::string& id) const;
  // OK when `id` is empty or a live session of `tenant`; NOT_FOUND otherwise (a superseded or
  // ended session's calls are refused).
  absl::Status CheckSessionIfGiven(const std::string& tenant, const std::string& id) const;
  // Drops a sequence whose caller holds seq->mu; removes it from the maps and frees its pages.
  absl::StatusOr<v1::DropReply> DropHeld(Sequence* seq, const std::string& caller_session,
                                         bool force) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  // The sequences named by `ended` (orphans of ended sessions), to be dropped.
  std::vector<std::shared_ptr<Sequence>> OrphansLocked(
      const std::vector<SessionRegistry::Ended>& ended) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DropOrphans(const std::vector<std::shared_ptr<Sequence>>& drop);
  v1::TenantInfo TenantInfoLocked(const Tenant& t) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Spill / restore of a sequence whose mu the caller holds. `caller_session` may hold a lease;
  // any other lease makes SpillHeld FAILED_PRECONDITION (unless `ignore_leases`).
  absl::StatusOr<v1::SpillReply> SpillHeld(Sequence* seq, const std::string& caller_session,
                                           bool ignore_leases)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  absl::Status RestoreHeld(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  absl::Status LoadSpilled();
  // PressureRelief::Host: unleased sequences with their tenant's protected sinks and window;
  // the watermarks in effect.
  std::vector<PressureRelief::Host::Candidate> UnleasedSequences() override;
  FreeWatermarks Watermarks() const override;
  // --pressure_policy=compress: `seq` compressed by its tenant's policy at keep_ratio
  // (cache_engine_pressure.cc).
  absl::StatusOr<Compressed> CompressForPressure(Sequence* seq, double keep_ratio) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  v1::SequenceInfo InfoOf(Sequence& seq) const;
  // Admission + charge + pool allocation of `count` pages for `tenant`; announces new arenas to
  // the tenant's sessions. Under pool pressure it asks PressureRelief once and retries.
  // RESOURCE_EXHAUSTED with the figures and a FailureReason otherwise; nothing is allocated or
  // charged then. (Spiller::Host.)
  absl::Status AllocateCharged(const std::string& tenant, const PageGeometry& geometry,
                               uint64_t count, std::vector<uint64_t>* pages,
                               std::vector<ArenaInfo>* new_arenas) override;
  // Compresses `seq` (its mu held) under `policy` over the tenant default; frees and un-charges.
  absl::StatusOr<v1::CompressReply> CompressHeld(Sequence* seq, const v1::Policy& policy)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  void TableToProto(const Sequence& seq, bool with_positions, v1::PageTable* out) const
      ABSL_SHARED_LOCKS_REQUIRED(seq.mu);

  // ---- Shared prefixes (cache_engine_share.cc) ----
  static std::string GroupOwner(const std::string& group) { return "group:" + group; }
  // Creates and persists the group's salt when the group is new.
  absl::Status EnsureGroupLocked(const std::string& group) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The export of an arena for `tenant`: its own, or its group's (read_only). Errors as GetArena.
  absl::StatusOr<v1::ArenaExport> ExportArenaFor(const std::string& tenant,
                                                 uint32_t arena_id) const;
  // Adds to `table.arenas` the export of every arena its pages live in.
  absl::Status AddArenas(const std::string& tenant, v1::PageTable* table) const;
  // The chain keys of `tokens` for `model` in the tenant's group (empty without a group).
  std::vector<std::string> PrefixKeysLocked(const Tenant& t, const Model& model,
                                            absl::Span<const uint32_t> tokens) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Longest chain of the group's entries for `tokens`; counts the lookup.
  std::vector<std::shared_ptr<PrefixEntry>> MatchPrefixLocked(const Tenant& t, const Model& model,
                                                              absl::Span<const uint32_t> tokens)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // PublishPrefix in steps: what it will do (decided first), the copies the group lacks (made
  // outside mu_), and the all-or-nothing commit.
  struct PublishPlan {
    std::string group;
    std::vector<std::string> keys;  // chain keys of the `full` pages
    uint32_t first = 0;             // pages the sequence already shares
    uint32_t full = 0;              // full pages to share
    std::vector<uint32_t> missing;  // pages the group lacked when planned
  };
  struct PublishOutcome {
    uint32_t published = 0, adopted = 0;
    std::vector<uint64_t> to_free;  // the sequence's private pages, and copies not needed
  };
  // FAILED_PRECONDITION unless the first `full` pages are full and unmodified in every head.
  static absl::Status CheckPublishable(const Sequence& seq, uint32_t full)
      ABSL_SHARED_LOCKS_REQUIRED(seq.mu);
  absl::StatusOr<PublishPlan> PlanPublish(const std::string& tenant, const Sequence& seq,
                                          absl::Span<const uint32_t> tokens, uint32_t full)
      ABSL_SHARED_LOCKS_REQUIRED(seq.mu);
  // Allocates group pages for page `indices` of every head and copies them (admission first:
  // cached prefix pages are released once when the pool is short). Nothing changes on error.
  absl::Status CopyToGroup(const Sequence& seq, const PublishPlan& plan,
                           const std::vector<uint32_t>& indices,
                           absl::flat_hash_map<uint32_t, std::vector<uint64_t>>* copies)
      ABSL_SHARED_LOCKS_REQUIRED(seq.mu);
  // Publishes or adopts every planned page, or (false) nothing, naming in *missing the pages that
  // have neither an entry nor a copy now.
  bool CommitPublishLocked(Sequence* seq, const PublishPlan& plan,
                           absl::flat_hash_map<uint32_t, std::vector<uint64_t>>* copies,
                           std::vector<uint32_t>* missing, PublishOutcome* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_, seq->mu);
  // Starts a new, not yet published sequence with `entries` (refs and charges taken). Like a
  // constructor it writes the sequence's fields without its mu: no other thread can see it yet,
  // and taking it under mu_ would invert the lock order. Hence no analysis here.
  void AttachSharedLocked(Sequence* seq, std::vector<std::shared_ptr<PrefixEntry>> entries)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) ABSL_NO_THREAD_SAFETY_ANALYSIS;
  // Drops the sequence's references on its shared entries (its table is left to the caller).
  void DropSharedHeld(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  // Every page of the sequence except its shared prefix pages.
  static std::vector<uint64_t> PrivatePagesOf(const Sequence& seq)
      ABSL_SHARED_LOCKS_REQUIRED(seq.mu);
  // Empties the table (spill): frees its private pages, drops its shared references. Returns the
  // number of private pages freed. (Spiller::Host.)
  uint64_t ReleaseTable(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu) override;
  // Copy-on-write: gives the sequence private copies of its shared prefix pages (charged to its
  // tenant, admission applies) and drops its shared references.
  absl::Status UnshareHeld(Sequence* seq) ABSL_EXCLUSIVE_LOCKS_REQUIRED(seq->mu);
  // ---- Fleet tier (cache_engine_fleet.cc) ----
  // The fleet scope of (group, model); nullopt without a fleet tier or a secret of the group.
  std::optional<fleet::FleetScope> FleetScopeLocked(const std::string& group,
                                                    const Model& model) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Before CreateSequence takes mu_: fetches from the cluster the prompt's pages the local index
  // lacks and inserts them as cached group entries. Returns the pages the local index held
  // (*local_pages) and those imported: the run the cluster holds and verifies, cut at the first
  // miss, timeout or refused value, and at a pool shortage (the pages that fit are imported).
  uint32_t ImportFleetPrefix(const std::string& tenant, const v1::CreateSequenceRequest& r,
                             uint32_t* local_pages);
  // Group pages for up to `wanted` token pages of `heads` pool pages each: all of them (after
  // releasing cached prefixes if the pool is short), else as many whole token pages as fit.
  std::vector<uint64_t> AllocateFleetImport(const std::string& owner, const PageGeometry& g,
                                            uint32_t heads, size_t wanted);
  // Inserts the entries for pages first.. of `keys` whose bytes are in `pages` (`heads` per
  // entry, `verified` entries) that the index does not hold yet; frees the rest of `pages`.
  // Returns `verified`.
  uint32_t InsertFleetPages(const fleet::FleetScope& scope, const Model& model,
                            const std::vector<std::string>& keys, uint32_t first,
                            const std::vector<uint64_t>& pages, size_t verified);
  // After a publish: reads the bytes of the sequence's shared pages [first, full) and queues
  // them for the cluster (write-behind). Failures are counted by the tier and logged.
  void PutFleetPages(const Sequence& seq, const fleet::FleetScope& scope,
                     const std::vector<std::string>& keys, uint32_t first, uint32_t full)
      ABSL_SHARED_LOCKS_REQUIRED(seq.mu);
  // The node record this daemon publishes (fleet/node_records.h): its groups' fingerprints and
  // its models' layout hashes (16 hex). Takes mu_.
  fleet::NodeRecord FleetNodeRecord() const;
  // Hands the fleet tier FleetNodeRecord as its node record source (Create) / takes it back
  // (~CacheEngine, waiting for a call in progress). Nothing without a fleet tier.
  void StartFleetNodeRecord();
  void StopFleetNodeRecord();
  // The fleet scope of the tenant's group for `model` (takes mu_).
  std::optional<fleet::FleetScope> FleetScopeOf(const std::string& tenant, const Model& model) const;

  // Frees unreferenced (cached) shared prefix pages, least recently released first, until
  // `want_bytes` are freed or none is left. Returns the bytes freed. (PressureRelief::Host.)
  uint64_t ReleaseCachedPrefixes(uint64_t want_bytes) override;

  // Constant after construction.
  Backend* const backend_;
  MetadataStore* const store_;
  SpillStore* const spill_;  // may be null
  const EngineOptions options_;
  const absl::Time started_;
  PagePool pool_;
  // Thread-safe parts with their own locks (after mu_ in the lock order).
  Ledger ledger_;
  SessionRegistry sessions_;
  Spiller spiller_;
  // The destructor stops its thread first, before anything it may touch goes.
  std::unique_ptr<Executor> background_;
  PressureRelief relief_;

  mutable absl::Mutex mu_;
  // Protected by mu_.
  absl::flat_hash_map<std::string, Tenant> tenants_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> token_to_tenant_ ABSL_GUARDED_BY(mu_);
  std::string admin_token_hash_ ABSL_GUARDED_BY(mu_);  // empty until ReserveAdminToken
  PrefixIndex prefixes_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, std::string> group_salts_ ABSL_GUARDED_BY(mu_);
  // Fleet tier: the derived keys of groups with a secret (their salt is keys->chain_salt).
  absl::flat_hash_map<std::string, std::shared_ptr<const fleet::GroupKeys>> group_fleet_keys_
      ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> prefix_lookups_{0}, prefix_pages_hit_{0}, prefix_pages_missed_{0};
  v1::Watermarks watermarks_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_CACHE_ENGINE_H_
