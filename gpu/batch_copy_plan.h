// The plan of a batched copy: how the CUDA batch-copy kernel (gpu/cuda/batch_copy.cuh) splits a
// list of byte moves into fixed-size chunks, one thread block per chunk, and finds the move a chunk
// belongs to. Host-only C++ plus KVKEEP_HOST_DEVICE functions: the CPU build includes this header
// and its tests run exactly the chunk arithmetic the kernel runs (batch_copy_plan_test.cc).
//
//   std::vector<BatchCopyOp> ops = ...;              // src, dst, bytes
//   BatchCopyPlan plan = PlanBatchCopy(ops);         // fills first_chunk, drops empty moves
//   for (uint64_t c = 0; c < plan.num_chunks; ++c) {
//     const BatchCopyOp& op = ops[OpOfChunk(ops.data(), plan.num_ops, c)];
//     ChunkSpan span = SpanOfChunk(op, c);           // bytes [span.begin, span.begin + span.bytes)
//   }
#ifndef KVKEEP_GPU_BATCH_COPY_PLAN_H_
#define KVKEEP_GPU_BATCH_COPY_PLAN_H_

#include <cstdint>
#include <vector>

#include "gpu/math/host_device.h"

namespace kvkeep {

// Bytes one thread block copies per chunk. A multiple of 16, so chunk boundaries keep the
// alignment of the move they cut.
inline constexpr uint64_t kBatchCopyChunkBytes = 16384;

// One move of a batched copy, with addresses the copying processor can dereference (device
// pointers for the kernel). Ranges of one launch: no destination overlaps any source or another
// destination (CopyBatch stages through scratch memory otherwise), so chunks run in any order.
struct BatchCopyOp {
  const uint8_t* src;
  uint8_t* dst;
  uint64_t bytes;        // > 0
  uint64_t first_chunk;  // global index of this move's first chunk; ascending over the list
};

struct BatchCopyPlan {
  uint32_t num_ops = 0;      // moves kept (bytes > 0)
  uint64_t num_chunks = 0;   // sum over moves of ceil(bytes / kBatchCopyChunkBytes)
  uint32_t alignment = 16;   // largest of 16, 8, 4, 2, 1 dividing every src, dst and bytes
};

// Chunks of a move of `bytes` bytes.
KVKEEP_HOST_DEVICE inline uint64_t ChunksOf(uint64_t bytes) {
  return bytes / kBatchCopyChunkBytes + (bytes % kBatchCopyChunkBytes != 0 ? 1 : 0);
}

// Index of the move that owns global chunk `chunk`: the last op whose first_chunk <= chunk.
// Needs num_ops > 0 and chunk < the plan's num_chunks.
KVKEEP_HOST_DEVICE inline uint32_t OpOfChunk(const BatchCopyOp* ops, uint32_t num_ops,
                                             uint64_t chunk) {
  uint32_t lo = 0;
  uint32_t hi = num_ops;  // invariant: ops[lo].first_chunk <= chunk < ops[hi].first_chunk
  while (hi - lo > 1) {
    const uint32_t mid = lo + (hi - lo) / 2;
    if (ops[mid].first_chunk <= chunk) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// The bytes of `op` that global chunk `chunk` copies.
struct ChunkSpan {
  uint64_t begin;  // offset inside the move
  uint64_t bytes;  // 1..kBatchCopyChunkBytes
};
KVKEEP_HOST_DEVICE inline ChunkSpan SpanOfChunk(const BatchCopyOp& op, uint64_t chunk) {
  const uint64_t begin = (chunk - op.first_chunk) * kBatchCopyChunkBytes;
  const uint64_t left = op.bytes - begin;
  return {begin, left < kBatchCopyChunkBytes ? left : kBatchCopyChunkBytes};
}

// Drops moves of 0 bytes, numbers the chunks and finds the common alignment. `ops` is rewritten
// in place (order kept). Host-only.
inline BatchCopyPlan PlanBatchCopy(std::vector<BatchCopyOp>& ops) {
  BatchCopyPlan plan;
  uint64_t bits = 0;
  std::size_t kept = 0;
  for (std::size_t i = 0; i < ops.size(); ++i) {
    BatchCopyOp op = ops[i];
    if (op.bytes == 0) continue;
    op.first_chunk = plan.num_chunks;
    plan.num_chunks += ChunksOf(op.bytes);
    bits |= reinterpret_cast<uintptr_t>(op.src) | reinterpret_cast<uintptr_t>(op.dst) | op.bytes;
    ops[kept++] = op;
  }
  ops.resize(kept);
  plan.num_ops = static_cast<uint32_t>(kept);
  plan.alignment = 16;
  while (plan.alignment > 1 && (bits & (plan.alignment - 1)) != 0) plan.alignment /= 2;
  return plan;
}

}  // namespace kvkeep

#endif  // KVKEEP_GPU_BATCH_COPY_PLAN_H_
