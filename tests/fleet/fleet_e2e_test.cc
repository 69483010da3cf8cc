// End-to-end: the fleet tier between two real kvkeepd processes ("nodes" A and B) on one real
// local Redis Cluster (6 redis-server processes, started once for this binary). A prompt
// published on A is reused bit-exact by a worker on B; another group finds nothing; a prompt
// that differs at one position reuses only the pages before it; a corrupted value is a miss; a
// restarted B still finds A's prefix; kill -9 of a master keeps both daemons answering.
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "service/fleet/cluster_client.h"
#include "service/fleet/fleet_keys.h"
#include "service/fleet/group_keys.h"
#include "service/fleet/layout_hash.h"
#include "service/fleet/redis_reply.h"
#include "tests/daemon_process.h"
#include "tests/fleet/local_redis_cluster.h"

namespace kvkeep::testing {
namespace {

using fleet::testing::LocalRedisCluster;

// TestLayout(): 2 layers x 2 KV heads, head_dim 8, fp16, 4 tokens per page.
constexpr uint64_t kTokenBytes = 8 * 2;
constexpr uint32_t kTpp = 4;
const std::string kTeamSecret = "team-secret-0123456789abcdef";  // >= 16 bytes
const std::string kOtherSecret = "other-secret-0123456789abcdef";

std::vector<uint32_t> Prompt(size_t n, uint32_t seed) {
  std::vector<uint32_t> t(n);
  for (size_t i = 0; i < n; ++i) t[i] = seed * 1000 + static_cast<uint32_t>(i) * 17;
  return t;
}
std::string Keys(uint64_t seed, uint32_t layer, uint32_t head, uint32_t tokens) {
  return PatternBytes(seed + layer * 2 + head, tokens * kTokenBytes);
}
std::string Values(uint64_t seed, uint32_t layer, uint32_t head, uint32_t tokens) {
  return PatternBytes(seed + 100 + layer * 2 + head, tokens * kTokenBytes);
}

void Fill(Client& c, const std::string& seq, uint32_t tokens, uint64_t seed) {
  ASSERT_OK(c.Allocate(seq, tokens));
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      std::string k = Keys(seed, layer, head, tokens), v = Values(seed, layer, head, tokens);
      ASSERT_OK(c.WriteInPlace(seq, layer, head, 0, tokens, k.data(), v.data()));
    }
  }
  ASSERT_OK(c.Commit(seq, tokens));
}

// The first `tokens` tokens of every head read back equal the pattern of `seed`.
void ExpectPrefixBytes(Client& c, const std::string& seq, uint32_t tokens, uint64_t seed) {
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      ASSERT_OK_AND_ASSIGN(HeadData back, c.ReadHead(seq, layer, head));
      ASSERT_GE(back.keys.size(), tokens * kTokenBytes);
      EXPECT_EQ(back.keys.substr(0, tokens * kTokenBytes), Keys(seed, layer, head, tokens))
          << "layer " << layer << " head " << head;
      EXPECT_EQ(back.values.substr(0, tokens * kTokenBytes), Values(seed, layer, head, tokens))
          << "layer " << layer << " head " << head;
    }
  }
}

