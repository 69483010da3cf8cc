#include "service/storage/spill_store.h"

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "rocksdb/db.h"
#include "service/storage/fault_env.h"
#include "service/storage/xxhash64.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

// ---- XXH64 -----------------------------------------------------------------------------------

TEST(XxHash64, MatchesReferenceVectors) {
  // Published by the xxHash project / produced by libxxhash 0.8.1 (XXH64).
  EXPECT_EQ(XxHash64(""), 0xEF46DB3751D8E999ULL);
  EXPECT_EQ(XxHash64("a"), 0xD24EC4F1A98C6E5BULL);
  EXPECT_EQ(XxHash64("abc"), 0x44BC2CF5AD770999ULL);
  EXPECT_EQ(XxHash64("The quick brown fox jumps over the lazy dog"), 0x0B242D361FDA71BCULL);
  std::string ramp(100, '\0');
  for (int i = 0; i < 100; ++i) ramp[i] = static_cast<char>(i);
  EXPECT_EQ(XxHash64(ramp), 0x6AC1E58032166597ULL);  // long path (>= 32 bytes) and tail
  EXPECT_EQ(XxHash64(ramp, 0x9E3779B97F4A7C15ULL), 0x3B97D91EBA03E785ULL);  // seed
  EXPECT_EQ(XxHash64(std::string(1 << 20, 'x')), 0xDFC21015D1DAF3FCULL);
}

// ---- Helpers ---------------------------------------------------------------------------------

// A sequence of `heads` heads, `pages` pages of `page_bytes` random bytes each; head h has lost
// some tokens to eviction (gaps in its positions), so positions are not all consecutive.
SpillRecord MakeRecord(const std::string& tenant, const std::string& id, uint32_t heads,
                       uint32_t pages, uint32_t page_bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  SpillRecord r;
  r.tenant = tenant;
  r.sequence_id = id;
  r.model = "llama3-8b";
  const uint32_t tpp = 16;
  r.next_position = static_cast<int64_t>(pages) * tpp + 7;
  for (uint32_t h = 0; h < heads; ++h) {
    SpilledHead head;
    head.count = pages * tpp - (h % tpp);
    int32_t pos = 0;
    for (uint32_t t = 0; t < head.count; ++t) {
      pos += (t % (h + 3) == 0) ? 2 : 1;  // a gap every h + 3 tokens
      head.positions.push_back(pos);
    }
    for (uint32_t p = 0; p < pages; ++p) {
      std::string bytes(page_bytes, '\0');
      for (size_t i = 0; i + 8 <= bytes.size(); i += 8) {
        uint64_t v = rng();
        std::memcpy(&bytes[i], &v, 8);
      }
      head.pages.push_back(std::move(bytes));
    }
    r.heads.push_back(std::move(head));
  }
  return r;
}

uint64_t PageBytes(const SpillRecord& r) {
  uint64_t n = 0;
  for (const auto& h : r.heads)
    for (const auto& p : h.pages) n += p.size();
  return n;
}

void ExpectSameRecord(const SpillRecord& got, const SpillRecord& want) {
  EXPECT_EQ(got.tenant, want.tenant);
  EXPECT_EQ(got.sequence_id, want.sequence_id);
  EXPECT_EQ(got.model, want.model);
  EXPECT_EQ(got.next_position, want.next_position);
  ASSERT_EQ(got.heads.size(), want.heads.size());
  for (size_t h = 0; h < want.heads.size(); ++h) {
    EXPECT_EQ(got.heads[h].count, want.heads[h].count) << "head " << h;
    EXPECT_EQ(got.heads[h].positions, want.heads[h].positions) << "head " << h;
    ASSERT_EQ(got.heads[h].pages.size(), want.heads[h].pages.size()) << "head " << h;
    for (size_t p = 0; p < want.heads[h].pages.size(); ++p) {
      // Compare bytes without printing megabytes on failure.
      EXPECT_TRUE(got.heads[h].pages[p] == want.heads[h].pages[p]) << "head " << h << " page " << p;
    }
  }
}

std::vector<std::string> Ids(const std::vector<SpillSummary>& list) {
  std::vector<std::string> ids;
  for (const auto& s : list) ids.push_back(s.tenant + "/" + s.sequence_id);
  return ids;
}

class SpillStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "spill_store_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    options_.path = dir_ + "/spill";
  }
  void TearDown() override {
    store_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void OpenStore() {
    store_.reset();
    auto s = SpillStore::Open(options_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(s).value();
  }

  // Routes the store's file I/O through a FaultEnv (declared before store_: outlives it).
  FaultEnv& UseFaultEnv() {
    fault_ = std::make_unique<FaultEnv>();
    options_.env = fault_->env();
    return *fault_;
  }

  std::string dir_;
  SpillStore::Options options_;
  std::unique_ptr<FaultEnv> fault_;
  std::unique_ptr<SpillStore> store_;
};

// ---- Behaviour -------------------------------------------------------------------------------

TEST_F(SpillStoreTest, RoundTripIsBitExact) {
  OpenStore();
  std::vector<SpillRecord> records = {
      MakeRecord("team-a", "seq-1", 8, 4, 4096, 1),
      MakeRecord("team-a", "seq-2", 3, 1, 8192, 2),
      MakeRecord("team-b", "seq-1", 16, 2, 1024, 3),  // below min_blob_size: stays in the LSM
  };
  SpillRecord empty_head = MakeRecord("team-b", "seq-2", 2, 2, 4096, 4);
  empty_head.heads[1] = SpilledHead{};  // a head everything was evicted from
  empty_head.heads[0].positions[0] = -5;  // negative positions survive too
  records.push_back(empty_head);
  for (const auto& r : records) ASSERT_OK(store_->Put(r));
  for (const auto& r : records) {
    ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get(r.tenant, r.sequence_id));
    ExpectSameRecord(got, r);
  }
}

TEST_F(SpillStoreTest, RejectsBadRecordsWithInvalidArgument) {
  OpenStore();
  EXPECT_THAT(store_->Put(MakeRecord("team/a", "s", 1, 1, 64, 1)),
              StatusIs(absl::StatusCode::kInvalidArgument, "tenant"));
  EXPECT_THAT(store_->Put(MakeRecord("a", "", 1, 1, 64, 1)),
              StatusIs(absl::StatusCode::kInvalidArgument, "sequence id"));
  SpillRecord bad = MakeRecord("a", "s", 2, 1, 64, 1);
  bad.heads[1].positions.pop_back();
  EXPECT_THAT(store_->Put(bad), StatusIs(absl::StatusCode::kInvalidArgument, "head 1"));
  bad = MakeRecord("a", "s", 2, 2, 64, 1);
  bad.heads[0].pages[1].clear();
  EXPECT_THAT(store_->Put(bad), StatusIs(absl::StatusCode::kInvalidArgument, "page 1 of head 0"));
  EXPECT_THAT(store_->Get("a", "x/y"), StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_THAT(list, IsEmpty());
}

TEST_F(SpillStoreTest, MissingIsNotFoundAndDuplicateIsAlreadyExists) {
  OpenStore();
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kNotFound, "a/s"));
  EXPECT_THAT(store_->Delete("a", "s"), StatusIs(absl::StatusCode::kNotFound));
  SpillRecord r = MakeRecord("a", "s", 2, 2, 4096, 1);
  ASSERT_OK(store_->Put(r));
  SpillRecord other = MakeRecord("a", "s", 1, 1, 4096, 9);
  EXPECT_THAT(store_->Put(other), StatusIs(absl::StatusCode::kAlreadyExists));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "s"));
  ExpectSameRecord(got, r);  // the first record is untouched
  ASSERT_OK(store_->Delete("a", "s"));
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(store_->Put(other));  // the id is free again
  ASSERT_OK_AND_ASSIGN(got, store_->Get("a", "s"));
  ExpectSameRecord(got, other);
}

