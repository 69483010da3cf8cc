#include "service/engine/sequence_table.h"

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

TEST(SequenceTableTest, PagesNeededRoundsUpPerHead) {
  SequenceTable t(3, 16);
  uint64_t total = 0;
  EXPECT_EQ(t.PagesNeeded(17, &total), (std::vector<uint32_t>{2, 2, 2}));
  EXPECT_EQ(total, 6u);
  for (uint32_t h = 0; h < 3; ++h) t.AppendPages(h, {h * 10 + 1, h * 10 + 2});
  // 32 slots of room, nothing committed: 10 more tokens need nothing.
  EXPECT_EQ(t.PagesNeeded(10, &total), (std::vector<uint32_t>{0, 0, 0}));
  EXPECT_EQ(total, 0u);
  ASSERT_OK(t.Commit(30, {}));
  EXPECT_EQ(t.PagesNeeded(3, &total), (std::vector<uint32_t>{1, 1, 1}));
}

TEST(SequenceTableTest, CommitRecordsPositionsAndRefusesWithoutRoom) {
  SequenceTable t(2, 4);
  EXPECT_THAT(t.Commit(1, {}), StatusIs(StatusCode::kFailedPrecondition, "AllocatePages"));
  t.AppendPages(0, {1});
  t.AppendPages(1, {2});
  ASSERT_OK(t.Commit(3, {}));
  EXPECT_EQ(t.head(1).positions, (std::vector<int32_t>{0, 1, 2}));
  // Only one slot left: a commit of 2 changes nothing.
  EXPECT_THAT(t.Commit(2, {}), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(t.head(0).count, 3u);
  ASSERT_OK(t.Commit(1, std::vector<int32_t>{100}));
  EXPECT_EQ(t.head(0).positions.back(), 100);
  EXPECT_EQ(t.next_position(), 101);
}

TEST(SequenceTableTest, CommitRejectsBadPositions) {
  SequenceTable t(1, 8);
  t.AppendPages(0, {1});
  EXPECT_THAT(t.Commit(2, std::vector<int32_t>{5}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(t.Commit(2, std::vector<int32_t>{5, 5}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(t.Commit(1, std::vector<int32_t>{-1}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_EQ(t.head(0).count, 0u);
  ASSERT_OK(t.Commit(2, std::vector<int32_t>{5, 9}));
  EXPECT_THAT(t.Commit(1, std::vector<int32_t>{9}), StatusIs(StatusCode::kInvalidArgument));
}

TEST(SequenceTableTest, SegmentsCoverTheRangePageByPage) {
  SequenceTable t(1, 4);
  t.AppendPages(0, {100, 200, 300});
  std::vector<std::tuple<uint64_t, uint32_t, uint32_t, uint64_t>> seen;
  ASSERT_OK(t.ForEachSegment(0, 3, 6, [&](uint64_t p, uint32_t s, uint32_t n, uint64_t d) {
    seen.emplace_back(p, s, n, d);
  }));
  decltype(seen) want = {{100, 3, 1, 0}, {200, 0, 4, 1}, {300, 0, 1, 5}};
  EXPECT_EQ(seen, want);
  EXPECT_THAT(t.ForEachSegment(0, 10, 3, [](auto...) {}), StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(t.ForEachSegment(0, UINT64_MAX, 2, [](auto...) {}),
              StatusIs(StatusCode::kOutOfRange));
}

TEST(SequenceTableTest, CompactKeepsPositionsAndFreesEmptiedPages) {
  SequenceTable t(2, 4);
  t.AppendPages(0, {10, 11, 12, 13});  // 16 slots
  t.AppendPages(1, {20, 21, 22, 23});
  ASSERT_OK(t.Commit(10, {}));           // 3 pages hold tokens, 1 is reserved room
  std::vector<uint64_t> freed = {99};    // appended to, not replaced
  ASSERT_OK(t.Compact(0, std::vector<int32_t>{0, 3, 4, 9}, &freed));
  EXPECT_EQ(t.head(0).count, 4u);
  EXPECT_EQ(t.head(0).positions, (std::vector<int32_t>{0, 3, 4, 9}));
  EXPECT_EQ(t.head(0).pages, (std::vector<uint64_t>{10, 13}));  // reserved page 13 stays
  EXPECT_EQ(freed, (std::vector<uint64_t>{99, 11, 12}));
  EXPECT_EQ(t.head(1).count, 10u);  // other heads untouched
  EXPECT_EQ(t.next_position(), 10);  // positions of new tokens continue
  // Keeping everything changes nothing; keeping nothing frees every page that held tokens.
  freed.clear();
  ASSERT_OK(t.Compact(1, std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9}, &freed));
  EXPECT_TRUE(freed.empty());
  ASSERT_OK(t.Compact(1, {}, &freed));
  EXPECT_EQ(freed, (std::vector<uint64_t>{20, 21, 22}));
  EXPECT_EQ(t.head(1).count, 0u);
  EXPECT_TRUE(t.head(1).positions.empty());
  // The heads then take new commits from their own counts.
  ASSERT_OK(t.Commit(2, {}));
  EXPECT_EQ(t.head(0).positions, (std::vector<int32_t>{0, 3, 4, 9, 10, 11}));
  EXPECT_EQ(t.head(1).positions, (std::vector<int32_t>{10, 11}));
}

TEST(SequenceTableTest, CompactRejectsBadIndicesAndChangesNothing) {
  SequenceTable t(1, 2);
  t.AppendPages(0, {1, 2, 3});
  ASSERT_OK(t.Commit(5, {}));
  std::vector<uint64_t> freed;
  for (const std::vector<int32_t>& bad :
       {std::vector<int32_t>{0, 5}, std::vector<int32_t>{-1, 2}, std::vector<int32_t>{2, 1},
        std::vector<int32_t>{1, 1}}) {
    EXPECT_THAT(t.Compact(0, bad, &freed), StatusIs(StatusCode::kInvalidArgument));
  }
  EXPECT_THAT(t.Compact(1, {}, &freed), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_TRUE(freed.empty());
  EXPECT_EQ(t.head(0).count, 5u);
  EXPECT_EQ(t.head(0).positions, (std::vector<int32_t>{0, 1, 2, 3, 4}));
  EXPECT_EQ(t.head(0).pages.size(), 3u);
}

}  // namespace
}  // namespace kvkeep

namespace kvkeep {
namespace {

// Pressure relief removes pages without a call of the owner that would refill the vectors:
// ShrinkToFit gives their spare capacity back, so HeldBytes (what metadata_charge.h charges) is
// exactly what the remaining pages and tokens need.
TEST(SequenceTableTest, ShrinkToFitLeavesHeldBytesAtWhatTheRemainingPagesNeed) {
  SequenceTable t(1, 4);
  t.AppendPages(0, {1, 2, 3, 4});
  ASSERT_OK(t.Commit(16, {}));
  const uint64_t full = t.HeldBytes();
  ASSERT_GE(full, 4 * sizeof(uint64_t) + 16 * sizeof(int32_t));
  std::vector<uint64_t> freed;
  ASSERT_OK(t.RemoveFullPage(0, 3, &freed));
  ASSERT_OK(t.RemoveFullPage(0, 1, &freed));
  EXPECT_EQ(freed.size(), 2u);
  EXPECT_EQ(t.HeldBytes(), full);  // removal keeps the capacity
  t.ShrinkToFit();
  EXPECT_EQ(t.HeldBytes(), 2 * sizeof(uint64_t) + 8 * sizeof(int32_t));
  EXPECT_EQ(t.head(0).positions, (std::vector<int32_t>{0, 1, 2, 3, 8, 9, 10, 11}));
}

TEST(SequenceTableTest, ReleaseAndRestoreRoundTrip) {
  SequenceTable t(2, 4);
  t.AppendPages(0, {1, 2});
  t.AppendPages(1, {3, 4});
  ASSERT_OK(t.Commit(6, {}));
  std::vector<uint64_t> pages = t.Release();
  EXPECT_EQ(pages, (std::vector<uint64_t>{1, 2, 3, 4}));
  EXPECT_EQ(t.page_count(), 0u);
  EXPECT_EQ(t.next_position(), 6);
  EXPECT_THAT(t.RestoreHead(0, {7}, 6, {0, 1, 2, 3, 4, 5}),
              kvkeep::testing::StatusIs(absl::StatusCode::kInvalidArgument));
  ASSERT_OK(t.RestoreHead(0, {7, 8}, 6, {0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(t.head(0).count, 6u);
  EXPECT_EQ(t.capacity(0), 8u);
}

}  // namespace
}  // namespace kvkeep
