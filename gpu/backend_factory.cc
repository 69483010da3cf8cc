// The only file that knows whether the CUDA backend was compiled in.
#include "gpu/backend.h"

#include "gpu/cpu/cpu_backend.h"

namespace kvkeep {

absl::StatusOr<BackendKind> ParseBackendKind(const std::string& name) {
  if (name == "auto") return BackendKind::kAuto;
  if (name == "cpu") return BackendKind::kCpu;
  if (name == "cuda") return BackendKind::kCuda;
  return absl::InvalidArgumentError("unknown backend \"" + name + "\"; use auto, cpu or cuda");
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(const BackendOptions& options) {
  switch (options.kind) {
    case BackendKind::kCuda:
      return absl::UnimplementedError(
          "this kvkeepd was built without the CUDA backend; rebuild with nvcc available "
          "(KVKEEP_ENABLE_CUDA=ON) or use --backend=cpu");
    case BackendKind::kAuto:
    case BackendKind::kCpu:
      return CreateCpuBackend(options);
  }
  return absl::InvalidArgumentError("unknown backend kind");
}

}  // namespace kvkeep
