// The spill tier: whole sequences (page bytes + page table) stored durably on local disk in
// RocksDB, so cold sequences can leave device memory and come back bit-exact, across restarts.
//
//   SpillStore::Options o;
//   o.path = data_dir + "/spill";
//   ASSIGN_OR_RETURN(auto spill, SpillStore::Open(o));
//   ASSIGN_OR_RETURN(RecoveryReport report, spill->Recover());   // once, at startup
//   if (spill->BytesOf(tenant) + bytes > quota) return ResourceExhausted(...);
//   RETURN_IF_ERROR(spill->Put(record));      // durable when OK: the device pages may be freed
//   ASSIGN_OR_RETURN(SpillRecord back, spill->Get(tenant, id));   // every page checksum verified
//   RETURN_IF_ERROR(spill->Delete(tenant, id));
//
// Layout. The store has its own RocksDB at Options::path (the daemon uses `<data_dir>/spill`),
// separate from MetadataStore's database: a spill writes up to gigabytes through the WAL, and
// sharing one WAL would make every small synced tenant/policy write queue behind it; separate
// databases also keep metadata_store.* untouched and let the spill disk be tuned (or moved) alone.
// Two column families:
//   "pages"     key `<tenant>/<sequence_id>/<head:08x>/<page:08x>` -> the bytes of a run of up
//               to Options::pages_per_value consecutive pages of the head starting at that page
//               (one page per value in version-1 spills; spill_format.h, "Page values"). Integrated
//               BlobDB (enable_blob_files): values >= min_blob_size live in blob files, the LSM tree
//               holds only keys and blob references, so compaction never rewrites page bytes.
//   "manifests" key `<tenant>/<sequence_id>` -> the sequence's table (model, next position, per
//               head the token count, kept positions, and each page's size and XXH64 checksum,
//               total bytes, created time), with a checksum of its own.
// A spill (Write, Put) up to Options::write_batch_bytes writes every page and the manifest in ONE
// WriteBatch with sync = true. A larger one (Options::ingest_large_spills, the default) writes its
// pages into one SST file outside the database (`<path>.ingest/`, rocksdb::SstFileWriter, synced),
// moves it into "pages" with IngestExternalFile (values inline in that SST, not in blob files),
// and writes the manifest last with sync = true: the manifest is the commit point. (With
// ingest_large_spills = false: batches without the WAL, then a flush of the pages' memtables.)
// Either way the spill is entirely durable and listed, or not listed; a half-written spill can
// never be listed. A crash after the ingestion (or between memtable batches) leaves page keys
// without a manifest: the retry of the same spill deletes them first, Recover() at startup
// deletes any others; a crash before it leaves only a file in `<path>.ingest/`, which Open
// deletes. Head index h is layer-major as in SequenceTable (h = layer * kv_heads + kv_head).
//
// Errors. Disk trouble (I/O error, disk full) is UNAVAILABLE naming the operation. RocksDB stops
// accepting writes after a failed WAL write; the store then resumes it, or closes and reopens the
// database on the next call, so it keeps serving once the disk is back. A Put that failed leaves
// nothing behind: its keys are deleted once the database is writable again.
// Delete works on a full disk: when RocksDB cannot take the delete, the manifest key is recorded
// in the drop journal (`<path>.drops`, drop_journal.h, space written when it was created), the
// sequence disappears from List/Get/BytesOf at once, and its keys are deleted when the database
// accepts writes again (the next call after space is freed, or the next open after a restart).
//
// Thread-safe. Operations on different sequences run concurrently (RocksDB groups concurrent
// synced writes into one fsync); two concurrent writers of the same sequence get ABORTED.
#ifndef KVKEEP_SERVICE_STORAGE_SPILL_STORE_H_
#define KVKEEP_SERVICE_STORAGE_SPILL_STORE_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "service/storage/drop_journal.h"

