#include "service/storage/spill_store.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/failure_reason.h"
#include "common/status_macros.h"
#include "rocksdb/cache.h"
#include "rocksdb/convenience.h"
#include "rocksdb/filter_policy.h"
#include "rocksdb/rate_limiter.h"
#include "rocksdb/snapshot.h"
#include "rocksdb/table.h"
#include "rocksdb/write_batch.h"
#include "service/observability/log.h"
#include "service/storage/rocksdb_status.h"
#include "service/storage/spill_format.h"
#include "service/storage/xxhash64.h"

namespace kvkeep {
namespace {

using spill_format::CheckId;
using spill_format::DecodeManifest;
using spill_format::Manifest;
using spill_format::ManifestKey;
using spill_format::PageKey;
using spill_format::PageMeta;
using spill_format::PagePrefix;
using spill_format::ValueRuns;

constexpr char kPagesFamily[] = "pages";
constexpr char kManifestsFamily[] = "manifests";
// Deletes per batch in Recover: bounds the memory of one step.
constexpr size_t kDeleteBatch = 4096;

using Run = spill_format::ValueRun;

}  // namespace

// ---- Options ---------------------------------------------------------------------------------

SpillStore::DbConfig SpillStore::MakeDbConfig(const Options& o) {
  DbConfig c;
  c.db.create_if_missing = true;
  c.db.create_missing_column_families = true;
  c.db.max_background_jobs = 2;
  // Spread the write-back of flushed blob/SST files instead of one large fsync at the end.
  c.db.bytes_per_sync = 1 << 20;
  c.db.wal_bytes_per_sync = o.wal_bytes_per_sync;
  c.db.use_direct_reads = o.use_direct_reads;
  // A restore reads a sequence's pages in key order, which is their order in the blob file: let
  // the kernel read ahead. (RocksDB's default, FADV_RANDOM, turns every 8 KiB page into its own
  // device read; measured ~4x slower cold restores on a virtio disk, docs/benchmarks.md.)
  c.db.advise_random_on_open = false;
  if (o.env != nullptr) c.db.env = o.env;
  if (o.rate_limit_bytes_per_sec > 0) {
    c.db.rate_limiter.reset(rocksdb::NewGenericRateLimiter(o.rate_limit_bytes_per_sec));
  }

  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(o.block_cache_mib << 20);
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  std::shared_ptr<rocksdb::TableFactory> factory(rocksdb::NewBlockBasedTableFactory(table));

  for (rocksdb::ColumnFamilyOptions* cf : {&c.pages, &c.manifests}) {
    cf->table_factory = factory;
    cf->write_buffer_size = o.write_buffer_mib << 20;
    cf->compression = o.compression;
    cf->level_compaction_dynamic_level_bytes = true;
  }
  c.pages.enable_blob_files = true;
  c.pages.min_blob_size = o.min_blob_size;
  c.pages.blob_file_size = o.blob_file_size;
  c.pages.blob_compression_type = o.compression;
  // Deleted spills leave garbage in blob files; compaction relocates the live blobs of the oldest
  // files so those files can be removed.
  c.pages.enable_blob_garbage_collection = true;
  return c;
}

// ---- Open / close ----------------------------------------------------------------------------

SpillStore::SpillStore(const Options& options)
    : options_(options), config_(MakeDbConfig(options)) {}

absl::StatusOr<std::unique_ptr<SpillStore>> SpillStore::Open(const Options& options) {
  if (options.path.empty()) return absl::InvalidArgumentError("spill store: empty path");
  if (options.compression != rocksdb::kNoCompression) {
    std::vector<rocksdb::CompressionType> ok = rocksdb::GetSupportedCompressions();
    if (std::find(ok.begin(), ok.end(), options.compression) == ok.end()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "spill store: compression type ", static_cast<int>(options.compression),
          " is not built into this RocksDB"));
    }
  }
  auto store = std::unique_ptr<SpillStore>(new SpillStore(options));
  auto journal = DropJournal::Open(options.path + ".drops");
  if (journal.ok()) {
    store->drops_ = std::move(*journal);
  } else {
    log::Warn("spill.drop_journal_unavailable", {{"status", journal.status()}});
  }
  absl::MutexLock lock(&store->db_mu_);
  if (store->drops_) {
    for (std::string& key : store->drops_->Pending()) store->pending_drops_.insert(std::move(key));
  }
  RETURN_IF_ERROR(store->OpenDbLocked());
  return store;
}

