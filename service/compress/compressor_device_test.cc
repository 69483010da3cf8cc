// Compression with device backends: compaction by batched copies (CopyBatch), and scoring on the
// device through the DeviceLayerRequest the compressor builds (checked with a host stand-in).
#include <cstdint>
#include <memory>
#include <vector>

#include "gpu/device_scoring.h"
#include "gpu/math/dtype.h"
#include "service/compress/compressor.h"
#include "service/compress/compressor_test_fixture.h"
#include "service/compress/device_scoring_request.h"
#include "gtest/gtest.h"

namespace kvkeep::compressor_testing {
namespace {

// A device backend (device_ordinal() >= 0) compacts each head with one CopyBatch, runs as long as
// the pages allow (sources overlapping destinations): the result is the same bit-exact compaction.
class BatchingBackend : public CheckingBackend {
 public:
  explicit BatchingBackend(Backend* inner) : CheckingBackend(inner), inner_(inner) {}
  int device_ordinal() const override { return 0; }
  absl::Status CopyBatch(absl::Span<const CopyOp> ops) override {
    ++batches;
    ops_total += static_cast<int>(ops.size());
    return inner_->CopyBatch(ops);
  }
  int batches = 0;
  int ops_total = 0;

 private:
  Backend* const inner_;
};

TEST_F(CompressorTest, DeviceBackendsCompactEachHeadWithOneBatch) {
  Init({.dtype = v1::DTYPE_FP16, .layers = 2, .q_heads = 4, .kv_heads = 2, .head_dim = 4,
        .tokens_per_page = 4});
  Append(30);
  BatchingBackend batching(backend_.get());
  const eviction::Policy policy{.scorer = ScorerKind::kKnorm, .sinks = 1, .window = 2};
  ASSERT_OK_AND_ASSIGN(CompressOutcome out,
                       CompressSequence(*model_, *table_, stats_, policy, {.tokens = 12}, batching,
                                        *pool_, scratch_));
  EXPECT_TRUE(out.changed);
  EXPECT_EQ(batching.copies, 0);                     // no per-run Copy on a device backend
  EXPECT_EQ(batching.batches, 4);                    // one per (layer, KV head)
  EXPECT_GT(batching.ops_total, batching.batches);  // keys and values, several runs each
  for (uint32_t h = 0; h < table_->heads(); ++h) EXPECT_EQ(table_->head(h).count, 12u);
  pool_->Free(out.freed_pages);
  FollowTable();
  ExpectContentsMatchReference();

  // A single early eviction shifts every later token by one slot: with batches, runs span whole
  // pages (source overlapping destination) and the contents still come out exact.
  const int batches_before = batching.batches;
  ASSERT_OK_AND_ASSIGN(out, CompressSequence(*model_, *table_, stats_,
                                             {.scorer = ScorerKind::kStreaming, .sinks = 1, .window = 0},
                                             {.tokens = 11}, batching, *pool_, scratch_));
  EXPECT_TRUE(out.changed);
  EXPECT_EQ(batching.batches, batches_before + 4);
  EXPECT_EQ(batching.copies, 0);
  FollowTable();
  ExpectContentsMatchReference();
}

// ---------------------------------------------------------------------------------------------
// Scoring on the device (Backend::layer_scorer): the request the compressor builds is checked here
// with a host stand-in for the device. It reads the pages through the request's runs only (host
// addresses of the CPU backend's arenas play the device addresses), rebuilds LayerInputs from the
// request and scores with eviction::ScoreLayer; any error in the runs (offsets, order, dtype) or in
// the borrowed statistics changes the scores and the selection.

// Element i of a run's keys or values, widened to float.
float RunElement(DevicePageDType dtype, const void* base, size_t i) {
  if (dtype == DevicePageDType::kFp32) return static_cast<const float*>(base)[i];
  const uint16_t b = static_cast<const uint16_t*>(base)[i];
  return dtype == DevicePageDType::kFp16 ? gpu_math::HalfBitsToFloat(b)
                                         : gpu_math::Bf16BitsToFloat(b);
}

class HostLayerScorer : public DeviceLayerScorer {
 public:
  absl::Status ScoreLayer(const DeviceLayerRequest& r,
                          std::vector<std::vector<float>>* scores) override {
    ++calls;
    if (!fail.ok()) return fail;
    if (absl::Status s = ValidateDeviceLayerRequest(r); !s.ok()) return s;
    const int d = r.head_dim;
    eviction::LayerInputs in;
    in.q_heads = r.q_heads;
    in.kv_heads = r.kv_heads;
    in.head_dim = d;
    in.layer_index = r.layer_index;
    in.heads.resize(r.kv_heads);
    keys_.assign(r.kv_heads, {});
    values_.assign(r.kv_heads, {});
    const DeviceScorerNeeds needs = DeviceNeeds(r.scorer.kind);
    for (int g = 0; g < r.kv_heads; ++g) {
      for (const DeviceTokenRun& run : r.heads[g].runs) {
        for (size_t i = 0; i < size_t{run.tokens} * d; ++i) {
          if (needs.keys) keys_[g].push_back(RunElement(r.dtype, run.keys, i));
          if (needs.values) values_[g].push_back(RunElement(r.dtype, run.values, i));
        }
      }
      in.heads[g] = eviction::HeadKV{.n = r.heads[g].n,
                                     .keys = needs.keys ? keys_[g].data() : nullptr,
                                     .values = needs.values ? values_[g].data() : nullptr,
                                     .positions = r.heads[g].positions};
    }
    in.rope.theta = r.rope.theta;
    in.rope.rotary_dim = r.rope.rotary_dim;
    in.rope.interleaved = r.rope.interleaved;
    const int rd = r.rope.rotary_dim == 0 ? d : r.rope.rotary_dim;
    if (r.rope.inv_freq != nullptr) in.rope.inv_freq.assign(r.rope.inv_freq, r.rope.inv_freq + rd / 2);
    in.next_position = r.next_position;
    const size_t qd = size_t(r.q_heads) * d;
    in.window = r.window;
    if (r.window_queries) in.window_queries.assign(r.window_queries, r.window_queries + qd * r.window);
    if (r.query_sum) in.query_sum.assign(r.query_sum, r.query_sum + qd);
    if (r.query_sq_sum) in.query_sq_sum.assign(r.query_sq_sum, r.query_sq_sum + qd);
    in.query_count = r.query_count;
    for (size_t h = 0; h < r.attention_mass.size(); ++h) {
      const int n = r.heads[h / (r.q_heads / r.kv_heads)].n;
      in.attention_mass.emplace_back(r.attention_mass[h], r.attention_mass[h] + n);
    }
    if (r.wo_gram) in.wo_gram.assign(r.wo_gram, r.wo_gram + qd * d);
    const DeviceScorerParams& p = r.scorer;
    const eviction::Policy policy{.scorer = static_cast<ScorerKind>(static_cast<int>(p.kind)),
                                  .sinks = p.sinks,
                                  .window = p.window,
                                  .pool_kernel = p.pool_kernel,
                                  .pool_max = p.pool_max,
                                  .capkv_tau = p.capkv_tau,
                                  .rope_horizon = p.rope_horizon,
                                  .seed = p.seed,
                                  .greedy_picks = p.greedy_picks};
    eviction::HeadScores out;
    if (absl::Status s = eviction::ScoreLayerInto(policy, in, workspace_, &out); !s.ok()) return s;
    *scores = std::move(out.per_head);
    return absl::OkStatus();
  }
  size_t scratch_bytes() const override { return 0; }

