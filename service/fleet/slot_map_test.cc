// CLUSTER SLOTS parsing, redirection parsing and node addresses. Replies are real RESP bytes
// parsed by hiredis's own reader, as the client receives them.
#include "service/fleet/slot_map.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <initializer_list>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "service/fleet/key_slot.h"
#include "service/fleet/node_address.h"
#include "service/fleet/redirection.h"
#include "service/fleet/redis_reply.h"

namespace kvkeep::fleet {
namespace {

using ::kvkeep::testing::StatusIs;

std::string Int(long long v) { return absl::StrCat(":", v, "\r\n"); }
std::string Bulk(const std::string& s) { return absl::StrCat("$", s.size(), "\r\n", s, "\r\n"); }
std::string Arr(std::initializer_list<std::string> items) {
  std::string out = absl::StrCat("*", items.size(), "\r\n");
  for (const std::string& item : items) out += item;
  return out;
}
// A Redis 7 node entry: ip, port, id, networking metadata (an empty array in RESP2).
std::string Node(const std::string& ip, int port) {
  return Arr({Bulk(ip), Int(port), Bulk(std::string(40, 'a')), Arr({})});
}

RedisReply Parse(const std::string& resp) {
  redisReader* reader = redisReaderCreate();
  EXPECT_EQ(redisReaderFeed(reader, resp.data(), resp.size()), REDIS_OK);
  void* reply = nullptr;
  EXPECT_EQ(redisReaderGetReply(reader, &reply), REDIS_OK);
  redisReaderFree(reader);
  EXPECT_NE(reply, nullptr) << "incomplete RESP";
  return RedisReply(static_cast<redisReply*>(reply));
}

const NodeAddress kAnswered{"10.0.0.9", 7009};

TEST(SlotMap, RoutesEverySlotToItsRangeMaster) {
  RedisReply reply = Parse(Arr({
      Arr({Int(0), Int(5460), Node("127.0.0.1", 7000), Node("127.0.0.1", 7004)}),
      Arr({Int(5461), Int(10922), Node("127.0.0.1", 7001), Node("127.0.0.1", 7005)}),
      Arr({Int(10923), Int(16383), Node("127.0.0.1", 7002), Node("127.0.0.1", 7003)}),
  }));
  ASSERT_OK_AND_ASSIGN(SlotMap map, SlotMap::FromClusterSlots(*reply, kAnswered));
  EXPECT_EQ(map.covered_slots(), kClusterSlots);
  EXPECT_EQ(*map.MasterOf(0), (NodeAddress{"127.0.0.1", 7000}));
  EXPECT_EQ(*map.MasterOf(5460), (NodeAddress{"127.0.0.1", 7000}));
  EXPECT_EQ(*map.MasterOf(5461), (NodeAddress{"127.0.0.1", 7001}));
  EXPECT_EQ(*map.MasterOf(16383), (NodeAddress{"127.0.0.1", 7002}));
  EXPECT_EQ(*map.MasterOf(KeySlot("foo")), (NodeAddress{"127.0.0.1", 7002}));  // 12182
  EXPECT_EQ(map.Masters().size(), 3u);
  EXPECT_EQ(map.Nodes().size(), 6u);
  ASSERT_EQ(map.ranges().size(), 3u);
  EXPECT_THAT(map.ranges()[0].replicas, ::testing::ElementsAre(NodeAddress{"127.0.0.1", 7004}));
}

TEST(SlotMap, UncoveredSlotsHaveNoMaster) {
  RedisReply reply = Parse(Arr({Arr({Int(100), Int(199), Node("127.0.0.1", 7000)})}));
  ASSERT_OK_AND_ASSIGN(SlotMap map, SlotMap::FromClusterSlots(*reply, kAnswered));
  EXPECT_EQ(map.covered_slots(), 100);
  EXPECT_EQ(map.MasterOf(99), nullptr);
  EXPECT_NE(map.MasterOf(100), nullptr);
  EXPECT_NE(map.MasterOf(199), nullptr);
  EXPECT_EQ(map.MasterOf(200), nullptr);
  EXPECT_EQ(SlotMap().covered_slots(), 0);
}

TEST(SlotMap, AssignMovesOneSlot) {
  RedisReply reply = Parse(Arr({Arr({Int(0), Int(16383), Node("127.0.0.1", 7000)})}));
  ASSERT_OK_AND_ASSIGN(SlotMap map, SlotMap::FromClusterSlots(*reply, kAnswered));
  map.Assign(42, NodeAddress{"127.0.0.1", 7001});
  EXPECT_EQ(*map.MasterOf(42), (NodeAddress{"127.0.0.1", 7001}));
  EXPECT_EQ(*map.MasterOf(41), (NodeAddress{"127.0.0.1", 7000}));
  EXPECT_EQ(*map.MasterOf(43), (NodeAddress{"127.0.0.1", 7000}));
}

TEST(SlotMap, EmptyIpMeansTheAnsweringNode) {
  // Redis answers "" (or "?") for a node that does not know its own address.
  RedisReply reply = Parse(Arr({Arr({Int(0), Int(16383), Arr({Bulk(""), Int(7009)})})}));
  ASSERT_OK_AND_ASSIGN(SlotMap map, SlotMap::FromClusterSlots(*reply, kAnswered));
  EXPECT_EQ(*map.MasterOf(7), kAnswered);
}

TEST(SlotMap, AcceptsTheRedis6NodeFormWithoutMetadata) {
  RedisReply reply = Parse(Arr({Arr({Int(0), Int(16383), Arr({Bulk("::1"), Int(7000)})})}));
  ASSERT_OK_AND_ASSIGN(SlotMap map, SlotMap::FromClusterSlots(*reply, kAnswered));
  EXPECT_EQ(map.MasterOf(0)->ToString(), "[::1]:7000");
}

TEST(SlotMap, RefusesMalformedReplies) {
  const std::string bad[] = {
      Bulk("not an array"),
      Arr({Arr({Int(0), Int(16384), Node("127.0.0.1", 7000)})}),        // slot out of range
      Arr({Arr({Int(10), Int(9), Node("127.0.0.1", 7000)})}),           // reversed
      Arr({Arr({Int(0), Int(10)})}),                                    // no master
      Arr({Arr({Int(0), Int(10), Arr({Bulk("127.0.0.1")})})}),          // no port
      Arr({Arr({Int(0), Int(10), Arr({Bulk("127.0.0.1"), Int(0)})})}),  // port 0
      Arr({Arr({Bulk("0"), Int(10), Node("127.0.0.1", 7000)})}),        // slot as a string
  };
  for (const std::string& resp : bad) {
    RedisReply reply = Parse(resp);
    EXPECT_THAT(SlotMap::FromClusterSlots(*reply, kAnswered),
                StatusIs(absl::StatusCode::kInvalidArgument))
        << resp;
  }
}

TEST(Redirection, ParsesMovedAndAsk) {
  std::optional<Redirection> moved = ParseRedirection("MOVED 3999 127.0.0.1:6381");
  ASSERT_TRUE(moved.has_value());
  EXPECT_EQ(moved->kind, Redirection::Kind::kMoved);
  EXPECT_EQ(moved->slot, 3999);
  EXPECT_EQ(moved->target, (NodeAddress{"127.0.0.1", 6381}));

  std::optional<Redirection> ask = ParseRedirection("ASK 16383 10.1.2.3:7000");
  ASSERT_TRUE(ask.has_value());
  EXPECT_EQ(ask->kind, Redirection::Kind::kAsk);
  EXPECT_EQ(ask->slot, 16383);
  EXPECT_EQ(ask->target, (NodeAddress{"10.1.2.3", 7000}));

  std::optional<Redirection> v6 = ParseRedirection("MOVED 1 ::1:7000");
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->target, (NodeAddress{"::1", 7000}));
}

TEST(Redirection, OtherErrorsAreNotRedirections) {
  EXPECT_FALSE(ParseRedirection("NOPERM this user has no permissions").has_value());
  EXPECT_FALSE(ParseRedirection("CLUSTERDOWN The cluster is down").has_value());
  EXPECT_FALSE(ParseRedirection("MOVED 16384 127.0.0.1:7000").has_value());  // slot range
  EXPECT_FALSE(ParseRedirection("MOVED -1 127.0.0.1:7000").has_value());
  EXPECT_FALSE(ParseRedirection("MOVED 12 127.0.0.1").has_value());  // no port
  EXPECT_FALSE(ParseRedirection("MOVED 12 127.0.0.1:7000 extra").has_value());
  EXPECT_FALSE(ParseRedirection("moved 12 127.0.0.1:7000").has_value());
  EXPECT_FALSE(ParseRedirection("").has_value());
}

TEST(ErrorReplyStatus, MapsErrorWordsToCodes) {
  EXPECT_THAT(ErrorReplyStatus("NOPERM no permissions"),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(ErrorReplyStatus("WRONGPASS invalid"), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(ErrorReplyStatus("NOAUTH needed"), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(ErrorReplyStatus("CLUSTERDOWN The cluster is down"),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(ErrorReplyStatus("TRYAGAIN"), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(ErrorReplyStatus("MOVED 1 a:1"), StatusIs(absl::StatusCode::kAborted));
  EXPECT_THAT(ErrorReplyStatus("ERR unknown command"),
              StatusIs(absl::StatusCode::kFailedPrecondition, "ERR unknown command"));
}

TEST(NodeAddress, ParsesHostPortForms) {
  ASSERT_OK_AND_ASSIGN(NodeAddress a, ParseNodeAddress("redis-0.redis:6379"));
  EXPECT_EQ(a, (NodeAddress{"redis-0.redis", 6379}));
  ASSERT_OK_AND_ASSIGN(NodeAddress b, ParseNodeAddress("[fd00::1]:7000"));
  EXPECT_EQ(b, (NodeAddress{"fd00::1", 7000}));
  EXPECT_EQ(b.ToString(), "[fd00::1]:7000");
  for (const char* bad :
       {"", "host", "host:", ":6379", "host:0", "host:65536", "host:x", "[::1:7"}) {
    EXPECT_THAT(ParseNodeAddress(bad), StatusIs(absl::StatusCode::kInvalidArgument)) << bad;
  }
}

TEST(NodeAddress, ParsesSeedLists) {
  ASSERT_OK_AND_ASSIGN(std::vector<NodeAddress> seeds,
                       ParseSeedList("127.0.0.1:7000, 127.0.0.1:7001,"));
  EXPECT_THAT(seeds, ::testing::ElementsAre(NodeAddress{"127.0.0.1", 7000},
                                            NodeAddress{"127.0.0.1", 7001}));
  EXPECT_THAT(ParseSeedList(""), StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseSeedList("127.0.0.1:7000,bad"), StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace kvkeep::fleet