SpillStore::~SpillStore() {
  absl::MutexLock lock(&db_mu_);
  CloseDbLocked();
}

absl::Status SpillStore::OpenDbLocked() {
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {kPagesFamily, config_.pages},
      {kManifestsFamily, config_.manifests}};
  rocksdb::DB* raw = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::Status s = rocksdb::DB::Open(config_.db, options_.path, families, &handles, &raw);
  if (!s.ok()) return FromRocksDb(s, "opening spill store at " + options_.path);
  db_.reset(raw);
  handles_ = std::move(handles);
  pages_ = handles_[1];
  manifests_ = handles_[2];
  RemoveIngestLeftoversLocked();
  absl::Status st = ApplyRollbacksLocked();
  // Pending drops alone do not keep the store closed: the index hides them until they apply.
  if (!st.ok() && rollback_pages_.empty() && rollback_manifests_.empty()) st = absl::OkStatus();
  if (st.ok()) st = RebuildIndexLocked();
  if (!st.ok()) CloseDbLocked();
  return st;
}

void SpillStore::RemoveIngestLeftoversLocked() {
  // No spill is being written (db_mu_ held exclusively): every file there is from a spill that
  // crashed or failed before its ingestion, never part of the database.
  rocksdb::Env* env = config_.db.env;
  const std::string dir = IngestDir();
  env->CreateDirIfMissing(dir).PermitUncheckedError();
  std::vector<std::string> children;
  if (!env->GetChildren(dir, &children).ok()) return;
  for (const std::string& name : children) {
    if (name == "." || name == "..") continue;
    env->DeleteFile(dir + "/" + name).PermitUncheckedError();
  }
}

void SpillStore::CloseDbLocked() {
  if (!db_) return;
  for (auto* h : handles_) db_->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  handles_.clear();
  pages_ = manifests_ = nullptr;
  db_->Close().PermitUncheckedError();
  db_.reset();
}

absl::Status SpillStore::RebuildIndexLocked() {
  absl::flat_hash_map<std::string, std::map<std::string, SpillSummary>> index;
  absl::flat_hash_map<std::string, uint64_t> bytes;
  uint64_t corrupt = 0;
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, manifests_));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    absl::string_view key(it->key().data(), it->key().size());
    absl::StatusOr<Manifest> m =
        DecodeManifest(key, absl::string_view(it->value().data(), it->value().size()), false);
    if (pending_drops_.contains(key)) continue;  // dropped; its delete has not applied yet
    if (!m.ok() || ManifestKey(m->summary.tenant, m->summary.sequence_id) != key) {
      ++corrupt;
      continue;
    }
    bytes[m->summary.tenant] += m->summary.bytes;
    std::string tenant = m->summary.tenant, id = m->summary.sequence_id;
    index[tenant].emplace(std::move(id), std::move(m->summary));
  }
  if (!it->status().ok()) return FromRocksDb(it->status(), "listing spilled sequences");
  absl::MutexLock lock(&mu_);
  index_ = std::move(index);
  tenant_bytes_ = std::move(bytes);
  corrupt_manifests_ = corrupt;
  return absl::OkStatus();
}

absl::Status SpillStore::EnsureOpen() {
  {
    absl::ReaderMutexLock lock(&db_mu_);
    if (db_ && pending_drops_.empty()) return absl::OkStatus();
  }
  absl::MutexLock lock(&db_mu_);
  if (db_) {
    // Drops recorded on a full disk: try again now (space may have been freed).
    if (!pending_drops_.empty() && db_->Resume().ok()) ApplyRollbacksLocked().IgnoreError();
    return absl::OkStatus();
  }
  absl::Status s = OpenDbLocked();
  if (!s.ok()) {
    return absl::UnavailableError(
        absl::StrCat("spill store is recovering from a disk error: ", s.message()));
  }
  return s;
}

void SpillStore::HandleWriteFailure(std::vector<std::string> rollback_pages,
                                    std::vector<std::string> rollback_manifests) {
  absl::MutexLock lock(&db_mu_);
  for (auto& k : rollback_pages) rollback_pages_.push_back(std::move(k));
  for (auto& k : rollback_manifests) rollback_manifests_.push_back(std::move(k));
  if (!db_) return;  // already closed by another failure; the next call reopens
  // A failed WAL write puts RocksDB in read-only mode; Resume() clears recoverable errors. When
  // it cannot, a reopen replays the WAL up to its last intact record and starts a new one.
  if (db_->Resume().ok() && ApplyRollbacksLocked().ok()) {
    // The failed write may have reached the WAL before its sync failed; the roll-back above made
    // the outcome definite, and the index never listed it.
    return;
  }
  CloseDbLocked();
  OpenDbLocked().IgnoreError();  // may fail while the disk is still bad; retried on next call
}