  int calls = 0;
  absl::Status fail;

 private:
  std::vector<std::vector<float>> keys_, values_;
  eviction::ScoringWorkspace workspace_{1};
};

// The CPU backend dressed as a device backend: host arena addresses, the host scorer above.
class DeviceScoringBackend : public CheckingBackend {
 public:
  explicit DeviceScoringBackend(Backend* inner) : CheckingBackend(inner) {}
  const void* DeviceAddress(const Arena& arena) const override { return HostArenaData(arena); }
  DeviceLayerScorer* layer_scorer() override { return &scorer; }
  HostLayerScorer scorer;
};

class CompressorDeviceTest : public CompressorTest,
                             public ::testing::WithParamInterface<v1::DType> {
 protected:
  // Scores every layer on the CPU from the reference bytes and selects: the kept positions per head.
  std::vector<std::vector<int32_t>> CpuChoice(const eviction::Policy& policy,
                                              const eviction::Budget& budget) {
    const uint32_t layers = model_->layers(), kv = model_->kv_heads();
    std::vector<eviction::HeadScores> scores(layers);
    std::vector<std::vector<float>> keys(table_->heads()), values(table_->heads());
    eviction::ScoringWorkspace ws(1);
    for (uint32_t l = 0; l < layers; ++l) {
      std::vector<const float*> kp, vp;
      for (uint32_t g = 0; g < kv; ++g) {
        const uint32_t h = l * kv + g;
        for (const Token& t : ref_[h]) {
          for (double x : Decode(t.key)) keys[h].push_back(static_cast<float>(x));
          for (double x : Decode(t.value)) values[h].push_back(static_cast<float>(x));
        }
        kp.push_back(keys[h].data());
        vp.push_back(values[h].data());
      }
      eviction::LayerInputs in;
      BuildLayerInputs(*model_, *table_, stats_, policy, l, kp, vp, &in);
      EXPECT_OK(eviction::ScoreLayerInto(policy, in, ws, &scores[l]));
    }
    absl::StatusOr<eviction::Selection> want = eviction::SelectTokens(
        policy, budget, scores, static_cast<int>(model_->q_heads() / kv));
    EXPECT_OK(want);
    std::vector<std::vector<int32_t>> out(table_->heads());
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      for (int32_t j : want->kept[h / kv][h % kv]) out[h].push_back(ref_[h][j].position);
    }
    return out;
  }