TEST_F(SpillStoreTest, BytesOfFollowsPutsAndDeletes) {
  OpenStore();
  SpillRecord a1 = MakeRecord("a", "1", 4, 3, 4096, 1);
  SpillRecord a2 = MakeRecord("a", "2", 2, 5, 8192, 2);
  SpillRecord b1 = MakeRecord("b", "1", 1, 1, 4096, 3);
  ASSERT_OK(store_->Put(a1));
  ASSERT_OK(store_->Put(a2));
  ASSERT_OK(store_->Put(b1));
  EXPECT_EQ(store_->BytesOf("a"), PageBytes(a1) + PageBytes(a2));
  EXPECT_EQ(store_->BytesOf("b"), PageBytes(b1));
  EXPECT_EQ(store_->BytesOf("c"), 0u);
  ASSERT_OK(store_->Delete("a", "1"));
  EXPECT_EQ(store_->BytesOf("a"), PageBytes(a2));
  ASSERT_OK(store_->Delete("a", "2"));
  EXPECT_EQ(store_->BytesOf("a"), 0u);
  EXPECT_EQ(store_->BytesOf("b"), PageBytes(b1));
}

TEST_F(SpillStoreTest, ListFiltersByTenantAndSummarizes) {
  OpenStore();
  absl::Time before = absl::Now() - absl::Seconds(1);
  ASSERT_OK(store_->Put(MakeRecord("b", "2", 1, 1, 4096, 1)));
  ASSERT_OK(store_->Put(MakeRecord("a", "9", 2, 3, 4096, 2)));
  ASSERT_OK(store_->Put(MakeRecord("b", "1", 1, 2, 4096, 3)));
  ASSERT_OK_AND_ASSIGN(auto all, store_->List());
  EXPECT_THAT(Ids(all), ElementsAre("a/9", "b/1", "b/2"));
  ASSERT_OK_AND_ASSIGN(auto b, store_->List("b"));
  EXPECT_THAT(Ids(b), ElementsAre("b/1", "b/2"));
  ASSERT_OK_AND_ASSIGN(auto none, store_->List("c"));
  EXPECT_THAT(none, IsEmpty());
  const SpillSummary& a9 = all[0];
  EXPECT_EQ(a9.model, "llama3-8b");
  EXPECT_EQ(a9.pages, 6u);
  EXPECT_EQ(a9.bytes, 6u * 4096);
  EXPECT_GT(a9.created, before);
  EXPECT_LE(a9.created, absl::Now());
}

TEST_F(SpillStoreTest, ReopenKeepsEverything) {
  OpenStore();
  std::vector<SpillRecord> records;
  for (int i = 0; i < 5; ++i) {
    records.push_back(MakeRecord(i % 2 ? "a" : "b", absl::StrCat("s", i), 4, 3, 8192, 10 + i));
    ASSERT_OK(store_->Put(records.back()));
  }
  ASSERT_OK(store_->Delete("b", "s2"));
  ASSERT_OK_AND_ASSIGN(auto before, store_->List());
  uint64_t bytes_a = store_->BytesOf("a");
  OpenStore();  // closes (flushing memtables to blob files) and reopens
  ASSERT_OK_AND_ASSIGN(auto after, store_->List());
  EXPECT_EQ(Ids(after), Ids(before));
  EXPECT_THAT(Ids(after), ElementsAre("a/s1", "a/s3", "b/s0", "b/s4"));
  EXPECT_EQ(store_->BytesOf("a"), bytes_a);
  for (const auto& r : records) {
    if (r.sequence_id == "s2") {
      EXPECT_THAT(store_->Get(r.tenant, r.sequence_id), StatusIs(absl::StatusCode::kNotFound));
      continue;
    }
    ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get(r.tenant, r.sequence_id));
    ExpectSameRecord(got, r);
  }
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.sequences, 4u);
  EXPECT_EQ(report.orphan_pages, 0u);
}

TEST_F(SpillStoreTest, OverwrittenPageIsDataLossNamingThePage) {
  OpenStore();
  SpillRecord r = MakeRecord("a", "s", 3, 4, 4096, 5);
  ASSERT_OK(store_->Put(r));
  std::string bad = r.heads[1].pages[2];
  bad[100] ^= 0x40;  // one flipped bit, same size
  ASSERT_OK(store_->OverwritePageForTest("a", "s", 1, 2, bad));
  EXPECT_THAT(store_->Get("a", "s"),
              StatusIs(absl::StatusCode::kDataLoss, "page 2 of head 1 of spilled sequence a/s"));
  ASSERT_OK(store_->OverwritePageForTest("a", "s", 0, 0, "short"));
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kDataLoss, "page 0 of head 0"));
  // The record can still be dropped and the id reused.
  ASSERT_OK(store_->Delete("a", "s"));
  ASSERT_OK(store_->Put(r));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "s"));
  ExpectSameRecord(got, r);
}

