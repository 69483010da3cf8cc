// kill -9 of a Redis master while lookups run: the fleet tier never returns a wrong byte, every
// lookup ends within its deadline, and once a replica is promoted lookups find the whole prefix
// again and publishing works. Its own binary: it changes the cluster's topology.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/status_matchers.h"
#include "service/fleet/key_slot.h"
#include "service/fleet/node_connection.h"
#include "service/fleet/redis_fleet_tier.h"
#include "tests/fleet/fleet_test_data.h"
#include "tests/fleet/local_redis_cluster.h"

namespace kvkeep::fleet {
namespace {

using testing::LocalRedisCluster;

// A field of INFO replication ("master_repl_offset") or a replica's offset ("slave0" -> offset=).
int64_t InfoOffset(absl::string_view info, absl::string_view field) {
  for (absl::string_view line : absl::StrSplit(info, "\r\n")) {
    if (!absl::StartsWith(line, field)) continue;
    const size_t at = line.rfind(absl::StartsWith(field, "slave") ? "offset=" : ":");
    absl::string_view number = line.substr(at + (absl::StartsWith(field, "slave") ? 7 : 1));
    number = number.substr(0, number.find(','));
    int64_t value = -1;
    if (absl::SimpleAtoi(number, &value)) return value;
  }
  return -1;
}

// Waits until every master's replica has received everything written so far.
bool WaitForReplication(RedisClusterClient& admin, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    bool synced = admin.Refresh(deadline).ok();
    for (const NodeAddress& master : admin.slot_map().Masters()) {
      absl::StatusOr<RedisReply> info = admin.ExecuteOn(master, {"INFO", "replication"}, deadline);
      if (!info.ok()) {
        synced = false;
        continue;
      }
      const int64_t offset = InfoOffset(ReplyText(**info), "master_repl_offset");
      if (offset < 0 || InfoOffset(ReplyText(**info), "slave0") != offset) synced = false;
    }
    if (synced) return true;
    absl::SleepFor(absl::Milliseconds(50));
  }
  return false;
}

TEST(FleetFailoverTest, KillingAMasterDuringLookupsNeverServesAWrongByte) {
  if (!LocalRedisCluster::Available()) GTEST_SKIP() << LocalRedisCluster::kMissing;
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<LocalRedisCluster> cluster,
                       LocalRedisCluster::Start(/*node_timeout=*/absl::Seconds(1)));
  RedisFleetOptions options;
  options.cluster.seeds = cluster->seeds();
  options.cluster.connection = cluster->KvkeepUser();
  options.cluster.connection.command_timeout = absl::Milliseconds(200);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<RedisFleetTier> tier, RedisFleetTier::Create(options));

  const FleetScope scope = TestScope("group-a", kSecretA);
  const std::vector<std::string> names = scope.KeyNames(TestTokens(12 * kTokensPerPage, 11));
  const std::vector<FleetPage> pages = TestPages(scope, names, 11);
  ASSERT_OK(tier->PutAsync(scope, pages));
  ASSERT_OK(tier->Flush(absl::Now() + absl::Seconds(5)));
  ASSERT_EQ(tier->Lookup(scope, names, absl::Now() + absl::Seconds(2)), names.size());

  RedisClusterClient admin({.seeds = cluster->seeds(), .connection = cluster->Admin()});
  ASSERT_TRUE(WaitForReplication(admin, absl::Seconds(10)));
  const NodeAddress victim = *admin.slot_map().MasterOf(KeySlot(names[0]));
  const pid_t pid = cluster->PidOf(victim.port);
  ASSERT_GT(pid, 0);

  // Readers run Get continuously; every payload returned is compared with what was published.
  constexpr absl::Duration kLookupDeadline = absl::Milliseconds(500);
  std::atomic<bool> stop{false}, killed{false}, recovered{false};
  std::atomic<int> wrong{0}, calls{0}, short_runs{0};
  std::atomic<int64_t> slowest_ms{0};
  std::thread reader([&] {
    while (!stop.load()) {
      // Only a lookup that began after the master was gone tells whether the cluster recovered.
      const bool after_kill = killed.load();
      const absl::Time start = absl::Now();
      std::vector<std::string> got = tier->Get(scope, names, start + kLookupDeadline);
      const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - start);
      if (ms > slowest_ms.load()) slowest_ms = ms;
      for (size_t i = 0; i < got.size(); ++i) {
        if (got[i] != pages[i].payload) ++wrong;
      }
      ++calls;
      if (after_kill) {
        if (got.size() == names.size())
          recovered = true;
        else
          ++short_runs;
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  // (No ASSERT while the reader runs: its thread must be joined first.)
  const bool signalled = kill(pid, SIGKILL) == 0;
  // The master is gone once its port refuses connections.
  bool died = false;
  const absl::Time dead_by = absl::Now() + absl::Seconds(5);
  while (signalled && !died && absl::Now() < dead_by) {
    died = !NodeConnection::Connect(victim, cluster->Admin(), absl::Now() + absl::Seconds(1)).ok();
    if (!died) absl::SleepFor(absl::Milliseconds(10));
  }
  killed = true;
  const absl::Time give_up = absl::Now() + absl::Seconds(25);
  while (!recovered.load() && absl::Now() < give_up) absl::SleepFor(absl::Milliseconds(50));
  stop = true;
  reader.join();
  ASSERT_TRUE(signalled);
  ASSERT_TRUE(died) << "the killed master still accepts connections";

  EXPECT_TRUE(recovered.load()) << "lookups did not find the whole prefix after failover";
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(calls.load(), 5);
  // Each lookup ends within its deadline (plus scheduling slack on a loaded machine).
  EXPECT_LT(slowest_ms.load(), absl::ToInt64Milliseconds(kLookupDeadline) + 1000);
  ::testing::Test::RecordProperty("short_runs_during_failover", short_runs.load());
  std::printf("failover: %d lookups, %d shorter during failover, slowest %lld ms, 0 wrong\n",
              calls.load(), short_runs.load(), static_cast<long long>(slowest_ms.load()));

  // After failover: the victim's slots have a new master, and a new prefix publishes and reads.
  ASSERT_OK(admin.Refresh(absl::Now() + absl::Seconds(2)));
  EXPECT_FALSE(*admin.slot_map().MasterOf(KeySlot(names[0])) == victim);
  const std::vector<std::string> fresh = scope.KeyNames(TestTokens(6 * kTokensPerPage, 12));
  const std::vector<FleetPage> fresh_pages = TestPages(scope, fresh, 12);
  ASSERT_OK(tier->PutAsync(scope, fresh_pages));
  ASSERT_OK(tier->Flush(absl::Now() + absl::Seconds(5)));
  const std::vector<std::string> got = tier->Get(scope, fresh, absl::Now() + absl::Seconds(2));
  ASSERT_EQ(got.size(), fresh.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i], fresh_pages[i].payload);
}

}  // namespace
}  // namespace kvkeep::fleet