bool SpillStore::IsPendingDrop(const std::string& mkey) const {
  absl::ReaderMutexLock lock(&db_mu_);
  return pending_drops_.contains(mkey);
}

absl::Status SpillStore::ApplyRollbacksLocked() {
  if (rollback_pages_.empty() && rollback_manifests_.empty() && pending_drops_.empty()) {
    return absl::OkStatus();
  }
  rocksdb::WriteBatch batch;
  for (const auto& k : rollback_manifests_) batch.Delete(manifests_, k).PermitUncheckedError();
  for (const auto& k : rollback_pages_) batch.Delete(pages_, k).PermitUncheckedError();
  for (const auto& mkey : pending_drops_) {
    const size_t slash = mkey.find('/');
    if (slash == std::string::npos) continue;
    std::string prefix = PagePrefix(mkey.substr(0, slash), mkey.substr(slash + 1));
    std::string end = prefix;
    end.back() = '/' + 1;
    batch.DeleteRange(pages_, prefix, end).PermitUncheckedError();
    batch.Delete(manifests_, mkey).PermitUncheckedError();
  }
  rocksdb::WriteOptions w;
  w.sync = true;
  rocksdb::Status s = db_->Write(w, &batch);
  if (!s.ok()) return FromRocksDb(s, "rolling back failed spills and applying dropped ones");
  rollback_pages_.clear();
  rollback_manifests_.clear();
  // A journal entry that cannot be cleared stays pending (Put of that id stays refused), so
  // re-applying it at the next open can never delete a newer spill of the same id.
  for (auto it = pending_drops_.begin(); it != pending_drops_.end();) {
    auto next = std::next(it);
    if (drops_ == nullptr || drops_->Clear(*it).ok()) pending_drops_.erase(it);
    it = next;
  }
  return absl::OkStatus();
}

// ---- Index -----------------------------------------------------------------------------------

absl::Status SpillStore::BeginOp(const std::string& mkey, absl::string_view tenant,
                                 uint64_t put_bytes) {
  absl::MutexLock lock(&mu_);
  auto [it, inserted] = in_flight_.try_emplace(mkey);
  if (!inserted) {
    return absl::AbortedError(
        absl::StrCat("another spill or delete of sequence ", mkey, " is in progress"));
  }
  it->second.tenant = std::string(tenant);
  it->second.put_bytes = put_bytes;
  return absl::OkStatus();
}

void SpillStore::EndOp(const std::string& mkey) {
  absl::MutexLock lock(&mu_);
  in_flight_.erase(mkey);
}

void SpillStore::IndexInsertLocked(SpillSummary summary) {
  auto& seqs = index_[summary.tenant];
  auto it = seqs.find(summary.sequence_id);
  if (it != seqs.end()) return;  // already there (an index rebuild raced with this Put)
  tenant_bytes_[summary.tenant] += summary.bytes;
  std::string id = summary.sequence_id;
  seqs.emplace(std::move(id), std::move(summary));
}

void SpillStore::IndexEraseLocked(absl::string_view tenant, absl::string_view sequence_id) {
  auto t = index_.find(tenant);
  if (t == index_.end()) return;
  auto it = t->second.find(std::string(sequence_id));
  if (it == t->second.end()) return;
  auto b = tenant_bytes_.find(tenant);
  if (b != tenant_bytes_.end()) {
    b->second -= std::min(b->second, it->second.bytes);
    if (b->second == 0) tenant_bytes_.erase(b);
  }
  t->second.erase(it);
  if (t->second.empty()) index_.erase(t);
}

// ---- Operations ------------------------------------------------------------------------------