// ---- Value layouts (spill_format.h, "Page values") ---------------------------------------------

// Keys in the "pages" column family of the closed store at `path`.
size_t StoredPageValues(const std::string& path) {
  std::vector<rocksdb::ColumnFamilyDescriptor> families = {
      {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
      {"pages", rocksdb::ColumnFamilyOptions()},
      {"manifests", rocksdb::ColumnFamilyOptions()}};
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s =
      rocksdb::DB::OpenForReadOnly(rocksdb::Options(), path, families, &handles, &raw);
  EXPECT_TRUE(s.ok()) << s.ToString();
  if (!s.ok()) return 0;
  size_t n = 0;
  std::unique_ptr<rocksdb::Iterator> it(raw->NewIterator(rocksdb::ReadOptions(), handles[1]));
  for (it->SeekToFirst(); it->Valid(); it->Next()) ++n;
  it.reset();  // before the handles and the database it reads
  for (auto* h : handles) raw->DestroyColumnFamilyHandle(h).PermitUncheckedError();
  delete raw;
  return n;
}

// Spills written one page per value (version 1: every release before pages_per_value) restore
// bit-exact, and delete cleanly, from a store that now writes runs.
TEST_F(SpillStoreTest, VersionOneSpillsStillRestoreAfterUpgrade) {
  options_.pages_per_value = 1;
  OpenStore();
  SpillRecord old_a = MakeRecord("a", "old", 3, 5, 4096, 21);
  SpillRecord old_b = MakeRecord("a", "old-2", 2, 3, 8192, 22);
  ASSERT_OK(store_->Put(old_a));
  ASSERT_OK(store_->Put(old_b));
  store_.reset();
  EXPECT_EQ(StoredPageValues(options_.path), 3u * 5 + 2u * 3);  // one value per page

  options_.pages_per_value = 4;
  OpenStore();
  SpillRecord fresh = MakeRecord("a", "new", 3, 5, 4096, 23);
  ASSERT_OK(store_->Put(fresh));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "old"));
  ExpectSameRecord(got, old_a);
  ASSERT_OK_AND_ASSIGN(got, store_->Get("a", "new"));
  ExpectSameRecord(got, fresh);
  ASSERT_OK(store_->Delete("a", "old"));
  EXPECT_THAT(store_->Get("a", "old"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);  // Delete removed every version-1 page key
  EXPECT_EQ(report.sequences, 2u);
  store_.reset();
  // old-2: 2 x 3 values; new: 3 heads x ceil(5 / 4) runs.
  EXPECT_EQ(StoredPageValues(options_.path), 2u * 3 + 3u * 2);
  OpenStore();
  ASSERT_OK_AND_ASSIGN(got, store_->Get("a", "old-2"));
  ExpectSameRecord(got, old_b);
}

// A corrupt page inside a multi-page value is named; with the restore split over threads the
// error reported is the first bad page in (head, page) order, whichever thread finds it.
TEST_F(SpillStoreTest, CorruptPageInsideARunIsNamedAcrossReadThreads) {
  options_.pages_per_value = 3;
  options_.read_threads = 2;
  OpenStore();
  SpillRecord r = MakeRecord("a", "s", 9, 70, 8192, 24);  // 5 MiB: read on 2 threads
  ASSERT_OK(store_->Put(r));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "s"));
  ExpectSameRecord(got, r);
  std::string bad = r.heads[8].pages[67];
  bad[5] ^= 1;
  ASSERT_OK(store_->OverwritePageForTest("a", "s", 8, 67, bad));
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kDataLoss, "page 67 of head 8"));
  bad = r.heads[0].pages[4];
  bad[9] ^= 1;
  ASSERT_OK(store_->OverwritePageForTest("a", "s", 0, 4, bad));
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kDataLoss, "page 4 of head 0"));
  // A page one byte too long: page 4 itself checks out, the shifted page 5 after it does not.
  ASSERT_OK(store_->OverwritePageForTest("a", "s", 0, 4, r.heads[0].pages[4] + "x"));
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kDataLoss, "page 5 of head 0"));
  // The last page of a run one byte too long: the run's trailing byte is caught.
  ASSERT_OK(store_->Delete("a", "s"));
  ASSERT_OK(store_->Put(r));
  ASSERT_OK(store_->OverwritePageForTest("a", "s", 1, 2, r.heads[1].pages[2] + "x"));
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kDataLoss, "page 2 of head 1"));
}