class FleetE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!LocalRedisCluster::Available()) return;
    auto cluster = LocalRedisCluster::Start(absl::Seconds(2));
    if (!cluster.ok()) {
      start_error_ = new std::string(cluster.status().ToString());
      return;
    }
    cluster_ = cluster->release();
  }
  static void TearDownTestSuite() {
    delete cluster_;
    cluster_ = nullptr;
  }

  void SetUp() override {
    if (!LocalRedisCluster::Available()) GTEST_SKIP() << LocalRedisCluster::kMissing;
    ASSERT_NE(cluster_, nullptr) << (start_error_ ? *start_error_ : "no cluster");
    password_file_ = a_.dir() + "/../fleet-" + std::to_string(getpid()) + ".password";
    std::ofstream(password_file_) << cluster_->KvkeepUser().password << "\n";
    ASSERT_OK(StartNode(a_, "node-a"));
    ASSERT_OK(StartNode(b_, "node-b"));
  }
  void TearDown() override {
    clients_.clear();
    if (a_.running()) a_.Stop(SIGTERM);
    if (b_.running()) b_.Stop(SIGTERM);
    std::remove(password_file_.c_str());
  }

  absl::Status StartNode(DaemonProcess& d, const std::string& name,
                         std::vector<std::string> extra_flags = {}) {
    std::vector<std::string> seeds;
    for (const auto& s : cluster_->seeds()) seeds.push_back(s.ToString());
    std::vector<std::string> flags = {"--fleet_redis=" + absl::StrJoin(seeds, ","),
                                      "--fleet_user=kvkeep",
                                      "--fleet_password_file=" + password_file_,
                                      "--node_name=" + name};
    flags.insert(flags.end(), extra_flags.begin(), extra_flags.end());
    RETURN_IF_ERROR(d.Start(flags));
    for (const auto& [group, secret] : {std::pair{"team", kTeamSecret},
                                        std::pair{"other", kOtherSecret}}) {
      auto set = d.Admin()->SetGroupSecret(group, secret);
      if (!set.ok()) return set.status();
    }
    return absl::OkStatus();
  }

  // A worker of a new tenant of `group` on `d`, with the test model registered.
  Client* Worker(DaemonProcess& d, const std::string& tenant, const std::string& group) {
    v1::CreateTenantRequest r;
    r.set_name(tenant);
    r.set_sharing_group(group);
    auto reply = d.Admin()->CreateTenant(r);
    EXPECT_OK(reply);
    if (!reply.ok()) return nullptr;
    return Attach(d, reply->token(), tenant + "-w");
  }
  Client* Attach(DaemonProcess& d, const std::string& token, const std::string& worker) {
    auto client = Client::Attach(d.channel(), token, worker);
    EXPECT_OK(client);
    if (!client.ok()) return nullptr;
    EXPECT_OK((*client)->RegisterModel(TestLayout()));
    clients_.push_back(std::move(*client));
    return clients_.back().get();
  }

  // Computes `tokens` tokens of `seed` on `worker` and publishes their full pages.
  void Publish(Client& worker, const std::vector<uint32_t>& prompt, uint64_t seed) {
    ASSERT_OK_AND_ASSIGN(std::string seq, worker.CreateSequence("test-model"));
    Fill(worker, seq, static_cast<uint32_t>(prompt.size()), seed);
    ASSERT_OK_AND_ASSIGN(v1::PublishPrefixReply pub, worker.PublishPrefix(seq, prompt));
    EXPECT_EQ(pub.published_pages(), prompt.size() / kTpp);
  }

  // Waits until `worker` sees `tokens` fleet tokens for `prompt` (the write-behind landed).
  bool WaitForFleet(Client& worker, const std::vector<uint32_t>& prompt, uint32_t tokens) {
    for (int i = 0; i < 100; ++i) {
      auto found = worker.LookupPrefix("test-model", prompt);
      if (found.ok() && found->fleet_tokens() + found->local_tokens() >= tokens) return true;
      absl::SleepFor(absl::Milliseconds(50));
    }
    return false;
  }

  static LocalRedisCluster* cluster_;
  static std::string* start_error_;
  std::string password_file_;
  DaemonProcess a_, b_;
  std::vector<std::unique_ptr<Client>> clients_;
};

LocalRedisCluster* FleetE2eTest::cluster_ = nullptr;
std::string* FleetE2eTest::start_error_ = nullptr;

