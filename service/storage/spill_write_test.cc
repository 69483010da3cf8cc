// SpillStore::Write (spill_store_write.cc): spills larger than one write batch, streamed from a
// page source in bounded batches, on a real RocksDB in a temporary folder - bit-exact round trips,
// the staging memory bound, source failures, a crash between batches (orphan pages removed at
// open and by the retry), and kill -9 during batched spills.
#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "service/storage/spill_store.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using ::testing::IsEmpty;

constexpr uint64_t kBatch = 64 << 10;  // write batch of these tests: 64 KiB
constexpr uint32_t kPageBytes = 8192;

// `heads` heads of `pages` random pages; positions with gaps (an evicted sequence).
SpillRecord MakeRecord(const std::string& id, uint32_t heads, uint32_t pages, uint64_t seed) {
  std::mt19937_64 rng(seed);
  SpillRecord r;
  r.tenant = "t";
  r.sequence_id = id;
  r.model = "m";
  r.next_position = int64_t{pages} * 16 + 5;
  for (uint32_t h = 0; h < heads; ++h) {
    SpilledHead head;
    head.count = pages * 16 - h % 16;
    for (uint32_t t = 0; t < head.count; ++t) {
      head.positions.push_back(static_cast<int32_t>(t + t / (h + 2)));
    }
    for (uint32_t p = 0; p < pages; ++p) {
      std::string bytes(kPageBytes, '\0');
      for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
        const uint64_t v = rng();
        std::memcpy(&bytes[i], &v, 8);
      }
      head.pages.push_back(std::move(bytes));
    }
    r.heads.push_back(std::move(head));
  }
  return r;
}

SpillWrite DescribeRecord(const SpillRecord& r) {
  SpillWrite w;
  w.tenant = r.tenant;
  w.sequence_id = r.sequence_id;
  w.model = r.model;
  w.next_position = r.next_position;
  for (const SpilledHead& h : r.heads) {
    w.counts.push_back(h.count);
    w.positions.emplace_back(h.positions);
    std::vector<uint32_t> sizes;
    for (const std::string& p : h.pages) sizes.push_back(static_cast<uint32_t>(p.size()));
    w.page_sizes.push_back(std::move(sizes));
  }
  return w;
}

void ExpectSameRecord(const SpillRecord& got, const SpillRecord& want) {
  EXPECT_EQ(got.model, want.model);
  EXPECT_EQ(got.next_position, want.next_position);
  ASSERT_EQ(got.heads.size(), want.heads.size());
  for (size_t h = 0; h < want.heads.size(); ++h) {
    EXPECT_EQ(got.heads[h].count, want.heads[h].count) << "head " << h;
    EXPECT_EQ(got.heads[h].positions, want.heads[h].positions) << "head " << h;
    ASSERT_EQ(got.heads[h].pages.size(), want.heads[h].pages.size()) << "head " << h;
    for (size_t p = 0; p < want.heads[h].pages.size(); ++p) {
      EXPECT_TRUE(got.heads[h].pages[p] == want.heads[h].pages[p]) << "head " << h << " page " << p;
    }
  }
}

// A source over a record that remembers where the store asked it to write each page (to bound
// the staging memory), the order of the requests, and can fail or _exit at the N-th page.
class WatchedSource : public SpillPageSource {
 public:
  explicit WatchedSource(const SpillRecord& r) : r_(r) {}
  absl::Status ReadPage(uint32_t head, uint32_t page, char* dst, size_t size) override {
    if (calls_ == fail_at_) return absl::DataLossError("device page unreadable (test)");
    if (calls_ == exit_at_) ExitAfterFlush();
    if (calls_ == exit_now_at_) _exit(0);
    ++calls_;
    order_.emplace_back(head, page);
    const std::string& bytes = r_.heads[head].pages[page];
    if (size != bytes.size()) return absl::InternalError("size differs");
    std::memcpy(dst, bytes.data(), size);
    lowest_ = std::min(lowest_, reinterpret_cast<uintptr_t>(dst));
    highest_ = std::max(highest_, reinterpret_cast<uintptr_t>(dst) + size);
    return absl::OkStatus();
  }
  // Address range every page was written into: the staging memory the write used.
  uint64_t span() const { return highest_ - lowest_; }
  const std::vector<std::pair<uint32_t, uint32_t>>& order() const { return order_; }
  size_t calls() const { return calls_; }
  void FailAt(size_t call) { fail_at_ = call; }
  // At the `call`-th page, waits until RocksDB has finished a flush of pages (so page keys of
  // this spill are on disk, as after a crash late in a large spill), then _exits like kill -9.
  void ExitAt(size_t call, std::string log_path) {
    exit_at_ = call;
    log_path_ = std::move(log_path);
  }
  // At the `call`-th page, _exits at once like kill -9.
  void ExitNowAt(size_t call) { exit_now_at_ = call; }

