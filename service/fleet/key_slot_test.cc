#include "service/fleet/key_slot.h"

#include <gtest/gtest.h>

namespace kvkeep::fleet {
namespace {

TEST(Crc16, MatchesTheClusterSpecificationVector) {
  // Redis Cluster specification, appendix A: CRC16 of "123456789" is 0x31C3.
  EXPECT_EQ(Crc16("123456789"), 0x31C3);
  EXPECT_EQ(Crc16(""), 0);
}

TEST(KeySlot, MatchesRedisServerClusterKeyslot) {
  // `redis-cli cluster keyslot KEY` on redis-server 7.0.15.
  EXPECT_EQ(KeySlot("foo"), 12182);
  EXPECT_EQ(KeySlot("bar"), 5061);
  EXPECT_EQ(KeySlot("hello"), 866);
  EXPECT_EQ(KeySlot("123456789"), 12739);
  EXPECT_EQ(KeySlot("{user1000}.following"), 3443);
}

TEST(KeySlot, HashTagSelectsTheHashedPart) {
  EXPECT_EQ(HashedPart("{user1000}.following"), "user1000");
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("{user1000}.followers"));
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("user1000"));
  // The first '{' and the first '}' after it.
  EXPECT_EQ(HashedPart("foo{bar}{zap}"), "bar");
  EXPECT_EQ(HashedPart("foo{{bar}}zap"), "{bar");
}

TEST(KeySlot, EmptyOrUnclosedTagHashesTheWholeKey) {
  EXPECT_EQ(HashedPart("foo{}{bar}"), "foo{}{bar}");
  EXPECT_EQ(HashedPart("foo{bar"), "foo{bar");
  EXPECT_EQ(HashedPart("foo}bar{"), "foo}bar{");
  EXPECT_EQ(KeySlot("foo{}{bar}"), Crc16("foo{}{bar}") % kClusterSlots);
}

TEST(KeySlot, KvkeepKeysSpreadOverSlots) {
  // Fleet keys carry no hash tag: pages of one prompt land on different masters.
  EXPECT_NE(KeySlot("kvkeep:00112233aabbccdd:01"), KeySlot("kvkeep:00112233aabbccdd:02"));
}

}  // namespace
}  // namespace kvkeep::fleet
