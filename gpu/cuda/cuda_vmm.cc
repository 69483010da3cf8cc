#include "gpu/cuda/cuda_vmm.h"

#include <unistd.h>

#include <cstdint>
#include <cstdio>

#include "absl/base/const_init.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "gpu/cuda/cuda_driver_api.h"

namespace kvkeep {

namespace {

// The properties of every kvkeep arena allocation on device `device` (both sides compute the
// granularity from the same properties, so they round sizes alike).
CUmemAllocationProp ArenaProperties(CUdevice device) {
  CUmemAllocationProp prop = {};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = device;
  prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  return prop;
}

struct DeviceAndGranularity {
  CUdevice device = 0;
  CUmemAllocationProp prop = {};
  std::size_t granularity = 0;
};

absl::StatusOr<DeviceAndGranularity> Describe(const CudaDriverApi& cu, int ordinal) {
  DeviceAndGranularity d;
  RETURN_IF_ERROR(CuStatus(cu.device_get(&d.device, ordinal),
                           absl::StrCat("cuDeviceGet(", ordinal, ")")));
  d.prop = ArenaProperties(d.device);
  RETURN_IF_ERROR(CuStatus(
      cu.mem_get_allocation_granularity(&d.granularity, &d.prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM),
      absl::StrCat("cuMemGetAllocationGranularity on cuda:", ordinal)));
  if (d.granularity == 0) {
    return absl::InternalError("cuMemGetAllocationGranularity answered 0");
  }
  return d;
}

// `bytes` rounded up to a multiple of `granularity`; OUT_OF_RANGE on overflow.
absl::StatusOr<std::size_t> RoundUp(std::size_t bytes, std::size_t granularity) {
  const std::size_t extra = (granularity - bytes % granularity) % granularity;
  if (bytes > SIZE_MAX - extra) {
    return absl::OutOfRangeError(absl::StrCat(bytes, " bytes cannot be rounded to ", granularity));
  }
  return bytes + extra;
}

// Import, map and release run one at a time in a process: the driver does not promise distinct
// handles for two imports of one allocation ("no guarantee that the contents of handle will be
// the same"), and each import's handle is released right after it is mapped.
ABSL_CONST_INIT absl::Mutex import_mu(absl::kConstInit);

}  // namespace

class CudaVmmRange {
 public:
  // Reserves `bytes` of address space aligned to `alignment` and maps `handle` on it, not yet
  // accessible (SetAccess does that). Undoes what it did on failure.
  static absl::StatusOr<std::unique_ptr<CudaVmmRange>> Map(const CudaDriverApi& cu,
                                                           CUmemGenericAllocationHandle handle,
                                                           std::size_t bytes,
                                                           std::size_t alignment) {
    auto range = std::unique_ptr<CudaVmmRange>(new CudaVmmRange(cu, bytes));
    RETURN_IF_ERROR(CuStatus(cu.mem_address_reserve(&range->base_, bytes, alignment, 0, 0),
                             absl::StrCat("cuMemAddressReserve of ", bytes, " bytes")));
    RETURN_IF_ERROR(CuStatus(cu.mem_map(range->base_, bytes, 0, handle, 0),
                             absl::StrCat("cuMemMap of ", bytes, " bytes")));
    range->mapped_ = true;
    return range;
  }

  ~CudaVmmRange() {
    if (mapped_) Report(cu_.mem_unmap(base_, bytes_), "cuMemUnmap");
    if (base_ != 0) Report(cu_.mem_address_free(base_, bytes_), "cuMemAddressFree");
  }

  absl::Status SetAccess(CUdevice device, CUmemAccess_flags access) {
    CUmemAccessDesc desc = {};
    desc.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    desc.location.id = device;
    desc.flags = access;
    return CuStatus(cu_.mem_set_access(base_, bytes_, &desc, 1), "cuMemSetAccess");
  }

  // The access `device` has to the range, as the driver reports it.
  absl::StatusOr<unsigned long long> Access(CUdevice device) const {
    CUmemLocation location = {};
    location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    location.id = device;
    unsigned long long flags = 0;
    RETURN_IF_ERROR(CuStatus(cu_.mem_get_access(&flags, &location, base_), "cuMemGetAccess"));
    return flags;
  }

  uint8_t* data() const { return reinterpret_cast<uint8_t*>(static_cast<uintptr_t>(base_)); }
  std::size_t bytes() const { return bytes_; }

 private:
  CudaVmmRange(const CudaDriverApi& cu, std::size_t bytes) : cu_(cu), bytes_(bytes) {}

  // Teardown: a failure is not actionable (the range leaks until the process exits).
  void Report(CUresult result, const char* what) const {
    if (result != CUDA_SUCCESS) {
      std::fprintf(stderr, "kvkeep: %s of a %zu-byte CUDA arena mapping failed: %s\n", what,
                   bytes_, CuStatus(result, what).ToString().c_str());
    }
  }