TEST_F(SpillStoreTest, CorruptBlobFileReadIsDataLoss) {
  FaultEnv& fault = UseFaultEnv();
  OpenStore();
  SpillRecord r = MakeRecord("a", "s", 2, 3, 8192, 6);
  ASSERT_OK(store_->Put(r));
  OpenStore();  // flush: the pages now live in a .blob file
  ASSERT_TRUE(std::filesystem::exists(options_.path));
  bool has_blob = false;
  for (const auto& e : std::filesystem::directory_iterator(options_.path)) {
    has_blob |= e.path().extension() == ".blob";
  }
  ASSERT_TRUE(has_blob);
  fault.SetReadCorruption(".blob");
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kDataLoss));
  EXPECT_GT(fault.injected(), 0u);
  fault.SetReadCorruption("");
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "s"));  // the file itself is intact
  ExpectSameRecord(got, r);
}

// Issue 13: an operator frees space by dropping spilled sequences, so Delete must work while the
// disk is full, and a dropped sequence must never come back (same store, or after a restart).
TEST_F(SpillStoreTest, DeleteWorksOnAFullDiskAndStaysDeletedAcrossRestart) {
  FaultEnv& fault = UseFaultEnv();
  OpenStore();
  SpillRecord kept = MakeRecord("a", "kept", 2, 2, 4096, 1);
  SpillRecord gone = MakeRecord("a", "gone", 4, 4, 4096, 2);
  ASSERT_OK(store_->Put(kept));
  ASSERT_OK(store_->Put(gone));
  fault.SetWriteFault(FaultEnv::Fault::kNoSpace);
  ASSERT_OK(store_->Delete("a", "gone"));
  EXPECT_GT(fault.injected(), 0u);
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_THAT(Ids(list), ElementsAre("a/kept"));
  EXPECT_EQ(store_->BytesOf("a"), PageBytes(kept));
  EXPECT_THAT(store_->Get("a", "gone"), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->Delete("a", "gone"), StatusIs(absl::StatusCode::kNotFound));
  // A new spill of the same id waits until the old keys are gone.
  EXPECT_THAT(store_->Put(MakeRecord("a", "gone", 1, 1, 4096, 3)),
              StatusIs(absl::StatusCode::kUnavailable));

  // Restart while the disk is still full: the journal keeps the drop.
  store_.reset();
  fault.SetWriteFault(FaultEnv::Fault::kNone);
  OpenStore();
  ASSERT_OK_AND_ASSIGN(list, store_->List());
  EXPECT_THAT(Ids(list), ElementsAre("a/kept"));
  EXPECT_THAT(store_->Get("a", "gone"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "kept"));
  ExpectSameRecord(got, kept);
  // Space is back: the delete applied at open, so the id can be spilled again and survives.
  SpillRecord again = MakeRecord("a", "gone", 1, 1, 4096, 4);
  ASSERT_OK(store_->Put(again));
  store_.reset();
  OpenStore();
  ASSERT_OK_AND_ASSIGN(got, store_->Get("a", "gone"));
  ExpectSameRecord(got, again);
}

TEST_F(SpillStoreTest, DeferredDeleteAppliesInTheSameStoreOnceSpaceIsBack) {
  FaultEnv& fault = UseFaultEnv();
  OpenStore();
  SpillRecord gone = MakeRecord("b", "gone", 2, 2, 4096, 5);
  ASSERT_OK(store_->Put(gone));
  fault.SetWriteFault(FaultEnv::Fault::kNoSpace);
  ASSERT_OK(store_->Delete("b", "gone"));
  EXPECT_EQ(store_->BytesOf("b"), 0u);
  fault.SetWriteFault(FaultEnv::Fault::kNone);
  SpillRecord again = MakeRecord("b", "gone", 1, 1, 4096, 6);
  ASSERT_OK(store_->Put(again));  // the next call applied the pending drop first
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("b", "gone"));
  ExpectSameRecord(got, again);
  store_.reset();
  OpenStore();
  ASSERT_OK_AND_ASSIGN(got, store_->Get("b", "gone"));
  ExpectSameRecord(got, again);
}

