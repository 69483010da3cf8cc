// ScopedCudaDevice: what it does without a device (runs everywhere), and, on a machine with two or
// more GPUs, that it never leaves a context on GPU 0 behind on a thread that had none (label gpu).
#include "gpu/cuda/cuda_devices.h"

#include <cuda.h>
#include <cuda_runtime_api.h>
#include <cudaTypedefs.h>

#include <cstdlib>

#include "gtest/gtest.h"

namespace kvkeep {
namespace {

int VisibleDevices() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return count;
}

TEST(ScopedCudaDeviceTest, WithoutADeviceTheSwitchFailsAndUndoesNothing) {
  if (VisibleDevices() > 0) GTEST_SKIP() << "a CUDA device is present";
  {
    ScopedCudaDevice on(0);
    EXPECT_FALSE(on.status().ok());
  }  // the destructor must not crash or touch a device
  ScopedCudaDevice again(3);
  EXPECT_FALSE(again.status().ok());
}

// In a child process (nothing of CUDA initialised yet): a thread that never used CUDA switches to
// device 1 and back; device 0 must have no active primary context afterwards.
TEST(ScopedCudaDeviceTest, ThreadWithoutContextGetsNoContextOnDeviceZero) {
  if (VisibleDevices() < 2) GTEST_SKIP() << "needs two CUDA devices";
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // re-executes: a fresh process for the child
  EXPECT_EXIT(
      {
        {
          ScopedCudaDevice on(1);
          if (!on.status().ok()) std::_Exit(2);
          void* p = nullptr;
          if (cudaMalloc(&p, 256) != cudaSuccess || cudaFree(p) != cudaSuccess) std::_Exit(3);
        }
        void* fn = nullptr;
        cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
        if (cudaGetDriverEntryPointByVersion("cuDevicePrimaryCtxGetState", &fn, 7000,
                                             cudaEnableDefault, &found) != cudaSuccess ||
            found != cudaDriverEntryPointSuccess) {
          std::_Exit(4);
        }
        unsigned int flags = 0;
        int active = 0;
        if (reinterpret_cast<PFN_cuDevicePrimaryCtxGetState_v7000>(fn)(0, &flags, &active) !=
            CUDA_SUCCESS) {
          std::_Exit(5);
        }
        std::_Exit(active != 0 ? 1 : 0);
      },
      ::testing::ExitedWithCode(0), "");
}

}  // namespace
}  // namespace kvkeep