 private:
  [[noreturn]] void ExitAfterFlush() {
    for (int i = 0; i < 400; ++i) {  // up to 20 s on a loaded machine
      std::ifstream log(log_path_);
      std::stringstream text;
      text << log.rdbuf();
      if (text.str().find("flush_finished") != std::string::npos) _exit(0);
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    _exit(7);  // no flush finished: the parent's expectation fails
  }

  const SpillRecord& r_;
  size_t calls_ = 0, fail_at_ = SIZE_MAX, exit_at_ = SIZE_MAX, exit_now_at_ = SIZE_MAX;
  std::string log_path_;
  std::vector<std::pair<uint32_t, uint32_t>> order_;
  uintptr_t lowest_ = UINTPTR_MAX, highest_ = 0;
};

class SpillWriteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // A death test's child re-runs the test from the start: it must use the parent's folder.
    if (const char* inherited = getenv("KVKEEP_SPILL_WRITE_DIR")) {
      dir_ = inherited;
      child_ = true;
    } else {
      std::string tmpl =
          (std::filesystem::temp_directory_path() / "spill_write_test.XXXXXX").string();
      ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
      dir_ = tmpl;
    }
    options_.path = dir_ + "/spill";
    options_.write_batch_bytes = kBatch;
  }
  void TearDown() override {
    store_.reset();
    if (child_) return;
    unsetenv("KVKEEP_SPILL_WRITE_DIR");
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void OpenStore() {
    store_.reset();
    auto s = SpillStore::Open(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(s).value();
  }
  // Runs `child` in a child process that re-executes this test (threadsafe death-test style)
  // and must exit with status 0.
  template <typename F>
  void InChild(F child) {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    setenv("KVKEEP_SPILL_WRITE_DIR", dir_.c_str(), 1);
    EXPECT_EXIT(child(), ::testing::ExitedWithCode(0), "");
    unsetenv("KVKEEP_SPILL_WRITE_DIR");
  }

  // Spills in a child until it has 4 acknowledged, kills it (SIGKILL), and checks that every
  // acknowledged spill restores bit-exact and nothing partial is listed.
  void KillDuringSpillsAndCheckAcks();

  std::string dir_;
  bool child_ = false;
  SpillStore::Options options_;
  std::unique_ptr<SpillStore> store_;
};

TEST_F(SpillWriteTest, SequenceOfManyBatchesRestoresBitExactWithBoundedStaging) {
  // 8 heads x 40 pages x 8 KiB = 2.5 MiB in runs of 4 pages (32 KiB): 40 batches of 64 KiB.
  options_.pages_per_value = 4;
  OpenStore();
  SpillRecord r = MakeRecord("big", 8, 40, 11);
  WatchedSource source(r);
  ASSERT_OK(store_->Write(DescribeRecord(r), &source));
  // Every page read exactly once, in key order, into a staging area no larger than one batch.
  ASSERT_EQ(source.order().size(), 8u * 40);
  EXPECT_TRUE(std::is_sorted(source.order().begin(), source.order().end()));
  EXPECT_LE(source.span(), kBatch);
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("t", "big"));
  ExpectSameRecord(got, r);
  ASSERT_OK_AND_ASSIGN(auto list, store_->List("t"));
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].bytes, 8u * 40 * kPageBytes);
  EXPECT_EQ(list[0].pages, 8u * 40);
  // A reopen finds it whole and no stray page keys.
  OpenStore();
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.sequences, 1u);
  EXPECT_EQ(report.orphan_pages, 0u);
  ASSERT_OK_AND_ASSIGN(got, store_->Get("t", "big"));
  ExpectSameRecord(got, r);
}

