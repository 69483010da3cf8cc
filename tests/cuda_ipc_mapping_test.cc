// The client's CUDA_IPC and CUDA_VMM_FD mappings, the checks made before any device memory is
// touched. They run on every machine: with CUDA and no device (CI) the device lookup answers
// FAILED_PRECONDITION, with a device an unknown UUID answers NOT_FOUND, and a client built without
// CUDA answers UNIMPLEMENTED. Mapping real daemon memory (both kinds) is tested in cuda_e2e_test
// (label gpu).
#include <fcntl.h>
#include <unistd.h>

#include "client/arena_mapping.h"
#include "common/owned_fd.h"
#include "common/status_matchers.h"
#include "gpu/backend.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using absl::StatusCode;
using ::kvkeep::testing::StatusIs;

bool CudaDevicePresent() {
  BackendOptions options;
  options.kind = BackendKind::kCuda;
  return CreateBackend(options).ok();
}

v1::ArenaExport CudaExport() {
  v1::ArenaExport e;
  e.set_arena_id(7);
  e.set_kind(v1::CUDA_IPC);
  e.set_handle(std::string(64, '\x01'));
  e.set_size_bytes(1 << 20);
  e.set_device_ordinal(0);
  e.set_device_uuid("GPU-00000000-1111-2222-3333-444444444444");
  return e;
}

TEST(CudaIpcMappingTest, ClientWithoutCudaSaysSo) {
  if (CudaBackendCompiled()) GTEST_SKIP() << "this client is built with CUDA";
  EXPECT_THAT(ArenaMapping::Map(CudaExport()),
              StatusIs(StatusCode::kUnimplemented, "built without CUDA"));
}

TEST(CudaIpcMappingTest, HandleOfWrongSizeIsInvalidArgument) {
  if (!CudaBackendCompiled()) GTEST_SKIP() << "client built without CUDA";
  v1::ArenaExport e = CudaExport();
  e.set_handle("short");
  EXPECT_THAT(ArenaMapping::Map(e), StatusIs(StatusCode::kInvalidArgument, "64 bytes"));
}

TEST(CudaIpcMappingTest, MalformedUuidIsInvalidArgument) {
  if (!CudaBackendCompiled()) GTEST_SKIP() << "client built without CUDA";
  v1::ArenaExport e = CudaExport();
  e.set_device_uuid("0");  // an ordinal is not an identity
  EXPECT_THAT(ArenaMapping::Map(e), StatusIs(StatusCode::kInvalidArgument, "not a GPU UUID"));
  e.set_device_uuid("");
  EXPECT_THAT(ArenaMapping::Map(e), StatusIs(StatusCode::kInvalidArgument));
}

TEST(CudaIpcMappingTest, EmptyArenaIsInvalidArgument) {
  if (!CudaBackendCompiled()) GTEST_SKIP() << "client built without CUDA";
  v1::ArenaExport e = CudaExport();
  e.set_size_bytes(0);
  EXPECT_THAT(ArenaMapping::Map(e), StatusIs(StatusCode::kInvalidArgument));
}

TEST(CudaIpcMappingTest, NoDeviceIsFailedPrecondition) {
  if (!CudaBackendCompiled()) GTEST_SKIP() << "client built without CUDA";
  if (CudaDevicePresent()) GTEST_SKIP() << "a CUDA device is present";
  EXPECT_THAT(ArenaMapping::Map(CudaExport()),
              StatusIs(StatusCode::kFailedPrecondition, "no CUDA device"));
}

TEST(CudaIpcMappingTest, UnknownUuidIsNotFound) {
  if (!CudaDevicePresent()) GTEST_SKIP() << "needs a CUDA device (none here, or built without CUDA)";
  EXPECT_THAT(ArenaMapping::Map(CudaExport()),
              StatusIs(StatusCode::kNotFound, "GPU-00000000-1111-2222-3333-444444444444"));
}

// CUDA_VMM_FD arenas come as fds over the arena channel, never by handle: Map says so, and MapFd
// imports them (cuMemImportFromShareableHandle) after the same checks as CUDA_IPC. Without CUDA
// or without a device it says which; the fd is closed whatever the outcome.
v1::ArenaExport VmmExport() {
  v1::ArenaExport e = CudaExport();
  e.set_kind(v1::CUDA_VMM_FD);
  e.clear_handle();
  return e;
}

// A fresh fd (a pipe's read end) and whether it is still open after the call under test.
int FreshFd() {
  int pipe_fds[2];
  if (pipe(pipe_fds) != 0) return -1;
  close(pipe_fds[1]);
  return pipe_fds[0];
}
bool FdOpen(int fd) { return fcntl(fd, F_GETFD) != -1; }

TEST(CudaVmmFdMappingTest, VmmFdKindComesByFdNotByHandle) {
  EXPECT_THAT(ArenaMapping::Map(VmmExport()), StatusIs(StatusCode::kFailedPrecondition, "MapFd"));
}

TEST(CudaVmmFdMappingTest, ClientWithoutCudaSaysSoAndClosesTheFd) {
  if (CudaBackendCompiled()) GTEST_SKIP() << "this client is built with CUDA";
  const int fd = FreshFd();
  ASSERT_GE(fd, 0);
  EXPECT_THAT(ArenaMapping::MapFd(VmmExport(), OwnedFd(fd)),
              StatusIs(StatusCode::kUnimplemented, "built without CUDA"));
  EXPECT_FALSE(FdOpen(fd));
}

TEST(CudaVmmFdMappingTest, MalformedExportsAreInvalidArgument) {
  if (!CudaBackendCompiled()) GTEST_SKIP() << "client built without CUDA";
  v1::ArenaExport e = VmmExport();
  e.set_device_uuid("0");
  EXPECT_THAT(ArenaMapping::MapFd(e, OwnedFd(FreshFd())),
              StatusIs(StatusCode::kInvalidArgument, "not a GPU UUID"));
  e = VmmExport();
  e.set_size_bytes(0);
  const int fd = FreshFd();
  EXPECT_THAT(ArenaMapping::MapFd(e, OwnedFd(fd)), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_FALSE(FdOpen(fd));
  EXPECT_THAT(ArenaMapping::MapFd(VmmExport(), OwnedFd()),
              StatusIs(StatusCode::kInvalidArgument, "no file descriptor"));
}

TEST(CudaVmmFdMappingTest, NoDeviceIsFailedPreconditionAndClosesTheFd) {
  if (!CudaBackendCompiled()) GTEST_SKIP() << "client built without CUDA";
  if (CudaDevicePresent()) GTEST_SKIP() << "a CUDA device is present";
  const int fd = FreshFd();
  EXPECT_THAT(ArenaMapping::MapFd(VmmExport(), OwnedFd(fd)),
              StatusIs(StatusCode::kFailedPrecondition, "no CUDA device"));
  EXPECT_FALSE(FdOpen(fd));
}

TEST(CudaVmmFdMappingTest, UnknownUuidIsNotFound) {
  if (!CudaDevicePresent()) GTEST_SKIP() << "needs a CUDA device (none here, or built without CUDA)";
  EXPECT_THAT(ArenaMapping::MapFd(VmmExport(), OwnedFd(FreshFd())),
              StatusIs(StatusCode::kNotFound, "GPU-00000000-1111-2222-3333-444444444444"));
}

}  // namespace
}  // namespace kvkeep
