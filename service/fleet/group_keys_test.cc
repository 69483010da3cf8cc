#include "service/fleet/group_keys.h"

#include <gtest/gtest.h>

#include "absl/strings/escaping.h"
#include "common/status_matchers.h"
#include "service/fleet/fleet_keys.h"
#include "service/fleet/fleet_scope.h"
#include "service/fleet/layout_hash.h"

namespace kvkeep::fleet {
namespace {

using ::kvkeep::testing::StatusIs;

constexpr char kPinnedLlamaHash[] =
    "b57448bed37cf7ffba236b5a13af53a9d9486f7ed3e0233da5d4f7259eaeb256";

TEST(HkdfSha256, MatchesRfc5869TestCase1) {
  const std::string ikm = absl::HexStringToBytes("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b");
  const std::string salt = absl::HexStringToBytes("000102030405060708090a0b0c");
  const std::string info = absl::HexStringToBytes("f0f1f2f3f4f5f6f7f8f9");
  ASSERT_OK_AND_ASSIGN(std::string okm, HkdfSha256(ikm, salt, info, 42));
  EXPECT_EQ(absl::BytesToHexString(okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
}

TEST(DeriveGroupKeys, IndependentKeysFromOneSecret) {
  ASSERT_OK_AND_ASSIGN(GroupKeys a, DeriveGroupKeys("0123456789abcdef-secret-a"));
  ASSERT_OK_AND_ASSIGN(GroupKeys a2, DeriveGroupKeys("0123456789abcdef-secret-a"));
  ASSERT_OK_AND_ASSIGN(GroupKeys b, DeriveGroupKeys("0123456789abcdef-secret-b"));
  EXPECT_EQ(a.value_key.size(), 32u);
  EXPECT_EQ(a.chain_salt.size(), 32u);
  EXPECT_EQ(a.fingerprint.size(), 16u);
  EXPECT_NE(a.value_key, a.chain_salt);
  EXPECT_EQ(a.value_key, a2.value_key);
  EXPECT_EQ(a.chain_salt, a2.chain_salt);
  EXPECT_EQ(a.fingerprint, a2.fingerprint);
  EXPECT_NE(a.value_key, b.value_key);
  EXPECT_NE(a.chain_salt, b.chain_salt);
  EXPECT_NE(a.fingerprint, b.fingerprint);
}

TEST(DeriveGroupKeys, RefusesShortSecrets) {
  EXPECT_THAT(DeriveGroupKeys("too short"), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(DeriveGroupKeys(""), StatusIs(absl::StatusCode::kInvalidArgument));
}

v1::ModelLayout Llama() {
  v1::ModelLayout layout;
  layout.set_name("llama3-8b");
  layout.set_layers(32);
  layout.set_q_heads(32);
  layout.set_kv_heads(8);
  layout.set_head_dim(128);
  layout.set_dtype(v1::DTYPE_BF16);
  layout.set_tokens_per_page(16);
  layout.mutable_rope()->set_theta(500000);
  return layout;
}

TEST(FleetLayoutHash, IsPinned) {
  // The encoding is part of the wire format: every node must compute this exact value.
  EXPECT_EQ(absl::BytesToHexString(FleetLayoutHash(Llama())), kPinnedLlamaHash);
}

TEST(FleetLayoutHash, EveryFieldCounts) {
  const std::string base = FleetLayoutHash(Llama());
  auto changed = [&](auto edit) {
    v1::ModelLayout layout = Llama();
    edit(layout);
    return FleetLayoutHash(layout) != base;
  };
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.set_name("llama3-8b-ft"); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.set_layers(31); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.set_q_heads(16); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.set_kv_heads(4); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.set_head_dim(64); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.set_dtype(v1::DTYPE_FP16); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.set_tokens_per_page(32); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.mutable_rope()->set_theta(10000); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.mutable_rope()->set_rotary_dim(64); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.mutable_rope()->set_interleaved(true); }));
  EXPECT_TRUE(changed([](v1::ModelLayout& l) { l.mutable_rope()->add_inv_freq(1.0f); }));
}

TEST(FleetLayoutHash, EquivalentSpellingsAgree) {
  const std::string base = FleetLayoutHash(Llama());
  v1::ModelLayout explicit_rotary = Llama();
  explicit_rotary.mutable_rope()->set_rotary_dim(128);  // 0 means head_dim
  EXPECT_EQ(FleetLayoutHash(explicit_rotary), base);
  // The serialized bytes may differ (unknown fields, order); the hash does not look at them.
  v1::ModelLayout reparsed;
  ASSERT_TRUE(
      reparsed.ParseFromString(Llama().SerializeAsString() + std::string("\xa0\x06\x01", 3)));
  EXPECT_EQ(FleetLayoutHash(reparsed), base);
}

TEST(FleetKeys, SameGroupSameKeysOtherGroupOthers) {
  const std::vector<uint32_t> tokens = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  ASSERT_OK_AND_ASSIGN(FleetScope a, FleetScope::Make("a", "0123456789abcdef-a", Llama()));
  ASSERT_OK_AND_ASSIGN(FleetScope a_elsewhere,
                       FleetScope::Make("a2", "0123456789abcdef-a", Llama()));
  ASSERT_OK_AND_ASSIGN(FleetScope b, FleetScope::Make("b", "0123456789abcdef-b", Llama()));
  v1::ModelLayout other_layout = Llama();
  other_layout.set_tokens_per_page(4);
  ASSERT_OK_AND_ASSIGN(FleetScope a4, FleetScope::Make("a", "0123456789abcdef-a", other_layout));

  const std::vector<std::string> keys = a.KeyNames(tokens);  // 16-token pages: none full
  EXPECT_TRUE(keys.empty());
  const std::vector<std::string> four = a4.KeyNames(tokens);  // 2 full pages of 4
  ASSERT_EQ(four.size(), 2u);
  for (const std::string& key : four) {
    EXPECT_EQ(key.rfind("kvkeep:", 0), 0u) << key;
    EXPECT_EQ(key.size(), 7 + 16 + 1 + 64) << key;
  }
  std::vector<uint32_t> long_tokens(64);
  for (size_t i = 0; i < long_tokens.size(); ++i) long_tokens[i] = static_cast<uint32_t>(i * 7);
  EXPECT_EQ(a.KeyNames(long_tokens), a_elsewhere.KeyNames(long_tokens));  // group name: no part
  EXPECT_NE(a.KeyNames(long_tokens)[0], b.KeyNames(long_tokens)[0]);
  // A prompt differing in page 2 shares pages 0 and 1 only.
  std::vector<uint32_t> diverged = long_tokens;
  diverged[2 * 16 + 3] += 1;
  const auto k1 = a.KeyNames(long_tokens), k2 = a.KeyNames(diverged);
  ASSERT_EQ(k1.size(), 4u);
  EXPECT_EQ(k1[0], k2[0]);
  EXPECT_EQ(k1[1], k2[1]);
  EXPECT_NE(k1[2], k2[2]);
  EXPECT_NE(k1[3], k2[3]);
}

TEST(FleetScope, RefusesLayoutsWithoutBytes) {
  v1::ModelLayout layout = Llama();
  layout.set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_THAT(FleetScope::Make("a", "0123456789abcdef-a", layout),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvkeep::fleet
