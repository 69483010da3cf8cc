// Compression through the real daemon: statistics in, Compress, read back exactly the selected
// tokens with their positions. The expected selection comes from the eviction library run
// locally on the same data (the daemon must gather, convert, compact and free exactly as it says).
#include <cstring>
#include <random>

#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "service/eviction/scorers.h"
#include "service/eviction/selection.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;

constexpr uint32_t kLayers = 2, kQHeads = 4, kKvHeads = 2, kDim = 16, kTpp = 8;

v1::ModelLayout Fp32Layout() {
  v1::ModelLayout l;
  l.set_name("fp32-model");
  l.set_layers(kLayers);
  l.set_q_heads(kQHeads);
  l.set_kv_heads(kKvHeads);
  l.set_head_dim(kDim);
  l.set_dtype(v1::DTYPE_FP32);
  l.set_tokens_per_page(kTpp);
  l.mutable_rope()->set_theta(10000);
  return l;
}

class CompressEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(daemon_.Start());
    ASSERT_OK_AND_ASSIGN(token_, daemon_.CreateTenant("alpha"));
    auto c = Client::Attach(daemon_.channel(), token_, "w");
    ASSERT_OK(c);
    client_ = std::move(*c);
    ASSERT_OK(client_->RegisterModel(Fp32Layout()));
  }

  // keys_[layer][head] and values_ hold n x kDim floats.
  void Fill(const std::string& seq, uint32_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    ASSERT_OK(client_->Allocate(seq, n));
    keys_.assign(kLayers, std::vector<std::vector<float>>(kKvHeads));
    values_ = keys_;
    for (uint32_t l = 0; l < kLayers; ++l) {
      for (uint32_t h = 0; h < kKvHeads; ++h) {
        keys_[l][h].resize(n * kDim);
        values_[l][h].resize(n * kDim);
        for (auto& x : keys_[l][h]) x = normal(rng);
        for (auto& x : values_[l][h]) x = normal(rng);
        ASSERT_OK(client_->WriteInPlace(seq, l, h, 0, n, keys_[l][h].data(), values_[l][h].data()));
      }
    }
    ASSERT_OK(client_->Commit(seq, n));
  }

  std::vector<v1::LayerStats> WindowStats(uint32_t window, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    std::vector<v1::LayerStats> stats(kLayers);
    windows_.assign(kLayers, {});
    for (uint32_t l = 0; l < kLayers; ++l) {
      stats[l].set_layer(l);
      stats[l].set_window(window);
      for (uint32_t i = 0; i < kQHeads * window * kDim; ++i) {
        float q = normal(rng);
        stats[l].add_window_queries(q);
        windows_[l].push_back(q);
      }
    }
    return stats;
  }

  DaemonProcess daemon_;
  std::string token_;
  std::unique_ptr<Client> client_;
  std::vector<std::vector<std::vector<float>>> keys_, values_;
  std::vector<std::vector<float>> windows_;
};

TEST_F(CompressEndToEndTest, SnapKvKeepsExactlyTheSelectedTokensWithPositions) {
  constexpr uint32_t n = 200, window = 32;
  ASSERT_OK_AND_ASSIGN(std::string seq, client_->CreateSequence("fp32-model"));
  Fill(seq, n, 7);
  ASSERT_OK(client_->PutStats(seq, WindowStats(window, 11)));
  auto before = daemon_.Admin()->GetStatus();
  ASSERT_OK(before);

  v1::Policy policy;
  policy.set_scorer("snapkv");
  policy.set_allocation("ada");
  policy.set_keep_ratio(0.25);
  ASSERT_OK_AND_ASSIGN(v1::CompressReply reply, client_->Compress(seq, policy));

  // The same selection computed here with the library.
  eviction::Policy p;
  p.scorer = eviction::ScorerKind::kSnapKv;
  p.allocation = eviction::Allocation::kAda;
  eviction::ScoringWorkspace workspace;
  std::vector<eviction::HeadScores> scores;
  for (uint32_t l = 0; l < kLayers; ++l) {
    eviction::LayerInputs in;
    in.q_heads = kQHeads;
    in.kv_heads = kKvHeads;
    in.head_dim = kDim;
    in.rope.theta = 10000;
    in.next_position = n;
    in.window = window;
    in.window_queries = windows_[l];
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      in.heads.push_back({static_cast<int>(n), keys_[l][h].data(), values_[l][h].data(), nullptr});
    }
    ASSERT_OK_AND_ASSIGN(eviction::HeadScores s, eviction::ScoreLayer(p, in, workspace));
    scores.push_back(std::move(s));
  }
  eviction::Budget budget;
  budget.keep_ratio = 0.25;
  ASSERT_OK_AND_ASSIGN(eviction::Selection want,
                       eviction::SelectTokens(p, budget, scores, kQHeads / kKvHeads));

  uint64_t kept_total = 0;
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      const auto& kept = want.kept[l][h];
      kept_total += kept.size();
      const v1::HeadTable& table = reply.table().heads(l * kKvHeads + h);
      ASSERT_EQ(table.token_count(), kept.size());
      ASSERT_OK_AND_ASSIGN(HeadData back, client_->ReadHead(seq, l, h));
      ASSERT_EQ(back.positions.size(), kept.size());
      ASSERT_EQ(back.keys.size(), kept.size() * kDim * 4);
      for (size_t i = 0; i < kept.size(); ++i) {
        const int32_t j = kept[i];
        EXPECT_EQ(back.positions[i], j);
        EXPECT_EQ(table.positions(i), j);
        EXPECT_EQ(std::memcmp(back.keys.data() + i * kDim * 4, &keys_[l][h][j * kDim], kDim * 4), 0)
            << "layer " << l << " head " << h << " kept token " << i;
        EXPECT_EQ(std::memcmp(back.values.data() + i * kDim * 4, &values_[l][h][j * kDim], kDim * 4),
                  0);
      }
    }
  }
  EXPECT_EQ(reply.summary().tokens_before(), uint64_t{n} * kLayers * kKvHeads);
  EXPECT_EQ(reply.summary().tokens_after(), kept_total);
  EXPECT_EQ(reply.summary().scorer(), "snapkv");
  EXPECT_GT(reply.summary().pages_freed(), 0u);
  auto after = daemon_.Admin()->GetStatus();
  ASSERT_OK(after);
  EXPECT_EQ(before->pages_in_use() - after->pages_in_use(), reply.summary().pages_freed());
  // The sequence keeps working after compaction: append and read.
  ASSERT_OK(client_->Allocate(seq, 3));
  std::vector<float> k(3 * kDim, 1.5f);
  ASSERT_OK(client_->WriteInPlace(seq, 0, 0, reply.table().heads(0).token_count(), 3, k.data(),
                                  k.data()));
  ASSERT_OK(client_->Commit(seq, 3));
  ASSERT_OK_AND_ASSIGN(HeadData grown, client_->ReadHead(seq, 0, 0));
  EXPECT_EQ(grown.positions.back(), static_cast<int32_t>(n + 2));
}

