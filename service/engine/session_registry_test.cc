#include "service/engine/session_registry.h"

#include <string>
#include <vector>

#include "common/failure_reason.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;

class RecordingSink : public SessionSink {
 public:
  void ArenaAdded(const ArenaInfo& arena) override { arenas.push_back(arena.id); }
  void End(const absl::Status& status) override { ended.push_back(status); }
  std::vector<uint32_t> arenas;
  std::vector<absl::Status> ended;
};

const absl::Time kT0 = absl::FromUnixSeconds(1000);

TEST(SessionRegistry, AttachChecksSessionsAndTenants) {
  SessionRegistry registry(8);
  RecordingSink sink;
  ASSERT_OK_AND_ASSIGN(auto a, registry.Attach("team-a", "w0", &sink));
  EXPECT_EQ(a.session_id.size(), 32u);
  EXPECT_TRUE(a.superseded_session_id.empty());
  EXPECT_OK(registry.CheckLive("team-a", a.session_id));
  EXPECT_OK(registry.CheckIfGiven("team-a", ""));
  // Another tenant's session is as one that does not exist.
  EXPECT_THAT(registry.CheckLive("team-b", a.session_id),
              StatusIs(absl::StatusCode::kNotFound, "no live session"));
  EXPECT_THAT(registry.CheckIfGiven("team-b", a.session_id),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(registry.CheckLive("team-a", ""),
              StatusIs(absl::StatusCode::kInvalidArgument, "session_id is required"));
  EXPECT_EQ(registry.SessionsOf("team-a"), 1u);
  EXPECT_EQ(registry.SessionsOf("team-b"), 0u);
  EXPECT_EQ(registry.SessionCount(), 1u);
}

TEST(SessionRegistry, SupersedeMovesSequencesAndLeasesAndEndsTheOldSink) {
  SessionRegistry registry(8);
  RecordingSink old_sink, new_sink, other_sink;
  ASSERT_OK_AND_ASSIGN(auto old, registry.Attach("team-a", "w0", &old_sink));
  ASSERT_OK_AND_ASSIGN(auto other, registry.Attach("team-a", "w1", &other_sink));
  ASSERT_OK(registry.AddSequence("team-a", "s1", old.session_id, false, kT0));
  ASSERT_OK(registry.AddSequence("team-a", "s2", other.session_id, false, kT0));
  ASSERT_OK(registry.Lease("team-a", "s2", old.session_id, kT0));
  ASSERT_OK_AND_ASSIGN(auto fresh, registry.Attach("team-a", "w0", &new_sink));
  EXPECT_EQ(fresh.superseded_session_id, old.session_id);
  EXPECT_EQ(fresh.adopted_sequences, 1u);
  ASSERT_EQ(old_sink.ended.size(), 1u);
  EXPECT_THAT(old_sink.ended[0], StatusIs(absl::StatusCode::kAborted, "superseded"));
  EXPECT_TRUE(new_sink.ended.empty());
  EXPECT_THAT(registry.CheckLive("team-a", old.session_id), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(registry.SessionsOf("team-a"), 2u);
  // The lease on s2 moved: the old id holds none, the new one does.
  EXPECT_EQ(registry.OtherLeaseHolder("team-a", "s2", other.session_id), fresh.session_id);
  ASSERT_OK_AND_ASSIGN(auto unleased, registry.Unlease("team-a", "s2", fresh.session_id));
  EXPECT_EQ(unleased.leases_left, 1u);
  EXPECT_FALSE(unleased.orphan);
  // s1 is owned by the new session: it is the new one's orphan when that ends.
  ASSERT_OK(registry.Unlease("team-a", "s1", fresh.session_id).status());
  auto ended = registry.End(fresh.session_id);
  ASSERT_TRUE(ended.has_value());
  EXPECT_EQ(ended->worker, "w0");
  EXPECT_EQ(ended->orphans, std::vector<std::string>{"s1"});
}

TEST(SessionRegistry, EndOrphansOnlyUnleasedUnretainedSequences) {
  SessionRegistry registry(8);
  ASSERT_OK_AND_ASSIGN(auto a, registry.Attach("team-a", "w0", nullptr));
  ASSERT_OK_AND_ASSIGN(auto b, registry.Attach("team-a", "w1", nullptr));
  ASSERT_OK(registry.AddSequence("team-a", "plain", a.session_id, false, kT0));
  ASSERT_OK(registry.AddSequence("team-a", "kept", a.session_id, true, kT0));
  ASSERT_OK(registry.AddSequence("team-a", "shared", a.session_id, false, kT0));
  ASSERT_OK(registry.Lease("team-a", "shared", b.session_id, kT0));
  auto ended = registry.End(a.session_id);
  ASSERT_TRUE(ended.has_value());
  EXPECT_EQ(ended->orphans, std::vector<std::string>{"plain"});
  EXPECT_FALSE(registry.End(a.session_id).has_value());  // already ended
  SessionRegistry::Holders kept = registry.HoldersOf("team-a", "kept");
  EXPECT_TRUE(kept.retain);
  EXPECT_FALSE(kept.has_owner);
  EXPECT_EQ(kept.leases, 0u);
  // The last lease of an ownerless, unretained sequence makes it an orphan.
  ASSERT_OK_AND_ASSIGN(auto unleased, registry.Unlease("team-a", "shared", b.session_id));
  EXPECT_TRUE(unleased.orphan);
  EXPECT_EQ(unleased.leases_left, 0u);
  EXPECT_THAT(registry.Unlease("team-a", "shared", b.session_id),
              StatusIs(absl::StatusCode::kFailedPrecondition, "holds no lease"));
}

TEST(SessionRegistry, LeasesHoldersAndLastAccess) {
  SessionRegistry registry(8);
  ASSERT_OK_AND_ASSIGN(auto a, registry.Attach("team-a", "w0", nullptr));
  ASSERT_OK_AND_ASSIGN(auto b, registry.Attach("team-a", "w1", nullptr));
  ASSERT_OK(registry.AddSequence("team-a", "s", a.session_id, false, kT0));
  EXPECT_TRUE(registry.Leased("team-a", "s"));
  EXPECT_EQ(registry.OtherLeaseHolder("team-a", "s", a.session_id), "");
  ASSERT_OK(registry.Lease("team-a", "s", b.session_id, kT0 + absl::Seconds(5)));
  EXPECT_EQ(registry.LastAccess("team-a", "s"), kT0 + absl::Seconds(5));
  EXPECT_EQ(registry.OtherLeaseHolder("team-a", "s", a.session_id), b.session_id);
  EXPECT_THAT(registry.Lease("team-a", "s", "nope", kT0), StatusIs(absl::StatusCode::kNotFound));
  SessionRegistry::Holders holders = registry.HoldersOf("team-a", "s");
  EXPECT_EQ(holders.leases, 2u);
  EXPECT_EQ(holders.owner_worker, "w0");
  EXPECT_EQ(holders.lease_workers, (std::vector<std::string>{"w0", "w1"}));
  registry.Touch("team-a", "s", kT0 + absl::Seconds(9));
  EXPECT_EQ(registry.LastAccess("team-a", "s"), kT0 + absl::Seconds(9));
  // A dropped sequence is forgotten by its holders too.
  registry.RemoveSequence("team-a", "s");
  EXPECT_FALSE(registry.Leased("team-a", "s"));
  EXPECT_THAT(registry.Unlease("team-a", "s", b.session_id),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  auto ended = registry.End(a.session_id);
  ASSERT_TRUE(ended.has_value());
  EXPECT_TRUE(ended->orphans.empty());
  // Restorable sequences found at start are retained and ownerless.
  registry.AddRestorable("team-a", "r", kT0);
  EXPECT_TRUE(registry.HoldersOf("team-a", "r").retain);
  EXPECT_FALSE(registry.Leased("team-a", "r"));
}

TEST(SessionRegistry, PerTenantSessionBound) {
  SessionRegistry registry(2);
  ASSERT_OK(registry.Attach("team-a", "w0", nullptr).status());
  ASSERT_OK(registry.Attach("team-a", "w1", nullptr).status());
  absl::StatusOr<SessionRegistry::Attached> third = registry.Attach("team-a", "w2", nullptr);
  EXPECT_THAT(third.status(),
              StatusIs(absl::StatusCode::kResourceExhausted, "2 sessions, the most allowed (2)"));
  EXPECT_EQ(ReasonOf(third.status()), FailureReason::kMetadataLimit);
  // Superseding needs no room; another tenant has its own bound.
  EXPECT_OK(registry.Attach("team-a", "w1", nullptr).status());
  EXPECT_OK(registry.Attach("team-b", "w2", nullptr).status());
  EXPECT_EQ(registry.SessionsOf("team-a"), 2u);
}

TEST(SessionRegistry, EndAllAndEndTenantCallSinksAndAnnounceReachesOnlyTheTenant) {
  SessionRegistry registry(8);
  RecordingSink a0, a1, b0;
  ASSERT_OK(registry.Attach("team-a", "w0", &a0).status());
  ASSERT_OK(registry.Attach("team-a", "w1", &a1).status());
  ASSERT_OK(registry.Attach("team-b", "w0", &b0).status());
  ArenaInfo arena;
  arena.id = 7;
  registry.AnnounceArena("team-a", arena);
  EXPECT_EQ(a0.arenas, std::vector<uint32_t>{7});
  EXPECT_EQ(a1.arenas, std::vector<uint32_t>{7});
  EXPECT_TRUE(b0.arenas.empty());
  EXPECT_EQ(registry.EndTenant("team-a", absl::AbortedError("tenant team-a was deleted")), 2u);
  ASSERT_EQ(a0.ended.size(), 1u);
  EXPECT_THAT(a0.ended[0], StatusIs(absl::StatusCode::kAborted, "deleted"));
  EXPECT_EQ(registry.SessionsOf("team-a"), 0u);
  std::vector<SessionRegistry::Ended> all = registry.EndAll(absl::OkStatus());
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].tenant, "team-b");
  ASSERT_EQ(b0.ended.size(), 1u);
  EXPECT_TRUE(b0.ended[0].ok());
  EXPECT_EQ(registry.SessionCount(), 0u);
}

}  // namespace
}  // namespace kvkeep
