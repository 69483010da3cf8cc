#include "gpu/cuda/cuda_backend.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "gpu/batch_copy_plan.h"
#include "gpu/cuda/batch_copy.cuh"
#include "gpu/cuda/cuda_devices.h"
#include "gpu/cuda/cuda_driver_api.h"
#include "gpu/cuda/cuda_status.h"
#include "gpu/cuda/cuda_vmm.h"
#include "gpu/cuda/scoring/cuda_layer_scorer.h"
#include "gpu/cuda_arena_kind.h"

namespace kvkeep {
namespace {

// Streams (each with its staging buffers) that may exist at once; callers past it wait.
constexpr int kMaxStreamSlots = 8;
// Bytes of one pinned staging half; a slot has two so the host copy of one chunk overlaps the DMA
// of the previous one.
constexpr std::size_t kStagingBytes = std::size_t{4} << 20;
// Scratch offsets of a staged batch are rounded up to this, so staging keeps 16-byte alignment.
constexpr std::size_t kScratchAlign = 16;

class CudaBackend;

// One arena of device memory on the backend's device, an ordinary device pointer in this process
// whichever way it was allocated (CudaIpcArena or CudaVmmArena below).
class CudaArena : public Arena {
 public:
  CudaArena(const CudaBackend* owner, ArenaHandle handle, uint8_t* data)
      : owner_(owner), handle_(std::move(handle)), data_(data) {}
  const ArenaHandle& handle() const override { return handle_; }
  uint8_t* data() const { return data_; }
  const CudaBackend* owner() const { return owner_; }

 private:
  const CudaBackend* const owner_;
  const ArenaHandle handle_;
  uint8_t* const data_;
};

// A cudaMalloc'd arena (CUDA_IPC), freed with cudaFree on destruction. The driver documents
// cudaFree before an importer's cudaIpcCloseMemHandle as undefined behaviour: the page pool frees
// an arena only when no page of it is allocated (docs/architecture.md, "CUDA backend").
class CudaIpcArena final : public CudaArena {
 public:
  using CudaArena::CudaArena;
  ~CudaIpcArena() override {
    ScopedCudaDevice on(handle().device_ordinal);
    const cudaError_t err = on.status().ok() ? cudaFree(data()) : cudaErrorInvalidDevice;
    if (err != cudaSuccess) {
      std::fprintf(stderr, "kvkeepd: cudaFree of a %zu-byte arena on cuda:%d failed: %s\n",
                   handle().size_bytes, handle().device_ordinal, cudaGetErrorString(err));
    }
  }
};

// A cuMemCreate arena (CUDA_VMM_FD) exported as a POSIX fd (gpu/cuda/cuda_vmm.h). Dropping it
// while workers map it is safe: the memory goes when the last mapping does.
class CudaVmmArena final : public CudaArena {
 public:
  CudaVmmArena(const CudaBackend* owner, ArenaHandle handle,
               std::unique_ptr<CudaVmmAllocation> allocation)
      : CudaArena(owner, std::move(handle), allocation->data()),
        allocation_(std::move(allocation)) {}
  ~CudaVmmArena() override {
    ScopedCudaDevice on(handle().device_ordinal);
    allocation_.reset();
  }
  int export_fd() const override { return allocation_->export_fd(); }