namespace kvkeep {

// One (layer, KV head) of a spilled sequence.
struct SpilledHead {
  uint32_t count = 0;               // committed tokens
  std::vector<int32_t> positions;   // original position of each committed token, size == count
  std::vector<std::string> pages;   // whole pages, in order (each non-empty)
};

struct SpillRecord {
  std::string tenant;       // non-empty, no '/'
  std::string sequence_id;  // non-empty, no '/'
  std::string model;
  int64_t next_position = 0;  // SequenceTable::next_position()
  std::vector<SpilledHead> heads;
};

struct SpillSummary {
  std::string tenant;
  std::string sequence_id;
  std::string model;
  uint64_t bytes = 0;  // page bytes (what the spill quota counts)
  uint64_t pages = 0;
  absl::Time created;
};

// A sequence to spill, without its bytes: what a streamed write (SpillStore::Write) stores besides
// the pages its SpillPageSource supplies. The position spans are not owned: they must stay valid
// (and unchanged) until Write returns.
struct SpillWrite {
  std::string tenant;       // non-empty, no '/'
  std::string sequence_id;  // non-empty, no '/'
  std::string model;
  int64_t next_position = 0;
  std::vector<uint32_t> counts;                      // per head: committed tokens
  std::vector<absl::Span<const int32_t>> positions;  // per head: counts[h] original positions
  std::vector<std::vector<uint32_t>> page_sizes;     // per head: each page's size (1..4 GiB)
};

// Where a streamed write (SpillStore::Write) reads a sequence's pages from.
class SpillPageSource {
 public:
  virtual ~SpillPageSource() = default;
  // Copies page `page` of `head` (`size` bytes, as SpillWrite::page_sizes says) into `dst`.
  // Called on the writing thread only, once per page, in key order (head, then page). A non-OK
  // status ends the write with that status; nothing is listed and the pages written so far are
  // deleted.
  virtual absl::Status ReadPage(uint32_t head, uint32_t page, char* dst, size_t size) = 0;
};

// The table of a spilled sequence without its bytes: what a streamed read (SpillStore::ReadInto)
// hands its sink before the first page.
struct SpillLayout {
  std::string model;
  int64_t next_position = 0;
  uint64_t bytes = 0;  // sum of every page's size
  uint64_t pages = 0;  // number of pages
  std::vector<uint32_t> counts;                   // per head: committed tokens
  std::vector<std::vector<int32_t>> positions;    // per head: counts[h] original positions
  std::vector<std::vector<uint32_t>> page_sizes;  // per head: each page's size in bytes
};

// Where a streamed read (SpillStore::ReadInto) delivers a spilled sequence.
class SpillPageSink {
 public:
  virtual ~SpillPageSink() = default;
  // Once, on the calling thread, before any page is read. The sink may move the vectors out of
  // `layout`. A non-OK status ends the read with that status; no page is read.
  virtual absl::Status Begin(SpillLayout& layout) = 0;
  // Once per page, as soon as its value has been read and the page's XXH64 matched the manifest.
  // `bytes` (layout.page_sizes[head][page] long) is valid during the call only. Called from up to
  // Options::read_threads threads at once, each with different pages, in no fixed order; every
  // call happens after Begin returned. A non-OK status stops the read and is what it returns.
  virtual absl::Status Page(uint32_t head, uint32_t page, absl::string_view bytes) = 0;
};

// What Recover() found and did.
struct SpillRecoveryReport {
  uint64_t sequences = 0;       // manifests listed (restorable sequences)
  uint64_t bytes = 0;           // their page bytes
  uint64_t orphan_pages = 0;    // page keys without a manifest, deleted
  uint64_t orphan_sequences = 0;  // distinct <tenant>/<sequence_id> prefixes among them
  uint64_t corrupt_manifests = 0;  // manifests that failed their checksum: kept, not listed
};

class SpillStore {
 public:
  struct Options {
    // Folder of the database (created if missing). Default: none, required.
    std::string path;
    // Block cache for the LSM's index/filter/data blocks (keys and blob references only).
    // Default: 32 MiB.
    size_t block_cache_mib = 32;
    // Values at least this large go to blob files; a page is 2 x tokens_per_page x head_dim x
    // dtype bytes (8 KiB for 16-token bf16 pages of head_dim 128), so every real page qualifies.
    // Default: 4 KiB.
    uint64_t min_blob_size = 4096;
    // Size at which a blob file is closed and a new one started. Default: 256 MiB.
    uint64_t blob_file_size = 256ull << 20;
    // Memtable size; a spill larger than this is flushed to blob files right after it.
    // Default: 64 MiB.
    size_t write_buffer_mib = 64;
    // Compression of blob files. K/V activations in bf16/fp16 barely compress (measured by
    // `kvkeep-bench spill --compression lz4`), so the default spends no CPU on it.
    // Default: rocksdb::kNoCompression.
    rocksdb::CompressionType compression = rocksdb::kNoCompression;
    // Limit on background (flush/compaction) write bandwidth, so spilling does not starve other
    // users of the disk; WAL writes of a Put are not limited. 0 = unlimited. Default: 0.
    int64_t rate_limit_bytes_per_sec = 0;
    // Consecutive pages of one head stored as one value (spill_format.h, version 2): 32 x 8 KiB
    // pages = 256 KiB values, 32x fewer LSM lookups per restore. 1 writes the version-1 layout
    // (one value per page) of earlier releases; both are always read. Default: 32.
    uint32_t pages_per_value = 32;
    // Threads a Get reads with (the caller included), each on a contiguous range of the values,
    // so that two reads are in flight at the device. Default: 2.
    int read_threads = 2;
    // Bytes of values one MultiGet of a read asks for (per read thread). A streamed read
    // (ReadInto) holds at most about read_threads x 2 x this many bytes of values at once (the
    // values pinned plus RocksDB's read buffers), whatever the sequence's size. Default: 16 MiB.
    uint32_t read_batch_mib = 16;
    // O_DIRECT for reads of blob and table files (DBOptions::use_direct_reads): no kernel
    // read-ahead and no page-cache copy. Not shown faster for restores on the virtio disk
    // measured so far (`kvkeep-bench spill --direct_reads 1` compares). Default: false.
    bool use_direct_reads = false;
    // Bytes of pages one write batch of a spill holds (Write, Put). A spill up to this size is one
    // synced WriteBatch through the WAL (pages and manifest together, atomic). A larger one is
    // written in batches of at most this many bytes read straight from the page source, without
    // the WAL (the page bytes are written once, to blob files), the pages' memtables are then
    // flushed and synced, and the manifest is written last with sync = true as the commit point.
    // Memory of a spill: about 2 x this (the staging buffer and the WriteBatch) plus the
    // memtables (2 x write_buffer_mib), whatever the sequence's size. Default: 64 MiB.
    uint64_t write_batch_bytes = 64ull << 20;
    // How a spill larger than write_batch_bytes reaches the disk. true: its pages go into one SST
    // file written outside the database (rocksdb::SstFileWriter: each byte copied once into the
    // file, write-back started every 1 MiB, one sync), which IngestExternalFile then moves into
    // the pages family (hard link, synced, recorded in RocksDB's synced MANIFEST); no memtable,
    // no flush. false: the batches without the WAL, the flush and its syncs of earlier releases.
    // Either way the manifest is written last with sync = true (the commit point), and both
    // layouts are read the same way (the values are found by key wherever they live).
    // Default: true.
    bool ingest_large_spills = true;
    // Start writing the WAL of a large spill to the disk every this many bytes
    // (DBOptions::wal_bytes_per_sync, sync_file_range without waiting), so the synced write at
    // the end of a Put finds most bytes already written. Durability is unchanged: a Put still
    // returns only after its fsync. 0 = off (RocksDB's default). Default: 1 MiB.
    uint64_t wal_bytes_per_sync = 1ull << 20;
    // RocksDB environment; tests inject a FaultEnv or rocksdb::NewMemEnv. Not owned, must outlive
    // the store. Default: nullptr = rocksdb::Env::Default().
    rocksdb::Env* env = nullptr;
  };

