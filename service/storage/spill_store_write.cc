// The write side of SpillStore (spill_store.h): Write streams a spill from a SpillPageSource in
// bounded batches; Put is a Write whose source is an in-memory SpillRecord.
//
// A spill of at most Options::write_batch_bytes is one WriteBatch holding its pages and its
// manifest, written with sync = true through the WAL: atomic, as in every earlier release.
// A larger spill never holds more than one batch of its pages. By default
// (Options::ingest_large_spills, IngestPagesLocked) the batches are written into one SST file
// (rocksdb::SstFileWriter: no memtable, no flush; write-back started every bytes_per_sync), which
// is synced, ingested (IngestExternalFile: linked into the database, synced, recorded in RocksDB's
// synced MANIFEST), and then the manifest is written with sync = true (the commit point). The
// memtable path (ingest_large_spills = false):
//   1. page keys of an earlier attempt of the same sequence (a crash between batches) are deleted
//      (both paths);
//   2. each batch of value runs is read from the source into one staging buffer, checksummed, and
//      written with disableWAL: its bytes go to the memtable and, at the flush, once to a blob
//      file (not twice, WAL + blob file);
//   3. the pages' memtables are flushed and waited for: RocksDB syncs the blob and table files
//      and records them in its own synced MANIFEST, so every page is on disk;
//   4. the manifest is written with sync = true: the commit point. Before it the spill is not
//      listed (Recover() or the retry removes its pages after a crash); after it, it is durable.
// A failure at any step deletes the page keys written (HandleWriteFailure) and lists nothing.
#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/failure_reason.h"
#include "common/status_macros.h"
#include "rocksdb/sst_file_writer.h"
#include "rocksdb/write_batch.h"
#include "service/storage/rocksdb_status.h"
#include "service/storage/spill_format.h"
#include "service/storage/spill_store.h"
#include "service/storage/xxhash64.h"

namespace kvkeep {

using spill_format::CheckId;
using spill_format::EncodeManifest;
using spill_format::ManifestKey;
using spill_format::PageKey;
using spill_format::PageMeta;
using spill_format::PagePrefix;
using spill_format::ValueRun;

struct SpillStore::WritePlan {
  const SpillWrite* spill = nullptr;
  std::string mkey, prefix;
  std::vector<std::vector<PageMeta>> metas;  // sizes from the spill; checksums as pages are read
  std::vector<ValueRun> runs;
  uint64_t total_bytes = 0, page_count = 0, largest_run = 0;
  uint32_t pages_per_value = 1;
  uint64_t batch_bytes = 0;
  absl::Time created;
  bool wrote = false;       // a batch may have reached the database: roll back on failure
  rocksdb::Status db_error;  // the database's own error, when that is what failed
};

namespace {

// Reads the pages of runs [begin, end) from `source` into `staging`, in order, and records each
// page's checksum in `metas`.
absl::Status ReadRuns(const std::vector<ValueRun>& runs, size_t begin, size_t end,
                      SpillPageSource* source, const std::string& mkey, char* staging,
                      std::vector<std::vector<PageMeta>>* metas) {
  char* dst = staging;
  for (size_t i = begin; i < end; ++i) {
    const ValueRun& run = runs[i];
    for (uint32_t p = run.first; p < run.first + run.count; ++p) {
      PageMeta& meta = (*metas)[run.head][p];
      absl::Status read = source->ReadPage(run.head, p, dst, meta.size);
      if (!read.ok()) {
        return absl::Status(read.code(), absl::StrCat("spilling sequence ", mkey, ": reading page ",
                                                      p, " of head ", run.head, ": ",
                                                      read.message()));
      }
      meta.checksum = XxHash64(absl::string_view(dst, meta.size));
      dst += meta.size;
    }
  }
  return absl::OkStatus();
}

// Reads the plan's runs batch by batch (whole runs up to plan.batch_bytes, at least one per
// batch) into one staging buffer that every batch reuses (a batch, or the largest run when a run
// is larger), and hands each batch to `write(begin, end, bytes, staged)`. Both write paths use
// it. (A template because the plan is SpillStore's private type.)
template <typename Plan, typename Write>
absl::Status ForEachStagedBatch(Plan& plan, SpillPageSource* source, Write write) {
  const uint64_t staging_bytes = std::max<uint64_t>(
      1, std::min(plan.total_bytes, std::max(plan.batch_bytes, plan.largest_run)));
  std::unique_ptr<char[]> staging = std::make_unique_for_overwrite<char[]>(staging_bytes);
  size_t begin = 0;
  do {
    size_t end = begin;
    uint64_t bytes = 0;
    while (end < plan.runs.size() &&
           (end == begin || bytes + plan.runs[end].bytes <= plan.batch_bytes)) {
      bytes += plan.runs[end++].bytes;
    }
    RETURN_IF_ERROR(
        ReadRuns(plan.runs, begin, end, source, plan.mkey, staging.get(), &plan.metas));
    RETURN_IF_ERROR(write(begin, end, bytes, staging.get()));
    begin = end;
  } while (begin < plan.runs.size());
  return absl::OkStatus();
}

// The plan's manifest record (the commit point of a spill).
template <typename Plan>
std::string ManifestOf(const Plan& plan) {
  return EncodeManifest(*plan.spill, plan.metas, plan.total_bytes, plan.page_count, plan.created,
                        plan.pages_per_value);
}

// The source of Put: the record's own pages.
class RecordSource : public SpillPageSource {
 public:
  explicit RecordSource(const SpillRecord& r) : r_(r) {}
  absl::Status ReadPage(uint32_t head, uint32_t page, char* dst, size_t size) override {
    const std::string& bytes = r_.heads[head].pages[page];
    if (bytes.size() != size) return absl::InternalError("page size changed during the spill");
    std::memcpy(dst, bytes.data(), size);
    return absl::OkStatus();
  }

