// The batched copy kernel: many byte moves between device buffers in ONE launch (in-place per-head
// compaction is a batch of token-run moves; CudaBackend::CopyBatch runs it). Chunk arithmetic lives
// in gpu/batch_copy_plan.h, shared with the CPU tests.
//
//   std::vector<BatchCopyOp> ops = ...;               // device src/dst pointers
//   BatchCopyPlan plan = PlanBatchCopy(ops);
//   ... copy ops to device memory `device_ops` ...
//   BatchCopyView view{device_ops, plan.num_ops, plan.num_chunks, plan.alignment};
//   cudaError_t err = LaunchBatchCopy(view, stream);  // asynchronous on `stream`
#ifndef KVKEEP_GPU_CUDA_BATCH_COPY_CUH_
#define KVKEEP_GPU_CUDA_BATCH_COPY_CUH_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "gpu/batch_copy_plan.h"

namespace kvkeep {

// What one launch copies.
//
//   ops:        [num_ops] BatchCopyOp in DEVICE memory, first_chunk ascending; op i owns global
//               chunks [ops[i].first_chunk, ops[i].first_chunk + ChunksOf(ops[i].bytes)).
//   num_chunks: sum of the chunks of all ops = the launch's work items (one block each, grid-stride).
//   alignment:  16, 8, 4, 2 or 1: every src, dst and bytes of every op is a multiple of it; the
//               kernel moves words of this size.
// No destination byte may overlap any source or destination byte of the launch.
struct BatchCopyView {
  const BatchCopyOp* ops;
  uint32_t num_ops;
  uint64_t num_chunks;
  uint32_t alignment;
};

inline constexpr int kBatchCopyThreads = 256;
// Grid cap: blocks loop over chunks beyond it (gridDim.x limits and launch overhead).
inline constexpr uint64_t kBatchCopyMaxBlocks = 65535;

#if defined(__CUDACC__)
// One block per chunk (grid-stride over chunks); thread 0 finds the chunk's op, the block copies
// its Words. Word is uint4, uint2, uint32_t, uint16_t or uint8_t (view.alignment bytes).
template <typename Word>
__global__ void __launch_bounds__(kBatchCopyThreads) BatchCopyKernel(BatchCopyView view) {
  __shared__ const uint8_t* src;
  __shared__ uint8_t* dst;
  __shared__ uint64_t words;
  for (uint64_t chunk = blockIdx.x; chunk < view.num_chunks; chunk += gridDim.x) {
    if (threadIdx.x == 0) {
      const BatchCopyOp& op = view.ops[OpOfChunk(view.ops, view.num_ops, chunk)];
      const ChunkSpan span = SpanOfChunk(op, chunk);
      src = op.src + span.begin;
      dst = op.dst + span.begin;
      words = span.bytes / sizeof(Word);
    }
    __syncthreads();
    const Word* s = reinterpret_cast<const Word*>(src);
    Word* d = reinterpret_cast<Word*>(dst);
    for (uint64_t w = threadIdx.x; w < words; w += blockDim.x) d[w] = s[w];
    __syncthreads();  // the shared fields are rewritten for the next chunk
  }
}
#endif  // __CUDACC__

// Enqueues the copy on `stream`. cudaSuccess without a launch when there is nothing to copy;
// cudaErrorInvalidValue for an alignment other than 1, 2, 4, 8, 16 or a null op list.
cudaError_t LaunchBatchCopy(const BatchCopyView& view, cudaStream_t stream);

}  // namespace kvkeep

#endif  // KVKEEP_GPU_CUDA_BATCH_COPY_CUH_