 private:
  std::unique_ptr<CudaVmmAllocation> allocation_;
};

// A stream with the buffers one call needs. Idle (nothing enqueued) whenever it is in the free
// list: every call synchronizes its stream before handing the slot back.
struct StreamSlot {
  cudaStream_t stream = nullptr;
  cudaEvent_t ready[2] = {nullptr, nullptr};  // recorded after the copy that used staging[i]
  uint8_t* staging[2] = {nullptr, nullptr};   // pinned host memory, kStagingBytes each
  BatchCopyOp* host_ops = nullptr;            // pinned; grows to the largest batch seen
  std::size_t host_ops_capacity = 0;
  BatchCopyOp* device_ops = nullptr;          // device copy of host_ops
  std::size_t device_ops_capacity = 0;
};

void DestroySlot(StreamSlot& s) {
  // Teardown: errors are not actionable here (a failed free leaks until the process exits).
  if (s.stream != nullptr) (void)cudaStreamSynchronize(s.stream);
  for (int i = 0; i < 2; ++i) {
    if (s.ready[i] != nullptr) (void)cudaEventDestroy(s.ready[i]);
    if (s.staging[i] != nullptr) (void)cudaFreeHost(s.staging[i]);
  }
  if (s.host_ops != nullptr) (void)cudaFreeHost(s.host_ops);
  if (s.device_ops != nullptr) (void)cudaFree(s.device_ops);
  if (s.stream != nullptr) (void)cudaStreamDestroy(s.stream);
  s = StreamSlot();
}

absl::Status InitSlot(StreamSlot& s) {
  RETURN_IF_ERROR(CudaStatus(cudaStreamCreateWithFlags(&s.stream, cudaStreamNonBlocking),
                             "cudaStreamCreateWithFlags"));
  for (int i = 0; i < 2; ++i) {
    RETURN_IF_ERROR(CudaStatus(cudaEventCreateWithFlags(&s.ready[i], cudaEventDisableTiming),
                               "cudaEventCreateWithFlags"));
    void* p = nullptr;
    RETURN_IF_ERROR(CudaStatus(cudaHostAlloc(&p, kStagingBytes, cudaHostAllocDefault),
                               "cudaHostAlloc of a pinned staging buffer"));
    s.staging[i] = static_cast<uint8_t*>(p);
  }
  return absl::OkStatus();
}

// Makes room for `count` op descriptors on both sides. The slot is idle, so old buffers are free.
absl::Status ReserveOps(StreamSlot& s, std::size_t count) {
  if (count <= s.host_ops_capacity && count <= s.device_ops_capacity) return absl::OkStatus();
  const std::size_t capacity = std::max(count, 2 * s.host_ops_capacity);
  if (s.host_ops != nullptr) RETURN_IF_ERROR(CudaStatus(cudaFreeHost(s.host_ops), "cudaFreeHost"));
  s.host_ops = nullptr;
  s.host_ops_capacity = 0;
  if (s.device_ops != nullptr) RETURN_IF_ERROR(CudaStatus(cudaFree(s.device_ops), "cudaFree"));
  s.device_ops = nullptr;
  s.device_ops_capacity = 0;
  void* host = nullptr;
  RETURN_IF_ERROR(CudaStatus(cudaHostAlloc(&host, capacity * sizeof(BatchCopyOp),
                                           cudaHostAllocDefault),
                             "cudaHostAlloc of copy descriptors"));
  s.host_ops = static_cast<BatchCopyOp*>(host);
  s.host_ops_capacity = capacity;
  void* device = nullptr;
  RETURN_IF_ERROR(CudaStatus(cudaMalloc(&device, capacity * sizeof(BatchCopyOp)),
                             "cudaMalloc of copy descriptors"));
  s.device_ops = static_cast<BatchCopyOp*>(device);
  s.device_ops_capacity = capacity;
  return absl::OkStatus();
}

// Waits for everything enqueued on the slot's stream; returns the first error of `so_far` and the
// wait. Every path that enqueued work ends here, so a slot goes back idle.
absl::Status Settle(StreamSlot& s, absl::Status so_far) {
  absl::Status sync = CudaStatus(cudaStreamSynchronize(s.stream), "cudaStreamSynchronize");
  return so_far.ok() ? sync : so_far;
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int device, std::string uuid, std::string summary, CudaArenaChoice arenas)
      : device_(device), uuid_(std::move(uuid)), summary_(std::move(summary)),
        arena_kind_(arenas.kind), arena_why_(std::move(arenas.why)),
        scorer_(CreateCudaLayerScorer(device)) {}