TEST_F(SpillWriteTest, SmallAndLargeSpillsShareOneStore) {
  OpenStore();
  SpillRecord small = MakeRecord("small", 2, 2, 1);  // 32 KiB: one synced batch
  SpillRecord large = MakeRecord("large", 4, 20, 2);  // 640 KiB: batches + flush + manifest
  ASSERT_OK(store_->Put(small));
  ASSERT_OK(store_->Put(large));
  EXPECT_THAT(store_->Put(large), StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(store_->BytesOf("t"), (2u * 2 + 4u * 20) * kPageBytes);
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("t", "large"));
  ExpectSameRecord(got, large);
  ASSERT_OK(store_->Delete("t", "large"));
  ASSERT_OK_AND_ASSIGN(got, store_->Get("t", "small"));
  ExpectSameRecord(got, small);
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);  // Delete took every run of the batched spill
}

TEST_F(SpillWriteTest, SourceFailureMidwayListsNothingAndLeavesNoPages) {
  OpenStore();
  SpillRecord r = MakeRecord("s", 4, 20, 3);  // one run of 20 pages (160 KiB) per batch
  WatchedSource failing(r);
  failing.FailAt(50);  // in the third batch: two are in the database already
  EXPECT_THAT(store_->Write(DescribeRecord(r), &failing),
              StatusIs(absl::StatusCode::kDataLoss, "reading page 10 of head 2"));
  EXPECT_EQ(failing.calls(), 50u);
  EXPECT_EQ(store_->BytesOf("t"), 0u);
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_THAT(list, IsEmpty());
  EXPECT_THAT(store_->Get("t", "s"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);  // the written batches were rolled back
  WatchedSource ok(r);
  ASSERT_OK(store_->Write(DescribeRecord(r), &ok));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("t", "s"));
  ExpectSameRecord(got, r);
}

TEST_F(SpillWriteTest, BadShapesAreInvalidArgumentAndChangeNothing) {
  OpenStore();
  SpillRecord r = MakeRecord("s", 2, 10, 4);
  SpillWrite w = DescribeRecord(r);
  w.counts[1] += 1;  // one more token than positions
  WatchedSource source(r);
  EXPECT_THAT(store_->Write(w, &source),
              StatusIs(absl::StatusCode::kInvalidArgument, "head 1 has"));
  w = DescribeRecord(r);
  w.page_sizes[0][3] = 0;
  EXPECT_THAT(store_->Write(w, &source),
              StatusIs(absl::StatusCode::kInvalidArgument, "page 3 of head 0 has 0 bytes"));
  w = DescribeRecord(r);
  w.page_sizes.pop_back();
  EXPECT_THAT(store_->Write(w, &source), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(source.calls(), 0u);
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_THAT(list, IsEmpty());
}

// The child spills a 2.5 MiB sequence with 1 MiB memtables and dies (_exit, as kill -9: no
// destructor runs) in its last batches, once a memtable flush put earlier batches on disk. The
// memtable path (ingest_large_spills = false): an ingested spill has no flush before its end.
void CrashMidSpill(SpillStore::Options options, const SpillRecord& r) {
  options.write_buffer_mib = 1;
  options.ingest_large_spills = false;
  auto store = SpillStore::Open(options);
  if (!store.ok()) _exit(3);
  WatchedSource source(r);
  source.ExitAt(300, options.path + "/LOG");  // of 320 pages
  (*store)->Write(DescribeRecord(r), &source).IgnoreError();
  _exit(4);  // the write finished: the crash did not happen
}

TEST_F(SpillWriteTest, CrashBetweenBatchesLeavesOrphansThatOpenRemoves) {
  SpillRecord r = MakeRecord("crash", 8, 40, 5);
  InChild([&] { CrashMidSpill(options_, r); });
  if (child_) return;
  OpenStore();
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_THAT(list, IsEmpty());  // no manifest: never listed
  EXPECT_THAT(store_->Get("t", "crash"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_GT(report.orphan_pages, 0u);  // the flushed batches' runs
  EXPECT_EQ(report.orphan_sequences, 1u);
  EXPECT_EQ(report.sequences, 0u);
  ASSERT_OK_AND_ASSIGN(report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);
  ASSERT_OK(store_->Put(r));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("t", "crash"));
  ExpectSameRecord(got, r);
}

TEST_F(SpillWriteTest, RetryAfterCrashRemovesTheEarlierAttemptsPages) {
  SpillRecord r = MakeRecord("crash", 8, 40, 6);
  InChild([&] { CrashMidSpill(options_, r); });
  if (child_) return;
  OpenStore();  // no Recover(): the retry itself must clean up
  // The retry spills a shorter sequence under the same id: the earlier attempt's pages beyond
  // it would survive an overwrite; they must be gone.
  SpillRecord shorter = MakeRecord("crash", 2, 10, 7);
  ASSERT_OK(store_->Put(shorter));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("t", "crash"));
  ExpectSameRecord(got, shorter);
  ASSERT_OK(store_->Delete("t", "crash"));
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);
  EXPECT_EQ(report.sequences, 0u);
}