TEST_F(FleetE2eTest, PublishedOnAIsReusedBitExactOnBAndThenHitsLocally) {
  Client* a = Worker(a_, "alpha", "team");
  Client* b = Worker(b_, "beta", "team");
  ASSERT_TRUE(a && b);
  const std::vector<uint32_t> prompt = Prompt(18, 1);  // 4 full pages + 2 tokens
  ASSERT_OK_AND_ASSIGN(v1::LookupPrefixReply before, b->LookupPrefix("test-model", prompt));
  EXPECT_EQ(before.matched_tokens(), 0u);

  Publish(*a, prompt, 11);
  ASSERT_TRUE(WaitForFleet(*b, prompt, 16)) << "A's pages never reached the cluster";
  ASSERT_OK_AND_ASSIGN(v1::LookupPrefixReply seen, b->LookupPrefix("test-model", prompt));
  EXPECT_EQ(seen.local_tokens(), 0u);
  EXPECT_EQ(seen.fleet_tokens(), 16u);
  EXPECT_EQ(seen.matched_tokens(), 16u);

  ASSERT_OK_AND_ASSIGN(v1::PageTable tb, b->CreateSequenceWithPrefix("test-model", prompt));
  EXPECT_EQ(tb.shared_tokens(), 16u);
  EXPECT_EQ(tb.fleet_tokens(), 16u);
  ExpectPrefixBytes(*b, tb.sequence_id(), 16, 11);

  // The next worker on B hits locally: nothing more from the fleet.
  Client* b2 = Worker(b_, "beta2", "team");
  ASSERT_NE(b2, nullptr);
  ASSERT_OK_AND_ASSIGN(v1::LookupPrefixReply local, b2->LookupPrefix("test-model", prompt));
  EXPECT_EQ(local.local_tokens(), 16u);
  EXPECT_EQ(local.fleet_tokens(), 0u);
  ASSERT_OK_AND_ASSIGN(v1::PageTable tb2, b2->CreateSequenceWithPrefix("test-model", prompt));
  EXPECT_EQ(tb2.shared_tokens(), 16u);
  EXPECT_EQ(tb2.fleet_tokens(), 0u);
  ExpectPrefixBytes(*b2, tb2.sequence_id(), 16, 11);

  auto status = b_.Admin()->GetFleetStatus();
  ASSERT_OK(status);
  EXPECT_TRUE(status->reachable());
  EXPECT_EQ(status->covered_slots(), 16384);
  EXPECT_EQ(status->node_name(), "node-b");
  EXPECT_GE(status->total().hit_pages(), 4u);
  EXPECT_EQ(status->total().corrupt(), 0u);
}

TEST_F(FleetE2eTest, AnotherGroupFindsNothing) {
  Client* a = Worker(a_, "alpha", "team");
  Client* other = Worker(b_, "omega", "other");   // another secret
  Client* loner = Worker(b_, "lonely", "nosecret");  // a group without a secret: local only
  Client* b = Worker(b_, "beta", "team");
  ASSERT_TRUE(a && other && loner && b);
  const std::vector<uint32_t> prompt = Prompt(16, 2);
  Publish(*a, prompt, 22);
  ASSERT_TRUE(WaitForFleet(*b, prompt, 16));  // it is there for the group
  for (Client* outsider : {other, loner}) {
    ASSERT_OK_AND_ASSIGN(v1::LookupPrefixReply r, outsider->LookupPrefix("test-model", prompt));
    EXPECT_EQ(r.matched_tokens(), 0u);
    EXPECT_EQ(r.fleet_tokens(), 0u);
    ASSERT_OK_AND_ASSIGN(v1::PageTable t, outsider->CreateSequenceWithPrefix("test-model", prompt));
    EXPECT_EQ(t.shared_tokens(), 0u);
    EXPECT_EQ(t.fleet_tokens(), 0u);
  }
}

TEST_F(FleetE2eTest, APromptDifferingAtOnePositionReusesOnlyThePagesBefore) {
  Client* a = Worker(a_, "alpha", "team");
  Client* b = Worker(b_, "beta", "team");
  ASSERT_TRUE(a && b);
  const std::vector<uint32_t> prompt = Prompt(16, 3);
  Publish(*a, prompt, 33);
  ASSERT_TRUE(WaitForFleet(*b, prompt, 16));
  std::vector<uint32_t> changed = prompt;
  changed[9] += 1;  // in page 2: pages 0 and 1 are the same prompt
  ASSERT_OK_AND_ASSIGN(v1::LookupPrefixReply r, b->LookupPrefix("test-model", changed));
  EXPECT_EQ(r.fleet_tokens(), 8u);
  ASSERT_OK_AND_ASSIGN(v1::PageTable t, b->CreateSequenceWithPrefix("test-model", changed));
  EXPECT_EQ(t.shared_tokens(), 8u);
  EXPECT_EQ(t.fleet_tokens(), 8u);
  ExpectPrefixBytes(*b, t.sequence_id(), 8, 33);
}

