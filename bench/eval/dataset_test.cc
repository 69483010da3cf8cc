#include "bench/eval/dataset.h"

#include <cmath>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "bench/eval/rope.h"
#include "common/status_matchers.h"

namespace kvkeep::eval {
namespace {

using ::kvkeep::testing::StatusIs;

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() /
            ("kvkeep_dataset_test_" + std::to_string(::getpid()) + "_" +
             ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    std::filesystem::create_directories(dir_);
    meta_.layers = 1;
    meta_.q_heads = 2;
    meta_.kv_heads = 1;
    meta_.head_dim = 4;
    meta_.prefix = 5;
    meta_.rope_theta = 10000;
    meta_.rope_style = RopeStyle::kInterleaved;
    meta_.needles = {{0, 0, 3}};
    std::mt19937 rng(1);
    std::normal_distribution<float> n;
    layer_.total = 7;
    layer_.kv_len = 7;
    layer_.qpre.resize(2 * 7 * 4);
    for (float& x : layer_.qpre) x = n(rng);
    layer_.q = layer_.qpre;
    for (int h = 0; h < 2; ++h) {
      RotateRows(meta_.rope_style, meta_.rope_theta, 4, 0, 7, layer_.q.data() + h * 28);
    }
    layer_.k.resize(28);
    layer_.v.resize(28);
    for (float& x : layer_.k) x = n(rng);
    for (float& x : layer_.v) x = n(rng);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  void WriteText(const char* name, const std::string& text) {
    std::ofstream(std::filesystem::path(dir_) / name) << text;
  }

  std::string dir_;
  DatasetMeta meta_;
  LayerData layer_;
};

TEST_F(DatasetTest, RoundTripWithoutQpreUnrotatesQueries) {
  ASSERT_OK(WriteMeta(dir_, meta_));
  LayerData no_qpre = layer_;
  no_qpre.qpre.clear();
  ASSERT_OK(WriteLayer(dir_, meta_, 0, no_qpre));
  ASSERT_OK_AND_ASSIGN(DatasetMeta meta, ReadMeta(dir_));
  EXPECT_EQ(meta.rope_style, RopeStyle::kInterleaved);
  ASSERT_EQ(meta.needles.size(), 1u);
  EXPECT_EQ(meta.needles[0].position, 3);
  ASSERT_OK_AND_ASSIGN(LayerData back, ReadLayer(dir_, meta, 0));
  EXPECT_EQ(back.total, 7);
  EXPECT_EQ(back.q, layer_.q);
  ASSERT_EQ(back.qpre.size(), layer_.qpre.size());
  for (size_t i = 0; i < back.qpre.size(); ++i) EXPECT_NEAR(back.qpre[i], layer_.qpre[i], 1e-5);
  EXPECT_EQ(back.wo_hidden, 0);
}

TEST_F(DatasetTest, RopeIsANormPreservingRotationWithTheRightAngle) {
  // Half style, d = 4: pair (0, 2) rotates at frequency 1, pair (1, 3) at theta^(-1/2).
  float x[4] = {1, 0, 0, 0};
  RotateRows(RopeStyle::kHalf, 100.0, 4, /*first_position=*/3, 1, x);
  EXPECT_NEAR(x[0], std::cos(3.0), 1e-6);
  EXPECT_NEAR(x[2], std::sin(3.0), 1e-6);
  float y[4] = {0, 1, 0, 0};
  RotateRows(RopeStyle::kHalf, 100.0, 4, 3, 1, y);
  EXPECT_NEAR(y[1], std::cos(0.3), 1e-6);
  EXPECT_NEAR(y[3], std::sin(0.3), 1e-6);
}

TEST_F(DatasetTest, MissingMetaIsNotFound) {
  EXPECT_THAT(ReadMeta(dir_), StatusIs(absl::StatusCode::kNotFound, "meta.json"));
}

TEST_F(DatasetTest, MetaErrorsNameTheField) {
  WriteText("meta.json", R"({"layers": 1, "q_heads": 2, "kv_heads": 1, "head_dim": 4,
                             "prefix": 5, "rope_theta": 10000})");
  EXPECT_THAT(ReadMeta(dir_), StatusIs(absl::StatusCode::kInvalidArgument, "rope_style"));
  WriteText("meta.json", R"({"layers": 1, "q_heads": 3, "kv_heads": 2, "head_dim": 4,
                             "prefix": 5, "rope_theta": 10000, "rope_style": "half"})");
  EXPECT_THAT(ReadMeta(dir_), StatusIs(absl::StatusCode::kInvalidArgument, "multiple"));
  WriteText("meta.json", R"({"layers": 1, "q_heads": 2, "kv_heads": 1, "head_dim": 4,
                             "prefix": 5, "rope_theta": 10000, "rope_style": "neox"})");
  EXPECT_THAT(ReadMeta(dir_), StatusIs(absl::StatusCode::kInvalidArgument, "rope_style"));
  WriteText("meta.json", R"({"layers": 1, "q_heads": 2, "kv_heads": 1, "head_dim": 4,
                             "prefix": 5, "rope_theta": 10000, "rope_style": "half",
                             "needles": [{"layer": 0, "kv_head": 0, "position": 5}]})");
  EXPECT_THAT(ReadMeta(dir_), StatusIs(absl::StatusCode::kInvalidArgument, "needle"));
  WriteText("meta.json", "{not json");
  EXPECT_THAT(ReadMeta(dir_), StatusIs(absl::StatusCode::kInvalidArgument, "JSON"));
}

TEST_F(DatasetTest, ShapeMismatchesAreRejected) {
  ASSERT_OK(WriteMeta(dir_, meta_));
  ASSERT_OK(WriteLayer(dir_, meta_, 0, layer_));
  DatasetMeta wrong = meta_;
  wrong.head_dim = 8;
  EXPECT_THAT(ReadLayer(dir_, wrong, 0), StatusIs(absl::StatusCode::kInvalidArgument, "L0.q.npy"));
  wrong = meta_;
  wrong.prefix = 7;  // no future query left
  EXPECT_THAT(ReadLayer(dir_, wrong, 0), StatusIs(absl::StatusCode::kInvalidArgument, "future"));
  EXPECT_THAT(ReadLayer(dir_, meta_, 1), StatusIs(absl::StatusCode::kInvalidArgument));
  std::filesystem::remove(std::filesystem::path(dir_) / "L0.v.npy");
  EXPECT_THAT(ReadLayer(dir_, meta_, 0), StatusIs(absl::StatusCode::kNotFound, "L0.v.npy"));
}

TEST_F(DatasetTest, ReadsFloat16Files) {
  ASSERT_OK(WriteMeta(dir_, meta_));
  ASSERT_OK(WriteLayer(dir_, meta_, 0, layer_, NpyDtype::kFloat16));
  ASSERT_OK_AND_ASSIGN(LayerData back, ReadLayer(dir_, meta_, 0));
  for (size_t i = 0; i < back.k.size(); ++i) EXPECT_NEAR(back.k[i], layer_.k[i], 2e-3);
}

}  // namespace
}  // namespace kvkeep::eval
