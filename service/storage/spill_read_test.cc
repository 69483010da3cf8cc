// SpillStore::ReadInto (spill_store_read.cc): streamed reads of spilled sequences into a sink,
// on a real RocksDB in a temporary folder.
#include <stdlib.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "common/status_matchers.h"
#include "service/storage/spill_store.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;

// `heads` heads of `pages` random pages of `page_bytes`; head h has pages * 16 - h tokens.
SpillRecord MakeRecord(const std::string& id, uint32_t heads, uint32_t pages, uint32_t page_bytes,
                       uint64_t seed) {
  std::mt19937_64 rng(seed);
  SpillRecord r;
  r.tenant = "t";
  r.sequence_id = id;
  r.model = "m";
  r.next_position = int64_t{pages} * 16 + 3;
  for (uint32_t h = 0; h < heads; ++h) {
    SpilledHead head;
    head.count = pages * 16 - h;
    for (uint32_t t = 0; t < head.count; ++t) head.positions.push_back(static_cast<int32_t>(2 * t));
    for (uint32_t p = 0; p < pages; ++p) {
      std::string bytes(page_bytes, '\0');
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

// What a RecordingSink was handed.
struct Seen {
  SpillLayout layout;
  std::vector<std::vector<std::string>> pages;  // [head][page]
  std::vector<std::vector<int>> delivered;      // [head][page]: times handed over
  size_t threads = 0;                           // distinct threads that delivered pages
  uint64_t total() const {
    uint64_t n = 0;
    for (const auto& h : delivered)
      for (int d : h) n += d;
    return n;
  }
};

// Records everything it is handed: the layout, every page, the threads that delivered them.
class RecordingSink : public SpillPageSink {
 public:
  explicit RecordingSink(absl::Status begin_status = absl::OkStatus(), int fail_at_call = 0)
      : begin_status_(std::move(begin_status)), fail_at_call_(fail_at_call) {}
  absl::Status Begin(SpillLayout& layout) override {
    absl::MutexLock lock(&mu_);
    seen_.layout = layout;
    seen_.pages.resize(layout.page_sizes.size());
    seen_.delivered.resize(layout.page_sizes.size());
    for (size_t h = 0; h < layout.page_sizes.size(); ++h) {
      seen_.pages[h].resize(layout.page_sizes[h].size());
      seen_.delivered[h].assign(layout.page_sizes[h].size(), 0);
    }
    return begin_status_;
  }
  absl::Status Page(uint32_t head, uint32_t page, absl::string_view bytes) override {
    if (++calls_ == fail_at_call_) return absl::CancelledError("sink gave up");
    absl::MutexLock lock(&mu_);
    seen_.pages[head][page].assign(bytes.data(), bytes.size());
    ++seen_.delivered[head][page];
    threads_.insert(std::this_thread::get_id());
    return absl::OkStatus();
  }
  Seen seen() {
    absl::MutexLock lock(&mu_);
    Seen out = seen_;
    out.threads = threads_.size();
    return out;
  }
  int calls() const { return calls_.load(); }

 private:
  const absl::Status begin_status_;
  const int fail_at_call_;  // 0: never
  std::atomic<int> calls_{0};
  absl::Mutex mu_;
  Seen seen_ ABSL_GUARDED_BY(mu_);
  std::set<std::thread::id> threads_ ABSL_GUARDED_BY(mu_);
};

class SpillReadTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (std::filesystem::temp_directory_path() / "spill_read_test.XXXXXX").string();
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
    options_.path = dir_ + "/spill";
    options_.pages_per_value = 3;
    options_.read_threads = 2;
    options_.read_batch_mib = 1;  // several MultiGet batches per thread
  }
  void TearDown() override {
    store_.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void OpenStore() {
    store_.reset();
    ASSERT_OK_AND_ASSIGN(store_, SpillStore::Open(options_));
  }
  std::string dir_;
  SpillStore::Options options_;
  std::unique_ptr<SpillStore> store_;
};

// Every page exactly once, bit-exact, from both read threads; the layout is the record's.
TEST_F(SpillReadTest, EveryPageArrivesOnceBitExactFromSeveralThreads) {
  OpenStore();
  const SpillRecord r = MakeRecord("s", 9, 70, 8192, 1);  // 5 MiB: two read threads
  ASSERT_OK(store_->Put(r));
  ASSERT_OK(store_->Flush());  // from blob files, as after a restart
  RecordingSink sink;
  ASSERT_OK(store_->ReadInto("t", "s", &sink));
  const Seen seen = sink.seen();
  EXPECT_EQ(seen.layout.model, "m");
  EXPECT_EQ(seen.layout.next_position, r.next_position);
  EXPECT_EQ(seen.layout.pages, 9u * 70);
  EXPECT_EQ(seen.layout.bytes, 9ull * 70 * 8192);
  ASSERT_EQ(seen.layout.counts.size(), 9u);
  for (uint32_t h = 0; h < 9; ++h) {
    EXPECT_EQ(seen.layout.counts[h], r.heads[h].count);
    EXPECT_EQ(seen.layout.positions[h], r.heads[h].positions);
    EXPECT_THAT(seen.layout.page_sizes[h], ::testing::Each(8192u));
    for (uint32_t p = 0; p < 70; ++p) {
      EXPECT_EQ(seen.delivered[h][p], 1) << "head " << h << " page " << p;
      EXPECT_TRUE(seen.pages[h][p] == r.heads[h].pages[p]) << "head " << h << " page " << p;
    }
  }
  EXPECT_EQ(seen.threads, 2u);
}

// Pages stream: when the last value of the sequence is corrupt, the pages before it have already
// been handed over (nothing waits for the whole sequence), the corrupt page never is, and the
// read is DATA_LOSS naming it.
TEST_F(SpillReadTest, PagesArriveBeforeACorruptionLaterInTheSequenceIsFound) {
  options_.read_threads = 1;
  OpenStore();
  const SpillRecord r = MakeRecord("s", 9, 70, 8192, 2);
  ASSERT_OK(store_->Put(r));
  std::string bad = r.heads[8].pages[68];
  bad[17] ^= 1;
  ASSERT_OK(store_->OverwritePageForTest("t", "s", 8, 68, bad));
  RecordingSink sink;
  EXPECT_THAT(store_->ReadInto("t", "s", &sink),
              StatusIs(absl::StatusCode::kDataLoss, "page 68 of head 8"));
  const Seen seen = sink.seen();
  // Values of 3 pages: the corrupt page's value holds pages 66-68; 66 and 67 checked out and were
  // handed over, 68 was not, nor page 69 in the next value.
  EXPECT_EQ(seen.delivered[8][66], 1);
  EXPECT_EQ(seen.delivered[8][67], 1);
  EXPECT_EQ(seen.delivered[8][68], 0);
  EXPECT_EQ(seen.delivered[8][69], 0);
  EXPECT_EQ(seen.total(), 9u * 70 - 2);
}

// With two threads, a corruption in the second range stops that range only; the first range
// reads on, and a corruption found there is the one reported (first in key order).
TEST_F(SpillReadTest, CorruptionStopsItsRangeAndTheFirstInKeyOrderIsReported) {
  OpenStore();
  const SpillRecord r = MakeRecord("s", 9, 70, 8192, 3);
  ASSERT_OK(store_->Put(r));
  std::string bad = r.heads[5].pages[0];
  bad[0] ^= 1;
  ASSERT_OK(store_->OverwritePageForTest("t", "s", 5, 0, bad));
  RecordingSink one;
  EXPECT_THAT(store_->ReadInto("t", "s", &one),
              StatusIs(absl::StatusCode::kDataLoss, "page 0 of head 5"));
  const Seen seen = one.seen();
  EXPECT_THAT(seen.delivered[0], ::testing::Each(1));  // the first range read on
  EXPECT_EQ(seen.delivered[5][0], 0);
  bad = r.heads[1].pages[10];
  bad[3] ^= 1;
  ASSERT_OK(store_->OverwritePageForTest("t", "s", 1, 10, bad));
  RecordingSink two;
  EXPECT_THAT(store_->ReadInto("t", "s", &two),
              StatusIs(absl::StatusCode::kDataLoss, "page 10 of head 1"));
}

// The sink's own errors: from Begin nothing is read; from Page the read stops with it.
TEST_F(SpillReadTest, SinkErrorsEndTheRead) {
  OpenStore();
  ASSERT_OK(store_->Put(MakeRecord("s", 9, 70, 8192, 4)));
  RecordingSink refuses(absl::DataLossError("layout does not fit"));
  EXPECT_THAT(store_->ReadInto("t", "s", &refuses),
              StatusIs(absl::StatusCode::kDataLoss, "layout does not fit"));
  EXPECT_EQ(refuses.calls(), 0);
  RecordingSink gives_up(absl::OkStatus(), /*fail_at_call=*/5);
  EXPECT_THAT(store_->ReadInto("t", "s", &gives_up),
              StatusIs(absl::StatusCode::kCancelled, "sink gave up"));
  EXPECT_LT(gives_up.seen().total(), 9u * 70);
  RecordingSink missing;
  EXPECT_THAT(store_->ReadInto("t", "nope", &missing), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->ReadInto("t/x", "s", &missing),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(missing.calls(), 0);
}

// Version-1 spills (one page per value) stream the same way.
TEST_F(SpillReadTest, VersionOneSpillsStream) {
  options_.pages_per_value = 1;
  OpenStore();
  const SpillRecord r = MakeRecord("old", 4, 140, 8192, 5);
  ASSERT_OK(store_->Put(r));
  options_.pages_per_value = 32;
  OpenStore();
  RecordingSink sink;
  ASSERT_OK(store_->ReadInto("t", "old", &sink));
  const Seen seen = sink.seen();
  for (uint32_t h = 0; h < 4; ++h) {
    for (uint32_t p = 0; p < 140; ++p) {
      ASSERT_EQ(seen.delivered[h][p], 1);
      EXPECT_TRUE(seen.pages[h][p] == r.heads[h].pages[p]) << "head " << h << " page " << p;
    }
  }
}

}  // namespace
}  // namespace kvkeep
