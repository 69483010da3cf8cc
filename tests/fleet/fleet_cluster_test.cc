// The fleet tier against a real local Redis Cluster (deploy/redis-cluster: 6 redis-server
// processes on loopback). One cluster for the whole binary; the failover test has its own binary.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "service/fleet/cluster_client.h"
#include "service/fleet/key_slot.h"
#include "service/fleet/redis_fleet_tier.h"
#include "tests/fleet/fleet_test_data.h"
#include "tests/fleet/local_redis_cluster.h"

namespace kvkeep::fleet {
namespace {

using ::kvkeep::testing::StatusIs;
using testing::LocalRedisCluster;

class FleetClusterTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!LocalRedisCluster::Available()) return;
    absl::StatusOr<std::unique_ptr<LocalRedisCluster>> cluster = LocalRedisCluster::Start();
    if (cluster.ok()) {
      cluster_ = cluster->release();
    } else {
      start_error_ = new std::string(cluster.status().ToString());
    }
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  void SetUp() override {
    if (!LocalRedisCluster::Available()) GTEST_SKIP() << LocalRedisCluster::kMissing;
    ASSERT_NE(cluster_, nullptr) << (start_error_ != nullptr ? *start_error_ : "");
  }

  // A tier as one daemon would hold it: the restricted ACL user, its own connections.
  std::unique_ptr<RedisFleetTier> NewTier() {
    RedisFleetOptions options;
    options.cluster.seeds = cluster_->seeds();
    options.cluster.connection = cluster_->KvkeepUser();
    // Small windows: runs span several rounds, so fetching ahead and stopping early are exercised.
    options.lookup_window = 2;
    options.get_window = 2;
    absl::StatusOr<std::unique_ptr<RedisFleetTier>> tier = RedisFleetTier::Create(options);
    EXPECT_TRUE(tier.ok()) << tier.status();
    return tier.ok() ? *std::move(tier) : nullptr;
  }
  RedisClusterClient AdminClient() const {
    return RedisClusterClient({.seeds = cluster_->seeds(), .connection = cluster_->Admin()});
  }
  static absl::Time Soon() { return absl::Now() + absl::Seconds(2); }

  static LocalRedisCluster* cluster_;
  static std::string* start_error_;
};

LocalRedisCluster* FleetClusterTest::cluster_ = nullptr;
std::string* FleetClusterTest::start_error_ = nullptr;

// A hand-driven migration of `slot` from its master (source) to another master (target), as
// `redis-cli --cluster reshard` does it: Begin marks the slot IMPORTING on the target and MIGRATING
// on the source, MoveKey migrates one key, Finish assigns the slot to the target on every master.
// `admin`'s slot map must be fresh; failures are test failures.
class SlotMigration {
 public:
  SlotMigration(RedisClusterClient& admin, uint16_t slot)
      : admin_(admin), slot_text_(absl::StrCat(slot)), source_(*admin.slot_map().MasterOf(slot)) {
    for (const NodeAddress& master : admin.slot_map().Masters()) {
      if (!(master == source_)) target_ = master;
    }
    source_id_ = IdOf(source_);
    target_id_ = IdOf(target_);
  }
  void Begin() {
    On(target_, {"CLUSTER", "SETSLOT", slot_text_, "IMPORTING", source_id_});
    On(source_, {"CLUSTER", "SETSLOT", slot_text_, "MIGRATING", target_id_});
  }
  void MoveKey(const std::string& key) {
    On(source_, {"MIGRATE", target_.host, absl::StrCat(target_.port), "", "0", "5000", "KEYS", key});
  }
  void Finish() {
    for (const NodeAddress& master : admin_.slot_map().Masters()) {
      On(master, {"CLUSTER", "SETSLOT", slot_text_, "NODE", target_id_});
    }
  }
  const NodeAddress& target() const { return target_; }

 private:
  static absl::Time Soon() { return absl::Now() + absl::Seconds(2); }
  std::string IdOf(const NodeAddress& node) {
    absl::StatusOr<RedisReply> id = admin_.ExecuteOn(node, {"CLUSTER", "MYID"}, Soon());
    return id.ok() ? std::string(ReplyText(**id)) : std::string();
  }
  void On(const NodeAddress& node, RedisArgs args) {
    absl::StatusOr<RedisReply> reply = admin_.ExecuteOn(node, args, Soon());
    ASSERT_OK(reply);
    ASSERT_NE((*reply)->type, REDIS_REPLY_ERROR) << ReplyText(**reply);
  }

