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
// previous one (an inference worker's threads keep their own device). Not copyable.
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
  absl::Status status_;
};

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_CUDA_DEVICES_H_