TEST_F(FleetE2eTest, ACorruptedValueIsAMissNeverServed) {
  Client* a = Worker(a_, "alpha", "team");
  Client* b = Worker(b_, "beta", "team");
  ASSERT_TRUE(a && b);
  const std::vector<uint32_t> prompt = Prompt(16, 4);
  Publish(*a, prompt, 44);
  ASSERT_TRUE(WaitForFleet(*b, prompt, 16));
  // Flip one payload byte of page 2's value in the cluster (as the Redis admin could).
  ASSERT_OK_AND_ASSIGN(fleet::GroupKeys keys, fleet::DeriveGroupKeys(kTeamSecret));
  const std::vector<std::string> names =
      fleet::FleetKeyNames(keys, fleet::FleetLayoutHash(TestLayout()), prompt, kTpp);
  ASSERT_EQ(names.size(), 4u);
  fleet::RedisClusterClient admin({.seeds = cluster_->seeds(), .connection = cluster_->Admin()});
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  fleet::KeyedCommand get{names[2], {"GET", names[2]}};
  auto got = admin.Execute({&get, 1}, deadline);
  ASSERT_OK(got[0]);
  std::string value(fleet::ReplyText(**got[0]));
  ASSERT_GT(value.size(), 100u);
  value[60] ^= 0x01;
  fleet::KeyedCommand set{names[2], {"SET", names[2], value}};
  auto put = admin.Execute({&set, 1}, deadline);
  ASSERT_OK(put[0]);

  ASSERT_OK_AND_ASSIGN(v1::PageTable t, b->CreateSequenceWithPrefix("test-model", prompt));
  EXPECT_EQ(t.shared_tokens(), 8u);  // pages 0 and 1; page 2 refused, so page 3 is not used
  EXPECT_EQ(t.fleet_tokens(), 8u);
  ExpectPrefixBytes(*b, t.sequence_id(), 8, 44);
  auto status = b_.Admin()->GetFleetStatus();
  ASSERT_OK(status);
  EXPECT_GE(status->total().corrupt(), 1u);
}

TEST_F(FleetE2eTest, ARestartedNodeStillFindsThePrefix) {
  Client* a = Worker(a_, "alpha", "team");
  ASSERT_NE(a, nullptr);
  v1::CreateTenantRequest r;
  r.set_name("beta");
  r.set_sharing_group("team");
  ASSERT_OK_AND_ASSIGN(v1::CreateTenantReply beta, b_.Admin()->CreateTenant(r));
  const std::vector<uint32_t> prompt = Prompt(16, 5);
  Publish(*a, prompt, 55);
  {
    Client* b = Attach(b_, beta.token(), "b");
    ASSERT_NE(b, nullptr);
    ASSERT_TRUE(WaitForFleet(*b, prompt, 16));
  }
  clients_.clear();
  b_.Stop(SIGKILL);
  // The secret and the tenant come back from B's RocksDB; the pages from the cluster.
  std::vector<std::string> seeds;
  for (const auto& s : cluster_->seeds()) seeds.push_back(s.ToString());
  ASSERT_OK(b_.Start({"--fleet_redis=" + absl::StrJoin(seeds, ","), "--fleet_user=kvkeep",
                      "--fleet_password_file=" + password_file_, "--node_name=node-b"}));
  Client* b = Attach(b_, beta.token(), "b");
  ASSERT_NE(b, nullptr);
  ASSERT_OK_AND_ASSIGN(v1::PageTable t, b->CreateSequenceWithPrefix("test-model", prompt));
  EXPECT_EQ(t.shared_tokens(), 16u);
  EXPECT_EQ(t.fleet_tokens(), 16u);
  ExpectPrefixBytes(*b, t.sequence_id(), 16, 55);
}