  // The RocksDB options the store opens its database with; kvkeep-bench uses them for its raw
  // RocksDB baseline so the comparison is like for like.
  struct DbConfig {
    rocksdb::DBOptions db;
    rocksdb::ColumnFamilyOptions pages;
    rocksdb::ColumnFamilyOptions manifests;
  };
  static DbConfig MakeDbConfig(const Options& options);

  // Opens (creating if missing) the database and builds the in-memory index from the manifests.
  // A manifest failing its own checksum is left out of the index (Get of it answers DATA_LOSS,
  // Delete removes it) and counted in Recover()'s report, so one bad record cannot stop the
  // daemon from starting. INVALID_ARGUMENT: empty path or a compression this RocksDB build lacks.
  // UNAVAILABLE: the database is locked by another process or the disk fails.
  static absl::StatusOr<std::unique_ptr<SpillStore>> Open(const Options& options);
  ~SpillStore();
  SpillStore(const SpillStore&) = delete;
  SpillStore& operator=(const SpillStore&) = delete;

  // Startup clean-up: deletes page keys that no manifest references (a spill larger than one
  // write batch that crashed before its manifest was written; older layouts or manual surgery).
  // Cost: one key per listed sequence plus the orphans. Blocks every other call while it runs.
  // UNAVAILABLE on disk errors.
  absl::StatusOr<SpillRecoveryReport> Recover();