  RedisClusterClient& admin_;
  const std::string slot_text_;
  const NodeAddress source_;
  NodeAddress target_;
  std::string source_id_, target_id_;
};

TEST_F(FleetClusterTest, PublishedPagesAreReadBackBitExactOnAnotherNode) {
  const FleetScope scope = TestScope("group-a", kSecretA);
  const std::vector<uint32_t> tokens = TestTokens(8 * kTokensPerPage, /*seed=*/1);
  const std::vector<std::string> names = scope.KeyNames(tokens);
  ASSERT_EQ(names.size(), 8u);
  const std::vector<FleetPage> pages = TestPages(scope, names, /*seed=*/1);

  std::unique_ptr<RedisFleetTier> node_a = NewTier(), node_b = NewTier();
  ASSERT_OK(node_a->PutAsync(scope, pages));
  ASSERT_OK(node_a->Flush(Soon()));
  EXPECT_EQ(node_a->Counters().pages_written, 8u);
  EXPECT_EQ(node_a->Counters().bytes_written,
            8 * (scope.shape.payload_bytes() + kPageValueOverheadBytes));
  EXPECT_EQ(node_a->Counters().write_errors, 0u);

  // Node B: its own tier (own connections), the same group secret and layout.
  const FleetScope scope_b = TestScope("group-a", kSecretA);
  EXPECT_EQ(scope_b.KeyNames(tokens), names);
  EXPECT_EQ(node_b->Lookup(scope_b, names, Soon()), 8u);
  const std::vector<std::string> payloads = node_b->Get(scope_b, names, Soon());
  ASSERT_EQ(payloads.size(), 8u);
  for (size_t i = 0; i < 8; ++i) EXPECT_EQ(payloads[i], pages[i].payload) << "page " << i;
  const FleetCounters counters = node_b->Counters();
  EXPECT_EQ(counters.hit_pages, 16u);  // 8 by Lookup, 8 by Get
  EXPECT_EQ(counters.bytes_read, 8 * scope.shape.payload_bytes());
  EXPECT_EQ(counters.misses, 0u);
  EXPECT_EQ(counters.corrupt, 0u);
  EXPECT_EQ(node_b->CountersByGroup().count("group-a"), 1u);
}

TEST_F(FleetClusterTest, AnotherGroupFindsNothing) {
  const FleetScope a = TestScope("group-a", kSecretA), b = TestScope("group-b", kSecretB);
  const std::vector<uint32_t> tokens = TestTokens(4 * kTokensPerPage, /*seed=*/2);
  std::unique_ptr<RedisFleetTier> tier = NewTier();
  const std::vector<std::string> names_a = a.KeyNames(tokens);
  ASSERT_OK(tier->PutAsync(a, TestPages(a, names_a, 2)));
  ASSERT_OK(tier->Flush(Soon()));
  ASSERT_EQ(tier->Lookup(a, names_a, Soon()), 4u);

  // Group b's chain gives other names: nothing there.
  EXPECT_EQ(tier->Lookup(b, b.KeyNames(tokens), Soon()), 0u);
  EXPECT_TRUE(tier->Get(b, b.KeyNames(tokens), Soon()).empty());
  // Even given a's names, b's key does not open a's values: refused, counted, never served.
  EXPECT_TRUE(tier->Get(b, names_a, Soon()).empty());
  EXPECT_EQ(tier->CountersByGroup()["group-b"].corrupt, 1u);
}