  ~CudaBackend() override {
    // No call is in flight (the caller's contract), so every slot is idle and in free_.
    if (!CudaStatus(cudaSetDevice(device_), "cudaSetDevice").ok()) return;
    absl::MutexLock lock(&mu_);
    for (auto& slot : slots_) DestroySlot(*slot);
  }

  std::string name() const override { return "cuda"; }
  std::string device() const override {
    return absl::StrCat("cuda:", device_, " ", summary_, "; arenas ", arena_why_);
  }
  int device_ordinal() const override { return device_; }
  // Scoring on this device (gpu/cuda/scoring/); thread-safe, calls serialised.
  DeviceLayerScorer* layer_scorer() override { return scorer_.get(); }

  const void* DeviceAddress(const Arena& arena) const override {
    auto owned = Own(arena);
    return owned.ok() ? (*owned)->data() : nullptr;
  }

  absl::StatusOr<std::unique_ptr<Arena>> CreateArena(std::size_t bytes) override {
    if (bytes == 0) return absl::InvalidArgumentError("arena size must be > 0");
    RETURN_IF_ERROR(UseDevice());
    ArenaHandle handle;
    handle.kind = arena_kind_;
    handle.size_bytes = bytes;
    handle.device_ordinal = device_;
    handle.device_uuid = uuid_;
    std::unique_ptr<CudaArena> arena;
    // Bytes to zero: all a worker can map, so no stale device memory of an earlier allocation
    // (another tenant's) is readable past the export's size.
    std::size_t zero_bytes = bytes;
    if (arena_kind_ == ArenaExportKind::kCudaVmmFd) {
      ASSIGN_OR_RETURN(std::unique_ptr<CudaVmmAllocation> allocation,
                       CudaVmmAllocation::Create(device_, bytes));
      zero_bytes = allocation->allocated_bytes();
      arena = std::make_unique<CudaVmmArena>(this, std::move(handle), std::move(allocation));
    } else {
      ASSIGN_OR_RETURN(arena, CreateIpcArena(std::move(handle)));
    }
    {
      ASSIGN_OR_RETURN(SlotLease lease, Lease());
      RETURN_IF_ERROR(Settle(
          lease.slot(), CudaStatus(cudaMemsetAsync(arena->data(), 0, zero_bytes,
                                                   lease.slot().stream),
                                   "zero-filling the arena")));
    }
    return std::unique_ptr<Arena>(std::move(arena));
  }

  absl::Status Write(Arena& arena, std::size_t offset, const void* src, std::size_t n) override {
    ASSIGN_OR_RETURN(const CudaArena* a, Own(arena));
    if (!RangeInside(a->size(), offset, n)) {
      return absl::OutOfRangeError(absl::StrCat("write of ", n, " bytes at ", offset,
                                                " outside arena of ", a->size(), " bytes"));
    }
    if (n == 0) return absl::OkStatus();
    if (src == nullptr) return absl::InvalidArgumentError("write from a null pointer");
    RETURN_IF_ERROR(UseDevice());
    ASSIGN_OR_RETURN(SlotLease lease, Lease());
    StreamSlot& s = lease.slot();
    const auto* from = static_cast<const uint8_t*>(src);
    absl::Status status;
    std::size_t chunk = 0;
    for (std::size_t done = 0; done < n && status.ok(); done += kStagingBytes, ++chunk) {
      const int half = static_cast<int>(chunk % 2);
      const std::size_t len = std::min(kStagingBytes, n - done);
      // The staging half is free once the DMA two chunks back has finished.
      if (chunk >= 2) {
        status = CudaStatus(cudaEventSynchronize(s.ready[half]), "cudaEventSynchronize");
        if (!status.ok()) break;
      }
      std::memcpy(s.staging[half], from + done, len);
      status = CudaStatus(cudaMemcpyAsync(a->data() + offset + done, s.staging[half], len,
                                          cudaMemcpyHostToDevice, s.stream),
                          "cudaMemcpyAsync host to arena");
      if (status.ok()) {
        status = CudaStatus(cudaEventRecord(s.ready[half], s.stream), "cudaEventRecord");
      }
    }
    return Settle(s, std::move(status));
  }