  // Stores a spill durably, reading its pages from `source` in bounded batches
  // (Options::write_batch_bytes): memory does not grow with the sequence. Checksums are computed
  // here. Errors and guarantees as Put's, plus the source's own errors. Page keys left by an
  // earlier attempt of the same sequence that crashed between batches (no manifest) are deleted
  // before the first batch; Recover() deletes those of attempts never retried.
  absl::Status Write(const SpillWrite& spill, SpillPageSource* source);

  // Stores `record` durably: a Write whose source is the record's pages. OK: durable (survives
  // kill -9 and power loss as far as fsync does). INVALID_ARGUMENT: bad ids, positions.size() !=
  // count, or an empty page. ALREADY_EXISTS: the sequence is already spilled (Delete it first).
  // ABORTED: another Put/Delete of the same sequence is in flight. UNAVAILABLE: disk error or
  // full; nothing is listed, and whatever of it reached the disk before the failure is deleted
  // once the disk works again (a crash before that may let the complete, checksummed record
  // reappear as spilled after restart - never a partial one).
  absl::Status Put(const SpillRecord& record);

  // The spilled sequence, bit-exact, in memory (a ReadInto that collects every page). NOT_FOUND:
  // not spilled. DATA_LOSS: a page (named in the
  // message) is missing or its checksum does not match, or the manifest is corrupt - no bytes are
  // returned then. UNAVAILABLE: disk error. Not const: after a disk error it reopens the database.
  absl::StatusOr<SpillRecord> Get(absl::string_view tenant, absl::string_view sequence_id);

  // Streams the spilled sequence into `sink`: its layout (Begin), then each page (Page) as soon as
  // the value holding it has been read and the page verified - no copy of the whole sequence is
  // ever held (memory: Options::read_batch_mib). Errors as Get's, or the sink's own. On an error,
  // pages already delivered stay delivered: the caller discards what it received (the store
  // stops reading at the first error, in whichever thread it happens).
  absl::Status ReadInto(absl::string_view tenant, absl::string_view sequence_id,
                        SpillPageSink* sink);

  // Removes the spilled sequence (synced). NOT_FOUND: not spilled. ABORTED: a Put/Delete of it is
  // in flight. On a disk error (full disk included) the drop is recorded in the drop journal and
  // is OK: the sequence is gone from List/Get/BytesOf now and from the disk once it is writable.
  // UNAVAILABLE only when the journal cannot take it either; the record is then still listed.
  absl::Status Delete(absl::string_view tenant, absl::string_view sequence_id);

  // Spilled sequences of `tenant` (every tenant when empty), ordered by tenant then id. From the
  // in-memory index: no disk access, always OK today (StatusOr leaves room for a paged variant).
  absl::StatusOr<std::vector<SpillSummary>> List(absl::string_view tenant = {}) const;

  // Page bytes the tenant has on disk, including Puts in flight (so quota checks made while other
  // spills are being written stay conservative).
  uint64_t BytesOf(absl::string_view tenant) const;

  // Writes the memtables to blob/SST files and waits. Not needed for durability (the synced WAL
  // already gives it); kvkeep-bench uses it so restores are measured from files, and an operator
  // may call it before copying the folder. UNAVAILABLE on disk errors.
  absl::Status Flush();

  // Test-only: overwrites one page's stored bytes without touching its checksum, to exercise
  // corruption detection. NOT_FOUND when the sequence or the page does not exist.
  absl::Status OverwritePageForTest(absl::string_view tenant, absl::string_view sequence_id,
                                    uint32_t head, uint32_t page, absl::string_view bytes);

 private:
  struct InFlight {
    std::string tenant;
    uint64_t put_bytes = 0;  // page bytes of a Put; 0 for a Delete
  };

  explicit SpillStore(const Options& options);

