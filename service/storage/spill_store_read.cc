// The read side of SpillStore (spill_store.h): streamed reads (ReadInto) and Get, which is a
// streamed read that collects every page in memory.
//
// A read takes the database handle shared (db_mu_) and one RocksDB snapshot for the manifest and
// every value, so a concurrent Delete cannot tear it. The values are split into contiguous ranges
// in key order, one per read thread; each range is fetched with MultiGet batches of at most
// Options::read_batch_mib, and every page of a value is verified against the manifest's XXH64 and
// handed to the sink while the value is still pinned: nothing is collected, so the memory of a
// read is that of the batches in flight, not of the sequence.
#include <algorithm>
#include <atomic>
#include <thread>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "rocksdb/snapshot.h"
#include "service/storage/rocksdb_status.h"
#include "service/storage/spill_format.h"
#include "service/storage/spill_store.h"
#include "service/storage/xxhash64.h"

namespace kvkeep {
namespace {

using spill_format::DecodeManifest;
using spill_format::Manifest;
using spill_format::ManifestKey;
using spill_format::PageKey;
using spill_format::PageMeta;
using spill_format::PagePrefix;
using spill_format::ValueRun;

// Keys per MultiGet call.
constexpr size_t kReadBatchKeys = 1024;
// Below this many page bytes a read runs on the calling thread only.
constexpr uint64_t kParallelReadBytes = 4ull << 20;

std::string PageName(uint32_t head, uint32_t page, const std::string& mkey) {
  return absl::StrCat("page ", page, " of head ", head, " of spilled sequence ", mkey);
}

// What every read thread shares: constant during the read, except `first_failed`.
struct ReadPlan {
  rocksdb::DB* db = nullptr;
  rocksdb::ColumnFamilyHandle* cf = nullptr;
  rocksdb::ReadOptions ro;
  const Manifest* manifest = nullptr;
  std::vector<ValueRun> runs;
  std::string mkey, prefix;
  uint64_t batch_bytes = 0;
  SpillPageSink* sink = nullptr;
  // Lowest index of a range that failed (ranges count in key order); ranges after it stop early,
  // ranges before it go on, so the error reported is always the first one in key order.
  std::atomic<size_t> first_failed{SIZE_MAX};

  bool ShouldStop(size_t range) const { return range > first_failed.load(std::memory_order_relaxed); }
  void Failed(size_t range) {
    size_t seen = first_failed.load();
    while (range < seen && !first_failed.compare_exchange_weak(seen, range)) {
    }
  }
};

// Verifies each page of `run` inside `value` against the manifest and hands it to the sink.
// DATA_LOSS names the first page that does not check out.
absl::Status DeliverRun(const ReadPlan& plan, const ValueRun& run, absl::string_view value) {
  size_t offset = 0;
  for (uint32_t p = run.first; p < run.first + run.count; ++p) {
    const PageMeta& meta = plan.manifest->pages[run.head][p];
    const size_t have = offset < value.size() ? value.size() - offset : 0;
    const bool last = p + 1 == run.first + run.count;
    absl::string_view bytes = value.substr(std::min(offset, value.size()), meta.size);
    if (have < meta.size || (last && have != meta.size) || XxHash64(bytes) != meta.checksum) {
      return absl::DataLossError(absl::StrCat(
          PageName(run.head, p, plan.mkey), ": checksum mismatch (",
          std::min<size_t>(have, meta.size), " bytes, ", meta.size,
          " expected) - the page is corrupt on disk"));
    }
    RETURN_IF_ERROR(plan.sink->Page(run.head, p, bytes));
    offset += meta.size;
  }
  return absl::OkStatus();
}

// Reads range `range` = runs [begin, end) with MultiGet batches of at most plan.batch_bytes,
// delivering each value's pages before the next batch is read.
absl::Status ReadRange(ReadPlan& plan, size_t range, size_t begin, size_t end) {
  std::vector<std::string> keys;
  std::vector<rocksdb::Slice> key_slices;
  std::vector<rocksdb::PinnableSlice> values;
  std::vector<rocksdb::Status> statuses;
  while (begin < end && !plan.ShouldStop(range)) {
    size_t stop = begin;
    uint64_t bytes = 0;
    while (stop < end && stop - begin < kReadBatchKeys &&
           (stop == begin || bytes + plan.runs[stop].bytes <= plan.batch_bytes)) {
      bytes += plan.runs[stop++].bytes;
    }
    const size_t n = stop - begin;
    keys.resize(n);
    key_slices.resize(n);
    values.resize(n);
    statuses.resize(n);
    for (size_t i = 0; i < n; ++i) {
      keys[i] = PageKey(plan.prefix, plan.runs[begin + i].head, plan.runs[begin + i].first);
      key_slices[i] = keys[i];
      values[i].Reset();
    }
    plan.db->MultiGet(plan.ro, plan.cf, n, key_slices.data(), values.data(), statuses.data(),
                      /*sorted_input=*/true);
    for (size_t i = 0; i < n; ++i) {
      const ValueRun& run = plan.runs[begin + i];
      if (statuses[i].IsNotFound()) {
        return absl::DataLossError(
            absl::StrCat(PageName(run.head, run.first, plan.mkey), " is missing"));
      }
      if (!statuses[i].ok()) {
        return FromRocksDb(statuses[i], "reading " + PageName(run.head, run.first, plan.mkey));
      }
      RETURN_IF_ERROR(
          DeliverRun(plan, run, absl::string_view(values[i].data(), values[i].size())));
      values[i].Reset();  // the value's memory goes back as soon as its pages are delivered
    }
    begin = stop;
  }
  return absl::OkStatus();
}

// The layout a sink is told about, moved out of a fully decoded manifest (its page metadata
// stays: the reads verify against it).
SpillLayout LayoutOf(Manifest& m) {
  SpillLayout layout;
  layout.model = m.summary.model;
  layout.next_position = m.next_position;
  layout.bytes = m.summary.bytes;
  layout.pages = m.summary.pages;
  layout.counts = m.counts;
  layout.positions = std::move(m.positions);
  layout.page_sizes.resize(m.pages.size());
  for (size_t h = 0; h < m.pages.size(); ++h) {
    layout.page_sizes[h].reserve(m.pages[h].size());
    for (const PageMeta& p : m.pages[h]) layout.page_sizes[h].push_back(p.size);
  }
  return layout;
}

// Get's sink: every page into a SpillRecord (each thread fills only its own pages).
class CollectSink : public SpillPageSink {
 public:
  explicit CollectSink(SpillRecord* out) : out_(out) {}
  absl::Status Begin(SpillLayout& layout) override {
    out_->model = layout.model;
    out_->next_position = layout.next_position;
    out_->heads.resize(layout.counts.size());
    for (size_t h = 0; h < layout.counts.size(); ++h) {
      out_->heads[h].count = layout.counts[h];
      out_->heads[h].positions = std::move(layout.positions[h]);
      out_->heads[h].pages.resize(layout.page_sizes[h].size());
    }
    return absl::OkStatus();
  }
  absl::Status Page(uint32_t head, uint32_t page, absl::string_view bytes) override {
    out_->heads[head].pages[page].assign(bytes.data(), bytes.size());
    return absl::OkStatus();
  }

