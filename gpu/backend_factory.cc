// The only file that knows whether the CUDA backend was compiled in.
#include <cstdio>
#include <string>

#include "gpu/backend.h"
#include "gpu/cpu/cpu_backend.h"

#if defined(KVKEEP_HAVE_CUDA)
#include "gpu/cuda/cuda_backend.h"
#include "gpu/cuda/cuda_devices.h"
#endif

namespace kvkeep {

absl::StatusOr<BackendKind> ParseBackendKind(const std::string& name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError("unknown backend \"" + name + "\"; use auto, cpu or cuda");
}

bool CudaBackendCompiled() {
#if defined(KVKEEP_HAVE_CUDA)
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options,
                                                       std::string* fallback_reason) {
  auto fall_back = [&](const std::string& why) {
    if (fallback_reason != nullptr) {
      *fallback_reason = why;
    } else {
      std::fprintf(stderr, "kvkeep: backend auto: using cpu (%s)\n", why.c_str());
    }
    return CreateCpuBackend(options);
  };
  switch (options.kind) {
    case BackendKind::kCuda:
#if defined(KVKEEP_HAVE_CUDA)
      return CreateCudaBackend(options);
#else
      return absl::UnimplementedError(
          "this kvkeepd was built without the CUDA backend; rebuild with nvcc available "
          "(KVKEEP_ENABLE_CUDA=ON) or use --backend=cpu");
#endif
    case BackendKind::kAuto: {
#if defined(KVKEEP_HAVE_CUDA)
      auto cuda = CreateCudaBackend(options);
      // A bad --cuda_device is the operator's mistake, not a missing device: say so. So is
      // --cuda_arena_kind=vmm on a device that cannot: a present device is not silently traded
      // for host memory.
      if (cuda.ok() || absl::IsInvalidArgument(cuda.status())) return cuda;
      if (options.cuda_arena_kind == CudaArenaKind::kVmm && CudaDeviceCount().ok()) return cuda;
      return fall_back("cuda unavailable: " + std::string(cuda.status().message()));
#else
      return fall_back("built without CUDA");
#endif
    }
    case BackendKind::kCpu:
      return CreateCpuBackend(options);
  }
  return absl::InvalidArgumentError("unknown backend kind");
}

int RemoveStaleArenas(const BackendOptions& options) {
  const std::string& prefix = options.shm_prefix;
  if (prefix.empty() || prefix.find('/') != std::string::npos) return 0;
  // The CUDA backend leaves nothing behind a dead process; the host backend's objects outlive it.
  return RemoveStaleArenas(prefix);
}

}  // namespace kvkeep
