#include "service/fleet/page_value.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "common/status_matchers.h"
#include "service/fleet/layout_hash.h"
#include "service/storage/xxhash64.h"

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

TEST_F(PageValueTest, SealingIntoAReusedBufferOverwritesItWhole) {
  // A buffer of the value's size holding an earlier value (the writer's reuse), one that is too
  // short and one that is too long full of garbage: each becomes exactly a fresh seal would.
  const std::string earlier = Seal();
  for (std::string buffer : {earlier, std::string(7, 'x'),
                             std::string(earlier.size() + 100, '\xff')}) {
    ASSERT_OK(SealPageValueInto(shape_, layout_hash_, kName, payload_, key_, &buffer));
    EXPECT_EQ(buffer.size(), payload_.size() + kPageValueOverheadBytes);
    EXPECT_NE(buffer, earlier);  // a fresh nonce, not the old bytes
    std::string out;
    ASSERT_EQ(Open(buffer, &out), PageValueVerdict::kOk);
    EXPECT_EQ(out, payload_);
  }
  std::string wrong;
  EXPECT_THAT(SealPageValueInto(shape_, layout_hash_, kName, payload_.substr(1), key_, &wrong),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

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


// A shape whose payload spans several 64 KiB chunks and ends mid-chunk: 8 layers × 3 KV heads ×
// 8,704-byte pages ((K + V) × 16 tokens × 136 dims × 2 bytes) = 208,896 bytes, 4 chunks.
class PageValueIntoTest : public ::testing::Test {
 protected:
  PageValueIntoTest() {
    layout_.set_name("chunky");
    layout_.set_layers(8);
    layout_.set_q_heads(6);
    layout_.set_kv_heads(3);
    layout_.set_head_dim(136);  // 8,704-byte pages: chunks do not fall on page boundaries
    layout_.set_dtype(v1::DTYPE_BF16);
    layout_.set_tokens_per_page(16);
    shape_ = PageShape::Of(layout_);
    layout_hash_ = FleetLayoutHash(layout_);
    std::mt19937 rng(11);
    payload_.resize(shape_.payload_bytes());
    for (char& c : payload_) c = static_cast<char>(rng());
    absl::StatusOr<std::string> value = SealPageValue(shape_, layout_hash_, kName, payload_, key_);
    EXPECT_TRUE(value.ok()) << value.status();
    value_ = value.ok() ? *value : std::string();
  }

  // Opens `value` into `out`, checking the pieces come in order and within the payload.
  absl::StatusOr<PageValueVerdict> OpenInto(absl::string_view value, std::string* out,
                                            int* pieces) {
    out->assign(shape_.payload_bytes(), '\0');
    *pieces = 0;
    uint64_t next = 0;
    return OpenPageValueInto(value, shape_, layout_hash_, kName, key_,
                             [&](uint64_t offset, absl::string_view bytes) {
                               EXPECT_EQ(offset, next);
                               EXPECT_LE(bytes.size(), kOpenChunkBytes);
                               EXPECT_LE(offset + bytes.size(), out->size());
                               next = offset + bytes.size();
                               out->replace(offset, bytes.size(), bytes.data(), bytes.size());
                               ++*pieces;
                               return absl::OkStatus();
                             });
  }

  static constexpr char kName[] = "kvkeep:8899aabbccddeeff:01";
  v1::ModelLayout layout_;
  PageShape shape_;
  std::string layout_hash_, payload_, value_;
  std::string key_ = std::string(32, 'q');
};

TEST_F(PageValueIntoTest, OpensInOrderedChunksBitExact) {
  ASSERT_GT(shape_.payload_bytes(), 2 * kOpenChunkBytes);
  ASSERT_NE(shape_.payload_bytes() % kOpenChunkBytes, 0u);
  std::string out;
  int pieces = 0;
  ASSERT_OK_AND_ASSIGN(PageValueVerdict verdict, OpenInto(value_, &out, &pieces));
  EXPECT_EQ(verdict, PageValueVerdict::kOk);
  EXPECT_EQ(out, payload_);
  EXPECT_EQ(pieces, static_cast<int>((shape_.payload_bytes() + kOpenChunkBytes - 1) /
                                     kOpenChunkBytes));
}

TEST_F(PageValueIntoTest, TheFormatIsUnchangedChecksumOverEverythingBeforeIt) {
  // Values sealed in one pass must still open on nodes that check the whole value at once.
  const size_t checked = value_.size() - 8;
  uint64_t stored = 0;
  for (int i = 0; i < 8; ++i) {
    stored |= uint64_t{static_cast<unsigned char>(value_[checked + i])} << (8 * i);
  }
  EXPECT_EQ(stored, XxHash64(absl::string_view(value_).substr(0, checked)));
  std::string whole;
  EXPECT_EQ(OpenPageValue(value_, shape_, layout_hash_, kName, key_, &whole),
            PageValueVerdict::kOk);
  EXPECT_EQ(whole, payload_);
}

TEST_F(PageValueIntoTest, ACorruptedLastChunkIsRefusedAfterTheBytesWereWritten) {
  std::string bad = value_;
  bad[kPageValueHeaderBytes + payload_.size() - 1] ^= 0x01;  // the payload's last byte
  std::string out;
  int pieces = 0;
  ASSERT_OK_AND_ASSIGN(PageValueVerdict verdict, OpenInto(bad, &out, &pieces));
  EXPECT_EQ(verdict, PageValueVerdict::kChecksum);
  EXPECT_GT(pieces, 0);  // written before the verdict: the caller must discard them
}

TEST_F(PageValueIntoTest, AWrongTagWithAGoodChecksumFailsAuthentication) {
  // Planted by someone who can compute XXH64 but has no key: flip a ciphertext byte and
  // recompute the checksum.
  std::string planted = value_;
  planted[kPageValueHeaderBytes + 70000] ^= 0x40;
  const size_t checked = planted.size() - 8;
  const uint64_t sum = XxHash64(absl::string_view(planted).substr(0, checked));
  for (int i = 0; i < 8; ++i) planted[checked + i] = static_cast<char>(sum >> (8 * i));
  std::string out;
  int pieces = 0;
  ASSERT_OK_AND_ASSIGN(PageValueVerdict verdict, OpenInto(planted, &out, &pieces));
  EXPECT_EQ(verdict, PageValueVerdict::kAuthentication);
}

TEST_F(PageValueIntoTest, AHeaderMismatchWritesNothing) {
  v1::ModelLayout other = layout_;
  other.set_kv_heads(2);
  other.set_q_heads(4);
  int pieces = 0;
  absl::StatusOr<PageValueVerdict> verdict = OpenPageValueInto(
      value_, PageShape::Of(other), FleetLayoutHash(other), kName, key_,
      [&](uint64_t, absl::string_view) {
        ++pieces;
        return absl::OkStatus();
      });
  ASSERT_OK(verdict);
  EXPECT_EQ(*verdict, PageValueVerdict::kHeaderMismatch);
  EXPECT_EQ(pieces, 0);
}

TEST_F(PageValueIntoTest, AWriterErrorStopsTheOpening) {
  int pieces = 0;
  absl::StatusOr<PageValueVerdict> verdict = OpenPageValueInto(
      value_, shape_, layout_hash_, kName, key_, [&](uint64_t, absl::string_view) {
        ++pieces;
        return absl::InternalError("pool page gone");
      });
  EXPECT_THAT(verdict, StatusIs(absl::StatusCode::kInternal, "pool page gone"));
  EXPECT_EQ(pieces, 1);
}

// Direct targets: chunks at even chunk indexes go straight into `out`, odd ones through the
// writer (so both paths and their mix are covered).
absl::StatusOr<PageValueVerdict> OpenMixed(absl::string_view value, const PageShape& shape,
                                           absl::string_view layout_hash, absl::string_view name,
                                           absl::string_view key, std::string* out,
                                           int* targeted, int* written) {
  out->assign(shape.payload_bytes(), '\0');
  *targeted = *written = 0;
  return OpenPageValueInto(
      value, shape, layout_hash, name, key,
      [&](uint64_t offset, size_t size) -> char* {
        EXPECT_EQ(offset % kOpenChunkBytes, 0u);
        EXPECT_LE(offset + size, out->size());
        if ((offset / kOpenChunkBytes) % 2 == 1) return nullptr;
        ++*targeted;
        return out->data() + offset;
      },
      [&](uint64_t offset, absl::string_view bytes) {
        EXPECT_EQ((offset / kOpenChunkBytes) % 2, 1u);
        out->replace(offset, bytes.size(), bytes.data(), bytes.size());
        ++*written;
        return absl::OkStatus();
      });
}

TEST_F(PageValueIntoTest, DecryptsStraightIntoTargetsAndWritesTheRestBitExact) {
  std::string out;
  int targeted = 0, written = 0;
  ASSERT_OK_AND_ASSIGN(PageValueVerdict verdict, OpenMixed(value_, shape_, layout_hash_, kName,
                                                           key_, &out, &targeted, &written));
  EXPECT_EQ(verdict, PageValueVerdict::kOk);
  EXPECT_EQ(out, payload_);
  EXPECT_GT(targeted, 0);
  EXPECT_GT(written, 0);
  EXPECT_EQ(targeted + written, static_cast<int>((shape_.payload_bytes() + kOpenChunkBytes - 1) /
                                                 kOpenChunkBytes));
}

TEST_F(PageValueIntoTest, ACorruptedValueIsRefusedWhenDecryptedIntoTargets) {
  for (size_t at : {kPageValueHeaderBytes + 5, kPageValueHeaderBytes + kOpenChunkBytes + 9,
                    value_.size() - 20 /* the tag */, value_.size() - 3 /* the checksum */}) {
    std::string bad = value_;
    bad[at] ^= 0x10;
    std::string out;
    int targeted = 0, written = 0;
    ASSERT_OK_AND_ASSIGN(PageValueVerdict verdict, OpenMixed(bad, shape_, layout_hash_, kName,
                                                             key_, &out, &targeted, &written));
    EXPECT_EQ(verdict, PageValueVerdict::kChecksum) << "byte " << at;
  }
  // Another key (checksum fine): decrypted into the targets, then refused by the tag.
  std::string out;
  int targeted = 0, written = 0;
  ASSERT_OK_AND_ASSIGN(PageValueVerdict verdict,
                       OpenMixed(value_, shape_, layout_hash_, kName, std::string(32, 'z'), &out,
                                 &targeted, &written));
  EXPECT_EQ(verdict, PageValueVerdict::kAuthentication);
  EXPECT_GT(targeted, 0);
  EXPECT_NE(out, payload_);
}

}  // namespace
}  // namespace kvkeep::fleet
