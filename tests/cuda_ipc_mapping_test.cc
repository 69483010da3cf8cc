// The client's CUDA_IPC mapping, the checks made before any device memory is touched. They run on
// every machine: with CUDA and no device (CI) the device lookup answers FAILED_PRECONDITION, with a
// device an unknown UUID answers NOT_FOUND, and a client built without CUDA answers UNIMPLEMENTED.
// Mapping real daemon memory is tested in cuda_e2e_test (label gpu).
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

// CUDA_VMM_FD arenas would come as fds over the arena channel (not by handle), and mapping them
// (cuMemImportFromShareableHandle) is not built yet: both paths say so instead of guessing.
TEST(CudaIpcMappingTest, VmmFdKindComesByFdAndIsNotMappableYet) {
  v1::ArenaExport e = CudaExport();
  e.set_kind(v1::CUDA_VMM_FD);
  EXPECT_THAT(ArenaMapping::Map(e), StatusIs(StatusCode::kFailedPrecondition, "MapFd"));
  EXPECT_THAT(ArenaMapping::MapFd(e, OwnedFd(dup(0))),
              StatusIs(StatusCode::kUnimplemented, "CUDA_VMM_FD"));
}

}  // namespace
}  // namespace kvkeep
