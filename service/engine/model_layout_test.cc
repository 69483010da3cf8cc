#include "service/engine/model_layout.h"

#include <cmath>

#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

v1::ModelLayout Llama8B() {
  v1::ModelLayout l;
  l.set_name("llama3-8b");
  l.set_layers(32);
  l.set_q_heads(32);
  l.set_kv_heads(8);
  l.set_head_dim(128);
  l.set_dtype(v1::DTYPE_BF16);
  l.set_tokens_per_page(16);
  l.mutable_rope()->set_theta(500000);
  return l;
}

TEST(ModelLayoutTest, GeometryOfLlama8B) {
  ASSERT_OK_AND_ASSIGN(Model m, Model::FromLayout(Llama8B()));
  EXPECT_EQ(m.geometry().token_bytes, 256u);
  EXPECT_EQ(m.geometry().value_offset, 16u * 256);
  EXPECT_EQ(m.geometry().page_bytes, 2u * 16 * 256);
  EXPECT_EQ(m.head_tables(), 256u);
  // 128 KiB of KV per token over all layers and heads, as benchmarks.md says.
  EXPECT_EQ(m.head_tables() * 2 * m.geometry().token_bytes, 128u * 1024);
}

TEST(ModelLayoutTest, DTypeSizes) {
  EXPECT_EQ(DTypeSize(v1::DTYPE_FP16), 2u);
  EXPECT_EQ(DTypeSize(v1::DTYPE_BF16), 2u);
  EXPECT_EQ(DTypeSize(v1::DTYPE_FP32), 4u);
  EXPECT_EQ(DTypeSize(v1::DTYPE_UNSPECIFIED), 0u);
  EXPECT_EQ(DTypeSize(static_cast<v1::DType>(42)), 0u);
}

TEST(ModelLayoutTest, InconsistentLayoutsAreRejected) {
  auto with = [](auto mutate) {
    v1::ModelLayout l = Llama8B();
    mutate(&l);
    return Model::FromLayout(l).status();
  };
  EXPECT_THAT(with([](auto* l) { l->set_layers(0); }), StatusIs(StatusCode::kInvalidArgument, "layers"));
  EXPECT_THAT(with([](auto* l) { l->set_kv_heads(5); }), StatusIs(StatusCode::kInvalidArgument, "kv_heads"));
  EXPECT_THAT(with([](auto* l) { l->set_kv_heads(64); }), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](auto* l) { l->set_head_dim(2048); }), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](auto* l) { l->set_tokens_per_page(1 << 20); }),
              StatusIs(StatusCode::kInvalidArgument, "tokens_per_page"));
  EXPECT_THAT(with([](auto* l) { l->mutable_rope()->set_rotary_dim(130); }),
              StatusIs(StatusCode::kInvalidArgument, "rotary_dim"));
  EXPECT_THAT(with([](auto* l) { l->mutable_rope()->add_inv_freq(1.0f); }),
              StatusIs(StatusCode::kInvalidArgument, "inv_freq"));
  EXPECT_THAT(with([](auto* l) { l->mutable_rope()->set_theta(NAN); }),
              StatusIs(StatusCode::kInvalidArgument, "theta"));
  EXPECT_THAT(with([](auto* l) { l->set_name(""); }), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(with([](auto* l) { l->set_name("a/b"); }), StatusIs(StatusCode::kInvalidArgument));
}

TEST(ModelLayoutTest, GramsAreCheckedAndStored) {
  v1::ModelLayout l = Llama8B();
  l.set_head_dim(4);
  ASSERT_OK_AND_ASSIGN(Model m, Model::FromLayout(l));
  v1::WoGram g;
  g.set_layer(3);
  g.set_q_head(7);
  for (int i = 0; i < 16; ++i) g.add_values(static_cast<float>(i));
  ASSERT_OK(m.AddWoGram(g));
  ASSERT_NE(m.Gram(3, 7), nullptr);
  EXPECT_EQ((*m.Gram(3, 7))[5], 5.0f);
  EXPECT_EQ(m.Gram(3, 6), nullptr);
  g.set_layer(32);
  EXPECT_THAT(m.AddWoGram(g), StatusIs(StatusCode::kInvalidArgument, "outside"));
  g.set_layer(0);
  g.set_values(2, NAN);
  EXPECT_THAT(m.AddWoGram(g), StatusIs(StatusCode::kInvalidArgument, "NaN"));
  g.set_values(2, 1.0f);
  g.add_values(1.0f);
  EXPECT_THAT(m.AddWoGram(g), StatusIs(StatusCode::kInvalidArgument, "head_dim"));
  EXPECT_EQ(m.wo_gram_count(), 1u);
}

}  // namespace
}  // namespace kvkeep
