#include "bench/eval/npy.h"

#include <cmath>
#include <cstdio>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/status_matchers.h"

namespace kvkeep::eval {
namespace {

using ::kvkeep::testing::StatusIs;

class NpyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("kvkeep_npy_test_" + std::to_string(::getpid()) + "_" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string Path(const char* name) const { return (dir_ / name).string(); }
  void WriteRaw(const char* name, const std::string& bytes) const {
    std::ofstream out(Path(name), std::ios::binary);
    out.write(bytes.data(), bytes.size());
  }
  // A v1 header for `dict`, padded to 64 bytes as NumPy does.
  static std::string Header(const std::string& dict, int major = 1) {
    std::string h = dict;
    const size_t prefix = major == 1 ? 10 : 12;
    h.append((64 - (prefix + h.size() + 1) % 64) % 64, ' ');
    h.push_back('\n');
    std::string out = "\x93NUMPY";
    out.push_back(static_cast<char>(major));
    out.push_back(0);
    out.push_back(static_cast<char>(h.size() & 0xff));
    out.push_back(static_cast<char>(h.size() >> 8));
    if (major != 1) out.append(2, '\0');
    return out + h;
  }

  std::filesystem::path dir_;
};

TEST_F(NpyTest, Float32RoundTripIsExact) {
  NpyArray a{{2, 3, 4}, {}};
  for (int i = 0; i < 24; ++i) a.data.push_back(0.37f * i - 3.1f);
  ASSERT_OK(WriteNpy(Path("a.npy"), a, NpyDtype::kFloat32));
  ASSERT_OK_AND_ASSIGN(NpyArray b, ReadNpy(Path("a.npy")));
  EXPECT_EQ(b.shape, a.shape);
  EXPECT_EQ(b.data, a.data);
}

TEST_F(NpyTest, Float16RoundTripWithinHalfPrecision) {
  NpyArray a{{5}, {0.0f, 1.0f, -2.5f, 1e-5f /* subnormal in f16 */, 60000.0f}};
  ASSERT_OK(WriteNpy(Path("h.npy"), a, NpyDtype::kFloat16));
  // Header is version 1.0, 64-byte aligned, with the f16 descriptor.
  std::ifstream in(Path("h.npy"), std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(bytes.size(), 64u);
  EXPECT_EQ(bytes[6], 1);
  EXPECT_EQ((bytes.size() - 5 * 2) % 64, 0u);
  EXPECT_NE(bytes.find("'<f2'"), std::string::npos);
  EXPECT_NE(bytes.find("(5,)"), std::string::npos);

  ASSERT_OK_AND_ASSIGN(NpyArray b, ReadNpy(Path("h.npy")));
  ASSERT_EQ(b.shape, a.shape);
  for (size_t i = 0; i < a.data.size(); ++i) {
    EXPECT_NEAR(b.data[i], a.data[i], std::abs(a.data[i]) * 1e-3 + 1e-7) << i;
  }
}

TEST(HalfTest, ConversionMatchesKnownBitPatterns) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(1e6f), 0x7c00);                 // overflow to +Inf
  EXPECT_EQ(FloatToHalf(5.9604645e-8f), 0x0001);        // smallest subnormal
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), 0x3c00);   // tie rounds to even
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048), 0x3c02);   // tie rounds to even (up)
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x0001), 5.9604645e-8f);
  EXPECT_TRUE(std::isinf(HalfToFloat(0xfc00)));
  EXPECT_TRUE(std::isnan(HalfToFloat(0x7e00)));
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // every finite positive half survives the round trip
    ASSERT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(h))), h) << h;
  }
}

TEST_F(NpyTest, ReadsVersion2Header) {
  std::string bytes = Header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 2);
  const float values[2] = {1.5f, -4.0f};
  bytes.append(reinterpret_cast<const char*>(values), sizeof(values));
  WriteRaw("v2.npy", bytes);
  ASSERT_OK_AND_ASSIGN(NpyArray a, ReadNpy(Path("v2.npy")));
  EXPECT_EQ(a.shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(a.data, (std::vector<float>{1.5f, -4.0f}));
}

TEST_F(NpyTest, MissingFileIsNotFound) {
  EXPECT_THAT(ReadNpy(Path("nope.npy")), StatusIs(absl::StatusCode::kNotFound, "nope.npy"));
}

TEST_F(NpyTest, RejectsBadMagic) {
  WriteRaw("bad.npy", "PK\x03\x04 this is a zip file, not an npy");
  EXPECT_THAT(ReadNpy(Path("bad.npy")), StatusIs(absl::StatusCode::kInvalidArgument, "magic"));
}

TEST_F(NpyTest, RejectsUnsupportedDtypes) {
  for (const char* descr : {"<f8", ">f4", "<i4", "|b1"}) {
    std::string bytes = Header(std::string("{'descr': '") + descr +
                               "', 'fortran_order': False, 'shape': (1,), }");
    bytes.append(8, '\0');
    WriteRaw("t.npy", bytes);
    EXPECT_THAT(ReadNpy(Path("t.npy")), StatusIs(absl::StatusCode::kInvalidArgument, descr));
  }
}

TEST_F(NpyTest, RejectsFortranOrder) {
  std::string bytes = Header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }");
  bytes.append(16, '\0');
  WriteRaw("f.npy", bytes);
  EXPECT_THAT(ReadNpy(Path("f.npy")), StatusIs(absl::StatusCode::kInvalidArgument, "Fortran"));
}

TEST_F(NpyTest, RejectsTruncatedData) {
  std::string bytes = Header("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }");
  bytes.append(4 * 11, '\0');  // one element short
  WriteRaw("short.npy", bytes);
  EXPECT_THAT(ReadNpy(Path("short.npy")), StatusIs(absl::StatusCode::kInvalidArgument, "truncated"));
}

TEST_F(NpyTest, RejectsUnknownVersion) {
  std::string bytes = Header("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }");
  bytes[6] = 9;
  bytes.append(4, '\0');
  WriteRaw("v9.npy", bytes);
  EXPECT_THAT(ReadNpy(Path("v9.npy")), StatusIs(absl::StatusCode::kInvalidArgument, "version 9"));
}

TEST_F(NpyTest, WriteRejectsShapeMismatch) {
  NpyArray a{{2, 2}, {1, 2, 3}};
  EXPECT_THAT(WriteNpy(Path("x.npy"), a), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvkeep::eval
