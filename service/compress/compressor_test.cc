// Compression of one sequence on the CPU path: selection (knorm, h2o, ada, snapkv, capkv*),
// bit-exact compaction, freed pages, and failures that leave the table as it was.
#include "service/compress/compressor.h"

#include <algorithm>
#include <cstdint>
#include <map>
#include <set>
#include <vector>

#include "service/compress/compressor_test_fixture.h"
#include "gtest/gtest.h"

namespace kvkeep::compressor_testing {
namespace {

class CompressorDtypeTest : public CompressorTest,
                            public ::testing::WithParamInterface<v1::DType> {};

// Uniform knorm with a token budget: every head keeps exactly sinks + window + its smallest keys,
// in order and bit-exact; emptied pages come back exactly; a second compression after more commits
// works on the compacted table.
TEST_P(CompressorDtypeTest, UniformKeepsExactlyTheSelectedTokensBitExact) {
  Init({.dtype = GetParam(), .tokens_per_page = 3});
  Append(20);
  const eviction::Policy policy{.scorer = ScorerKind::kKnorm, .sinks = 2, .window = 3};
  const uint64_t pages_before = PagesHeld();
  const uint64_t used_before = pool_->Stats().used_pages;
  std::vector<std::vector<int32_t>> want(table_->heads());
  for (uint32_t h = 0; h < table_->heads(); ++h) want[h] = KnormChoice(h, 2, 3, 9 - 5);

  ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, {.tokens = 9}));
  EXPECT_TRUE(out.changed);
  EXPECT_EQ(out.tokens_before, 20u * table_->heads());
  EXPECT_EQ(out.tokens_after, 9u * table_->heads());
  ASSERT_EQ(out.kept_per_head.size(), table_->heads());
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    EXPECT_EQ(out.kept_per_head[h], 9u);
    EXPECT_EQ(table_->head(h).positions, want[h]) << "head " << h;
  }
  // 20 tokens = 7 pages of 3, 9 tokens = 3 pages: 4 emptied per head.
  EXPECT_EQ(out.freed_pages.size(), 4u * table_->heads());
  EXPECT_EQ(PagesHeld(), pages_before - out.freed_pages.size());
  std::set<uint64_t> held;
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    held.insert(table_->head(h).pages.begin(), table_->head(h).pages.end());
  }
  for (uint64_t p : out.freed_pages) EXPECT_EQ(held.count(p), 0u);
  EXPECT_EQ(std::set<uint64_t>(out.freed_pages.begin(), out.freed_pages.end()).size(),
            out.freed_pages.size());
  EXPECT_EQ(pool_->Stats().used_pages, used_before);  // the pool is the caller's business
  FollowTable();
  ExpectContentsMatchReference();
  // Score summary: knorm scores are -||k||; kept candidates are the smaller norms.
  ASSERT_TRUE(out.has_kept_score);
  ASSERT_TRUE(out.has_evicted_score);
  EXPECT_LT(out.kept_score_min, 0);
  v1::EvictionSummary summary;
  ToProto(out, policy, model_->geometry(), &summary);
  EXPECT_EQ(summary.scorer(), "knorm");
  EXPECT_EQ(summary.allocation(), "uniform");
  EXPECT_EQ(summary.pages_freed(), out.freed_pages.size());
  EXPECT_EQ(summary.bytes_freed(), out.freed_pages.size() * model_->geometry().page_bytes);
  EXPECT_EQ(summary.tokens_after(), out.tokens_after);
  pool_->Free(out.freed_pages);

  // More tokens, then compress again.
  Append(7);
  for (uint32_t h = 0; h < table_->heads(); ++h) want[h] = KnormChoice(h, 2, 3, 6 - 5);
  ASSERT_OK_AND_ASSIGN(out, Compress(policy, {.tokens = 6}));
  EXPECT_EQ(out.tokens_after, 6u * table_->heads());
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    EXPECT_EQ(table_->head(h).positions, want[h]) << "head " << h;
  }
  // 16 tokens = 6 pages, 6 tokens = 2 pages.
  EXPECT_EQ(out.freed_pages.size(), 4u * table_->heads());
  FollowTable();
  ExpectContentsMatchReference();
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CompressorDtypeTest,
                         ::testing::Values(v1::DTYPE_FP32, v1::DTYPE_FP16, v1::DTYPE_BF16),
                         [](const ::testing::TestParamInfo<v1::DType>& info) {
                           return std::string(v1::DType_Name(info.param)).substr(6);
                         });

