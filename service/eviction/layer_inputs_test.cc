#include "service/eviction/layer_inputs.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "common/status_matchers.h"

namespace kvkeep::eviction {
namespace {

using ::kvkeep::testing::StatusIs;
constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
constexpr auto kPrecondition = absl::StatusCode::kFailedPrecondition;

// 4 query heads, 2 KV heads, head_dim 4, 10 tokens each, every statistic sent.
struct Fixture {
  std::vector<float> k0, k1, v0, v1;
  LayerInputs in;
  Fixture() {
    k0.assign(40, 0.5f);
    k1.assign(40, -0.25f);
    v0.assign(40, 1.0f);
    v1.assign(40, 2.0f);
    in.q_heads = 4;
    in.kv_heads = 2;
    in.head_dim = 4;
    in.heads = {HeadKV{10, k0.data(), v0.data(), nullptr}, HeadKV{10, k1.data(), v1.data(), nullptr}};
    in.next_position = 10;
    in.window = 2;
    in.window_queries.assign(4 * 2 * 4, 0.1f);
    in.query_sum.assign(16, 1.0);
    in.query_count = 3;
    in.query_sq_sum.assign(16, 2.0);
    in.attention_mass.assign(4, std::vector<float>(10, 0.1f));
    in.sketch_k = 2;
    in.sketch_centroids.assign(4 * 2 * 4, 0.3f);
    in.sketch_weights = {1, 0, 2, 3, 5, 0, 1, 1};
  }
};

Policy With(ScorerKind kind) {
  Policy p;
  p.scorer = kind;
  return p;
}

TEST(ValidateLayerInputs, AcceptsACompleteLayerForEveryScorer) {
  Fixture f;
  for (int k = 0; k <= static_cast<int>(ScorerKind::kQSketch); ++k) {
    EXPECT_OK(ValidateLayerInputs(f.in, With(static_cast<ScorerKind>(k))));
  }
  f.in.sketch_post_rope = true;
  EXPECT_OK(ValidateLayerInputs(f.in, With(ScorerKind::kQSketchPost)));
}

TEST(ValidateLayerInputs, QuerySketchShapesValuesAndRopeSide) {
  for (ScorerKind kind : {ScorerKind::kQSketch, ScorerKind::kKnorm}) {
    SCOPED_TRACE(std::string(ScorerName(kind)));
    Fixture a;
    a.in.sketch_weights.pop_back();
    EXPECT_THAT(ValidateLayerInputs(a.in, With(kind)), StatusIs(kInvalid, "sketch_weights has 7"));
    Fixture b;
    b.in.sketch_centroids.resize(31);
    EXPECT_THAT(ValidateLayerInputs(b.in, With(kind)),
                StatusIs(kInvalid, "sketch_centroids has 31"));
    Fixture c;
    c.in.sketch_centroids[17] = std::numeric_limits<float>::quiet_NaN();
    EXPECT_THAT(ValidateLayerInputs(c.in, With(kind)), StatusIs(kInvalid, "flat index 17"));
    Fixture d;
    d.in.sketch_weights[3] = -1;
    EXPECT_THAT(ValidateLayerInputs(d.in, With(kind)), StatusIs(kInvalid, "sketch_weights[1][1]"));
    Fixture e;
    e.in.sketch_weights[4] = e.in.sketch_weights[5] = 0;
    EXPECT_THAT(ValidateLayerInputs(e.in, With(kind)), StatusIs(kInvalid, "query head 2"));
    Fixture g;
    g.in.sketch_weights[0] = std::numeric_limits<float>::infinity();
    EXPECT_THAT(ValidateLayerInputs(g.in, With(kind)), StatusIs(kInvalid, "sketch_weights[0][0]"));
    Fixture h;
    h.in.sketch_k = 0;
    EXPECT_THAT(ValidateLayerInputs(h.in, With(kind)), StatusIs(kInvalid, "sketch_k"));
  }
  Fixture missing;
  missing.in.sketch_k = 0;
  missing.in.sketch_centroids.clear();
  missing.in.sketch_weights.clear();
  EXPECT_OK(ValidateLayerInputs(missing.in, With(ScorerKind::kKnorm)));
  EXPECT_THAT(ValidateLayerInputs(missing.in, With(ScorerKind::kQSketch)),
              StatusIs(kPrecondition, "query sketch"));
  Fixture side;
  side.in.sketch_post_rope = true;
  EXPECT_THAT(ValidateLayerInputs(side.in, With(ScorerKind::kQSketch)),
              StatusIs(kPrecondition, "pre-RoPE"));
  EXPECT_OK(ValidateLayerInputs(side.in, With(ScorerKind::kKnorm)));  // not read: side irrelevant
}

TEST(ValidateLayerInputs, RejectsInconsistentHeadCounts) {
  Fixture f;
  f.in.q_heads = 3;
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kKnorm)),
              StatusIs(kInvalid, "not a multiple of kv_heads"));
  Fixture g;
  g.in.heads.pop_back();
  EXPECT_THAT(ValidateLayerInputs(g.in, With(ScorerKind::kKnorm)),
              StatusIs(kInvalid, "expected kv_heads = 2"));
  Fixture h;
  h.in.head_dim = 0;
  EXPECT_THAT(ValidateLayerInputs(h.in, With(ScorerKind::kKnorm)), StatusIs(kInvalid, "head_dim"));
}

