#include "gpu/cpu/cpu_backend.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <vector>

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;

// Host arenas are anonymous memfds: nothing appears in /dev/shm, the export carries no name, and
// the fd workers receive cannot shrink or grow the arena under the daemon's mapping.
TEST(CpuBackendTest, ArenaIsAnAnonymousSealedMemfd) {
  ASSERT_OK_AND_ASSIGN(auto backend, CreateBackend({.kind = BackendKind::kCpu,
                                                    .shm_prefix = "kvkeep-test"}));
  ASSERT_OK_AND_ASSIGN(auto a, backend->CreateArena(1 << 20));
  EXPECT_EQ(a->handle().kind, ArenaExportKind::kHostMemfd);
  EXPECT_TRUE(a->handle().handle.empty());
  ASSERT_GE(a->export_fd(), 0);
  struct stat st;
  ASSERT_EQ(fstat(a->export_fd(), &st), 0);
  EXPECT_EQ(static_cast<std::size_t>(st.st_size), a->size());
  const int seals = fcntl(a->export_fd(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_NE(ftruncate(a->export_fd(), 4096), 0);
  EXPECT_EQ(RemoveStaleArenas("kvkeep-test"), 0);  // no named object was created
}

TEST(CpuBackendTest, BytesWrittenAreSeenThroughAnotherMapping) {
  ASSERT_OK_AND_ASSIGN(auto backend, CreateBackend({.kind = BackendKind::kCpu,
                                                    .shm_prefix = "kvkeep-test"}));
  ASSERT_OK_AND_ASSIGN(auto arena, backend->CreateArena(8192));
  std::vector<uint8_t> data(100);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7 + 1);
  ASSERT_OK(backend->Write(*arena, 4000, data.data(), data.size()));

  int fd = dup(arena->export_fd());  // what a worker receives over the arena channel
  ASSERT_GE(fd, 0);
  auto* mapped = static_cast<uint8_t*>(mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  close(fd);
  ASSERT_NE(mapped, MAP_FAILED);
  EXPECT_EQ(std::memcmp(mapped + 4000, data.data(), data.size()), 0);
  mapped[10] = 42;  // a worker writing in place
  uint8_t back = 0;
  ASSERT_OK(backend->Read(*arena, 10, &back, 1));
  EXPECT_EQ(back, 42);
  munmap(mapped, 8192);
}

TEST(CpuBackendTest, OutOfBoundsAccessIsRejected) {
  ASSERT_OK_AND_ASSIGN(auto backend, CreateBackend({.kind = BackendKind::kCpu,
                                                    .shm_prefix = "kvkeep-test"}));
  ASSERT_OK_AND_ASSIGN(auto arena, backend->CreateArena(4096));
  uint8_t buf[16] = {};
  EXPECT_THAT(backend->Write(*arena, 4090, buf, 16), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT(backend->Read(*arena, SIZE_MAX - 4, buf, 16), StatusIs(absl::StatusCode::kOutOfRange));
  EXPECT_THAT(backend->CreateArena(0), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CpuBackendTest, StaleNamedArenasOfOlderDaemonsAreRemoved) {
  int fd = shm_open("/kvkeep-stale.deadbeef", O_CREAT | O_RDWR, 0600);
  ASSERT_GE(fd, 0);
  close(fd);
  EXPECT_EQ(RemoveStaleArenas("kvkeep-stale"), 1);
  EXPECT_LT(shm_open("/kvkeep-stale.deadbeef", O_RDONLY, 0), 0);
}

// The factory's clean-up removes the host objects of the options' prefix, whatever the kind, and
// nothing of another prefix; a prefix CreateBackend refuses removes nothing.
TEST(CpuBackendTest, FactoryRemovesStaleArenasOfItsPrefixForEveryKind) {
  for (BackendKind kind : {BackendKind::kCpu, BackendKind::kAuto, BackendKind::kCuda}) {
    for (const char* name : {"/kvkeep-factory.a1", "/kvkeep-factory.b2", "/kvkeep-other.c3"}) {
      int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
      ASSERT_GE(fd, 0);
      close(fd);
    }
    EXPECT_EQ(RemoveStaleArenas(BackendOptions{.kind = kind, .shm_prefix = "kvkeep-factory"}), 2);
    EXPECT_LT(shm_open("/kvkeep-factory.a1", O_RDONLY, 0), 0);
    int other = shm_open("/kvkeep-other.c3", O_RDONLY, 0);
    EXPECT_GE(other, 0);
    if (other >= 0) close(other);
    EXPECT_EQ(RemoveStaleArenas(BackendOptions{.kind = kind, .shm_prefix = "kvkeep-other"}), 1);
  }
  EXPECT_EQ(RemoveStaleArenas(BackendOptions{.kind = BackendKind::kCpu, .shm_prefix = ""}), 0);
  EXPECT_EQ(RemoveStaleArenas(BackendOptions{.kind = BackendKind::kCpu, .shm_prefix = "a/b"}), 0);
}

TEST(CpuBackendTest, CudaIsUnimplementedWithoutCudaAndFailedPreconditionWithoutDevice) {
  auto cuda = CreateBackend({.kind = BackendKind::kCuda});
  if (!CudaBackendCompiled()) {
    EXPECT_THAT(cuda, StatusIs(absl::StatusCode::kUnimplemented));
  } else if (!cuda.ok()) {
    EXPECT_THAT(cuda, StatusIs(absl::StatusCode::kFailedPrecondition, "no CUDA device"));
  }
  EXPECT_THAT(ParseBackendKind("tpu"), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(CpuBackendTest, AutoFallsBackToCpuWithoutDevice) {
  ASSERT_OK_AND_ASSIGN(auto backend, CreateBackend({.kind = BackendKind::kAuto}));
  auto cuda = CreateBackend({.kind = BackendKind::kCuda});
  EXPECT_EQ(backend->name(), cuda.ok() ? "cuda" : "cpu");
}

}  // namespace
}  // namespace kvkeep
