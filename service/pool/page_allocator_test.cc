#include "service/pool/page_allocator.h"

#include <random>
#include <set>

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;

TEST(PageAllocatorTest, HandsOutEveryPageOnceThenRunsOut) {
  PageAllocator alloc(64);
  std::set<uint32_t> seen;
  for (int i = 0; i < 64; ++i) {
    auto page = alloc.Allocate();
    ASSERT_TRUE(page.has_value());
    EXPECT_LT(*page, 64u);
    EXPECT_TRUE(seen.insert(*page).second) << "page " << *page << " handed out twice";
  }
  EXPECT_FALSE(alloc.Allocate().has_value());
  EXPECT_EQ(alloc.free_count(), 0u);
  EXPECT_EQ(alloc.used_count(), 64u);
}

TEST(PageAllocatorTest, FreedPagesAreReused) {
  PageAllocator alloc(2);
  uint32_t a = *alloc.Allocate();
  uint32_t b = *alloc.Allocate();
  ASSERT_OK(alloc.Free(a));
  EXPECT_EQ(*alloc.Allocate(), a);
  EXPECT_TRUE(alloc.InUse(b));
}

TEST(PageAllocatorTest, DoubleFreeAndForeignIndexAreRejected) {
  PageAllocator alloc(4);
  uint32_t a = *alloc.Allocate();
  ASSERT_OK(alloc.Free(a));
  EXPECT_THAT(alloc.Free(a), StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_THAT(alloc.Free(4), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_EQ(alloc.free_count(), 4u);  // the rejected frees changed nothing
}

TEST(PageAllocatorTest, RandomAllocateFreeKeepsCountsConsistent) {
  PageAllocator alloc(128);
  std::mt19937 rng(7);
  std::vector<uint32_t> held;
  for (int step = 0; step < 10000; ++step) {
    if (!held.empty() && (rng() % 2 == 0 || alloc.free_count() == 0)) {
      size_t k = rng() % held.size();
      ASSERT_OK(alloc.Free(held[k]));
      held[k] = held.back();
      held.pop_back();
    } else {
      auto page = alloc.Allocate();
      ASSERT_TRUE(page.has_value());
      ASSERT_FALSE(std::count(held.begin(), held.end(), *page));
      held.push_back(*page);
    }
    ASSERT_EQ(alloc.used_count(), held.size());
  }
}

}  // namespace
}  // namespace kvkeep