TEST_F(SpillStoreTest, FailedWriteListsNothingAndStoreRecovers) {
  FaultEnv& fault = UseFaultEnv();
  OpenStore();
  SpillRecord kept = MakeRecord("a", "kept", 2, 2, 4096, 1);
  ASSERT_OK(store_->Put(kept));
  SpillRecord r = MakeRecord("a", "s", 4, 4, 4096, 7);
  fault.SetWriteFault(FaultEnv::Fault::kNoSpace);
  EXPECT_THAT(store_->Put(r), StatusIs(absl::StatusCode::kUnavailable, "spilling sequence a/s"));
  EXPECT_GT(fault.injected(), 0u);
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_THAT(Ids(list), ElementsAre("a/kept"));
  EXPECT_EQ(store_->BytesOf("a"), PageBytes(kept));
  // Still broken: another write fails cleanly too.
  EXPECT_THAT(store_->Put(MakeRecord("a", "t", 1, 1, 4096, 8)),
              StatusIs(absl::StatusCode::kUnavailable));
  fault.SetWriteFault(FaultEnv::Fault::kNone);
  // The disk is back: the same store serves again, without a restart.
  ASSERT_OK(store_->Put(r));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "s"));
  ExpectSameRecord(got, r);
  ASSERT_OK_AND_ASSIGN(got, store_->Get("a", "kept"));
  ExpectSameRecord(got, kept);
  ASSERT_OK_AND_ASSIGN(list, store_->List());
  EXPECT_THAT(Ids(list), ElementsAre("a/kept", "a/s"));
  EXPECT_THAT(store_->Get("a", "t"), StatusIs(absl::StatusCode::kNotFound));
}

// A spill larger than one write batch goes through an SST file and IngestExternalFile: a write
// fault there (the file cannot be written, or its sync fails) lists nothing, leaves no file
// outside the database, and the same store takes the spill once the disk is back.
TEST_F(SpillStoreTest, FailedIngestedSpillListsNothingAndStoreRecovers) {
  FaultEnv& fault = UseFaultEnv();
  options_.write_batch_bytes = 16 << 10;  // the 64 KiB record below is ingested
  ASSERT_TRUE(options_.ingest_large_spills);
  OpenStore();
  SpillRecord kept = MakeRecord("a", "kept", 2, 2, 4096, 1);  // 16 KiB: one synced batch
  ASSERT_OK(store_->Put(kept));
  SpillRecord r = MakeRecord("a", "s", 4, 4, 4096, 7);
  auto ingest_files = [&] {
    std::error_code ec;
    size_t n = 0;
    for (auto it = std::filesystem::directory_iterator(options_.path + ".ingest", ec);
         !ec && it != std::filesystem::directory_iterator(); it.increment(ec)) {
      ++n;
    }
    return n;
  };
  for (bool sync_only : {false, true}) {
    SCOPED_TRACE(sync_only ? "sync fault" : "write fault");
    const uint64_t before = fault.injected();
    if (sync_only) {
      fault.SetSyncFault(FaultEnv::Fault::kIoError);
    } else {
      fault.SetWriteFault(FaultEnv::Fault::kNoSpace);
    }
    EXPECT_THAT(store_->Put(r), StatusIs(absl::StatusCode::kUnavailable, "spilling sequence a/s"));
    EXPECT_GT(fault.injected(), before);
    fault.SetWriteFault(FaultEnv::Fault::kNone);
    fault.SetSyncFault(FaultEnv::Fault::kNone);
    EXPECT_EQ(ingest_files(), 0u);
    ASSERT_OK_AND_ASSIGN(auto list, store_->List());
    EXPECT_THAT(Ids(list), ElementsAre("a/kept"));
    EXPECT_EQ(store_->BytesOf("a"), PageBytes(kept));
  }
  ASSERT_OK(store_->Put(r));
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "s"));
  ExpectSameRecord(got, r);
  ASSERT_OK_AND_ASSIGN(got, store_->Get("a", "kept"));
  ExpectSameRecord(got, kept);
  OpenStore();
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);
  EXPECT_EQ(report.sequences, 2u);
  ASSERT_OK_AND_ASSIGN(got, store_->Get("a", "s"));
  ExpectSameRecord(got, r);
}

