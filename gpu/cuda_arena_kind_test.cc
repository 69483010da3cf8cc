// The CUDA arena export rule (--cuda_arena_kind), given device attributes as plain inputs: runs
// everywhere, no device needed.
#include "gpu/cuda_arena_kind.h"

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using absl::StatusCode;
using ::kvkeep::testing::StatusIs;

constexpr CudaVmmSupport kFull{true, true, true};

TEST(CudaArenaKindTest, FlagValuesParseAndNameThemselves) {
  for (CudaArenaKind kind : {CudaArenaKind::kAuto, CudaArenaKind::kVmm, CudaArenaKind::kIpc}) {
    ASSERT_OK_AND_ASSIGN(CudaArenaKind back, ParseCudaArenaKind(CudaArenaKindName(kind)));
    EXPECT_EQ(back, kind) << CudaArenaKindName(kind);
  }
  EXPECT_EQ(CudaArenaKindName(CudaArenaKind::kVmm), "vmm");
  EXPECT_THAT(ParseCudaArenaKind("VMM"), StatusIs(StatusCode::kInvalidArgument, "\"VMM\""));
  EXPECT_THAT(ParseCudaArenaKind(""), StatusIs(StatusCode::kInvalidArgument, "auto, vmm or ipc"));
  EXPECT_THAT(ParseCudaArenaKind("cuda_ipc"), StatusIs(StatusCode::kInvalidArgument));
}

TEST(CudaArenaKindTest, AutoPicksVmmOnlyWhenEverythingIsThere) {
  ASSERT_OK_AND_ASSIGN(CudaArenaChoice full,
                       ChooseCudaArenaExport(CudaArenaKind::kAuto, kFull, 0));
  EXPECT_EQ(full.kind, ArenaExportKind::kCudaVmmFd);
  EXPECT_NE(full.why.find("CUDA_VMM_FD"), std::string::npos) << full.why;
  // Each missing piece alone sends auto to the cudaIpc fallback, and the reason names it.
  const struct {
    CudaVmmSupport support;
    const char* named;
  } cases[] = {
      {{false, true, true}, "entry points"},
      {{true, false, true}, "CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED"},
      {{true, true, false}, "CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED"},
  };
  for (const auto& c : cases) {
    ASSERT_OK_AND_ASSIGN(CudaArenaChoice choice,
                         ChooseCudaArenaExport(CudaArenaKind::kAuto, c.support, 1));
    EXPECT_EQ(choice.kind, ArenaExportKind::kCudaIpc) << c.named;
    EXPECT_NE(choice.why.find("CUDA_IPC"), std::string::npos) << choice.why;
    EXPECT_NE(choice.why.find(c.named), std::string::npos) << choice.why;
  }
}

TEST(CudaArenaKindTest, ForcedVmmOnAnUnsupportedDeviceIsAClearError) {
  const CudaVmmSupport no_fd{true, true, false};
  EXPECT_THAT(ChooseCudaArenaExport(CudaArenaKind::kVmm, no_fd, 3),
              StatusIs(StatusCode::kFailedPrecondition, "--cuda_arena_kind=vmm: cuda:3"));
  EXPECT_THAT(ChooseCudaArenaExport(CudaArenaKind::kVmm, no_fd, 3),
              StatusIs(StatusCode::kFailedPrecondition, "POSIX_FILE_DESCRIPTOR_SUPPORTED is 0"));
  EXPECT_THAT(ChooseCudaArenaExport(CudaArenaKind::kVmm, CudaVmmSupport{}, 0),
              StatusIs(StatusCode::kFailedPrecondition, "use --cuda_arena_kind=auto or ipc"));
  ASSERT_OK_AND_ASSIGN(CudaArenaChoice vmm, ChooseCudaArenaExport(CudaArenaKind::kVmm, kFull, 0));
  EXPECT_EQ(vmm.kind, ArenaExportKind::kCudaVmmFd);
}

TEST(CudaArenaKindTest, IpcIsTakenWhenAskedEvenWhereVmmWorks) {
  for (const CudaVmmSupport& support : {kFull, CudaVmmSupport{}}) {
    ASSERT_OK_AND_ASSIGN(CudaArenaChoice ipc,
                         ChooseCudaArenaExport(CudaArenaKind::kIpc, support, 0));
    EXPECT_EQ(ipc.kind, ArenaExportKind::kCudaIpc);
    EXPECT_NE(ipc.why.find("--cuda_arena_kind=ipc"), std::string::npos) << ipc.why;
  }
}

}  // namespace
}  // namespace kvkeep
