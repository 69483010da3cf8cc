#include "service/pool/page_pool.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>
#include <thread>

#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "service/pool/late_unpin.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

class PagePoolTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto backend = CreateBackend({.kind = BackendKind::kCpu, .shm_prefix = "kvkeep-pooltest"});
    ASSERT_OK(backend);
    backend_ = std::move(*backend);
  }
  // 2 tokens x 4 dims x fp32 = 32 bytes of keys, 64 per page.
  PageGeometry geometry_ = PageGeometry::Of(2, 4, v1::DTYPE_FP32);
  std::unique_ptr<Backend> backend_;
};

TEST_F(PagePoolTest, ArenasAreCreatedPerOwnerAndReported) {
  PagePool pool(backend_.get(), {.capacity_bytes = 64 * 100, .arena_bytes = 64 * 10});
  std::vector<uint64_t> a_pages, b_pages;
  std::vector<ArenaInfo> a_new, b_new;
  ASSERT_OK(pool.Allocate("a", geometry_, 15, &a_pages, &a_new));
  ASSERT_OK(pool.Allocate("b", geometry_, 1, &b_pages, &b_new));
  EXPECT_EQ(a_pages.size(), 15u);
  EXPECT_EQ(a_new.size(), 2u);  // 10 pages per arena
  ASSERT_EQ(b_new.size(), 1u);
  for (const ArenaInfo& info : a_new) EXPECT_EQ(info.owner, "a");
  std::set<uint64_t> unique(a_pages.begin(), a_pages.end());
  EXPECT_EQ(unique.size(), 15u);
  PoolStats s = pool.Stats();
  EXPECT_EQ(s.used_pages, 16u);
  EXPECT_EQ(s.used_bytes, 16u * 64);
  EXPECT_EQ(s.arenas, 3u);
  EXPECT_EQ(pool.ArenasOf("a").size(), 2u);
}

