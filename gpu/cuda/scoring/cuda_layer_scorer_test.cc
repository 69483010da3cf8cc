#include "gpu/cuda/scoring/cuda_layer_scorer.h"

#include <cuda_runtime_api.h>

#include <vector>

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using absl::StatusCode;
using ::kvkeep::testing::StatusIs;

bool HaveDevice() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
}

DeviceLayerRequest StreamingRequest(int n) {
  DeviceLayerRequest r{.q_heads = 4, .kv_heads = 2, .head_dim = 16};
  r.scorer.kind = DeviceScorerKind::kStreaming;
  r.heads.resize(2);
  r.heads[0].n = n;
  r.heads[1].n = n;
  return r;
}

// Bad requests are refused before any device is touched, so the answer is the same everywhere.
TEST(CudaLayerScorerTest, InvalidRequestIsRefusedBeforeTheDevice) {
  std::unique_ptr<DeviceLayerScorer> scorer = CreateCudaLayerScorer(0);
  DeviceLayerRequest r = StreamingRequest(5);
  r.head_dim = 1024;
  std::vector<std::vector<float>> scores;
  EXPECT_THAT(scorer->ScoreLayer(r, &scores),
              StatusIs(StatusCode::kInvalidArgument, "not supported by the device kernels"));
  r = StreamingRequest(5);
  r.scorer.kind = DeviceScorerKind::kSnapKv;
  r.heads[0].runs.push_back({nullptr, nullptr, 5});
  EXPECT_THAT(scorer->ScoreLayer(r, &scores), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_EQ(scorer->scratch_bytes(), 0u);
}

// A layer without tokens has nothing to score and needs no device.
TEST(CudaLayerScorerTest, EmptyLayerNeedsNoDevice) {
  std::unique_ptr<DeviceLayerScorer> scorer = CreateCudaLayerScorer(0);
  std::vector<std::vector<float>> scores = {{1, 2, 3}};
  ASSERT_OK(scorer->ScoreLayer(StreamingRequest(0), &scores));
  ASSERT_EQ(scores.size(), 2u);
  EXPECT_TRUE(scores[0].empty());
  EXPECT_TRUE(scores[1].empty());
}

// Without a usable device the first real layer answers FAILED_PRECONDITION (no device / no
// driver), holds no memory, and a later call answers the same.
TEST(CudaLayerScorerTest, WithoutADeviceScoringFailsPrecondition) {
  if (HaveDevice()) GTEST_SKIP() << "a CUDA device is present";
  std::unique_ptr<DeviceLayerScorer> scorer = CreateCudaLayerScorer(0);
  std::vector<std::vector<float>> scores;
  EXPECT_THAT(scorer->ScoreLayer(StreamingRequest(5), &scores),
              StatusIs(StatusCode::kFailedPrecondition, "cudaSetDevice(0)"));
  EXPECT_THAT(scorer->ScoreLayer(StreamingRequest(5), &scores),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(scorer->scratch_bytes(), 0u);
}

}  // namespace
}  // namespace kvkeep
