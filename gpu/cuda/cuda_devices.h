// CUDA devices of this process: how many, their UUIDs, finding one by UUID, and a scoped
// current-device switch. Used by the CUDA backend (daemon) and the client's CUDA_IPC mapping
// (worker).
//
//   ASSIGN_OR_RETURN(int count, CudaDeviceCount());          // FAILED_PRECONDITION when none
//   ASSIGN_OR_RETURN(int ordinal, FindCudaDeviceByUuid(export.device_uuid()));
//   ScopedCudaDevice on(ordinal);                            // restores the caller's device
//   RETURN_IF_ERROR(on.status());
#ifndef KVKEEP_GPU_CUDA_CUDA_DEVICES_H_
#define KVKEEP_GPU_CUDA_CUDA_DEVICES_H_

#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"

struct CUctx_st;  // the driver's context (CUcontext), without including cuda.h here

namespace kvkeep {

// Devices visible to this process (> 0). FAILED_PRECONDITION "no CUDA device ..." with the CUDA
// error when the runtime finds no driver or no device.
absl::StatusOr<int> CudaDeviceCount();

// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" of device `ordinal`.
absl::StatusOr<std::string> CudaDeviceUuid(int ordinal);

// "<name> (<uuid>), compute capability <major>.<minor>, <MiB> MiB" of device `ordinal`.
absl::StatusOr<std::string> CudaDeviceSummary(int ordinal);

// The ordinal of the local device with this UUID. INVALID_ARGUMENT for a malformed UUID,
// NOT_FOUND when no visible device has it, FAILED_PRECONDITION when there is no device at all.
absl::StatusOr<int> FindCudaDeviceByUuid(absl::string_view uuid);

// Makes `ordinal` the calling thread's current device until destruction, then restores the
// thread's previous context (an inference worker's threads keep their own device). A thread that
// had no context at all is left on `ordinal`: restoring "device 0" there would create a context on
// GPU 0 that the process never asked for. Not copyable.
class ScopedCudaDevice {
 public:
  explicit ScopedCudaDevice(int ordinal);
  ~ScopedCudaDevice();
  ScopedCudaDevice(const ScopedCudaDevice&) = delete;
  ScopedCudaDevice& operator=(const ScopedCudaDevice&) = delete;
  // OK when the switch happened.
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = -1;
  // The driver's current context at construction (CUcontext; nullptr = none), when the driver
  // told us; then it, not `previous_`, is what the destructor restores.
  bool has_previous_context_ = false;
  ::CUctx_st* previous_context_ = nullptr;
  absl::Status status_;
};

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_CUDA_DEVICES_H_
