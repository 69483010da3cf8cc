#include "service/sequence_table.h"

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

}  // namespace
}  // namespace kvkeep