absl::Status SpillStore::Delete(absl::string_view tenant, absl::string_view sequence_id) {
  RETURN_IF_ERROR(CheckId("tenant", tenant));
  RETURN_IF_ERROR(CheckId("sequence id", sequence_id));
  const std::string mkey = ManifestKey(tenant, sequence_id);
  if (IsPendingDrop(mkey)) {
    return absl::NotFoundError(absl::StrCat("sequence ", mkey, " is not spilled"));
  }
  RETURN_IF_ERROR(BeginOp(mkey, tenant, 0));
  absl::Status st = EnsureOpen();
  if (!st.ok()) {
    EndOp(mkey);
    return st;
  }
  rocksdb::Status s;
  bool found = true;
  {
    absl::ReaderMutexLock lock(&db_mu_);
    if (!db_) {
      s = rocksdb::Status::IOError("database closed after a disk error");
    } else if (pending_drops_.contains(mkey)) {
      found = false;
    } else {
      std::string value;
      s = db_->Get(rocksdb::ReadOptions(), manifests_, mkey, &value);
      if (s.IsNotFound()) {
        found = false;
      } else if (s.ok()) {
        rocksdb::WriteBatch batch;
        const std::string prefix = PagePrefix(tenant, sequence_id);
        absl::StatusOr<Manifest> m = DecodeManifest(mkey, value, /*full=*/true);
        if (m.ok()) {
          for (const Run& run : ValueRuns(m->pages, m->pages_per_value)) {
            if (s.ok()) s = batch.Delete(pages_, PageKey(prefix, run.head, run.first));
          }
        } else {
          // A corrupt manifest does not say which pages exist: drop the whole key range.
          std::string end = prefix;
          end.back() = '/' + 1;
          s = batch.DeleteRange(pages_, prefix, end);
        }
        if (s.ok()) s = batch.Delete(manifests_, mkey);
        rocksdb::WriteOptions w;
        w.sync = true;
        if (s.ok()) s = db_->Write(w, &batch);
      }
    }
  }
  if (!found) {
    EndOp(mkey);
    return absl::NotFoundError(absl::StrCat("sequence ", mkey, " is not spilled"));
  }
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    in_flight_.erase(mkey);
    IndexEraseLocked(tenant, sequence_id);
    return absl::OkStatus();
  }
  if (s.IsInvalidArgument()) {
    EndOp(mkey);
    return FromRocksDb(s, "deleting spilled sequence " + mkey);
  }
  // The disk refused the delete (full, or read-only after a failed write). Record it where no
  // new space is needed; the keys go once the database is writable again.
  absl::Status journaled =
      drops_ ? drops_->Record(mkey) : absl::UnavailableError("no drop journal");
  if (journaled.ok()) {
    {
      absl::MutexLock lock(&db_mu_);
      pending_drops_.insert(mkey);
    }
    HandleWriteFailure({}, {});
    absl::MutexLock lock(&mu_);
    in_flight_.erase(mkey);
    IndexEraseLocked(tenant, sequence_id);
    log::Warn("spill.drop_deferred", {{"sequence", mkey}, {"disk_status", s.ToString()}});
    return absl::OkStatus();
  }
  HandleWriteFailure({}, {});
  EndOp(mkey);
  return FromRocksDb(s, absl::StrCat("deleting spilled sequence ", mkey, " (drop journal: ",
                                     journaled.message(), ")"));
}

absl::StatusOr<std::vector<SpillSummary>> SpillStore::List(absl::string_view tenant) const {
  std::vector<SpillSummary> out;
  absl::MutexLock lock(&mu_);
  if (!tenant.empty()) {
    auto t = index_.find(tenant);
    if (t == index_.end()) return out;
    for (const auto& [id, summary] : t->second) out.push_back(summary);
    return out;
  }
  std::vector<const std::string*> tenants;
  for (const auto& [name, seqs] : index_) tenants.push_back(&name);
  std::sort(tenants.begin(), tenants.end(),
            [](const std::string* a, const std::string* b) { return *a < *b; });
  for (const std::string* name : tenants) {
    for (const auto& [id, summary] : index_.find(*name)->second) out.push_back(summary);
  }
  return out;
}

uint64_t SpillStore::BytesOf(absl::string_view tenant) const {
  absl::MutexLock lock(&mu_);
  uint64_t bytes = 0;
  auto b = tenant_bytes_.find(tenant);
  if (b != tenant_bytes_.end()) bytes = b->second;
  for (const auto& [mkey, op] : in_flight_) {
    if (op.tenant == tenant) bytes += op.put_bytes;
  }
  return bytes;
}