  const CudaDriverApi& cu_;
  const std::size_t bytes_;
  CUdeviceptr base_ = 0;
  bool mapped_ = false;
};

absl::StatusOr<std::unique_ptr<CudaVmmAllocation>> CudaVmmAllocation::Create(int ordinal,
                                                                             std::size_t bytes) {
  if (bytes == 0) return absl::InvalidArgumentError("arena size must be > 0");
  ASSIGN_OR_RETURN(const CudaDriverApi* cu, CudaDriver());
  ASSIGN_OR_RETURN(DeviceAndGranularity d, Describe(*cu, ordinal));
  ASSIGN_OR_RETURN(const std::size_t size, RoundUp(bytes, d.granularity));
  // Owned from here: the destructor undoes whatever was done when a step below fails.
  auto alloc = std::unique_ptr<CudaVmmAllocation>(new CudaVmmAllocation());
  CUmemGenericAllocationHandle handle = 0;
  RETURN_IF_ERROR(CuStatus(cu->mem_create(&handle, size, &d.prop, 0),
                           absl::StrCat("cuMemCreate of a ", size, "-byte arena on cuda:",
                                        ordinal)));
  alloc->handle_ = handle;
  int fd = -1;
  RETURN_IF_ERROR(CuStatus(
      cu->mem_export_to_shareable_handle(&fd, handle, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
      "cuMemExportToShareableHandle(POSIX_FILE_DESCRIPTOR)"));
  alloc->export_fd_ = fd;
  ASSIGN_OR_RETURN(alloc->range_, CudaVmmRange::Map(*cu, handle, size, d.granularity));
  RETURN_IF_ERROR(alloc->range_->SetAccess(d.device, CU_MEM_ACCESS_FLAGS_PROT_READWRITE));
  return alloc;
}

CudaVmmAllocation::~CudaVmmAllocation() {
  range_.reset();  // unmap before the handle goes
  auto cu = CudaDriver();
  if (handle_ != 0 && cu.ok()) {
    const CUresult released = (*cu)->mem_release(handle_);
    if (released != CUDA_SUCCESS) {
      std::fprintf(stderr, "kvkeep: cuMemRelease of a CUDA arena failed: %s\n",
                   CuStatus(released, "cuMemRelease").ToString().c_str());
    }
  }
  if (export_fd_ >= 0) close(export_fd_);
}

uint8_t* CudaVmmAllocation::data() const { return range_->data(); }
std::size_t CudaVmmAllocation::allocated_bytes() const { return range_->bytes(); }

absl::StatusOr<std::unique_ptr<CudaVmmImport>> CudaVmmImport::Map(int fd, int ordinal,
                                                                 std::size_t bytes,
                                                                 bool read_only) {
  if (fd < 0) return absl::InvalidArgumentError("no file descriptor to import");
  if (bytes == 0) return absl::InvalidArgumentError("cannot map 0 bytes");
  ASSIGN_OR_RETURN(const CudaDriverApi* cu, CudaDriver());
  ASSIGN_OR_RETURN(DeviceAndGranularity d, Describe(*cu, ordinal));
  ASSIGN_OR_RETURN(const std::size_t size, RoundUp(bytes, d.granularity));
  auto import = std::unique_ptr<CudaVmmImport>(new CudaVmmImport());
  absl::MutexLock lock(&import_mu);
  CUmemGenericAllocationHandle handle = 0;
  RETURN_IF_ERROR(CuStatus(
      cu->mem_import_from_shareable_handle(&handle, reinterpret_cast<void*>(
                                                        static_cast<uintptr_t>(fd)),
                                           CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
      "cuMemImportFromShareableHandle"));
  auto mapped = CudaVmmRange::Map(*cu, handle, size, d.granularity);
  // The mapping (if any) now holds the allocation; the import's handle is not needed.
  const absl::Status released = CuStatus(cu->mem_release(handle), "cuMemRelease of the import");
  if (!mapped.ok()) {
    return absl::Status(mapped.status().code(),
                        absl::StrCat(mapped.status().message(), " (mapping ", size,
                                     " bytes of an imported arena; is the export's size right?)"));
  }
  RETURN_IF_ERROR(released);
  import->range_ = *std::move(mapped);
  // A sharing group's arena is mapped with read access only. A driver that refuses read-only
  // device access gets read-write instead (device_read_only() says so; the client still refuses
  // writes through its API): the daemon cannot make a CUDA fd read-only as it does a memfd.
  absl::Status access_set = absl::UnknownError("not tried");
  if (read_only) access_set = import->range_->SetAccess(d.device, CU_MEM_ACCESS_FLAGS_PROT_READ);
  if (!access_set.ok()) {
    RETURN_IF_ERROR(import->range_->SetAccess(d.device, CU_MEM_ACCESS_FLAGS_PROT_READWRITE));
  }
  ASSIGN_OR_RETURN(const unsigned long long access, import->range_->Access(d.device));
  constexpr auto kRead = static_cast<unsigned long long>(CU_MEM_ACCESS_FLAGS_PROT_READ);
  constexpr auto kReadWrite = static_cast<unsigned long long>(CU_MEM_ACCESS_FLAGS_PROT_READWRITE);
  import->device_read_only_ = access == kRead;
  if (!read_only && access != kReadWrite) {
    return absl::InternalError(absl::StrCat("cuMemGetAccess answers ", access,
                                            " for a mapping set read-write"));
  }
  return import;
}

CudaVmmImport::~CudaVmmImport() = default;

uint8_t* CudaVmmImport::data() const { return range_->data(); }
std::size_t CudaVmmImport::mapped_bytes() const { return range_->bytes(); }

}  // namespace kvkeep