// Ada gives the heads of a layer different lengths; compaction, positions and pages follow each
// head's own count, and a later compression starts from those different lengths.
TEST_F(CompressorTest, AdaHeadsOfDifferentLengthsCompactExactly) {
  Init({.dtype = v1::DTYPE_FP16,
        .layers = 2,
        .q_heads = 8,
        .kv_heads = 4,
        .head_dim = 8,
        .tokens_per_page = 4});
  Append(30);
  const eviction::Policy policy{
      .scorer = ScorerKind::kKnorm, .allocation = Allocation::kAda, .sinks = 1, .window = 2};
  ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, {.keep_ratio = 0.4}));
  ASSERT_TRUE(out.changed);
  std::set<uint32_t> counts(out.kept_per_head.begin(), out.kept_per_head.end());
  EXPECT_GT(counts.size(), 1u) << "ada should give heads different lengths";
  uint64_t freed = 0;
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    const uint32_t kept = out.kept_per_head[h];
    EXPECT_EQ(table_->head(h).count, kept);
    // Within a head the kept candidates are its smallest keys, whatever its share.
    EXPECT_EQ(table_->head(h).positions, KnormChoice(h, 1, 2, kept - 3)) << "head " << h;
    freed += 8 - (kept + 3) / 4;
  }
  EXPECT_EQ(out.freed_pages.size(), freed);
  EXPECT_EQ(out.tokens_after, static_cast<uint64_t>(std::llround(0.4 * 30 * 8)));
  FollowTable();
  ExpectContentsMatchReference();
  pool_->Free(out.freed_pages);

  Append(9);  // heads grow from their different lengths (different page needs)
  ExpectContentsMatchReference();
  ASSERT_OK_AND_ASSIGN(out, Compress(policy, {.tokens = 10}));
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    EXPECT_EQ(table_->head(h).positions, KnormChoice(h, 1, 2, out.kept_per_head[h] - 3));
  }
  FollowTable();
  ExpectContentsMatchReference();
}

// Attention mass (h2o): the stored mass decides, and it is compacted with the tokens so that a
// second compression without new statistics still ranks correctly.
TEST_F(CompressorTest, H2oFollowsTheMassAndCompactsIt) {
  Init({.dtype = v1::DTYPE_BF16,
        .layers = 1,
        .q_heads = 2,
        .kv_heads = 2,
        .head_dim = 4,
        .tokens_per_page = 2});
  Append(10);
  // Mass of token j: head 0 prefers odd tokens, head 1 larger j.
  v1::LayerStats s;
  s.set_layer(0);
  for (int j = 0; j < 10; ++j) s.add_attention_mass(j % 2 ? 10.0f + j : 1.0f * j / 100);
  for (int j = 0; j < 10; ++j) s.add_attention_mass(static_cast<float>(j));
  ASSERT_OK(ApplyLayerStats(*model_, *table_, s, &stats_));
  const eviction::Policy policy{.scorer = ScorerKind::kH2o, .sinks = 1, .window = 1};
  ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, {.tokens = 5}));
  auto pos = [&](std::vector<int> idx) {
    std::vector<int32_t> p;
    for (int j : idx) p.push_back(5 + 3 * j);
    return p;
  };
  // Head 0: sink 0, window 9, and the three heaviest candidates 7, 5, 3 (odd j weigh 10 + j).
  EXPECT_EQ(table_->head(0).positions, pos({0, 3, 5, 7, 9}));
  EXPECT_EQ(table_->head(1).positions, pos({0, 6, 7, 8, 9}));
  EXPECT_EQ(stats_.layers[0].attention_mass[1], (std::vector<float>{0, 6, 7, 8, 9}));
  EXPECT_FLOAT_EQ(out.kept_score_min, 6.0f);
  EXPECT_FLOAT_EQ(out.evicted_score_max, 11.0f);  // head 0's j = 1
  FollowTable();
  ExpectContentsMatchReference();
  // Again, tighter, with the compacted mass.
  ASSERT_OK_AND_ASSIGN(out, Compress(policy, {.tokens = 3}));
  EXPECT_EQ(table_->head(0).positions, pos({0, 7, 9}));
  EXPECT_EQ(table_->head(1).positions, pos({0, 8, 9}));
  EXPECT_EQ(stats_.layers[0].attention_mass[0], (std::vector<float>{0, 17, 19}));
  FollowTable();
  ExpectContentsMatchReference();
}