// Last in this binary: it changes the cluster's topology (a replica takes over the killed master).
// docs/fleet.md §9 item 6: a node whose group secret differs from its peers' is named by
// `kvkeepctl fleet status` (GetFleetStatus) instead of being a silent miss; putting the secret
// back clears it.
TEST_F(FleetE2eTest, ANodeWithAnotherSecretIsNamedByFleetStatus) {
  Client* a = Worker(a_, "alpha", "team");  // registers test-model on both: same layout
  Client* b = Worker(b_, "beta", "team");
  ASSERT_TRUE(a && b);
  // What A says about node-b, once node-b's record shows `want` (polled: records are written
  // by a background thread).
  auto peer_b_seen_by_a = [&](const std::string& want) -> std::optional<v1::FleetPeer> {
    for (absl::Time end = absl::Now() + absl::Seconds(10); absl::Now() < end;
         absl::SleepFor(absl::Milliseconds(100))) {
      auto status = a_.Admin()->GetFleetStatus();
      if (!status.ok()) continue;
      for (const v1::FleetPeer& p : status->peers()) {
        if (p.node_name() == "node-b" && absl::StrContains(absl::StrJoin(p.groups(), " "), want)) {
          return p;
        }
      }
    }
    return std::nullopt;
  };
  ASSERT_OK_AND_ASSIGN(v1::SetGroupSecretReply same,
                       a_.Admin()->SetGroupSecret("other", kOtherSecret));
  std::optional<v1::FleetPeer> agreeing = peer_b_seen_by_a("other=" + same.fingerprint());
  ASSERT_TRUE(agreeing.has_value());
  EXPECT_THAT(agreeing->mismatches(), ::testing::IsEmpty());

  ASSERT_OK_AND_ASSIGN(v1::SetGroupSecretReply odd,
                       b_.Admin()->SetGroupSecret("other", "a-different-secret-0123456789"));
  ASSERT_TRUE(odd.changed());
  std::optional<v1::FleetPeer> differing = peer_b_seen_by_a("other=" + odd.fingerprint());
  ASSERT_TRUE(differing.has_value());
  // Written after the model was registered on B: its layout is there, and agrees with A's.
  EXPECT_THAT(differing->layouts(), ::testing::Contains(::testing::StartsWith("test-model=")));
  ASSERT_EQ(differing->mismatches_size(), 1);
  EXPECT_THAT(differing->mismatches(0), ::testing::HasSubstr("group other: fingerprint " +
                                                             odd.fingerprint() + " differs"));
  auto on_a = a_.Admin()->GetFleetStatus();
  ASSERT_OK(on_a);
  EXPECT_THAT(on_a->mismatches(), ::testing::IsEmpty());  // a tie: A judges by its own secret
  // B, judging by its own secret, says that it and node-a disagree on group other.
  auto on_b = b_.Admin()->GetFleetStatus();
  ASSERT_OK(on_b);
  EXPECT_EQ(on_b->peers_error(), "");
  bool b_names_a = false;
  for (const v1::FleetPeer& p : on_b->peers()) {
    if (p.node_name() == "node-a") {
      b_names_a = absl::StrContains(absl::StrJoin(p.mismatches(), ";"), "group other");
    }
  }
  EXPECT_TRUE(b_names_a);

  ASSERT_OK(b_.Admin()->SetGroupSecret("other", kOtherSecret));
  std::optional<v1::FleetPeer> healed = peer_b_seen_by_a("other=" + same.fingerprint());
  ASSERT_TRUE(healed.has_value());
  EXPECT_THAT(healed->mismatches(), ::testing::IsEmpty());
}

