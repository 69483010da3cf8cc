// Node records: their text form and the majority rule that names a differing node.
#include "service/fleet/node_records.h"

#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace kvkeep::fleet {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

NodeRecord Node(const std::string& name, const std::string& team_fp, const std::string& layout) {
  return {name, {{"team", team_fp}}, {{"llama", layout}}};
}

TEST(NodeRecords, EncodeDecodeRoundTripsAnyName) {
  NodeRecord r{"n1", {{"team one\n", "00ff"}, {"x", "12"}}, {{"m/odel", "abcd"}}};
  ASSERT_OK_AND_ASSIGN(NodeRecord back, DecodeNodeRecord("n1", EncodeNodeRecord(r)));
  EXPECT_EQ(back.group_fingerprints, r.group_fingerprints);
  EXPECT_EQ(back.layout_hashes, r.layout_hashes);
}

TEST(NodeRecords, DecodeRefusesOtherText) {
  EXPECT_FALSE(DecodeNodeRecord("n", "").ok());
  EXPECT_FALSE(DecodeNodeRecord("n", "v2\n").ok());
  EXPECT_FALSE(DecodeNodeRecord("n", "v1\ngroup zz 12\n").ok());
  EXPECT_FALSE(DecodeNodeRecord("n", "v1\nsecret 41 12\n").ok());
}

TEST(NodeRecords, TheMinorityNodeIsNamed) {
  std::vector<NodeVerdict> v = CompareNodeRecords(
      {Node("a", "f1", "h1"), Node("b", "f2", "h1"), Node("c", "f1", "h2")}, "b");
  ASSERT_EQ(v.size(), 3u);
  EXPECT_THAT(v[0].mismatches, IsEmpty());
  ASSERT_EQ(v[1].mismatches.size(), 1u);  // b's own secret is the odd one, even seen from b
  EXPECT_THAT(v[1].mismatches[0], HasSubstr("group team: fingerprint f2 differs from f1 (2 of 3"));
  ASSERT_EQ(v[2].mismatches.size(), 1u);
  EXPECT_THAT(v[2].mismatches[0], HasSubstr("model llama: layout hash h2 differs from h1"));
}

TEST(NodeRecords, ATieIsJudgedBySelf) {
  std::vector<NodeRecord> two = {Node("a", "f1", "h"), Node("b", "f2", "h")};
  std::vector<NodeVerdict> from_a = CompareNodeRecords(two, "a");
  EXPECT_THAT(from_a[0].mismatches, IsEmpty());
  EXPECT_EQ(from_a[1].mismatches.size(), 1u);
  std::vector<NodeVerdict> from_b = CompareNodeRecords(two, "b");
  EXPECT_EQ(from_b[0].mismatches.size(), 1u);
  EXPECT_THAT(from_b[1].mismatches, IsEmpty());
}

TEST(NodeRecords, AGroupOnlyOneNodeHasIsNoMismatch) {
  NodeRecord extra = Node("b", "f1", "h");
  extra.group_fingerprints["solo"] = "99";
  std::vector<NodeVerdict> v = CompareNodeRecords({Node("a", "f1", "h"), extra}, "a");
  EXPECT_THAT(v[0].mismatches, IsEmpty());
  EXPECT_THAT(v[1].mismatches, IsEmpty());
}

}  // namespace
}  // namespace kvkeep::fleet
