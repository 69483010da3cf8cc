#include "gpu/gpu_uuid.h"

#include "gtest/gtest.h"

namespace kvkeep {
namespace {

TEST(GpuUuidTest, FormatsLikeNvidiaSmi) {
  const unsigned char bytes[16] = {0x8d, 0x0f, 0x4c, 0x2e, 0x01, 0x9a, 0xff, 0x00,
                                   0x10, 0x20, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45};
  EXPECT_EQ(FormatGpuUuid(reinterpret_cast<const char*>(bytes)),
            "GPU-8d0f4c2e-019a-ff00-1020-abcdef012345");
}

TEST(GpuUuidTest, AcceptsOnlyTheNvidiaSmiForm) {
  EXPECT_TRUE(IsGpuUuid("GPU-8d0f4c2e-019a-ff00-1020-abcdef012345"));
  EXPECT_TRUE(IsGpuUuid("GPU-8D0F4C2E-019A-FF00-1020-ABCDEF012345"));
  EXPECT_FALSE(IsGpuUuid(""));
  EXPECT_FALSE(IsGpuUuid("8d0f4c2e-019a-ff00-1020-abcdef012345"));       // no prefix
  EXPECT_FALSE(IsGpuUuid("GPU-8d0f4c2e-019a-ff00-1020-abcdef01234"));    // short
  EXPECT_FALSE(IsGpuUuid("GPU-8d0f4c2e-019a-ff00-1020-abcdef0123456"));  // long
  EXPECT_FALSE(IsGpuUuid("GPU-8d0f4c2e0019a-ff00-1020-abcdef012345"));   // dash missing
  EXPECT_FALSE(IsGpuUuid("GPU-8d0f4c2e-019a-ff00-1020-abcdef01234g"));   // not hex
  EXPECT_FALSE(IsGpuUuid("MIG-8d0f4c2e-019a-ff00-1020-abcdef012345"));
}

}  // namespace
}  // namespace kvkeep