// Streaming keeps the sinks and the most recent tokens: the long run behind the evicted block moves
// by less than its length, which must be split so that no copy overlaps itself.
TEST_F(CompressorTest, ShiftedRunsAreCopiedWithoutOverlap) {
  Init({.layers = 1, .q_heads = 2, .kv_heads = 1, .head_dim = 4, .tokens_per_page = 4});
  Append(14);
  ASSERT_OK_AND_ASSIGN(
      CompressOutcome out,
      Compress({.scorer = ScorerKind::kStreaming, .sinks = 2, .window = 0}, {.tokens = 11}));
  std::vector<int32_t> want = {5, 8};
  for (int j = 5; j < 14; ++j) want.push_back(5 + 3 * j);
  EXPECT_EQ(table_->head(0).positions, want);
  EXPECT_EQ(checking_->overlaps, 0);
  EXPECT_GT(checking_->copies, 0);
  EXPECT_EQ(checking_->reads, 0);  // streaming reads no keys
  EXPECT_EQ(out.freed_pages.size(), 1u);
  FollowTable();
  ExpectContentsMatchReference();

  // Evicting a single early token: every later token moves by one slot.
  ASSERT_OK_AND_ASSIGN(
      out, Compress({.scorer = ScorerKind::kStreaming, .sinks = 1, .window = 0}, {.tokens = 10}));
  EXPECT_EQ(checking_->overlaps, 0);
  FollowTable();
  ExpectContentsMatchReference();
}

TEST_F(CompressorTest, BudgetCoveringTheSequenceChangesNothing) {
  Init({.dtype = v1::DTYPE_FP16});
  Append(10);
  const auto heads = Heads();
  for (eviction::Budget budget : {eviction::Budget{.tokens = 10}, eviction::Budget{.tokens = 500},
                                  eviction::Budget{.keep_ratio = 1.0}}) {
    ASSERT_OK_AND_ASSIGN(CompressOutcome out,
                         Compress({.scorer = ScorerKind::kKnorm, .sinks = 1, .window = 1}, budget));
    EXPECT_FALSE(out.changed);
    EXPECT_TRUE(out.freed_pages.empty());
    EXPECT_EQ(out.tokens_before, out.tokens_after);
    EXPECT_EQ(out.kept_per_head, std::vector<uint32_t>(table_->heads(), 10));
  }
  EXPECT_EQ(Heads(), heads);
  EXPECT_EQ(checking_->copies, 0);
  ExpectContentsMatchReference();
}

TEST_F(CompressorTest, MissingStatisticsFailPreconditionAndChangeNothing) {
  Init({});
  Append(12);
  const auto heads = Heads();
  EXPECT_THAT(Compress({.scorer = ScorerKind::kSnapKv}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition,
                       "snapkv needs window queries (LayerStats.window_queries)"));
  EXPECT_THAT(Compress({.scorer = ScorerKind::kCapKv}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition,
                       "capkv needs query moments (LayerStats.query_sum); layer 0 has none; send "
                       "them with CommitTokens or PutStats"));
  EXPECT_THAT(Compress({.scorer = ScorerKind::kObserved}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition, "attention mass"));
  // Layer 0 only: layer 1 is named.
  ApplyMoments(0);
  EXPECT_THAT(Compress({.scorer = ScorerKind::kExpected}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition, "layer 1 has none"));
  EXPECT_EQ(Heads(), heads);
  EXPECT_EQ(checking_->copies, 0);
  ExpectContentsMatchReference();
}