TEST(ValidateLayerInputs, RejectsNonFiniteValuesWhereTheScorerReadsThem) {
  Fixture f;
  f.k1[13] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kKnorm)),
              StatusIs(kInvalid, "heads[1].keys holds a non-finite value"));
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kKnorm)),
              StatusIs(kInvalid, "flat index 13"));
  // h2o does not read keys.
  EXPECT_OK(ValidateLayerInputs(f.in, With(ScorerKind::kH2o)));

  Fixture g;
  g.v0[39] = std::numeric_limits<float>::infinity();
  EXPECT_THAT(ValidateLayerInputs(g.in, With(ScorerKind::kCapKv)),
              StatusIs(kInvalid, "heads[0].values"));
  Fixture h;
  h.in.window_queries[5] = -std::numeric_limits<float>::infinity();
  EXPECT_THAT(ValidateLayerInputs(h.in, With(ScorerKind::kSnapKv)),
              StatusIs(kInvalid, "window_queries"));
  Fixture m;
  m.in.attention_mass[2][4] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THAT(ValidateLayerInputs(m.in, With(ScorerKind::kH2o)),
              StatusIs(kInvalid, "attention_mass[2]"));
  Fixture q;
  q.in.query_sum[3] = std::nan("");
  EXPECT_THAT(ValidateLayerInputs(q.in, With(ScorerKind::kExpected)),
              StatusIs(kInvalid, "query_sum"));
}

TEST(ValidateLayerInputs, RejectsWrongStatisticSizes) {
  Fixture f;
  f.in.window_queries.pop_back();
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kSnapKv)),
              StatusIs(kInvalid, "window_queries has 31 floats"));
  Fixture g;
  g.in.query_sum.resize(15);
  EXPECT_THAT(ValidateLayerInputs(g.in, With(ScorerKind::kCapKv)), StatusIs(kInvalid, "query_sum"));
  Fixture h;
  h.in.attention_mass[1].resize(9);
  EXPECT_THAT(ValidateLayerInputs(h.in, With(ScorerKind::kObserved)),
              StatusIs(kInvalid, "attention_mass[1] has 9 entries"));
  Fixture m;
  m.in.wo_gram.assign(10, 1.0f);
  EXPECT_THAT(ValidateLayerInputs(m.in, With(ScorerKind::kLaProx)), StatusIs(kInvalid, "wo_gram"));
  Fixture q;
  q.in.query_count = 0;
  EXPECT_THAT(ValidateLayerInputs(q.in, With(ScorerKind::kCapKv)),
              StatusIs(kInvalid, "query_count"));
  Fixture r;
  r.in.window = 11;
  r.in.window_queries.assign(4 * 11 * 4, 0.0f);
  EXPECT_THAT(ValidateLayerInputs(r.in, With(ScorerKind::kSnapKv)),
              StatusIs(kInvalid, "exceeds next_position"));
}

TEST(ValidateLayerInputs, MissingStatisticsAreFailedPrecondition) {
  Fixture f;
  f.in.window_queries.clear();
  f.in.window = 0;
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kSnapKv)),
              StatusIs(kPrecondition, "window_queries"));
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kTova)), StatusIs(kPrecondition));
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kLaProx)), StatusIs(kPrecondition));
  EXPECT_OK(ValidateLayerInputs(f.in, With(ScorerKind::kKnorm)));
  Fixture g;
  g.in.query_sum.clear();
  g.in.query_sq_sum.clear();
  EXPECT_THAT(ValidateLayerInputs(g.in, With(ScorerKind::kCapKvDot)),
              StatusIs(kPrecondition, "query moments"));
  EXPECT_THAT(ValidateLayerInputs(g.in, With(ScorerKind::kExpected)), StatusIs(kPrecondition));
  Fixture h;
  h.in.attention_mass.clear();
  EXPECT_THAT(ValidateLayerInputs(h.in, With(ScorerKind::kH2o)),
              StatusIs(kPrecondition, "attention_mass"));
}

TEST(ValidateLayerInputs, NullTensorsAreInvalidOnlyWhenRead) {
  Fixture f;
  f.in.heads[1].values = nullptr;
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kCapKv)),
              StatusIs(kInvalid, "heads[1].values is null"));
  EXPECT_OK(ValidateLayerInputs(f.in, With(ScorerKind::kKnorm)));
}

TEST(ValidateLayerInputs, RejectsBadPositions) {
  Fixture f;
  std::vector<int32_t> pos = {0, 1, 2, 3, 5, 5, 6, 7, 8, 9};
  f.in.heads[0].positions = pos.data();
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kKnorm)),
              StatusIs(kInvalid, "not strictly ascending at index 5"));
  Fixture g;
  std::vector<int32_t> far = {0, 1, 2, 3, 4, 5, 6, 7, 8, 40};
  g.in.heads[0].positions = far.data();
  EXPECT_THAT(ValidateLayerInputs(g.in, With(ScorerKind::kKnorm)),
              StatusIs(kInvalid, "next_position (10) must exceed"));
  g.in.next_position = 0;  // derived: 41
  EXPECT_OK(ValidateLayerInputs(g.in, With(ScorerKind::kKnorm)));
  EXPECT_EQ(EffectiveNextPosition(g.in), 41);
}

TEST(ValidateLayerInputs, RejectsBadRopeSpecs) {
  Fixture f;
  f.in.rope.rotary_dim = 3;
  EXPECT_THAT(ValidateLayerInputs(f.in, With(ScorerKind::kCapKv)),
              StatusIs(kInvalid, "rotary_dim"));
  Fixture g;
  g.in.rope.inv_freq = {1.0f};
  EXPECT_THAT(ValidateLayerInputs(g.in, With(ScorerKind::kCapKv)),
              StatusIs(kInvalid, "inv_freq has 1 entries, expected rotary_dim / 2 = 2"));
  Fixture h;
  h.in.rope.theta = -1;
  EXPECT_THAT(ValidateLayerInputs(h.in, With(ScorerKind::kCapKv)), StatusIs(kInvalid, "theta"));
}

}  // namespace
}  // namespace kvkeep::eviction
