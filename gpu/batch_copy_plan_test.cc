// The batch-copy plan: the chunk arithmetic the CUDA kernel runs, executed here on the CPU.
#include "gpu/batch_copy_plan.h"

#include <cstring>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace kvkeep {
namespace {

// What BatchCopyKernel does, block by block, word by word (here byte by byte).
void RunLikeTheKernel(const std::vector<BatchCopyOp>& ops, const BatchCopyPlan& plan) {
  for (uint64_t chunk = 0; chunk < plan.num_chunks; ++chunk) {
    const BatchCopyOp& op = ops[OpOfChunk(ops.data(), plan.num_ops, chunk)];
    const ChunkSpan span = SpanOfChunk(op, chunk);
    ASSERT_GT(span.bytes, 0u);
    ASSERT_LE(span.begin + span.bytes, op.bytes);
    ASSERT_EQ(span.bytes % plan.alignment, 0u);
    std::memcpy(op.dst + span.begin, op.src + span.begin, span.bytes);
  }
}

TEST(BatchCopyPlanTest, ChunksCoverEveryMoveExactlyOnce) {
  std::mt19937_64 rng(7);
  std::vector<uint8_t> src(1 << 22);
  for (auto& b : src) b = static_cast<uint8_t>(rng());
  std::vector<uint8_t> dst(src.size(), 0);
  std::vector<uint8_t> want(src.size(), 0);
  // Disjoint destination slices of random sizes (some empty, some several chunks long).
  std::vector<BatchCopyOp> ops;
  uint64_t at = 0;
  while (true) {
    const uint64_t n = rng() % 3 == 0 ? 0 : 1 + rng() % (3 * kBatchCopyChunkBytes);
    if (at + n > dst.size()) break;
    const uint64_t from = rng() % (src.size() - n);
    ops.push_back({src.data() + from, dst.data() + at, n, 0});
    std::memcpy(want.data() + at, src.data() + from, n);
    at += n + rng() % 64;
  }
  const std::size_t given = ops.size();
  std::size_t empty = 0;
  for (const auto& op : ops) empty += op.bytes == 0;
  BatchCopyPlan plan = PlanBatchCopy(ops);
  EXPECT_EQ(plan.num_ops, given - empty);
  uint64_t chunks = 0;
  for (const auto& op : ops) {
    EXPECT_EQ(op.first_chunk, chunks);
    chunks += (op.bytes + kBatchCopyChunkBytes - 1) / kBatchCopyChunkBytes;
  }
  EXPECT_EQ(plan.num_chunks, chunks);
  EXPECT_EQ(plan.alignment, 1u);  // odd sizes
  RunLikeTheKernel(ops, plan);
  EXPECT_EQ(dst, want);
}

TEST(BatchCopyPlanTest, OpOfChunkFindsTheOwnerAtEveryBoundary) {
  std::vector<BatchCopyOp> ops = {
      {nullptr, nullptr, kBatchCopyChunkBytes, 0},          // chunk 0
      {nullptr, nullptr, 1, 0},                              // chunk 1
      {nullptr, nullptr, 2 * kBatchCopyChunkBytes + 1, 0},   // chunks 2..4
      {nullptr, nullptr, 5, 0},                              // chunk 5
  };
  BatchCopyPlan plan = PlanBatchCopy(ops);
  ASSERT_EQ(plan.num_chunks, 6u);
  const uint32_t owner[] = {0, 1, 2, 2, 2, 3};
  for (uint64_t c = 0; c < 6; ++c) EXPECT_EQ(OpOfChunk(ops.data(), plan.num_ops, c), owner[c]);
  EXPECT_EQ(SpanOfChunk(ops[2], 4).begin, 2 * kBatchCopyChunkBytes);
  EXPECT_EQ(SpanOfChunk(ops[2], 4).bytes, 1u);
  EXPECT_EQ(SpanOfChunk(ops[2], 3).bytes, kBatchCopyChunkBytes);
}

TEST(BatchCopyPlanTest, AlignmentIsTheLargestCommonPowerOfTwoUpTo16) {
  alignas(64) static uint8_t buffer[4096];
  auto plan_of = [&](std::size_t src, std::size_t dst, std::size_t n) {
    std::vector<BatchCopyOp> ops = {{buffer + src, buffer + 2048 + dst, n, 0},
                                    {buffer + 64, buffer + 1024, 256, 0}};
    return PlanBatchCopy(ops).alignment;
  };
  EXPECT_EQ(plan_of(0, 0, 512), 16u);
  EXPECT_EQ(plan_of(32, 0, 64), 16u);
  EXPECT_EQ(plan_of(8, 0, 64), 8u);
  EXPECT_EQ(plan_of(0, 4, 64), 4u);
  EXPECT_EQ(plan_of(0, 0, 66), 2u);
  EXPECT_EQ(plan_of(1, 0, 64), 1u);
}

TEST(BatchCopyPlanTest, EmptyBatchPlansNothing) {
  std::vector<BatchCopyOp> ops = {{nullptr, nullptr, 0, 0}};
  BatchCopyPlan plan = PlanBatchCopy(ops);
  EXPECT_EQ(plan.num_ops, 0u);
  EXPECT_EQ(plan.num_chunks, 0u);
  EXPECT_TRUE(ops.empty());
}

}  // namespace
}  // namespace kvkeep