 private:
  const SpillRecord& r_;
};

// Checks the spill's shape and fills the plan's page metadata (sizes), runs and totals.
absl::Status PlanPages(const SpillWrite& w, uint32_t pages_per_value,
                       std::vector<std::vector<PageMeta>>* metas, std::vector<ValueRun>* runs,
                       uint64_t* total_bytes, uint64_t* page_count, uint64_t* largest_run,
                       const std::string& mkey) {
  if (w.positions.size() != w.counts.size() || w.page_sizes.size() != w.counts.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "spill of ", mkey, ": ", w.counts.size(), " head counts, ", w.positions.size(),
        " position lists and ", w.page_sizes.size(), " page lists"));
  }
  if (w.counts.size() > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("spill of ", mkey, ": too many heads"));
  }
  metas->assign(w.counts.size(), {});
  for (size_t h = 0; h < w.counts.size(); ++h) {
    if (w.positions[h].size() != w.counts[h]) {
      return absl::InvalidArgumentError(absl::StrCat("spill of ", mkey, ": head ", h, " has ",
                                                     w.positions[h].size(), " positions for ",
                                                     w.counts[h], " tokens"));
    }
    (*metas)[h].resize(w.page_sizes[h].size());
    for (size_t p = 0; p < w.page_sizes[h].size(); ++p) {
      const uint32_t size = w.page_sizes[h][p];
      if (size == 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "spill of ", mkey, ": page ", p, " of head ", h, " has 0 bytes (must be 1..4 GiB)"));
      }
      (*metas)[h][p].size = size;
      *total_bytes += size;
    }
    *page_count += w.page_sizes[h].size();
  }
  *runs = spill_format::ValueRuns(*metas, pages_per_value);
  for (const ValueRun& run : *runs) *largest_run = std::max(*largest_run, run.bytes);
  return absl::OkStatus();
}

}  // namespace

rocksdb::Status SpillStore::RemoveLeftoverPagesLocked(const std::string& prefix) {
  std::string end = prefix;
  end.back() = '/' + 1;
  rocksdb::Slice upper(end);
  rocksdb::ReadOptions ro;
  ro.fill_cache = false;
  ro.iterate_upper_bound = &upper;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, pages_));
  it->Seek(prefix);
  if (!it->status().ok()) return it->status();
  if (!it->Valid()) return rocksdb::Status::OK();
  // Ordered before the new pages (lower sequence numbers); persisted with them by the flush or
  // the synced write that follows.
  rocksdb::WriteBatch batch;
  rocksdb::Status s = batch.DeleteRange(pages_, prefix, end);
  if (s.ok()) s = db_->Write(rocksdb::WriteOptions(), &batch);
  return s;
}