TEST_F(SpillStoreTest, FailedSyncIsRolledBackEvenAfterReopen) {
  FaultEnv& fault = UseFaultEnv();
  OpenStore();
  SpillRecord r = MakeRecord("a", "s", 3, 3, 4096, 3);
  // The WAL append succeeds, its fsync fails: the bytes are in the OS, the spill is not durable.
  fault.SetSyncFault(FaultEnv::Fault::kIoError);
  EXPECT_THAT(store_->Put(r), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(store_->BytesOf("a"), 0u);
  fault.SetSyncFault(FaultEnv::Fault::kNone);
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_THAT(list, IsEmpty());
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kNotFound));
  // Replaying the WAL on reopen must not resurrect the failed spill.
  OpenStore();
  ASSERT_OK_AND_ASSIGN(list, store_->List());
  EXPECT_THAT(list, IsEmpty());
  EXPECT_THAT(store_->Get("a", "s"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);  // the pages went with the manifest
  ASSERT_OK(store_->Put(r));
}

TEST_F(SpillStoreTest, RecoverRemovesOrphanPagesOnly) {
  OpenStore();
  SpillRecord r = MakeRecord("a", "s", 2, 2, 4096, 1);
  ASSERT_OK(store_->Put(r));
  store_.reset();
  {
    // Page keys without a manifest, as an older version or manual surgery could leave them.
    SpillStore::DbConfig c = SpillStore::MakeDbConfig(options_);
    std::vector<rocksdb::ColumnFamilyDescriptor> families = {
        {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
        {"pages", c.pages},
        {"manifests", c.manifests}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(c.db, options_.path, families, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    for (const char* k : {"a/orphan/00000000/00000000", "a/orphan/00000001/00000000",
                          "a/orphan/00000001/00000001", "b/x/00000000/00000000"}) {
      ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), handles[1], k, std::string(4096, 'z')).ok());
    }
    for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
    ASSERT_TRUE(db->Close().ok());
  }
  OpenStore();
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 4u);
  EXPECT_EQ(report.orphan_sequences, 2u);
  EXPECT_EQ(report.sequences, 1u);
  EXPECT_EQ(report.bytes, PageBytes(r));
  ASSERT_OK_AND_ASSIGN(report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "s"));
  ExpectSameRecord(got, r);
}

TEST_F(SpillStoreTest, CorruptManifestIsSkippedAtOpenAndDeletable) {
  OpenStore();
  ASSERT_OK(store_->Put(MakeRecord("a", "good", 1, 1, 4096, 1)));
  ASSERT_OK(store_->Put(MakeRecord("a", "bad", 2, 2, 4096, 2)));
  store_.reset();
  {
    SpillStore::DbConfig c = SpillStore::MakeDbConfig(options_);
    std::vector<rocksdb::ColumnFamilyDescriptor> families = {
        {rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions()},
        {"pages", c.pages},
        {"manifests", c.manifests}};
    std::vector<rocksdb::ColumnFamilyHandle*> handles;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(c.db, options_.path, families, &handles, &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    std::string value;
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), handles[2], "a/bad", &value).ok());
    value[value.size() / 2] ^= 1;
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), handles[2], "a/bad", value).ok());
    for (auto* h : handles) ASSERT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
    ASSERT_TRUE(db->Close().ok());
  }
  OpenStore();
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_THAT(Ids(list), ElementsAre("a/good"));
  EXPECT_THAT(store_->Get("a", "bad"), StatusIs(absl::StatusCode::kDataLoss, "manifest"));
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.corrupt_manifests, 1u);
  EXPECT_EQ(report.orphan_pages, 0u);  // its pages are still claimed by the manifest key
  ASSERT_OK(store_->Delete("a", "bad"));
  EXPECT_THAT(store_->Get("a", "bad"), StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);  // the range delete took the pages with it
}