// ---- Ingested spills (Options::ingest_large_spills) -------------------------------------------

// Files in the folder where ingested spills are written before they enter the database.
size_t IngestFiles(const std::string& store_path) {
  std::error_code ec;
  size_t n = 0;
  for (auto it = std::filesystem::directory_iterator(store_path + ".ingest", ec);
       !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
    ++n;
  }
  return n;
}

TEST_F(SpillWriteTest, IngestedSpillLeavesNoFileOutsideTheDatabase) {
  OpenStore();
  SpillRecord r = MakeRecord("big", 8, 40, 21);  // 2.5 MiB: above one 64 KiB batch
  ASSERT_OK(store_->Put(r));
  EXPECT_EQ(IngestFiles(options_.path), 0u);
  OpenStore();
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("t", "big"));
  ExpectSameRecord(got, r);
}

// The child dies (_exit, as kill -9) while its spill is being written into the file to ingest:
// the partial file is all it leaves, and the next open removes it.
void CrashWhileWritingTheIngestFile(SpillStore::Options options, const SpillRecord& r) {
  auto store = SpillStore::Open(options);
  if (!store.ok()) _exit(3);
  WatchedSource source(r);
  source.ExitNowAt(300);  // of 320 pages
  (*store)->Write(DescribeRecord(r), &source).IgnoreError();
  _exit(4);  // the write finished: the crash did not happen
}

TEST_F(SpillWriteTest, CrashWhileWritingAnIngestedSpillListsNothingAndOpenRemovesTheFile) {
  SpillRecord r = MakeRecord("crash", 8, 40, 22);
  InChild([&] { CrashWhileWritingTheIngestFile(options_, r); });
  if (child_) return;
  EXPECT_EQ(IngestFiles(options_.path), 1u);  // the partial file
  OpenStore();
  EXPECT_EQ(IngestFiles(options_.path), 0u);
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_THAT(list, IsEmpty());
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);  // no page reached the database
  ASSERT_OK(store_->Put(r));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("t", "crash"));
  ExpectSameRecord(got, r);
}