  absl::Status Read(const Arena& arena, std::size_t offset, void* dst,
                    std::size_t n) const override {
    ASSIGN_OR_RETURN(const CudaArena* a, Own(arena));
    if (!RangeInside(a->size(), offset, n)) {
      return absl::OutOfRangeError(absl::StrCat("read of ", n, " bytes at ", offset,
                                                " outside arena of ", a->size(), " bytes"));
    }
    if (n == 0) return absl::OkStatus();
    if (dst == nullptr) return absl::InvalidArgumentError("read into a null pointer");
    RETURN_IF_ERROR(UseDevice());
    ASSIGN_OR_RETURN(SlotLease lease, Lease());
    StreamSlot& s = lease.slot();
    auto* to = static_cast<uint8_t*>(dst);
    // The chunk whose DMA into staging[half] is in flight, copied out before the half is reused.
    struct Pending {
      bool active = false;
      std::size_t done = 0;
      std::size_t len = 0;
    } pending[2];
    auto drain = [&](int half) -> absl::Status {
      if (!pending[half].active) return absl::OkStatus();
      RETURN_IF_ERROR(CudaStatus(cudaEventSynchronize(s.ready[half]), "cudaEventSynchronize"));
      std::memcpy(to + pending[half].done, s.staging[half], pending[half].len);
      pending[half].active = false;
      return absl::OkStatus();
    };
    absl::Status status;
    std::size_t chunk = 0;
    for (std::size_t done = 0; done < n && status.ok(); done += kStagingBytes, ++chunk) {
      const int half = static_cast<int>(chunk % 2);
      const std::size_t len = std::min(kStagingBytes, n - done);
      status = drain(half);
      if (!status.ok()) break;
      status = CudaStatus(cudaMemcpyAsync(s.staging[half], a->data() + offset + done, len,
                                          cudaMemcpyDeviceToHost, s.stream),
                          "cudaMemcpyAsync arena to host");
      if (status.ok()) {
        status = CudaStatus(cudaEventRecord(s.ready[half], s.stream), "cudaEventRecord");
      }
      if (status.ok()) pending[half] = {true, done, len};
    }
    // Finish in chunk order (the older half first); either order gives the same bytes.
    for (std::size_t k = 0; k < 2 && status.ok(); ++k) status = drain(static_cast<int>((chunk + k) % 2));
    return Settle(s, std::move(status));
  }

  absl::Status Copy(const Arena& src, std::size_t src_offset, Arena& dst, std::size_t dst_offset,
                    std::size_t n) override {
    const CopyOp op{&src, src_offset, &dst, dst_offset, n};
    ASSIGN_OR_RETURN(const CudaArena* from, Own(src));
    ASSIGN_OR_RETURN(const CudaArena* to, Own(dst));
    if (!RangeInside(from->size(), src_offset, n) || !RangeInside(to->size(), dst_offset, n)) {
      return absl::OutOfRangeError(absl::StrCat("copy of ", n, " bytes from ", src_offset, " to ",
                                                dst_offset, " outside arenas of ", from->size(),
                                                " and ", to->size(), " bytes"));
    }
    if (n == 0) return absl::OkStatus();
    const bool overlap = from == to && src_offset < dst_offset + n && dst_offset < src_offset + n;
    // Overlapping ranges need the staged kernel path (cudaMemcpy does not promise memmove).
    if (overlap) return CopyBatch(absl::MakeConstSpan(&op, 1));
    // Disjoint: one DMA, no descriptor upload or kernel launch.
    RETURN_IF_ERROR(UseDevice());
    ASSIGN_OR_RETURN(SlotLease lease, Lease());
    StreamSlot& s = lease.slot();
    return Settle(s, CudaStatus(cudaMemcpyAsync(to->data() + dst_offset, from->data() + src_offset, n,
                                                cudaMemcpyDeviceToDevice, s.stream),
                                "cudaMemcpyAsync arena to arena"));
  }