TEST_F(PagePoolTest, LocateChecksOwnerRangeAndAllocation) {
  PagePool pool(backend_.get(), {.capacity_bytes = 64 * 100, .arena_bytes = 64 * 10});
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> fresh;
  ASSERT_OK(pool.Allocate("a", geometry_, 2, &pages, &fresh));
  ASSERT_OK(pool.Locate("a", pages[0]));
  EXPECT_THAT(pool.Locate("b", pages[0]), StatusIs(StatusCode::kPermissionDenied));
  PageRef ref = PageRef::Unpack(pages[0]);
  EXPECT_THAT(pool.Locate("a", PageRef{ref.arena, 10}.packed()), StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(pool.Locate("a", PageRef{ref.arena, 9}.packed()),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(pool.Locate("a", PageRef{999, 0}.packed()), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(pool.GetArena("b", ref.arena), StatusIs(StatusCode::kPermissionDenied));
}

TEST_F(PagePoolTest, ExhaustionIsAllOrNothing) {
  PagePool pool(backend_.get(), {.capacity_bytes = 64 * 10, .arena_bytes = 64 * 4});
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> fresh;
  ASSERT_OK(pool.Allocate("a", geometry_, 6, &pages, &fresh));
  std::vector<uint64_t> more;
  EXPECT_THAT(pool.Allocate("a", geometry_, 5, &more, &fresh),
              StatusIs(StatusCode::kResourceExhausted, "page pool exhausted"));
  EXPECT_TRUE(more.empty());
  EXPECT_EQ(pool.Stats().used_pages, 6u);
  // The last 4 still fit (partial arena at the capacity edge).
  ASSERT_OK(pool.Allocate("a", geometry_, 4, &more, &fresh));
  EXPECT_EQ(pool.Stats().arena_bytes, 64u * 10);
}

TEST_F(PagePoolTest, FreedArenasAreReusedByAnotherOwner) {
  PagePool pool(backend_.get(), {.capacity_bytes = 64 * 8, .arena_bytes = 64 * 8});
  std::vector<uint64_t> a_pages, b_pages;
  std::vector<ArenaInfo> fresh;
  ASSERT_OK(pool.Allocate("a", geometry_, 8, &a_pages, &fresh));
  EXPECT_THAT(pool.Allocate("b", geometry_, 1, &b_pages, &fresh),
              StatusIs(StatusCode::kResourceExhausted));
  pool.Free(a_pages);
  EXPECT_EQ(pool.Stats().used_pages, 0u);
  ASSERT_OK(pool.Allocate("b", geometry_, 8, &b_pages, &fresh));
  EXPECT_EQ(pool.ArenasOf("a").size(), 0u);  // a's empty arena was given back
  EXPECT_THAT(pool.ReleaseOwner("b"), StatusIs(StatusCode::kFailedPrecondition));
}

TEST_F(PagePoolTest, DoubleFreeDoesNotCorruptCounters) {
  PagePool pool(backend_.get(), {.capacity_bytes = 64 * 8, .arena_bytes = 64 * 8});
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> fresh;
  ASSERT_OK(pool.Allocate("a", geometry_, 3, &pages, &fresh));
  pool.Free({pages[0]});
  pool.Free({pages[0], PageRef{77, 1}.packed()});
  EXPECT_EQ(pool.Stats().used_pages, 2u);
}

// Reply pins (reply_pins.h): a pinned page freed meanwhile is retired, keeps its bytes and its
// arena, is never handed out again, and returns to the free list with its last pin.
TEST_F(PagePoolTest, PinnedPagesFreedMeanwhileAreRetiredUntilTheLastUnpin) {
  // One arena of 4 pages, and no room for a second: a freed page could only be reused.
  PagePool pool(backend_.get(), {.capacity_bytes = 64 * 4, .arena_bytes = 64 * 4});
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> fresh;
  ASSERT_OK(pool.Allocate("a", geometry_, 4, &pages, &fresh));
  const std::string bytes(64, 'x');
  ASSERT_OK_AND_ASSIGN(PagePool::Location loc, pool.Locate("a", pages[1]));
  ASSERT_OK(backend_->Write(*loc.arena, loc.offset, bytes.data(), bytes.size()));
  pool.Pin({pages[1]});
  pool.Pin({pages[1]});  // two replies
  pool.Free(pages);
  EXPECT_EQ(pool.Pins().retired_pages, 1u);
  EXPECT_EQ(pool.Stats().used_pages, 1u);  // the retired page is still held
  EXPECT_THAT(pool.Locate("a", pages[1]), StatusIs(StatusCode::kFailedPrecondition));
  // The three free pages are handed out again; the pinned one is not.
  std::vector<uint64_t> again;
  ASSERT_OK(pool.Allocate("a", geometry_, 3, &again, &fresh));
  EXPECT_EQ(std::count(again.begin(), again.end(), pages[1]), 0);
  EXPECT_THAT(pool.Allocate("a", geometry_, 1, &again, &fresh),
              StatusIs(StatusCode::kResourceExhausted));
  // Its bytes are as they were, and its arena still lives: ReleaseOwner refuses.
  std::string back(64, '\0');
  ASSERT_OK(backend_->Read(*loc.arena, loc.offset, back.data(), back.size()));
  EXPECT_EQ(back, bytes);
  pool.Unpin({pages[1]});
  EXPECT_EQ(pool.Pins().retired_pages, 1u);
  pool.Unpin({pages[1]});
  EXPECT_EQ(pool.Pins().retired_pages, 0u);
  EXPECT_EQ(pool.Pins().pins, 0u);
  EXPECT_EQ(pool.Stats().used_pages, 3u);
  pool.Free(again);
  again.clear();
  ASSERT_OK(pool.Allocate("a", geometry_, 4, &again, &fresh));
}

// Releasing an owner (tenant deletion) while a reply still pins one of its pages: the arena is
// disowned (no one, not a new owner of the same name, reaches it) and goes with the last unpin.
TEST_F(PagePoolTest, ReleasedOwnerArenaWithRetiredPagesIsDisownedThenDestroyed) {
  PagePool pool(backend_.get(), {.capacity_bytes = 64 * 8, .arena_bytes = 64 * 4});
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> fresh;
  ASSERT_OK(pool.Allocate("a", geometry_, 6, &pages, &fresh));  // two arenas
  ASSERT_EQ(fresh.size(), 2u);
  pool.Pin({pages[0]});
  EXPECT_THAT(pool.ReleaseOwner("a"), StatusIs(StatusCode::kFailedPrecondition, "in use"));
  pool.Free(pages);
  ASSERT_OK(pool.ReleaseOwner("a"));
  EXPECT_TRUE(pool.ArenasOf("a").empty());
  EXPECT_EQ(pool.Stats().arenas, 1u);  // the pinned page's arena, disowned
  const uint32_t kept = PageRef::Unpack(pages[0]).arena;
  EXPECT_THAT(pool.GetArena("a", kept), StatusIs(StatusCode::kPermissionDenied));
  EXPECT_THAT(pool.Locate("a", pages[0]), StatusIs(StatusCode::kPermissionDenied));
  std::vector<uint64_t> again;
  ASSERT_OK(pool.Allocate("a", geometry_, 1, &again, &fresh));  // a new arena, not the old one
  EXPECT_NE(PageRef::Unpack(again[0]).arena, kept);
  pool.Unpin({pages[0]});
  EXPECT_EQ(pool.Stats().arenas, 1u);  // the disowned arena is gone; the new one stays
  EXPECT_EQ(pool.Stats().used_pages, 1u);
}

// At shutdown gRPC may release a reply's last slices after the pool is gone: the pool waits
// briefly, then leaves the pinned page's arena mapped, and the late unpin finds no pool.
TEST_F(PagePoolTest, APinOutlivingThePoolKeepsItsBytesMappedAndUnpinsNothing) {
  auto pool = std::make_unique<PagePool>(backend_.get(),
                                         PoolOptions{.capacity_bytes = 64 * 4, .arena_bytes = 64 * 4});
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> fresh;
  ASSERT_OK(pool->Allocate("a", geometry_, 1, &pages, &fresh));
  ASSERT_OK_AND_ASSIGN(PagePool::Location loc, pool->Locate("a", pages[0]));
  const std::string bytes(64, 'q');
  ASSERT_OK(backend_->Write(*loc.arena, loc.offset, bytes.data(), bytes.size()));
  const char* host = static_cast<const char*>(backend_->HostAddress(*loc.arena));
  ASSERT_NE(host, nullptr);
  pool->Pin(pages);
  PagePool* gone = pool.get();
  const absl::Time start = absl::Now();
  pool.reset();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  EXPECT_EQ(std::string(host + loc.offset, bytes.size()), bytes);  // still mapped
  UnpinIfLive(gone, pages);  // the pool is gone: nothing happens
}

TEST_F(PagePoolTest, AwaitUnpinnedWaitsForTheLastPinOrTimesOut) {
  PagePool pool(backend_.get(), {.capacity_bytes = 64 * 8, .arena_bytes = 64 * 8});
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> fresh;
  ASSERT_OK(pool.Allocate("a", geometry_, 3, &pages, &fresh));
  EXPECT_TRUE(pool.AwaitUnpinned(pages, absl::ZeroDuration()));
  pool.Pin({pages[2]});
  EXPECT_TRUE(pool.AwaitUnpinned({pages[0], pages[1]}, absl::ZeroDuration()));
  EXPECT_FALSE(pool.AwaitUnpinned(pages, absl::ZeroDuration()));
  EXPECT_FALSE(pool.AwaitUnpinned(pages, absl::Milliseconds(50)));
  std::thread unpin([&] {
    absl::SleepFor(absl::Milliseconds(100));
    pool.Unpin({pages[2]});
  });
  EXPECT_TRUE(pool.AwaitUnpinned(pages, absl::Seconds(10)));
  unpin.join();
  // Unpinning a page that is not pinned changes nothing.
  pool.Unpin({pages[0]});
  EXPECT_EQ(pool.Pins().pins, 0u);
  EXPECT_EQ(pool.Stats().used_pages, 3u);
}

// A CUDA_VMM_FD arena without a GPU: its export fd is a socket, which, like the driver's fd behind
// a cuMem shareable handle, cannot be re-opened through /proc/self/fd.
class SocketFdArena final : public Arena {
 public:
  explicit SocketFdArena(std::size_t bytes) {
    handle_.kind = ArenaExportKind::kCudaVmmFd;
    handle_.size_bytes = bytes;
    handle_.device_ordinal = 0;
    int pair[2] = {-1, -1};
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0) {
      fd_ = pair[0];
      close(pair[1]);
    }
  }
  ~SocketFdArena() override {
    if (fd_ >= 0) close(fd_);
  }
  const ArenaHandle& handle() const override { return handle_; }
  int export_fd() const override { return fd_; }

 private:
  ArenaHandle handle_;
  int fd_ = -1;
};

class SocketFdBackend final : public Backend {
 public:
  std::string name() const override { return "socket-fd"; }
  absl::StatusOr<std::unique_ptr<Arena>> CreateArena(std::size_t bytes) override {
    return std::unique_ptr<Arena>(std::make_unique<SocketFdArena>(bytes));
  }
  absl::Status Write(Arena&, std::size_t, const void*, std::size_t) override {
    return absl::UnimplementedError("no bytes here");
  }
  absl::Status Read(const Arena&, std::size_t, void*, std::size_t) const override {
    return absl::UnimplementedError("no bytes here");
  }
  absl::Status Copy(const Arena&, std::size_t, Arena&, std::size_t, std::size_t) override {
    return absl::UnimplementedError("no bytes here");
  }
};

// A sharing group's CUDA_VMM_FD arena is handed out as a dup of the driver fd: re-opening it
// O_RDONLY (what makes a host memfd read-only) fails on such an fd, or would open an unrelated one.
TEST(PagePoolFdTest, ReadOnlyFdOfACudaVmmArenaIsTheSameFile) {
  SocketFdBackend backend;
  PagePool pool(&backend, {.capacity_bytes = 64 * 8, .arena_bytes = 64 * 8});
  std::vector<uint64_t> pages;
  std::vector<ArenaInfo> fresh;
  ASSERT_OK(pool.Allocate("a", PageGeometry::Of(2, 4, v1::DTYPE_FP32), 1, &pages, &fresh));
  ASSERT_EQ(fresh.size(), 1u);
  const int source = pool.ArenaOf(pages[0])->export_fd();
  ASSERT_GE(source, 0);
  struct stat want;
  ASSERT_EQ(fstat(source, &want), 0);
  for (bool read_only : {false, true}) {
    ASSERT_OK_AND_ASSIGN(int fd, pool.DupExportFd("a", fresh[0].id, read_only));
    struct stat got;
    ASSERT_EQ(fstat(fd, &got), 0);
    EXPECT_EQ(got.st_ino, want.st_ino) << "read_only=" << read_only;
    EXPECT_EQ(got.st_dev, want.st_dev);
    EXPECT_NE(fcntl(fd, F_GETFD) & FD_CLOEXEC, 0);
    close(fd);
  }
  EXPECT_THAT(pool.DupExportFd("b", fresh[0].id, true), StatusIs(StatusCode::kPermissionDenied));
}

}  // namespace
}  // namespace kvkeep