  // Opens db_ and handles_, applies pending roll-backs, rebuilds the index.
  absl::Status OpenDbLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  void CloseDbLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Deletes the files a crashed or failed spill left in IngestDir() (creating it if missing).
  void RemoveIngestLeftoversLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  absl::Status RebuildIndexLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Makes sure the database is open (reopening it after a failure); call without db_mu_ held.
  absl::Status EnsureOpen() ABSL_LOCKS_EXCLUDED(db_mu_);
  // After a failed write: Resume() the database, or close it so the next call reopens it. Then
  // applies the roll-back of `rollback_keys` (a failed Put's keys) when it can, else queues it.
  void HandleWriteFailure(std::vector<std::string> rollback_keys,
                          std::vector<std::string> rollback_manifests) ABSL_LOCKS_EXCLUDED(db_mu_);
  absl::Status ApplyRollbacksLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(db_mu_);
  // Whether `mkey` was dropped and its keys are not yet deleted.
  bool IsPendingDrop(const std::string& mkey) const ABSL_LOCKS_EXCLUDED(db_mu_);

  // Deletes page keys under `prefix` left by an earlier attempt of a spill (crash between its
  // batches); cheap when there are none (one seek).
  rocksdb::Status RemoveLeftoverPagesLocked(const std::string& prefix)
      ABSL_SHARED_LOCKS_REQUIRED(db_mu_);
  // A spill being written (spill_store_write.cc).
  struct WritePlan;
  // Writes the plan's pages in batches and then its manifest (spill_store_write.cc); sets
  // plan.wrote once a batch may have reached the database.
  absl::Status WriteBatchesLocked(WritePlan& plan, SpillPageSource* source)
      ABSL_SHARED_LOCKS_REQUIRED(db_mu_);
  // The large-spill path of Options::ingest_large_spills (spill_store_write.cc): the plan's pages
  // into one SST file in IngestDir(), ingested, then the synced manifest.
  absl::Status IngestPagesLocked(WritePlan& plan, SpillPageSource* source)
      ABSL_SHARED_LOCKS_REQUIRED(db_mu_);
  // Folder of the SST files being written for ingestion: `<path>.ingest`.
  std::string IngestDir() const { return options_.path + ".ingest"; }

  // Registers a Put/Delete of manifest key `mkey`; ABORTED when one is in flight already.
  absl::Status BeginOp(const std::string& mkey, absl::string_view tenant, uint64_t put_bytes);
  void EndOp(const std::string& mkey);
  void IndexInsertLocked(SpillSummary summary) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void IndexEraseLocked(absl::string_view tenant, absl::string_view sequence_id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Constant after construction.
  const Options options_;
  const DbConfig config_;
  // Set once in Open (null when the journal file cannot be opened: Delete then fails on a full
  // disk as any write does); thread-safe itself.
  std::unique_ptr<DropJournal> drops_;
  // Names of the files written for ingestion (IngestPagesLocked).
  std::atomic<uint64_t> ingest_files_{0};

  // db_mu_ guards the database handle: shared by every operation, exclusive to (re)open, close and
  // Recover. Acquired before mu_.
  mutable absl::Mutex db_mu_;
  std::unique_ptr<rocksdb::DB> db_ ABSL_GUARDED_BY(db_mu_);
  rocksdb::ColumnFamilyHandle* pages_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  rocksdb::ColumnFamilyHandle* manifests_ ABSL_GUARDED_BY(db_mu_) = nullptr;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_ ABSL_GUARDED_BY(db_mu_);
  // Keys of failed Puts still to delete once the database accepts writes again.
  std::vector<std::string> rollback_pages_ ABSL_GUARDED_BY(db_mu_);
  std::vector<std::string> rollback_manifests_ ABSL_GUARDED_BY(db_mu_);
  // Manifest keys of dropped sequences whose keys are still in RocksDB (the drop journal's
  // entries): hidden from the index and Get, refused to Put, deleted by ApplyRollbacksLocked.
  absl::flat_hash_set<std::string> pending_drops_ ABSL_GUARDED_BY(db_mu_);

  // Protected by mu_: the index of manifests and the operations in flight.
  mutable absl::Mutex mu_ ABSL_ACQUIRED_AFTER(db_mu_);
  // tenant -> (sequence id -> summary)
  absl::flat_hash_map<std::string, std::map<std::string, SpillSummary>> index_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> tenant_bytes_ ABSL_GUARDED_BY(mu_);  // of index_
  uint64_t corrupt_manifests_ ABSL_GUARDED_BY(mu_) = 0;
  // manifest key -> in-flight Put/Delete
  absl::flat_hash_map<std::string, InFlight> in_flight_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_STORAGE_SPILL_STORE_H_