  absl::Status CopyBatch(absl::Span<const CopyOp> ops) override {
    for (std::size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].src != nullptr) RETURN_IF_ERROR(Own(*ops[i].src).status());
      if (ops[i].dst != nullptr) RETURN_IF_ERROR(Own(*ops[i].dst).status());
    }
    bool staged = false;
    RETURN_IF_ERROR(CheckCopyBatch(ops, &staged));
    if (ops.size() > UINT32_MAX) {
      return absl::InvalidArgumentError(absl::StrCat("copy batch of ", ops.size(),
                                                     " ops; at most ", UINT32_MAX));
    }
    // Device addresses of every non-empty move (ranges were checked above).
    std::vector<BatchCopyOp> moves;
    moves.reserve(ops.size());
    for (const CopyOp& op : ops) {
      if (op.n == 0) continue;
      const uint8_t* from = static_cast<const CudaArena*>(op.src)->data() + op.src_offset;
      uint8_t* to = static_cast<const CudaArena*>(op.dst)->data() + op.dst_offset;
      moves.push_back({from, to, op.n, 0});
    }
    if (moves.empty()) return absl::OkStatus();
    RETURN_IF_ERROR(UseDevice());
    ASSIGN_OR_RETURN(SlotLease lease, Lease());
    StreamSlot& s = lease.slot();
    if (!staged) {
      // One launch: no move reads bytes another move writes.
      const BatchCopyPlan plan = PlanBatchCopy(moves);
      RETURN_IF_ERROR(ReserveOps(s, moves.size()));
      std::memcpy(s.host_ops, moves.data(), moves.size() * sizeof(BatchCopyOp));
      absl::Status status = CudaStatus(
          cudaMemcpyAsync(s.device_ops, s.host_ops, moves.size() * sizeof(BatchCopyOp),
                          cudaMemcpyHostToDevice, s.stream),
          "cudaMemcpyAsync of copy descriptors");
      if (status.ok()) {
        status = CudaStatus(
            LaunchBatchCopy({s.device_ops, plan.num_ops, plan.num_chunks, plan.alignment},
                            s.stream),
            "batch copy kernel");
      }
      return Settle(s, std::move(status));
    }
    // Some source overlaps some destination: gather every source into stream-ordered scratch,
    // then scatter to the destinations (two launches on one stream, no host wait between).
    std::size_t scratch_bytes = 0;
    std::vector<std::size_t> at(moves.size());
    for (std::size_t i = 0; i < moves.size(); ++i) {
      at[i] = scratch_bytes;
      const std::size_t padded = (moves[i].bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
      if (padded < moves[i].bytes || padded > SIZE_MAX - scratch_bytes) {
        return absl::ResourceExhaustedError("copy batch too large to stage");
      }
      scratch_bytes += padded;
    }
    void* scratch_raw = nullptr;
    RETURN_IF_ERROR(CudaStatus(cudaMallocAsync(&scratch_raw, scratch_bytes, s.stream),
                               absl::StrCat("cudaMallocAsync of ", scratch_bytes,
                                            " scratch bytes for an overlapping copy batch")));
    auto* scratch = static_cast<uint8_t*>(scratch_raw);
    std::vector<BatchCopyOp> gather(moves.size());
    std::vector<BatchCopyOp> scatter(moves.size());
    for (std::size_t i = 0; i < moves.size(); ++i) {
      gather[i] = {moves[i].src, scratch + at[i], moves[i].bytes, 0};
      scatter[i] = {scratch + at[i], moves[i].dst, moves[i].bytes, 0};
    }
    const BatchCopyPlan gather_plan = PlanBatchCopy(gather);
    const BatchCopyPlan scatter_plan = PlanBatchCopy(scatter);
    absl::Status status = ReserveOps(s, gather.size() + scatter.size());
    if (status.ok()) {
      std::memcpy(s.host_ops, gather.data(), gather.size() * sizeof(BatchCopyOp));
      std::memcpy(s.host_ops + gather.size(), scatter.data(), scatter.size() * sizeof(BatchCopyOp));
      status = CudaStatus(cudaMemcpyAsync(s.device_ops, s.host_ops,
                                          (gather.size() + scatter.size()) * sizeof(BatchCopyOp),
                                          cudaMemcpyHostToDevice, s.stream),
                          "cudaMemcpyAsync of copy descriptors");
    }
    if (status.ok()) {
      status = CudaStatus(LaunchBatchCopy({s.device_ops, gather_plan.num_ops,
                                           gather_plan.num_chunks, gather_plan.alignment},
                                          s.stream),
                          "batch copy kernel (gather)");
    }
    if (status.ok()) {
      status = CudaStatus(LaunchBatchCopy({s.device_ops + gather.size(), scatter_plan.num_ops,
                                           scatter_plan.num_chunks, scatter_plan.alignment},
                                          s.stream),
                          "batch copy kernel (scatter)");
    }
    absl::Status freed = CudaStatus(cudaFreeAsync(scratch, s.stream), "cudaFreeAsync of scratch");
    if (status.ok()) status = std::move(freed);
    return Settle(s, std::move(status));
  }