// 2 layers x 2 KV heads, head_dim 128, bf16, 16 tokens per page: 8 KiB pool pages, 32 KiB of
// KV per token page, so a 1 MiB pool holds 32 token pages.
v1::ModelLayout BigPageLayout() {
  v1::ModelLayout layout = TestLayout("big-page-model");
  layout.set_head_dim(128);
  layout.set_dtype(v1::DTYPE_BF16);
  layout.set_tokens_per_page(16);
  return layout;
}

TEST_F(FleetE2eTest, APoolShortageImportsThePagesThatFit) {
  // B with a 1 MiB pool (one 1 MiB arena: 128 pages of 8 KiB = 32 token pages of this model).
  b_.Stop(SIGTERM);
  ASSERT_OK(StartNode(b_, "node-b", {"--pool_mib=1", "--arena_mib=1"}));
  Client* a = Worker(a_, "alpha", "team");
  Client* b = Worker(b_, "beta", "team");
  ASSERT_TRUE(a && b);
  ASSERT_OK(a->RegisterModel(BigPageLayout()));
  ASSERT_OK(b->RegisterModel(BigPageLayout()));
  constexpr uint32_t kTokens = 40 * 16;  // 40 token pages: more than B's pool holds
  const uint64_t head_bytes = uint64_t{kTokens} * 128 * 2;
  const std::vector<uint32_t> prompt = Prompt(kTokens, 7);
  ASSERT_OK_AND_ASSIGN(std::string on_a, a->CreateSequence("big-page-model"));
  ASSERT_OK(a->Allocate(on_a, kTokens));
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      const std::string k = PatternBytes(500 + layer * 2 + head, head_bytes);
      const std::string v = PatternBytes(600 + layer * 2 + head, head_bytes);
      ASSERT_OK(a->WriteInPlace(on_a, layer, head, 0, kTokens, k.data(), v.data()));
    }
  }
  ASSERT_OK(a->Commit(on_a, kTokens));
  ASSERT_OK(a->PublishPrefix(on_a, prompt));
  bool there = false;
  for (int i = 0; i < 100 && !there; ++i, absl::SleepFor(absl::Milliseconds(50))) {
    auto seen = b->LookupPrefix("big-page-model", prompt);
    there = seen.ok() && seen->fleet_tokens() == kTokens;
  }
  ASSERT_TRUE(there) << "A's pages never reached the cluster";

  // The first 32 token pages fit: imported and reused, bit-exact; the rest is left to prefill.
  ASSERT_OK_AND_ASSIGN(v1::PageTable tb, b->CreateSequenceWithPrefix("big-page-model", prompt));
  EXPECT_EQ(tb.fleet_tokens(), 32u * 16);
  EXPECT_EQ(tb.shared_tokens(), 32u * 16);
  const uint64_t got_bytes = uint64_t{32} * 16 * 128 * 2;
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      ASSERT_OK_AND_ASSIGN(HeadData back, b->ReadHead(tb.sequence_id(), layer, head));
      ASSERT_GE(back.keys.size(), got_bytes);
      EXPECT_TRUE(back.keys.substr(0, got_bytes) ==
                  PatternBytes(500 + layer * 2 + head, head_bytes).substr(0, got_bytes))
          << "layer " << layer << " head " << head;
      EXPECT_TRUE(back.values.substr(0, got_bytes) ==
                  PatternBytes(600 + layer * 2 + head, head_bytes).substr(0, got_bytes))
          << "layer " << layer << " head " << head;
    }
  }
}