absl::Status SpillStore::WriteBatchesLocked(WritePlan& plan, SpillPageSource* source) {
  auto db_failed = [&](const rocksdb::Status& s, absl::string_view step) {
    plan.db_error = s;
    return FromRocksDb(s, absl::StrCat("spilling sequence ", plan.mkey, " (", plan.page_count,
                                       " pages, ", plan.total_bytes, " bytes): ", step));
  };
  rocksdb::Status s = RemoveLeftoverPagesLocked(plan.prefix);
  if (!s.ok()) return db_failed(s, "removing the pages of an earlier attempt");
  const bool single = plan.total_bytes <= plan.batch_bytes;
  if (!single && options_.ingest_large_spills) return IngestPagesLocked(plan, source);
  // Read here, under db_mu_ (held by the caller): the lambda below is analysed on its own.
  rocksdb::DB* const db = db_.get();
  rocksdb::ColumnFamilyHandle* const pages = pages_;
  rocksdb::ColumnFamilyHandle* const manifests = manifests_;
  std::string key;
  RETURN_IF_ERROR(ForEachStagedBatch(plan, source, [&](size_t begin, size_t end, uint64_t bytes,
                                                        const char* src) -> absl::Status {
    rocksdb::WriteBatch batch(bytes + (end - begin) * (plan.prefix.size() + 32) + 4096);
    rocksdb::Status s;
    for (size_t i = begin; i < end && s.ok(); ++i) {
      const ValueRun& run = plan.runs[i];
      key = PageKey(plan.prefix, run.head, run.first);
      s = batch.Put(pages, key, rocksdb::Slice(src, run.bytes));
      src += run.bytes;
    }
    rocksdb::WriteOptions w;
    if (single) {
      // Small spill: pages and manifest in one synced batch, as ever.
      if (s.ok()) s = batch.Put(manifests, plan.mkey, ManifestOf(plan));
      w.sync = true;
    } else {
      w.disableWAL = true;  // made durable by the flush below, before the manifest exists
    }
    if (!s.ok()) return db_failed(s, "building a batch");
    plan.wrote = true;
    s = db->Write(w, &batch);
    if (!s.ok()) return db_failed(s, "writing pages");
    return absl::OkStatus();
  }));
  if (single) return absl::OkStatus();

  rocksdb::FlushOptions flush;
  flush.wait = true;
  s = db_->Flush(flush, pages_);
  if (!s.ok()) return db_failed(s, "flushing pages");
  rocksdb::WriteOptions w;
  w.sync = true;
  s = db_->Put(w, manifests_, plan.mkey, ManifestOf(plan));
  if (!s.ok()) return db_failed(s, "writing the manifest");
  return absl::OkStatus();
}

absl::Status SpillStore::IngestPagesLocked(WritePlan& plan, SpillPageSource* source) {
  auto db_failed = [&](const rocksdb::Status& s, absl::string_view step) {
    plan.db_error = s;
    return FromRocksDb(s, absl::StrCat("spilling sequence ", plan.mkey, " (", plan.page_count,
                                       " pages, ", plan.total_bytes, " bytes): ", step));
  };
  rocksdb::Env* env = config_.db.env;
  const std::string file =
      absl::StrCat(IngestDir(), "/", ingest_files_.fetch_add(1, std::memory_order_relaxed), ".sst");
  // The file outside the database: removed whatever happens (after a successful ingestion
  // RocksDB has already moved it; a crash leaves it to OpenDbLocked).
  struct RemoveFile {
    rocksdb::Env* env;
    const std::string& path;
    ~RemoveFile() { env->DeleteFile(path).PermitUncheckedError(); }
  } remove_file{env, file};

  // The SST file: each run as one value in key order, written straight to the file (write-back
  // started every DBOptions::bytes_per_sync bytes), synced by Finish. Page cache kept, as for a
  // plain file write; filters built as for a flushed file.
  rocksdb::SstFileWriter writer(rocksdb::EnvOptions(config_.db),
                                rocksdb::Options(config_.db, config_.pages), pages_,
                                /*invalidate_page_cache=*/false);
  rocksdb::Status s = writer.Open(file);
  if (!s.ok()) return db_failed(s, "creating the file to ingest");
  std::string key;
  RETURN_IF_ERROR(ForEachStagedBatch(plan, source, [&](size_t begin, size_t end, uint64_t,
                                                        const char* src) -> absl::Status {
    for (size_t i = begin; i < end; ++i) {
      const ValueRun& run = plan.runs[i];
      key = PageKey(plan.prefix, run.head, run.first);
      rocksdb::Status put = writer.Put(key, rocksdb::Slice(src, run.bytes));
      if (!put.ok()) return db_failed(put, "writing pages to the file to ingest");
      src += run.bytes;
    }
    return absl::OkStatus();
  }));
  s = writer.Finish();
  if (!s.ok()) return db_failed(s, "syncing the file to ingest");

  // Into the database: hard-linked (copied where links fail), synced, and recorded in RocksDB's
  // synced MANIFEST; the pages are then durable but not listed until the manifest below.
  rocksdb::IngestExternalFileOptions ingest;
  ingest.move_files = true;
  plan.wrote = true;
  s = db_->IngestExternalFile(pages_, {file}, ingest);
  if (!s.ok()) return db_failed(s, "ingesting pages");
  rocksdb::WriteOptions w;
  w.sync = true;
  s = db_->Put(w, manifests_, plan.mkey, ManifestOf(plan));
  if (!s.ok()) return db_failed(s, "writing the manifest");
  return absl::OkStatus();
}