TEST_F(CompressorTest, BadPolicyOrBudgetIsInvalidAndChangesNothing) {
  Init({});
  Append(12);
  const auto heads = Heads();
  const eviction::Policy knorm{.scorer = ScorerKind::kKnorm};
  EXPECT_THAT(Compress(knorm, {}), StatusIs(StatusCode::kInvalidArgument, "exactly one"));
  EXPECT_THAT(Compress(knorm, {.keep_ratio = 0.5, .tokens = 3}),
              StatusIs(StatusCode::kInvalidArgument, "exactly one"));
  EXPECT_THAT(Compress(knorm, {.keep_ratio = 1.5}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Compress(knorm, {.keep_ratio = std::nan("")}),
              StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Compress(knorm, {.tokens = -2}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(Compress({.scorer = ScorerKind::kKnorm, .pool_kernel = 4}, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kInvalidArgument, "pool_kernel"));
  EXPECT_EQ(Heads(), heads);
  ExpectContentsMatchReference();
}

// Room reserved by AllocatePages past the committed tokens stays with the head; only pages emptied
// by the compaction are freed.
TEST_F(CompressorTest, ReservedRoomStaysAndEmptiedPagesGo) {
  Init({.layers = 1, .q_heads = 2, .kv_heads = 2, .head_dim = 4, .tokens_per_page = 4});
  Append(10, /*reserve=*/6);  // 16 slots: 4 pages, 3 of them hold tokens
  const std::vector<uint64_t> pages0 = table_->head(0).pages;
  ASSERT_EQ(pages0.size(), 4u);
  ASSERT_OK_AND_ASSIGN(
      CompressOutcome out,
      Compress({.scorer = ScorerKind::kStreaming, .sinks = 1, .window = 2}, {.tokens = 3}));
  EXPECT_EQ(out.freed_pages.size(), 4u);  // pages 1 and 2 of each head
  EXPECT_EQ(table_->head(0).pages, (std::vector<uint64_t>{pages0[0], pages0[3]}));
  EXPECT_EQ(table_->capacity(0), 8u);
  FollowTable();
  ExpectContentsMatchReference();
  uint64_t total = 0;
  table_->PagesNeeded(5, &total);
  EXPECT_EQ(total, 0u);
  Append(5);
  ExpectContentsMatchReference();
}

// Window scorers read the keys, post-RoPE queries and positions through BuildLayerInputs; a window
// made stale by a commit is refused until it is sent again.
TEST_F(CompressorTest, SnapKvWithWindowQueriesAndStaleWindow) {
  Init({.dtype = v1::DTYPE_FP16,
        .layers = 2,
        .q_heads = 4,
        .kv_heads = 2,
        .head_dim = 8,
        .tokens_per_page = 4});
  Append(24);
  for (uint32_t l = 0; l < 2; ++l) ApplyWindow(l, 4);
  const eviction::Policy policy{
      .scorer = ScorerKind::kSnapKv, .allocation = Allocation::kAda, .sinks = 2, .window = 4};
  ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, {.keep_ratio = 0.5}));
  EXPECT_TRUE(out.changed);
  EXPECT_EQ(out.tokens_after, 48u);
  for (uint32_t h = 0; h < table_->heads(); ++h) {
    // Sinks and window always stay.
    const auto& p = table_->head(h).positions;
    ASSERT_GE(p.size(), 6u);
    EXPECT_EQ(p[0], 5);
    EXPECT_EQ(p[1], 8);
    EXPECT_EQ(p.back(), 5 + 3 * 23);
    EXPECT_EQ(p[p.size() - 4], 5 + 3 * 20);
  }
  FollowTable();
  ExpectContentsMatchReference();
  pool_->Free(out.freed_pages);

  Append(4);
  EXPECT_THAT(Compress(policy, {.keep_ratio = 0.5}),
              StatusIs(StatusCode::kFailedPrecondition, "window queries of the latest positions"));
  for (uint32_t l = 0; l < 2; ++l) ApplyWindow(l, 4);
  ASSERT_OK_AND_ASSIGN(out, Compress(policy, {.keep_ratio = 0.5}));
  // Ratio 0.5 of 64 tokens; heads shorter than 12 have their share raised to sinks + window.
  EXPECT_GE(out.tokens_after, 32u);
  EXPECT_LE(out.tokens_after, 36u);
  FollowTable();
  ExpectContentsMatchReference();
}

// capkv reads keys and values (both gathered and converted from bf16) and the query moments.
TEST_F(CompressorTest, CapKvWithMomentsCompacts) {
  Init({.dtype = v1::DTYPE_BF16,
        .layers = 2,
        .q_heads = 4,
        .kv_heads = 2,
        .head_dim = 8,
        .tokens_per_page = 5});
  Append(23);
  for (uint32_t l = 0; l < 2; ++l) ApplyMoments(l);
  ASSERT_OK_AND_ASSIGN(
      CompressOutcome out,
      Compress({.scorer = ScorerKind::kCapKv, .sinks = 2, .window = 2}, {.tokens = 8}));
  EXPECT_EQ(out.tokens_after, 8u * 4);
  EXPECT_EQ(out.freed_pages.size(), 4u * (5 - 2));
  EXPECT_GT(checking_->reads, 0);
  FollowTable();
  ExpectContentsMatchReference();
  EXPECT_GT(scratch_.bytes(), 0u);
}

// A failing backend copy leaves the table as it was (no page is lost) and says to drop it.
TEST_F(CompressorTest, CopyFailureLeavesTheTableUnchanged) {
  Init({});
  Append(12);
  const auto heads = Heads();
  checking_->fail_after = 3;
  EXPECT_THAT(Compress({.scorer = ScorerKind::kStreaming, .sinks = 1, .window = 1}, {.tokens = 4}),
              StatusIs(StatusCode::kInternal, "drop it"));
  EXPECT_EQ(Heads(), heads);
}

// capkv-greedy under a uniform budget stops ranking after the most a head can keep; the kept sets
// must equal those of a full greedy ranking computed here from the reference bytes.
TEST_F(CompressorTest, CapKvGreedyMatchesAFullGreedyRanking) {
  Init({.layers = 2, .q_heads = 2, .kv_heads = 2, .head_dim = 8, .tokens_per_page = 4});
  Append(40);
  for (uint32_t l = 0; l < 2; ++l) ApplyMoments(l);
  const eviction::Policy policy{.scorer = ScorerKind::kCapKvGreedy, .sinks = 2, .window = 3};
  for (eviction::Budget budget :
       {eviction::Budget{.tokens = 12}, eviction::Budget{.keep_ratio = 0.3}}) {
    std::vector<eviction::HeadScores> scores(2);
    std::vector<std::vector<float>> keys(table_->heads()), values(table_->heads());
    eviction::ScoringWorkspace ws(1);
    for (uint32_t l = 0; l < 2; ++l) {
      std::vector<const float*> kp, vp;
      for (uint32_t g = 0; g < 2; ++g) {
        const uint32_t h = l * 2 + g;
        for (const Token& t : ref_[h]) {
          for (double x : Decode(t.key)) keys[h].push_back(static_cast<float>(x));
          for (double x : Decode(t.value)) values[h].push_back(static_cast<float>(x));
        }
        kp.push_back(keys[h].data());
        vp.push_back(values[h].data());
      }
      eviction::LayerInputs in;
      BuildLayerInputs(*model_, *table_, stats_, policy, l, kp, vp, &in);
      ASSERT_OK(eviction::ScoreLayerInto(policy, in, ws, &scores[l]));  // greedy_picks = 0: full
    }
    ASSERT_OK_AND_ASSIGN(eviction::Selection want,
                         eviction::SelectTokens(policy, budget, scores, 1));
    ASSERT_OK_AND_ASSIGN(CompressOutcome out, Compress(policy, budget));
    for (uint32_t h = 0; h < table_->heads(); ++h) {
      std::vector<int32_t> positions;
      for (int32_t j : want.kept[h / 2][h % 2]) positions.push_back(ref_[h][j].position);
      EXPECT_EQ(table_->head(h).positions, positions) << "head " << h;
    }
    FollowTable();
    ExpectContentsMatchReference();
    Append(20);
    for (uint32_t l = 0; l < 2; ++l) ApplyMoments(l);
  }
}

}  // namespace
}  // namespace kvkeep::compressor_testing