TEST_F(FleetE2eTest, ANewModelsLayoutReachesPeersAtOnce) {
  Client* a = Worker(a_, "alpha", "team");
  Client* b = Worker(b_, "beta", "team");
  ASSERT_TRUE(a && b);
  // Let both records settle (written at start and on SetGroupSecret), then register a model on
  // A: B must see its layout long before the 20 s refresh.
  absl::SleepFor(absl::Milliseconds(500));
  v1::ModelLayout fresh = TestLayout("fresh-model");
  fresh.set_head_dim(16);
  ASSERT_OK(a->RegisterModel(fresh));
  const absl::Time registered = absl::Now();
  bool seen = false;
  while (!seen && absl::Now() < registered + absl::Seconds(5)) {
    auto status = b_.Admin()->GetFleetStatus();
    ASSERT_OK(status);
    for (const v1::FleetPeer& p : status->peers()) {
      if (p.node_name() == "node-a") {
        seen = absl::StrContains(absl::StrJoin(p.layouts(), " "), "fresh-model=");
      }
    }
    if (!seen) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(seen) << "node-a's record did not show fresh-model within 5 s";
}

TEST_F(FleetE2eTest, KillingAMasterDuringLookupsAndPublishesKeepsBothDaemonsAnswering) {
  Client* a = Worker(a_, "alpha", "team");
  Client* b = Worker(b_, "beta", "team");
  ASSERT_TRUE(a && b);
  const std::vector<uint32_t> prompt = Prompt(16, 6);
  Publish(*a, prompt, 66);
  ASSERT_TRUE(WaitForFleet(*b, prompt, 16));

  std::atomic<bool> stop{false};
  std::atomic<int> reader_calls{0}, publisher_calls{0};
  std::atomic<int64_t> slowest_ms{0};
  auto note = [&](absl::Time start) {
    const int64_t ms = absl::ToInt64Milliseconds(absl::Now() - start);
    int64_t seen = slowest_ms.load();
    while (ms > seen && !slowest_ms.compare_exchange_weak(seen, ms)) {
    }
  };
  // B: lookups and creations from the prefix; whatever is served must be A's bytes.
  std::thread reader([&] {
    while (!stop.load()) {
      const absl::Time start = absl::Now();
      auto found = b->LookupPrefix("test-model", prompt);
      EXPECT_OK(found);
      auto table = b->CreateSequenceWithPrefix("test-model", prompt);
      EXPECT_OK(table);
      note(start);
      if (table.ok()) {
        EXPECT_LE(table->shared_tokens(), 16u);
        ExpectPrefixBytes(*b, table->sequence_id(), table->shared_tokens(), 66);
        EXPECT_OK(b->Drop(table->sequence_id()));
      }
      ++reader_calls;
    }
  });
  // A: publishes new prompts all along (their writes may fail while a master is down).
  std::thread publisher([&] {
    for (uint32_t i = 0; !stop.load(); ++i) {
      const absl::Time start = absl::Now();
      Publish(*a, Prompt(16, 100000 + i), 100000 + i);  // seeds apart from the main thread's
      note(start);
      ++publisher_calls;
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  fleet::RedisClusterClient admin({.seeds = cluster_->seeds(), .connection = cluster_->Admin()});
  ASSERT_OK(admin.Refresh(absl::Now() + absl::Seconds(5)));
  const fleet::NodeAddress master = admin.slot_map().Masters().front();
  const pid_t pid = cluster_->PidOf(master.port);
  ASSERT_GT(pid, 0);
  ASSERT_EQ(kill(pid, SIGKILL), 0);

  // After the failover (node timeout 2 s), a prompt published on A is found whole on B again.
  bool recovered = false;
  for (int i = 0; i < 60 && !recovered; ++i) {
    absl::SleepFor(absl::Milliseconds(500));
    const std::vector<uint32_t> fresh = Prompt(16, 900 + i);
    Publish(*a, fresh, 900 + i);
    if (!WaitForFleet(*b, fresh, 16)) continue;
    auto table = b->CreateSequenceWithPrefix("test-model", fresh);
    ASSERT_OK(table);
    if (table->fleet_tokens() == 16) {
      ExpectPrefixBytes(*b, table->sequence_id(), 16, 900 + i);
      recovered = true;
    }
  }
  stop = true;
  reader.join();
  publisher.join();
  EXPECT_TRUE(recovered) << "no whole fleet reuse within 30 s of the master's death";
  EXPECT_GT(reader_calls.load(), 0);
  EXPECT_GT(publisher_calls.load(), 0);
  // Every call returned within the fleet's bounds (1 s fetch + 50 ms lookup + local work).
  EXPECT_LT(slowest_ms.load(), 5000);
}

}  // namespace
}  // namespace kvkeep::testing
