#include "service/fleet/page_value.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "common/status_matchers.h"
#include "service/fleet/layout_hash.h"

namespace kvkeep::fleet {
namespace {

using ::kvkeep::testing::StatusIs;

class PageValueTest : public ::testing::Test {
 protected:
  PageValueTest() {
    layout_.set_name("tiny");
    layout_.set_layers(2);
    layout_.set_q_heads(4);
    layout_.set_kv_heads(2);
    layout_.set_head_dim(8);
    layout_.set_dtype(v1::DTYPE_FP16);
    layout_.set_tokens_per_page(4);
    shape_ = PageShape::Of(layout_);
    layout_hash_ = FleetLayoutHash(layout_);
    std::mt19937 rng(7);
    payload_.resize(shape_.payload_bytes());
    for (char& c : payload_) c = static_cast<char>(rng());
  }

  std::string Seal() {
    absl::StatusOr<std::string> value = SealPageValue(shape_, layout_hash_, kName, payload_, key_);
    EXPECT_TRUE(value.ok()) << value.status();
    return value.ok() ? *value : std::string();
  }
  PageValueVerdict Open(const std::string& value, std::string* out = nullptr) {
    std::string scratch;
    return OpenPageValue(value, shape_, layout_hash_, kName, key_, out != nullptr ? out : &scratch);
  }

  static constexpr char kName[] = "kvkeep:0011223344556677:aa";
  v1::ModelLayout layout_;
  PageShape shape_;
  std::string layout_hash_;
  std::string payload_;
  std::string key_ = std::string(32, 'k');
};

TEST_F(PageValueTest, ShapeGivesPayloadSize) {
  // 2 layers × 2 heads × (K + V) × 4 tokens × 8 dims × 2 bytes.
  EXPECT_EQ(shape_.page_bytes(), 2u * 4 * 8 * 2);
  EXPECT_EQ(shape_.payload_bytes(), 2u * 2 * 128);
}

TEST_F(PageValueTest, RoundTripIsBitExact) {
  const std::string value = Seal();
  EXPECT_EQ(value.size(), payload_.size() + kPageValueOverheadBytes);
  // Encrypted: the payload does not appear in the value.
  EXPECT_EQ(value.find(payload_.substr(0, 32)), std::string::npos);
  std::string out;
  ASSERT_EQ(Open(value, &out), PageValueVerdict::kOk);
  EXPECT_EQ(out, payload_);
}

TEST_F(PageValueTest, EachSealUsesAFreshNonce) { EXPECT_NE(Seal(), Seal()); }

TEST_F(PageValueTest, AnyFlippedByteIsRefused) {
  const std::string value = Seal();
  for (size_t i = 0; i < value.size(); ++i) {
    std::string bad = value;
    bad[i] ^= 0x01;
    EXPECT_NE(Open(bad), PageValueVerdict::kOk) << "byte " << i;
  }
}

TEST_F(PageValueTest, CorruptedPayloadIsAChecksumFailure) {
  std::string value = Seal();
  value[kPageValueHeaderBytes + 5] ^= 0x40;
  EXPECT_EQ(Open(value), PageValueVerdict::kChecksum);
}

TEST_F(PageValueTest, ShortOrTruncatedValuesAreShort) {
  const std::string value = Seal();
  EXPECT_EQ(Open(value.substr(0, value.size() - 1)), PageValueVerdict::kShort);
  EXPECT_EQ(Open(value.substr(0, 20)), PageValueVerdict::kShort);
  EXPECT_EQ(Open(value + "x"), PageValueVerdict::kShort);
}

TEST_F(PageValueTest, OtherFormatsAreOtherVersion) {
  std::string value = Seal();
  EXPECT_EQ(Open(""), PageValueVerdict::kOtherVersion);
  EXPECT_EQ(Open("hello world"), PageValueVerdict::kOtherVersion);
  value[4] = 2;  // version 2
  EXPECT_EQ(Open(value), PageValueVerdict::kOtherVersion);
}

TEST_F(PageValueTest, AnotherShapeOrLayoutIsAHeaderMismatch) {
  const std::string value = Seal();
  std::string out;
  PageShape fp32 = shape_;
  fp32.dtype = v1::DTYPE_BF16;  // same size, other dtype
  EXPECT_EQ(OpenPageValue(value, fp32, layout_hash_, kName, key_, &out),
            PageValueVerdict::kHeaderMismatch);
  v1::ModelLayout other = layout_;
  other.set_name("tiny-finetune");
  EXPECT_EQ(OpenPageValue(value, shape_, FleetLayoutHash(other), kName, key_, &out),
            PageValueVerdict::kHeaderMismatch);
}

TEST_F(PageValueTest, AnotherKeyOrKeyNameFailsAuthentication) {
  const std::string value = Seal();
  std::string out;
  EXPECT_EQ(OpenPageValue(value, shape_, layout_hash_, kName, std::string(32, 'K'), &out),
            PageValueVerdict::kAuthentication);
  // The same bytes under another key name (a value copied to another page) do not open.
  EXPECT_EQ(OpenPageValue(value, shape_, layout_hash_, "kvkeep:0011223344556677:ab", key_, &out),
            PageValueVerdict::kAuthentication);
}

TEST_F(PageValueTest, SealRefusesAPayloadOfTheWrongSize) {
  EXPECT_THAT(SealPageValue(shape_, layout_hash_, kName, payload_.substr(1), key_),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(SealPageValue(shape_, layout_hash_, kName, payload_, "short key"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(SealPageValue(PageShape{}, layout_hash_, kName, "", key_),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvkeep::fleet