absl::StatusOr<SpillRecoveryReport> SpillStore::Recover() {
  RETURN_IF_ERROR(EnsureOpen());
  absl::MutexLock lock(&db_mu_);
  if (!db_) return absl::UnavailableError("spill store is recovering from a disk error");
  // Exclusive: no Put or Delete runs, so the manifests read here are the truth.
  SpillRecoveryReport report;
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  rocksdb::WriteOptions w;
  w.sync = true;
  rocksdb::WriteBatch batch;
  size_t pending = 0;
  std::string last_orphan_prefix;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, pages_));
  it->SeekToFirst();
  while (it->Valid()) {
    absl::string_view key(it->key().data(), it->key().size());
    size_t first = key.find('/');
    size_t second = first == absl::string_view::npos ? first : key.find('/', first + 1);
    std::string prefix(key.substr(0, second == absl::string_view::npos ? key.size() : second + 1));
    bool owned = false;
    if (second != absl::string_view::npos) {
      std::string value;
      rocksdb::Status s =
          db_->Get(ro, manifests_, rocksdb::Slice(key.data(), second), &value);
      if (!s.ok() && !s.IsNotFound()) return FromRocksDb(s, "recovering spilled sequences");
      owned = s.ok();
    }
    if (owned) {
      // Skip the sequence's pages: the next key after `<tenant>/<id>/...` is >= `<tenant>/<id>0`.
      prefix.back() = '/' + 1;
      it->Seek(prefix);
      continue;
    }
    if (prefix != last_orphan_prefix) {
      ++report.orphan_sequences;
      last_orphan_prefix = prefix;
    }
    ++report.orphan_pages;
    rocksdb::Status s = batch.Delete(pages_, it->key());
    if (s.ok() && ++pending == kDeleteBatch) {
      s = db_->Write(w, &batch);
      batch.Clear();
      pending = 0;
    }
    if (!s.ok()) return FromRocksDb(s, "deleting orphan spilled pages");
    it->Next();
  }
  if (!it->status().ok()) return FromRocksDb(it->status(), "recovering spilled sequences");
  if (pending > 0) {
    rocksdb::Status s = db_->Write(w, &batch);
    if (!s.ok()) return FromRocksDb(s, "deleting orphan spilled pages");
  }
  absl::MutexLock index_lock(&mu_);
  for (const auto& [tenant, seqs] : index_) report.sequences += seqs.size();
  for (const auto& [tenant, bytes] : tenant_bytes_) report.bytes += bytes;
  report.corrupt_manifests = corrupt_manifests_;
  return report;
}

absl::Status SpillStore::Flush() {
  RETURN_IF_ERROR(EnsureOpen());
  absl::ReaderMutexLock lock(&db_mu_);
  if (!db_) return absl::UnavailableError("spill store is recovering from a disk error");
  rocksdb::FlushOptions f;
  f.wait = true;
  return FromRocksDb(db_->Flush(f, {pages_, manifests_}), "flushing the spill store");
}

absl::Status SpillStore::OverwritePageForTest(absl::string_view tenant,
                                              absl::string_view sequence_id, uint32_t head,
                                              uint32_t page, absl::string_view bytes) {
  RETURN_IF_ERROR(EnsureOpen());
  const std::string mkey = ManifestKey(tenant, sequence_id);
  absl::ReaderMutexLock lock(&db_mu_);
  if (!db_) return absl::UnavailableError("spill store is recovering from a disk error");
  std::string value;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), manifests_, mkey, &value);
  if (!s.ok()) return FromRocksDb(s, "reading manifest " + mkey);
  ASSIGN_OR_RETURN(Manifest m, DecodeManifest(mkey, value, /*full=*/true));
  if (head >= m.pages.size() || page >= m.pages[head].size()) {
    return absl::NotFoundError(absl::StrCat("no page ", page, " in head ", head, " of ", mkey));
  }
  // The page lives in the value of its run: splice the new bytes in place of the page's.
  const uint32_t first = page / m.pages_per_value * m.pages_per_value;
  const std::string key = PageKey(PagePrefix(tenant, sequence_id), head, first);
  std::string run_value;
  s = db_->Get(rocksdb::ReadOptions(), pages_, key, &run_value);
  if (!s.ok()) return FromRocksDb(s, "reading a page of " + mkey);
  size_t offset = 0;
  for (uint32_t p = first; p < page; ++p) offset += m.pages[head][p].size;
  if (offset > run_value.size()) return absl::DataLossError("stored run is shorter than its pages");
  run_value.replace(offset, m.pages[head][page].size, bytes.data(), bytes.size());
  rocksdb::WriteOptions w;
  w.sync = true;
  return FromRocksDb(db_->Put(w, pages_, key, run_value), "overwriting a page of " + mkey);
}

}  // namespace kvkeep