TEST_F(SpillStoreTest, ConcurrentPutsOfDistinctSequences) {
  OpenStore();
  constexpr int kThreads = 4, kEach = 6;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        if (!store_->Put(MakeRecord("a", absl::StrCat(t, "-", i), 2, 2, 4096, t * 100 + i)).ok()) {
          ++failures;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  ASSERT_OK_AND_ASSIGN(auto list, store_->List("a"));
  EXPECT_EQ(list.size(), static_cast<size_t>(kThreads * kEach));
  EXPECT_EQ(store_->BytesOf("a"), kThreads * kEach * 4u * 4096);
  ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get("a", "2-3"));
  ExpectSameRecord(got, MakeRecord("a", "2-3", 2, 2, 4096, 203));
}

// ---- kill -9 ---------------------------------------------------------------------------------
// A child process spills records from a second thread and is SIGKILLed right after the N-th
// acknowledgement, most likely in the middle of the next spill. Every acknowledged record must
// restore bit-exact; whatever else is listed must be complete.

constexpr int kAckedBeforeKill = 6;

SpillRecord KillRecord(int i) {
  return MakeRecord(i % 2 ? "a" : "b", absl::StrCat("k", i), 8, 4, 8192, 1000 + i);
}

[[noreturn]] void SpillUntilKilled(const std::string& path, const std::string& ack_file) {
  SpillStore::Options o;
  o.path = path;
  auto store = SpillStore::Open(o);
  if (!store.ok()) _exit(3);
  FILE* acks = std::fopen(ack_file.c_str(), "w");
  if (acks == nullptr) _exit(4);
  std::atomic<int> acked{0};
  std::thread writer([&] {
    for (int i = 0;; ++i) {
      if (!(*store)->Put(KillRecord(i)).ok()) _exit(5);
      // Written before the count moves: the parent trusts exactly what is in this file.
      std::fprintf(acks, "%d\n", i);
      std::fflush(acks);
      acked.fetch_add(1);
    }
  });
  while (acked.load() < kAckedBeforeKill) std::this_thread::yield();
  kill(getpid(), SIGKILL);
  for (;;) pause();
}

TEST_F(SpillStoreTest, KilledProcessKeepsEveryAcknowledgedSpill) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // the child re-executes this binary
  // The child re-runs this test from the start; it must use the parent's directory.
  const char* inherited = getenv("KVKEEP_SPILL_KILL_DIR");
  std::string dir = inherited ? inherited : dir_;
  if (inherited) {
    std::filesystem::remove_all(dir_);  // the child's own, unused (it never reaches TearDown)
  } else {
    setenv("KVKEEP_SPILL_KILL_DIR", dir.c_str(), 1);
  }
  const std::string path = dir + "/spill", ack_file = dir + "/acks";
  EXPECT_EXIT(SpillUntilKilled(path, ack_file), ::testing::KilledBySignal(SIGKILL), "");
  unsetenv("KVKEEP_SPILL_KILL_DIR");

  std::vector<int> acked;
  std::ifstream in(ack_file);
  for (int i; in >> i;) acked.push_back(i);
  ASSERT_GE(acked.size(), static_cast<size_t>(kAckedBeforeKill));

  options_.path = path;
  OpenStore();
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, store_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);
  EXPECT_EQ(report.corrupt_manifests, 0u);
  for (int i : acked) {
    SpillRecord want = KillRecord(i);
    ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get(want.tenant, want.sequence_id));
    ExpectSameRecord(got, want);
  }
  // At most the one spill in flight at the kill is there beyond the acknowledged ones, whole.
  ASSERT_OK_AND_ASSIGN(auto list, store_->List());
  EXPECT_LE(list.size(), acked.size() + 1);
  for (const auto& s : list) {
    ASSERT_OK_AND_ASSIGN(SpillRecord got, store_->Get(s.tenant, s.sequence_id));
    int i = std::stoi(s.sequence_id.substr(1));
    ExpectSameRecord(got, KillRecord(i));
  }
}

}  // namespace
}  // namespace kvkeep