// Spills of the previous release (memtable batches and a flush: values in blob files) and
// ingested ones (values in SST files) in one store, across reopens in either mode.
TEST_F(SpillWriteTest, MemtableAndIngestedSpillsRestoreFromOneStore) {
  options_.ingest_large_spills = false;
  OpenStore();
  SpillRecord old_spill = MakeRecord("old", 8, 40, 23);
  ASSERT_OK(store_->Put(old_spill));
  options_.ingest_large_spills = true;
  OpenStore();
  SpillRecord new_spill = MakeRecord("new", 8, 40, 24);
  ASSERT_OK(store_->Put(new_spill));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("t", "old"));
  ExpectSameRecord(got, old_spill);
  ASSERT_OK_AND_ASSIGN(got, store_->Get("t", "new"));
  ExpectSameRecord(got, new_spill);
  options_.ingest_large_spills = false;
  OpenStore();
  ASSERT_OK_AND_ASSIGN(got, store_->Get("t", "new"));
  ExpectSameRecord(got, new_spill);
  ASSERT_OK(store_->Delete("t", "new"));
  ASSERT_OK(store_->Delete("t", "old"));
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);
  EXPECT_EQ(report.sequences, 0u);
  // The same id spilled again after its delete (the delete's tombstones overlap the new file).
  options_.ingest_large_spills = true;
  OpenStore();
  ASSERT_OK(store_->Put(new_spill));
  ASSERT_OK_AND_ASSIGN(got, store_->Get("t", "new"));
  ExpectSameRecord(got, new_spill);
}

// ---- kill -9 during batched spills -----------------------------------------------------------

constexpr int kAckedBeforeKill = 4;

SpillRecord KillRecord(int i) { return MakeRecord(absl::StrCat("k", i), 4, 12, 100 + i); }

[[noreturn]] void SpillUntilKilled(SpillStore::Options options, const std::string& ack_file) {
  auto store = SpillStore::Open(options);
  if (!store.ok()) _exit(3);
  FILE* acks = std::fopen(ack_file.c_str(), "w");
  if (acks == nullptr) _exit(4);
  std::atomic<int> acked{0};
  std::thread writer([&] {
    for (int i = 0;; ++i) {
      if (!(*store)->Put(KillRecord(i)).ok()) _exit(5);  // 384 KiB: 4 batches each
      std::fprintf(acks, "%d\n", i);  // written before the count moves
      std::fflush(acks);
      acked.fetch_add(1);
    }
  });
  while (acked.load() < kAckedBeforeKill) std::this_thread::yield();
  kill(getpid(), SIGKILL);
  for (;;) pause();
}

TEST_F(SpillWriteTest, KilledDuringIngestedSpillsKeepsEveryAcknowledgedSpill) {
  ASSERT_TRUE(options_.ingest_large_spills);  // the default
  KillDuringSpillsAndCheckAcks();
}

TEST_F(SpillWriteTest, KilledDuringMemtableBatchedSpillsKeepsEveryAcknowledgedSpill) {
  options_.ingest_large_spills = false;
  KillDuringSpillsAndCheckAcks();
}

void SpillWriteTest::KillDuringSpillsAndCheckAcks() {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  setenv("KVKEEP_SPILL_WRITE_DIR", dir_.c_str(), 1);
  const std::string ack_file = dir_ + "/acks";
  EXPECT_EXIT(SpillUntilKilled(options_, ack_file), ::testing::KilledBySignal(SIGKILL), "");
  unsetenv("KVKEEP_SPILL_WRITE_DIR");
  if (child_) return;
  std::vector<int> acked;
  std::ifstream in(ack_file);
  for (int i; in >> i;) acked.push_back(i);
  ASSERT_GE(acked.size(), static_cast<size_t>(kAckedBeforeKill));
  OpenStore();
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.corrupt_manifests, 0u);
  for (int i : acked) {
    SpillRecord want = KillRecord(i);
    ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("t", want.sequence_id));
    ExpectSameRecord(got, want);
  }
  // Beyond the acknowledged ones, at most the spill in flight at the kill, and only whole.
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_LE(list.size(), acked.size() + 1);
  for (const auto& s : list) {
    ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get(s.tenant, s.sequence_id));
    ExpectSameRecord(got, KillRecord(std::stoi(s.sequence_id.substr(1))));
  }
}

}  // namespace
}  // namespace kvkeep