  absl::StatusOr<CompressOutcome> CompressOnDevice(const eviction::Policy& policy,
                                                   const eviction::Budget& budget) {
    return CompressSequence(*model_, *table_, stats_, policy, budget, *device_, *pool_, scratch_);
  }

  void SetUp() override {
    CompressorTest::SetUp();
    device_ = std::make_unique<DeviceScoringBackend>(backend_.get());
  }

  std::unique_ptr<DeviceScoringBackend> device_;
};

// The runs of a request cover every committed token of every head, in order, page by page, and
// address exactly the bytes the CPU gather reads (Backend::Read at the same page offsets).
TEST_P(CompressorDeviceTest, RequestRunsAddressEveryTokenInOrder) {
  Init({.dtype = GetParam(), .layers = 2, .q_heads = 4, .kv_heads = 2, .head_dim = 8,
        .tokens_per_page = 3});
  Append(10, /*reserve=*/2);
  Append(4);
  for (uint32_t l = 0; l < 2; ++l) ApplyWindow(l, 3);
  const eviction::Policy policy{.scorer = ScorerKind::kLaProx, .sinks = 2, .window = 3};
  for (uint32_t layer = 0; layer < 2; ++layer) {
    eviction::LayerInputs in;
    std::vector<const float*> none(2, nullptr);
    BuildLayerInputs(*model_, *table_, stats_, policy, layer, none, none, &in);
    DeviceLayerRequest request;
    const PageAddressFn address = [&](uint64_t page) -> absl::StatusOr<const char*> {
      return static_cast<const char*>(HostArenaData(*pool_->ArenaOf(page))) +
             size_t{PageRef::Unpack(page).index} * model_->geometry().page_bytes;
    };
    ASSERT_OK(BuildDeviceLayerRequest(*model_, *table_, in, policy, layer, address, &request));
    ASSERT_OK(ValidateDeviceLayerRequest(request));
    EXPECT_EQ(request.dtype, GetParam() == v1::DTYPE_FP32   ? DevicePageDType::kFp32
                             : GetParam() == v1::DTYPE_FP16 ? DevicePageDType::kFp16
                                                            : DevicePageDType::kBf16);
    EXPECT_EQ(request.scorer.kind, DeviceScorerKind::kLaProx);
    EXPECT_EQ(request.scorer.sinks, 2);
    ASSERT_EQ(request.heads.size(), 2u);
    for (uint32_t g = 0; g < 2; ++g) {
      const uint32_t h = layer * 2 + g;
      const DeviceHeadRequest& head = request.heads[g];
      EXPECT_EQ(head.n, 14);
      EXPECT_EQ(head.positions, table_->head(h).positions.data());
      // 14 tokens over pages of 3: 5 runs (3, 3, 3, 3, 2).
      ASSERT_EQ(head.runs.size(), 5u);
      uint32_t slot = 0;
      std::vector<uint8_t> bytes(model_->geometry().token_bytes);
      for (const DeviceTokenRun& run : head.runs) {
        for (uint32_t t = 0; t < run.tokens; ++t, ++slot) {
          const size_t tb = model_->geometry().token_bytes;
          auto [arena, offset] = Where(h, slot, false);
          ASSERT_OK(backend_->Read(*arena, offset, bytes.data(), tb));
          EXPECT_EQ(0, std::memcmp(bytes.data(), static_cast<const char*>(run.keys) + t * tb, tb))
              << "key of head " << h << " slot " << slot;
          EXPECT_EQ(bytes, ref_[h][slot].key);
          std::tie(arena, offset) = Where(h, slot, true);
          ASSERT_OK(backend_->Read(*arena, offset, bytes.data(), tb));
          EXPECT_EQ(0, std::memcmp(bytes.data(), static_cast<const char*>(run.values) + t * tb, tb))
              << "value of head " << h << " slot " << slot;
        }
      }
      EXPECT_EQ(slot, 14u);
    }
    // Statistics are borrowed, not copied.
    EXPECT_EQ(request.window, 3);
    EXPECT_EQ(request.window_queries, in.window_queries.data());
  }
}

// A page whose address cannot be had fails the request with that error, naming layer and head.
TEST_F(CompressorDeviceTest, RequestPropagatesAddressErrors) {
  Init({});
  Append(5);
  eviction::LayerInputs in;
  std::vector<const float*> none(2, nullptr);
  const eviction::Policy policy{.scorer = ScorerKind::kKnorm};
  BuildLayerInputs(*model_, *table_, stats_, policy, 1, none, none, &in);
  DeviceLayerRequest request;
  EXPECT_THAT(BuildDeviceLayerRequest(
                  *model_, *table_, in, policy, 1,
                  [](uint64_t) -> absl::StatusOr<const char*> {
                    return absl::FailedPreconditionError("no device address");
                  },
                  &request),
              StatusIs(StatusCode::kFailedPrecondition, "layer 1 KV head 0: no device address"));
}

// Through a backend that scores on its device, the compressor keeps exactly what the CPU path
// keeps, reads nothing back, and moves the same bytes.
TEST_P(CompressorDeviceTest, DevicePathKeepsWhatTheCpuPathKeeps) {
  struct Case {
    eviction::Policy policy;
    eviction::Budget budget;
  };
  const Case cases[] = {
      {{.scorer = ScorerKind::kKnorm, .sinks = 2, .window = 3}, {.tokens = 9}},
      {{.scorer = ScorerKind::kSnapKv, .sinks = 1, .window = 2}, {.keep_ratio = 0.5}},
      {{.scorer = ScorerKind::kCapKv, .sinks = 2, .window = 2}, {.tokens = 8}},
      {{.scorer = ScorerKind::kCapKvGreedy, .sinks = 2, .window = 2}, {.tokens = 8}},
      {{.scorer = ScorerKind::kLaProx, .allocation = Allocation::kGlobal, .sinks = 1, .window = 2},
       {.keep_ratio = 0.4}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(std::string(eviction::ScorerName(c.policy.scorer)));
    Init({.dtype = GetParam(), .layers = 2, .q_heads = 4, .kv_heads = 2, .head_dim = 8,
          .tokens_per_page = 4});
    device_->scorer.calls = 0;
    device_->reads = 0;
    stats_.Clear();
    Append(21);
    for (uint32_t l = 0; l < 2; ++l) {
      ApplyWindow(l, 2);
      ApplyMoments(l);
    }
    const std::vector<std::vector<int32_t>> want = CpuChoice(c.policy, c.budget);
    ASSERT_OK_AND_ASSIGN(CompressOutcome out, CompressOnDevice(c.policy, c.budget));
    EXPECT_TRUE(out.changed);
    EXPECT_EQ(device_->scorer.calls, 2);
    EXPECT_EQ(device_->reads, 0);  // nothing was read back to the host
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      EXPECT_EQ(table_->head(h).positions, want[h]) << "head " << h;
    }
    FollowTable();
    ExpectContentsMatchReference();
    pool_->Free(out.freed_pages);
  }
}

// A device scorer's error reaches the caller with its code and the layer; nothing changes.
TEST_F(CompressorDeviceTest, DeviceScorerErrorsChangeNothing) {
  Init({});
  Append(12);
  const auto heads = Heads();
  device_->scorer.fail = absl::ResourceExhaustedError("device memory");
  EXPECT_THAT(CompressOnDevice({.scorer = ScorerKind::kKnorm, .sinks = 1, .window = 1},
                               {.tokens = 4}),
              StatusIs(StatusCode::kResourceExhausted, "scoring layer 0 on the device: device memory"));
  EXPECT_EQ(Heads(), heads);
  // A statistic the scorer needs is still checked first (FAILED_PRECONDITION, nothing scored).
  device_->scorer.fail = absl::OkStatus();
  device_->scorer.calls = 0;
  EXPECT_THAT(CompressOnDevice({.scorer = ScorerKind::kSnapKv}, {.tokens = 4}),
              StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_EQ(device_->scorer.calls, 0);
  EXPECT_EQ(Heads(), heads);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CompressorDeviceTest,
                         ::testing::Values(v1::DTYPE_FP32, v1::DTYPE_FP16, v1::DTYPE_BF16),
                         [](const ::testing::TestParamInfo<v1::DType>& info) {
                           return std::string(v1::DType_Name(info.param)).substr(6);
                         });

}  // namespace
}  // namespace kvkeep::compressor_testing