absl::Status SpillStore::Write(const SpillWrite& spill, SpillPageSource* source) {
  RETURN_IF_ERROR(CheckId("tenant", spill.tenant));
  RETURN_IF_ERROR(CheckId("sequence id", spill.sequence_id));
  WritePlan plan;
  plan.spill = &spill;
  plan.mkey = ManifestKey(spill.tenant, spill.sequence_id);
  plan.prefix = PagePrefix(spill.tenant, spill.sequence_id);
  plan.pages_per_value = std::max<uint32_t>(1, options_.pages_per_value);
  plan.batch_bytes = std::max<uint64_t>(1, options_.write_batch_bytes);
  plan.created = absl::Now();
  RETURN_IF_ERROR(PlanPages(spill, plan.pages_per_value, &plan.metas, &plan.runs,
                            &plan.total_bytes, &plan.page_count, &plan.largest_run, plan.mkey));

  RETURN_IF_ERROR(BeginOp(plan.mkey, spill.tenant, plan.total_bytes));
  {
    absl::MutexLock lock(&mu_);
    auto t = index_.find(spill.tenant);
    if (t != index_.end() && t->second.count(spill.sequence_id)) {
      in_flight_.erase(plan.mkey);
      return absl::AlreadyExistsError(absl::StrCat("sequence ", plan.mkey, " is already spilled"));
    }
  }
  absl::Status st = EnsureOpen();
  if (!st.ok()) {
    EndOp(plan.mkey);
    return st;
  }
  {
    absl::ReaderMutexLock lock(&db_mu_);
    if (!db_) {
      plan.db_error = rocksdb::Status::IOError("database closed after a disk error");
      plan.wrote = true;  // reopen, as after any failed write
    } else if (pending_drops_.contains(plan.mkey)) {
      plan.db_error =
          rocksdb::Status::Busy("a dropped copy of this sequence is still being deleted");
    } else {
      st = WriteBatchesLocked(plan, source);
    }
  }
  if (!plan.db_error.ok() && st.ok()) {
    st = FromRocksDb(plan.db_error, absl::StrCat("spilling sequence ", plan.mkey, " (",
                                                 plan.page_count, " pages, ", plan.total_bytes,
                                                 " bytes)"));
  }
  if (st.ok()) {
    absl::MutexLock lock(&mu_);
    in_flight_.erase(plan.mkey);
    SpillSummary summary;
    summary.tenant = spill.tenant;
    summary.sequence_id = spill.sequence_id;
    summary.model = spill.model;
    summary.bytes = plan.total_bytes;
    summary.pages = plan.page_count;
    summary.created = plan.created;
    IndexInsertLocked(std::move(summary));
    return absl::OkStatus();
  }
  if (plan.wrote && !plan.db_error.IsInvalidArgument()) {
    std::vector<std::string> rollback;
    rollback.reserve(plan.runs.size());
    for (const ValueRun& run : plan.runs) {
      rollback.push_back(PageKey(plan.prefix, run.head, run.first));
    }
    HandleWriteFailure(std::move(rollback), {plan.mkey});
  }
  EndOp(plan.mkey);
  // A full disk is told apart from other disk trouble by its reason, not its text.
  return plan.db_error.IsNoSpace() ? WithReason(std::move(st), FailureReason::kDiskFull) : st;
}

absl::Status SpillStore::Put(const SpillRecord& r) {
  RETURN_IF_ERROR(CheckId("tenant", r.tenant));
  RETURN_IF_ERROR(CheckId("sequence id", r.sequence_id));
  SpillWrite spill;
  spill.tenant = r.tenant;
  spill.sequence_id = r.sequence_id;
  spill.model = r.model;
  spill.next_position = r.next_position;
  spill.counts.reserve(r.heads.size());
  spill.positions.reserve(r.heads.size());
  spill.page_sizes.resize(r.heads.size());
  for (size_t h = 0; h < r.heads.size(); ++h) {
    const SpilledHead& head = r.heads[h];
    spill.counts.push_back(head.count);
    spill.positions.emplace_back(head.positions);
    for (size_t p = 0; p < head.pages.size(); ++p) {
      if (head.pages[p].size() > UINT32_MAX) {
        return absl::InvalidArgumentError(absl::StrCat(
            "spill of ", ManifestKey(r.tenant, r.sequence_id), ": page ", p, " of head ", h,
            " has ", head.pages[p].size(), " bytes (must be 1..4 GiB)"));
      }
      spill.page_sizes[h].push_back(static_cast<uint32_t>(head.pages[p].size()));
    }
  }
  RecordSource source(r);
  return Write(spill, &source);
}

}  // namespace kvkeep