 private:
  // A leased slot, handed back (idle) on destruction.
  class SlotLease {
   public:
    SlotLease(const CudaBackend* backend, StreamSlot* slot) : backend_(backend), slot_(slot) {}
    SlotLease(SlotLease&& other) noexcept
        : backend_(other.backend_), slot_(std::exchange(other.slot_, nullptr)) {}
    SlotLease& operator=(SlotLease&&) = delete;
    SlotLease(const SlotLease&) = delete;
    ~SlotLease() {
      if (slot_ != nullptr) backend_->Return(slot_);
    }
    StreamSlot& slot() const { return *slot_; }

   private:
    const CudaBackend* backend_;
    StreamSlot* slot_;
  };

  // A cudaMalloc'd arena of handle.size_bytes with its cudaIpc handle filled in (not zeroed yet).
  absl::StatusOr<std::unique_ptr<CudaArena>> CreateIpcArena(ArenaHandle handle) const {
    const std::size_t bytes = handle.size_bytes;
    void* p = nullptr;
    RETURN_IF_ERROR(CudaStatus(cudaMalloc(&p, bytes), absl::StrCat("cudaMalloc of a ", bytes,
                                                                   "-byte arena on cuda:", device_)));
    // Owned from here: an error below frees it.
    auto free_on_error = std::unique_ptr<void, void (*)(void*)>(p, [](void* q) {
      (void)cudaFree(q);
    });
    cudaIpcMemHandle_t ipc;
    RETURN_IF_ERROR(CudaStatus(cudaIpcGetMemHandle(&ipc, p), "cudaIpcGetMemHandle"));
    handle.handle.assign(ipc.reserved, sizeof(ipc.reserved));
    return std::unique_ptr<CudaArena>(std::make_unique<CudaIpcArena>(
        this, std::move(handle), static_cast<uint8_t*>(free_on_error.release())));
  }

  absl::StatusOr<const CudaArena*> Own(const Arena& arena) const {
    auto* a = dynamic_cast<const CudaArena*>(&arena);
    if (a == nullptr || a->owner() != this) {
      return absl::InvalidArgumentError(
          absl::StrCat("arena does not belong to this cuda backend (cuda:", device_, ")"));
    }
    return a;
  }