TEST_F(FleetClusterTest, DivergingPromptReusesOnlyThePagesBeforeTheDifference) {
  const FleetScope scope = TestScope("group-a", kSecretA);
  const std::vector<uint32_t> tokens = TestTokens(6 * kTokensPerPage, /*seed=*/3);
  std::vector<uint32_t> other = tokens;
  other[3 * kTokensPerPage + 1] += 1;  // differs in page 3
  std::unique_ptr<RedisFleetTier> tier = NewTier();
  const std::vector<std::string> names = scope.KeyNames(tokens);
  const std::vector<FleetPage> pages = TestPages(scope, names, 3);
  ASSERT_OK(tier->PutAsync(scope, pages));
  ASSERT_OK(tier->Flush(Soon()));

  const std::vector<std::string> other_names = scope.KeyNames(other);
  EXPECT_EQ(tier->Lookup(scope, other_names, Soon()), 3u);
  const std::vector<std::string> payloads = tier->Get(scope, other_names, Soon());
  ASSERT_EQ(payloads.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(payloads[i], pages[i].payload);
  EXPECT_EQ(tier->Counters().misses, 2u);  // the Lookup and the Get each stopped at page 3
}

TEST_F(FleetClusterTest, CorruptedOrTruncatedValueIsAMiss) {
  const FleetScope scope = TestScope("group-a", kSecretA);
  const std::vector<uint32_t> tokens = TestTokens(5 * kTokensPerPage, /*seed=*/4);
  const std::vector<std::string> names = scope.KeyNames(tokens);
  std::unique_ptr<RedisFleetTier> tier = NewTier();
  ASSERT_OK(tier->PutAsync(scope, TestPages(scope, names, 4)));
  ASSERT_OK(tier->Flush(Soon()));

  // Flip one payload byte of page 2 in Redis, and cut page 4 short.
  RedisClusterClient admin = AdminClient();
  const std::string truncated("KVKF\x01\x00short", 11);
  auto replies = admin.Execute(
      {{names[2], {"SETRANGE", names[2], "100", "\x7f"}}, {names[4], {"SET", names[4], truncated}}},
      Soon());
  for (auto& reply : replies) {
    ASSERT_OK(reply);
    ASSERT_NE((*reply)->type, REDIS_REPLY_ERROR) << ReplyText(**reply);
  }
  EXPECT_EQ(tier->Lookup(scope, names, Soon()), 5u);  // existence only: all still there
  std::vector<std::string> payloads = tier->Get(scope, names, Soon());
  EXPECT_EQ(payloads.size(), 2u);
  EXPECT_EQ(tier->Counters().corrupt, 1u);
  // The truncated page is refused as well once the run reaches it.
  EXPECT_EQ(tier->Get(scope, {names[4]}, Soon()).size(), 0u);
  EXPECT_EQ(tier->Counters().corrupt, 2u);
  // Republishing repairs the values.
  ASSERT_OK(tier->PutAsync(scope, TestPages(scope, names, 4)));
  ASSERT_OK(tier->Flush(Soon()));
  EXPECT_EQ(tier->Get(scope, names, Soon()).size(), 5u);
}

TEST_F(FleetClusterTest, AclUserCannotTouchKeysOutsideKvkeep) {
  RedisClusterClient client({.seeds = cluster_->seeds(), .connection = cluster_->KvkeepUser()});
  auto replies = client.Execute({{"other:key", {"SET", "other:key", "x"}},
                                 {"kvkeep:acl-test", {"SET", "kvkeep:acl-test", "x"}},
                                 {"other:key", {"GET", "other:key"}},
                                 {"kvkeep:acl-test", {"FLUSHALL"}}},
                                Soon());
  ASSERT_EQ(replies.size(), 4u);
  for (auto& reply : replies) ASSERT_OK(reply);
  ASSERT_EQ(replies[0].value()->type, REDIS_REPLY_ERROR);
  EXPECT_THAT(ErrorReplyStatus(ReplyText(*replies[0].value())),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_NE(replies[1].value()->type, REDIS_REPLY_ERROR);
  EXPECT_THAT(ErrorReplyStatus(ReplyText(*replies[2].value())),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(ErrorReplyStatus(ReplyText(*replies[3].value())),
              StatusIs(absl::StatusCode::kPermissionDenied));

  ConnectionOptions wrong = cluster_->KvkeepUser();
  wrong.password = "not-the-password";
  EXPECT_THAT(NodeConnection::Connect(cluster_->seeds()[0], wrong, Soon()),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST_F(FleetClusterTest, FollowsAskDuringMigrationAndMovedAfterIt) {
  RedisClusterClient admin = AdminClient();
  RedisClusterClient client({.seeds = cluster_->seeds(), .connection = cluster_->KvkeepUser()});
  const std::string key = "kvkeep:{migrate}a", absent = "kvkeep:{migrate}b";
  const uint16_t slot = KeySlot(key);
  ASSERT_EQ(slot, KeySlot(absent));
  auto set = client.Execute({{key, {"SET", key, "value-a"}}}, Soon());
  ASSERT_OK(set[0]);
  ASSERT_OK(admin.Refresh(Soon()));
  SlotMigration migration(admin, slot);
  migration.Begin();

  // Migrating: the key still on the source is served there; an absent key is asked of the target.
  auto during = client.Execute({{key, {"GET", key}}, {absent, {"GET", absent}}}, Soon());
  ASSERT_OK(during[0]);
  EXPECT_EQ(ReplyText(**during[0]), "value-a");
  ASSERT_OK(during[1]);
  EXPECT_EQ((*during[1])->type, REDIS_REPLY_NIL);
  EXPECT_EQ(client.stats().asks, 1u);

  // Moved to the target: the source now answers ASK for it.
  migration.MoveKey(key);
  auto asked = client.Execute({{key, {"GET", key}}}, Soon());
  ASSERT_OK(asked[0]);
  EXPECT_EQ(ReplyText(**asked[0]), "value-a");
  EXPECT_EQ(client.stats().asks, 2u);

  // Migration done: the client's map is stale, the source answers MOVED, the client follows.
  migration.Finish();
  auto moved = client.Execute({{key, {"GET", key}}}, Soon());
  ASSERT_OK(moved[0]);
  EXPECT_EQ(ReplyText(**moved[0]), "value-a");
  EXPECT_GE(client.stats().moved, 1u);
  EXPECT_EQ(*client.slot_map().MasterOf(slot), migration.target());
}

// A bulk reply's bytes into a string of the test's (resp_reader.h's BulkSink).
class StringSink final : public BulkSink {
 public:
  char* Buffer(size_t length) override {
    bytes.assign(length, '\0');
    return bytes.data();
  }
  void Filled(size_t length) override { filled = length; }
  std::string bytes;
  size_t filled = 0;
};

// GET rounds with sinks read every master's replies on a thread of their own
// (ClusterOptions::parallel_receive): every value lands whole in its own sink, as when the nodes
// are read one by one, and a MOVED met in such a round is followed.
TEST_F(FleetClusterTest, ParallelReceiveFillsEverySinkAndFollowsMoved) {
  RedisClusterClient admin = AdminClient();
  ASSERT_OK(admin.Refresh(Soon()));
  // Keys on every master, values large enough to take many reads each; one key (hash tag
  // {parmove}) has its slot moved to another master once the client knows the map.
  std::vector<std::string> keys, values;
  std::mt19937 rng(7);
  for (int i = 0; i < 12; ++i) keys.push_back(absl::StrCat("kvkeep:parallel-", i));
  keys.push_back("kvkeep:{parmove}x");
  std::set<NodeAddress> masters;
  for (const std::string& key : keys) {
    masters.insert(*admin.slot_map().MasterOf(KeySlot(key)));
    std::string value(300 * 1024 + keys.size(), '\0');
    for (char& c : value) c = static_cast<char>(rng());
    values.push_back(std::move(value));
  }
  ASSERT_EQ(masters.size(), 3u) << "the keys should spread over every master";
  std::vector<KeyedCommand> sets;
  for (size_t i = 0; i < keys.size(); ++i) sets.push_back({keys[i], {"SET", keys[i], values[i]}});
  for (auto& reply : admin.Execute(sets, Soon())) ASSERT_OK(reply);

  for (const bool parallel : {true, false}) {
    SCOPED_TRACE(parallel ? "parallel receive" : "node by node");
    RedisClusterClient client({.seeds = cluster_->seeds(),
                               .connection = cluster_->KvkeepUser(),
                               .parallel_receive = parallel});
    auto get_all = [&] {
      std::vector<StringSink> sinks(keys.size());
      std::vector<KeyedCommand> gets;
      for (size_t i = 0; i < keys.size(); ++i) gets.push_back({keys[i], {"GET", keys[i]}, &sinks[i]});
      auto replies = client.Execute(gets, Soon());
      ASSERT_EQ(replies.size(), keys.size());
      for (size_t i = 0; i < keys.size(); ++i) {
        ASSERT_OK(replies[i]);
        ASSERT_EQ((*replies[i])->type, REDIS_REPLY_STRING) << keys[i];
        EXPECT_EQ((*replies[i])->str, nullptr);
        EXPECT_EQ(sinks[i].filled, values[i].size());
        EXPECT_TRUE(sinks[i].bytes == values[i]) << keys[i] << " differs";
      }
    };
    get_all();
    EXPECT_EQ(client.stats().moved, 0u);

    // Move {parmove}'s slot (and its key) to another master behind the client's back.
    const uint16_t slot = KeySlot(keys.back());
    SlotMigration migration(admin, slot);
    migration.Begin();
    migration.MoveKey(keys.back());
    migration.Finish();
    ASSERT_OK(admin.Refresh(Soon()));

    get_all();  // the moved key: MOVED in a parallel round, then read from the target
    EXPECT_GE(client.stats().moved, 1u);
    EXPECT_EQ(*client.slot_map().MasterOf(slot), migration.target());
  }
}

TEST_F(FleetClusterTest, FullQueueRefusesAndCounts) {
  RedisFleetOptions options;
  options.cluster.seeds = cluster_->seeds();
  options.cluster.connection = cluster_->KvkeepUser();
  const FleetScope scope = TestScope("group-a", kSecretA);
  options.max_queue_bytes = scope.shape.payload_bytes();  // one page
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisFleetTier> tier, RedisFleetTier::Create(options));
  const std::vector<std::string> names = scope.KeyNames(TestTokens(2 * kTokensPerPage, /*seed=*/5));
  EXPECT_THAT(tier->PutAsync(scope, TestPages(scope, names, 5)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(tier->Counters().dropped, 2u);
}

TEST(FleetUnreachableTest, LookupsDegradeToMissesWithinTheirDeadline) {
  // Nothing listens on port 1 of loopback: connections are refused at once.
  RedisFleetOptions options;
  options.cluster.seeds = {NodeAddress{"127.0.0.1", 1}};
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisFleetTier> tier, RedisFleetTier::Create(options));
  const FleetScope scope = TestScope("group-a", kSecretA);
  const std::vector<std::string> names = scope.KeyNames(TestTokens(3 * kTokensPerPage, /*seed=*/6));
  // Nothing to ask: no network, no error.
  EXPECT_EQ(tier->Lookup(scope, {}, absl::Now() + absl::Milliseconds(300)), 0u);
  EXPECT_EQ(tier->Counters().read_errors, 0u);
  const absl::Time start = absl::Now();
  EXPECT_EQ(tier->Lookup(scope, names, start + absl::Milliseconds(300)), 0u);
  EXPECT_TRUE(tier->Get(scope, names, start + absl::Milliseconds(300)).empty());
  EXPECT_LT(absl::Now() - start, absl::Milliseconds(700));
  EXPECT_EQ(tier->Counters().read_errors, 2u);
  // A publish is accepted (queued) and its failure is counted, not returned.
  ASSERT_OK(tier->PutAsync(scope, TestPages(scope, names, 6)));
  ASSERT_OK(tier->Flush(absl::Now() + absl::Seconds(5)));
  EXPECT_EQ(tier->Counters().write_errors, 3u);
  EXPECT_EQ(tier->Counters().pages_written, 0u);
  EXPECT_FALSE(tier->ClusterStatus(absl::Now() + absl::Milliseconds(300)).reachable);
}

TEST_F(FleetClusterTest, ClusterStatusShowsMastersReplicasAndSlots) {
  std::unique_ptr<RedisFleetTier> tier = NewTier();
  // CLUSTER SLOTS leaves out a replica its node currently suspects of failure (a loaded machine
  // can make a node miss heartbeats for a moment): ask again for a few seconds.
  FleetClusterStatus status;
  int masters = 0, replicas = 0, slots = 0;
  const absl::Time give_up = absl::Now() + absl::Seconds(5);
  do {
    status = tier->ClusterStatus(Soon());
    ASSERT_TRUE(status.reachable) << status.error;
    masters = replicas = slots = 0;
    for (const FleetNodeStatus& node : status.nodes) {
      (node.role == "master" ? masters : replicas) += 1;
      slots += node.slots;
    }
    if (replicas != 3) absl::SleepFor(absl::Milliseconds(100));
  } while (replicas != 3 && absl::Now() < give_up);
  EXPECT_EQ(status.covered_slots, kClusterSlots);
  EXPECT_EQ(masters, 3);
  EXPECT_EQ(replicas, 3);
  EXPECT_EQ(slots, kClusterSlots);
}

}  // namespace
}  // namespace kvkeep::fleet