TEST_F(CompressEndToEndTest, MissingStatisticsAreNamedAndNothingChanges) {
  ASSERT_OK_AND_ASSIGN(std::string seq, client_->CreateSequence("fp32-model"));
  Fill(seq, 64, 3);
  v1::Policy policy;
  policy.set_scorer("capkv");
  policy.set_keep_ratio(0.5);
  EXPECT_THAT(client_->Compress(seq, policy),
              StatusIs(StatusCode::kFailedPrecondition, "query_sum"));
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, client_->GetSequence(seq, false));
  EXPECT_EQ(table.heads(0).token_count(), 64u);
  // Bad statistics are INVALID_ARGUMENT.
  v1::LayerStats bad;
  bad.set_layer(0);
  bad.add_query_sum(1.0);  // needs q_heads x head_dim
  bad.set_query_count(1);
  EXPECT_THAT(client_->PutStats(seq, {bad}), StatusIs(StatusCode::kInvalidArgument));
  v1::Policy nonsense;
  nonsense.set_scorer("fastest");
  EXPECT_THAT(client_->Compress(seq, nonsense), StatusIs(StatusCode::kInvalidArgument, "scorer"));
  // With moments and values, capkv runs.
  std::vector<v1::LayerStats> moments(kLayers);
  for (uint32_t l = 0; l < kLayers; ++l) {
    moments[l].set_layer(l);
    for (uint32_t i = 0; i < kQHeads * kDim; ++i) moments[l].add_query_sum(0.1 * (i % 7) - 0.3);
    moments[l].set_query_count(60);
  }
  ASSERT_OK(client_->PutStats(seq, moments));
  ASSERT_OK_AND_ASSIGN(v1::CompressReply reply, client_->Compress(seq, policy));
  // Half of 64 is 32, below the 4 sinks + 32 window that are always kept: each head keeps 36.
  EXPECT_EQ(reply.summary().tokens_after(), 36u * kLayers * kKvHeads);
}

TEST_F(CompressEndToEndTest, CommitPastMaxTokensCompressesAtDecodeTime) {
  v1::Policy policy;
  policy.set_scorer("knorm");
  policy.set_max_tokens(48);
  ASSERT_OK(daemon_.Admin()->SetPolicy("alpha", policy));
  ASSERT_OK_AND_ASSIGN(std::string seq, client_->CreateSequence("fp32-model"));
  Fill(seq, 50, 5);  // 50 < 48 + one page (8): no compression yet
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, client_->GetSequence(seq, false));
  EXPECT_EQ(table.heads(0).token_count(), 50u);
  ASSERT_OK(client_->Allocate(seq, 10));
  std::vector<float> k(10 * kDim, 0.25f);
  for (uint32_t l = 0; l < kLayers; ++l) {
    for (uint32_t h = 0; h < kKvHeads; ++h) {
      ASSERT_OK(client_->WriteInPlace(seq, l, h, 50, 10, k.data(), k.data()));
    }
  }
  ASSERT_OK_AND_ASSIGN(v1::CommitReply reply, client_->Commit(seq, 10));
  ASSERT_TRUE(reply.has_compressed()) << reply.compress_error();
  for (const auto& head : reply.compressed().table().heads()) EXPECT_EQ(head.token_count(), 48u);
  // The policy survives a restart (persisted before it took effect).
  client_.reset();
  daemon_.Stop(SIGTERM);
  ASSERT_OK(daemon_.Start());
  ASSERT_OK_AND_ASSIGN(v1::Policy back, daemon_.Admin()->GetPolicy("alpha"));
  EXPECT_EQ(back.scorer(), "knorm");
  EXPECT_EQ(back.max_tokens(), 48u);
}

}  // namespace
}  // namespace kvkeep::testing