  // The runtime's current device is per thread; calls come from any thread.
  absl::Status UseDevice() const {
    return CudaStatus(cudaSetDevice(device_), absl::StrCat("cudaSetDevice(", device_, ")"));
  }

  absl::StatusOr<SlotLease> Lease() const {
    {
      absl::MutexLock lock(&mu_);
      auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return !free_.empty() || created_ < kMaxStreamSlots;
      };
      mu_.Await(absl::Condition(&available));
      if (!free_.empty()) {
        StreamSlot* slot = free_.back();
        free_.pop_back();
        return SlotLease(this, slot);
      }
      ++created_;  // reserved; created outside the lock (stream and pinned allocations are slow)
    }
    auto slot = std::make_unique<StreamSlot>();
    absl::Status status = InitSlot(*slot);
    if (!status.ok()) DestroySlot(*slot);
    absl::MutexLock lock(&mu_);
    if (!status.ok()) {
      --created_;
      return status;
    }
    StreamSlot* raw = slot.get();
    slots_.push_back(std::move(slot));
    return SlotLease(this, raw);
  }

  void Return(StreamSlot* slot) const {
    absl::MutexLock lock(&mu_);
    free_.push_back(slot);
  }

  // Constant after construction.
  const int device_;
  const std::string uuid_;
  const std::string summary_;
  const ArenaExportKind arena_kind_;  // kCudaVmmFd or kCudaIpc (gpu/cuda_arena_kind.h)
  const std::string arena_why_;
  const std::unique_ptr<DeviceLayerScorer> scorer_;

  // The stream slots. Leasing is const: Read() is const and needs a stream like any call.
  mutable absl::Mutex mu_;
  mutable std::vector<std::unique_ptr<StreamSlot>> slots_ ABSL_GUARDED_BY(mu_);  // all created
  mutable std::vector<StreamSlot*> free_ ABSL_GUARDED_BY(mu_);                   // idle ones
  mutable int created_ ABSL_GUARDED_BY(mu_) = 0;  // slots_ plus those being created
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options) {
  ASSIGN_OR_RETURN(int count, CudaDeviceCount());
  if (options.cuda_device < 0 || options.cuda_device >= count) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--cuda_device=", options.cuda_device, ": this process sees ", count,
        " CUDA device(s), ordinals 0..", count - 1, " (CUDA_VISIBLE_DEVICES renumbers them)"));
  }
  const int device = options.cuda_device;
  RETURN_IF_ERROR(CudaStatus(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")")));
  int unified = 0;
  RETURN_IF_ERROR(CudaStatus(cudaDeviceGetAttribute(&unified, cudaDevAttrUnifiedAddressing, device),
                             "cudaDeviceGetAttribute(unified addressing)"));
  if (unified == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda:", device, " has no unified addressing; CUDA IPC export needs it"));
  }
  int pools = 0;
  RETURN_IF_ERROR(CudaStatus(
      cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device),
      "cudaDeviceGetAttribute(memory pools)"));
  if (pools == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cuda:", device, " has no stream-ordered allocator (cudaMallocAsync), which compaction "
        "scratch needs"));
  }
  // Creates the primary context now, so a busy or prohibited device fails the start, not a call.
  RETURN_IF_ERROR(CudaStatus(cudaFree(nullptr), absl::StrCat("initializing cuda:", device)));
  ASSIGN_OR_RETURN(std::string uuid, CudaDeviceUuid(device));
  ASSIGN_OR_RETURN(std::string summary, CudaDeviceSummary(device));
  ASSIGN_OR_RETURN(const CudaVmmSupport support, QueryCudaVmmSupport(device));
  ASSIGN_OR_RETURN(CudaArenaChoice arenas,
                   ChooseCudaArenaExport(options.cuda_arena_kind, support, device));
  return std::unique_ptr<Backend>(
      new CudaBackend(device, std::move(uuid), std::move(summary), std::move(arenas)));
}

}  // namespace kvkeep
