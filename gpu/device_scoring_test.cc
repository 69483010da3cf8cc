#include "gpu/device_scoring.h"

#include <cmath>
#include <vector>

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using absl::StatusCode;
using ::kvkeep::testing::StatusIs;

// A consistent snapkv request: 4 q heads, 2 KV heads of 6 and 4 tokens, d = 8, window 2. The run
// addresses are never dereferenced by the checks.
class DeviceRequestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    req_.q_heads = 4;
    req_.kv_heads = 2;
    req_.head_dim = 8;
    req_.scorer.kind = DeviceScorerKind::kSnapKv;
    req_.heads.resize(2);
    req_.heads[0].n = 6;
    req_.heads[0].runs = {{fake_, fake_, 4}, {fake_, fake_, 2}};
    req_.heads[1].n = 4;
    req_.heads[1].runs = {{fake_, fake_, 4}};
    positions_ = {0, 2, 3, 5, 8, 9};
    req_.heads[0].positions = positions_.data();
    req_.window = 2;
    queries_.assign(4 * 2 * 8, 0.5f);
    req_.window_queries = queries_.data();
    sums_.assign(4 * 8, 1.0);
    mass_.assign(4, std::vector<float>(6, 0.25f));
  }

  DeviceLayerRequest req_;
  alignas(16) const char fake_[16] = {};
  std::vector<int32_t> positions_;
  std::vector<float> queries_;
  std::vector<double> sums_;
  std::vector<std::vector<float>> mass_;
};

TEST_F(DeviceRequestTest, ConsistentRequestIsAccepted) {
  EXPECT_OK(ValidateDeviceLayerRequest(req_));
}

TEST_F(DeviceRequestTest, HeadDimBeyondTheKernelsIsInvalid) {
  req_.head_dim = kMaxDeviceHeadDim + 2;
  queries_.assign(4 * 2 * req_.head_dim, 0.5f);
  req_.window_queries = queries_.data();
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kInvalidArgument, "not supported by the device kernels"));
}

TEST_F(DeviceRequestTest, RunsThatDoNotAddUpToNAreInvalid) {
  req_.heads[0].runs.pop_back();
  EXPECT_THAT(
      ValidateDeviceLayerRequest(req_),
      StatusIs(StatusCode::kInvalidArgument, "heads[0].runs hold 4 tokens, expected n = 6"));
}

TEST_F(DeviceRequestTest, NullAddressOfDataTheScorerReadsIsInvalid) {
  req_.heads[1].runs[0].keys = nullptr;
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kInvalidArgument, "heads[1].runs[0] has a null device address"));
  // streaming reads neither keys nor values: no runs needed at all.
  req_.scorer.kind = DeviceScorerKind::kStreaming;
  req_.heads[1].runs.clear();
  EXPECT_OK(ValidateDeviceLayerRequest(req_));
}

// The gather kernel loads whole elements; a run address off the element size would fault on the
// device (and poison the context), so it is refused on the host.
TEST_F(DeviceRequestTest, RunAddressOffTheElementSizeIsInvalid) {
  req_.heads[1].runs[0].values = fake_ + 2;  // fp32: 4-byte elements
  EXPECT_OK(ValidateDeviceLayerRequest(req_));  // snapkv never reads the values
  req_.scorer.kind = DeviceScorerKind::kLaProx;  // reads values
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kInvalidArgument,
                       "heads[1].runs[0] has a device address that is not a multiple of the "
                       "4-byte element size"));
  req_.dtype = DevicePageDType::kBf16;  // 2-byte elements: fake_ + 2 is fine
  EXPECT_OK(ValidateDeviceLayerRequest(req_));
  req_.heads[0].runs[1].keys = fake_ + 1;
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kInvalidArgument, "heads[0].runs[1] has a device address"));
}

TEST_F(DeviceRequestTest, UnorderedPositionsOrStaleNextPositionAreInvalid) {
  positions_[3] = 2;
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kInvalidArgument, "not strictly ascending at index 3"));
  positions_[3] = 5;
  req_.next_position = 9;
  EXPECT_THAT(
      ValidateDeviceLayerRequest(req_),
      StatusIs(StatusCode::kInvalidArgument, "must exceed the largest cached position (9)"));
}

TEST_F(DeviceRequestTest, MissingStatisticFailsPrecondition) {
  req_.window = 0;
  req_.window_queries = nullptr;
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kFailedPrecondition, "window_queries"));
  req_.scorer.kind = DeviceScorerKind::kCapKv;
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kFailedPrecondition, "query moments"));
  req_.query_sum = sums_.data();
  req_.query_count = 3;
  EXPECT_OK(ValidateDeviceLayerRequest(req_));
  req_.scorer.kind = DeviceScorerKind::kObserved;
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kFailedPrecondition, "attention_mass"));
}

TEST_F(DeviceRequestTest, NonFiniteStatisticIsInvalid) {
  queries_[5] = NAN;
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kInvalidArgument, "window_queries holds a non-finite value"));
  queries_[5] = 0;
  req_.scorer.kind = DeviceScorerKind::kH2o;
  req_.attention_mass = {mass_[0].data(), mass_[1].data(), mass_[2].data(), mass_[3].data()};
  mass_[2][3] = INFINITY;  // q head 2 belongs to KV head 1 (4 tokens): index 3 is read
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kInvalidArgument, "attention_mass[2]"));
}

TEST_F(DeviceRequestTest, BadParametersAreInvalid) {
  req_.scorer.pool_kernel = 4;
  EXPECT_THAT(ValidateDeviceLayerRequest(req_),
              StatusIs(StatusCode::kInvalidArgument, "pool_kernel 4"));
  req_.scorer.pool_kernel = 7;
  req_.q_heads = 3;
  EXPECT_THAT(ValidateDeviceLayerRequest(req_), StatusIs(StatusCode::kInvalidArgument, "multiple"));
}

TEST(DeviceNeedsTest, MatchesWhatEachScorerReads) {
  EXPECT_FALSE(DeviceNeeds(DeviceScorerKind::kRandom).keys);
  EXPECT_TRUE(DeviceNeeds(DeviceScorerKind::kKnorm).keys);
  EXPECT_FALSE(DeviceNeeds(DeviceScorerKind::kKnorm).values);
  EXPECT_TRUE(DeviceNeeds(DeviceScorerKind::kLaProx).values);
  EXPECT_TRUE(DeviceNeeds(DeviceScorerKind::kLaProx).window_queries);
  EXPECT_TRUE(DeviceNeeds(DeviceScorerKind::kCapKvGreedy).query_moments);
  EXPECT_TRUE(DeviceNeeds(DeviceScorerKind::kObserved).attention_mass);
}

}  // namespace
}  // namespace kvkeep