 private:
  SpillRecord* const out_;
};

}  // namespace

absl::Status SpillStore::ReadInto(absl::string_view tenant, absl::string_view sequence_id,
                                  SpillPageSink* sink) {
  RETURN_IF_ERROR(spill_format::CheckId("tenant", tenant));
  RETURN_IF_ERROR(spill_format::CheckId("sequence id", sequence_id));
  const std::string mkey = ManifestKey(tenant, sequence_id);
  if (IsPendingDrop(mkey)) {
    return absl::NotFoundError(absl::StrCat("sequence ", mkey, " is not spilled"));
  }
  RETURN_IF_ERROR(EnsureOpen());
  absl::ReaderMutexLock lock(&db_mu_);
  if (!db_) return absl::UnavailableError("spill store is recovering from a disk error");
  if (pending_drops_.contains(mkey)) {
    return absl::NotFoundError(absl::StrCat("sequence ", mkey, " is not spilled"));
  }
  // One snapshot for the manifest and its pages: a concurrent Delete cannot tear the read.
  rocksdb::ManagedSnapshot snapshot(db_.get());
  ReadPlan plan;
  plan.ro.snapshot = snapshot.snapshot();
  std::string value;
  rocksdb::Status s = db_->Get(plan.ro, manifests_, mkey, &value);
  if (s.IsNotFound()) {
    return absl::NotFoundError(absl::StrCat("sequence ", mkey, " is not spilled"));
  }
  if (!s.ok()) return FromRocksDb(s, "reading the manifest of spilled sequence " + mkey);
  ASSIGN_OR_RETURN(Manifest m, DecodeManifest(mkey, value, /*full=*/true));
  SpillLayout layout = LayoutOf(m);
  RETURN_IF_ERROR(sink->Begin(layout));

  // Value keys sort in (head, page) order, so each MultiGet batch is sorted input. Every page is
  // verified end to end against its XXH64, so RocksDB's own CRC32C of each blob record is
  // skipped: Debian's portable RocksDB build computes it in software (Slow_CRC32, no SSE4.2),
  // where it was the largest CPU cost of a restore under perf. The values are read once: no
  // block-cache fill.
  plan.ro.fill_cache = false;
  plan.ro.verify_checksums = false;
  plan.db = db_.get();
  plan.cf = pages_;
  plan.manifest = &m;
  plan.sink = sink;
  plan.runs = spill_format::ValueRuns(m.pages, m.pages_per_value);
  plan.mkey = mkey;
  plan.prefix = PagePrefix(tenant, sequence_id);
  plan.batch_bytes = uint64_t{std::max<uint32_t>(1, options_.read_batch_mib)} << 20;
  // Contiguous ranges of values on up to read_threads threads (each range is read in key order,
  // i.e. sequentially within the blob file, so kernel read-ahead serves each).
  const size_t n = plan.runs.size();
  const size_t workers =
      m.summary.bytes < kParallelReadBytes
          ? 1
          : std::min<size_t>(std::max(1, options_.read_threads), std::max<size_t>(n, 1));
  std::vector<absl::Status> status(workers);
  auto range = [&](size_t w) {
    status[w] = ReadRange(plan, w, n * w / workers, n * (w + 1) / workers);
    if (!status[w].ok()) plan.Failed(w);
  };
  std::vector<std::thread> threads;
  for (size_t w = 1; w < workers; ++w) threads.emplace_back(range, w);
  range(0);
  for (std::thread& t : threads) t.join();
  for (const absl::Status& st : status) RETURN_IF_ERROR(st);
  return absl::OkStatus();
}

absl::StatusOr<SpillRecord> SpillStore::Get(absl::string_view tenant,
                                            absl::string_view sequence_id) {
  SpillRecord out;
  CollectSink sink(&out);
  RETURN_IF_ERROR(ReadInto(tenant, sequence_id, &sink));  // DATA_LOSS: no bytes are returned
  out.tenant = std::string(tenant);
  out.sequence_id = std::string(sequence_id);
  return out;
}

}  // namespace kvkeep
