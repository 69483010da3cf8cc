// Regression tests of issue 13 (hardening against hostile tenants) at the engine level: what one
// tenant can learn about the others from errors, token collisions with the admin token, and the
// daemon memory a tenant can make the engine hold (charged through the ledger).
#include <filesystem>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gpu/cpu/cpu_backend.h"
#include "gtest/gtest.h"
#include "service/engine/cache_engine.h"
#include "service/token_auth.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;
using ::testing::HasSubstr;
using ::testing::Not;

class NullSink : public SessionSink {
 public:
  void ArenaAdded(const ArenaInfo&) override {}
  void End(const absl::Status&) override {}
};

class HostileTenantTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/hostile-", std::random_device()());
    std::filesystem::create_directories(dir_);
    ASSERT_OK_AND_ASSIGN(store_, MetadataStore::Open(dir_ + "/db"));
    ASSERT_OK_AND_ASSIGN(backend_, CreateBackend({.kind = BackendKind::kCpu,
                                                  .shm_prefix = "kvkeep-hostiletest"}));
    Reopen();
  }
  void TearDown() override {
    engine_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    engine_.reset();
    EngineOptions options = options_;
    options.pool = {.capacity_bytes = 1 << 20, .arena_bytes = 64 << 10};
    auto engine = CacheEngine::Create(backend_.get(), store_.get(), options);
    ASSERT_OK(engine);
    engine_ = std::move(*engine);
  }
  absl::StatusOr<std::string> Tenant(const std::string& name, uint64_t quota = 0,
                                     const std::string& token = "") {
    v1::CreateTenantRequest r;
    r.set_name(name);
    r.set_quota_bytes(quota);
    r.set_token(token);
    auto reply = engine_->CreateTenant(r);
    if (!reply.ok()) return reply.status();
    return reply->token();
  }
  static v1::ModelLayout Layout(uint32_t layers, uint32_t heads, uint32_t head_dim,
                                uint32_t tokens_per_page) {
    v1::ModelLayout l;
    l.set_name("m");
    l.set_layers(layers);
    l.set_q_heads(heads);
    l.set_kv_heads(heads);
    l.set_head_dim(head_dim);
    l.set_dtype(v1::DTYPE_FP16);
    l.set_tokens_per_page(tokens_per_page);
    return l;
  }
  absl::Status RegisterModel(const std::string& tenant, const v1::ModelLayout& layout) {
    auto model = Model::FromLayout(layout);
    if (!model.ok()) return model.status();
    return engine_->RegisterModel(tenant, std::move(*model)).status();
  }
  // 1 KiB pages (16 tokens x 16 dims x fp16 x 2), 4 head tables.
  absl::Status RegisterSmallModel(const std::string& tenant) {
    return RegisterModel(tenant, Layout(2, 2, 16, 16));
  }
  absl::StatusOr<v1::PageTable> NewSequence(const std::string& tenant,
                                            const std::string& session) {
    v1::CreateSequenceRequest r;
    r.set_session_id(session);
    r.set_model("m");
    return engine_->CreateSequence(tenant, r);
  }
  absl::Status Allocate(const std::string& tenant, const std::string& seq, uint32_t tokens) {
    v1::AllocateRequest r;
    r.set_sequence_id(seq);
    r.set_tokens(tokens);
    return engine_->AllocatePages(tenant, r).status();
  }
  absl::Status Commit(const std::string& tenant, const std::string& seq, uint32_t tokens) {
    v1::CommitRequest c;
    c.set_sequence_id(seq);
    c.set_tokens(tokens);
    return engine_->CommitTokens(tenant, c).status();
  }

  EngineOptions options_;
  std::string dir_;
  std::unique_ptr<MetadataStore> store_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<CacheEngine> engine_;
};

// Defect 7: a refused allocation named the pool's usage and the other tenants' reservations.
TEST_F(HostileTenantTest, PoolRefusalNamesOnlyTheCallersOwnFigures) {
  ASSERT_OK(Tenant("greedy").status());
  ASSERT_OK(Tenant("bystander", /*quota=*/256 << 10).status());
  ASSERT_OK(RegisterSmallModel("greedy"));
  ASSERT_OK(RegisterSmallModel("bystander"));
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto g, engine_->Attach("greedy", "w", &sink));
  ASSERT_OK_AND_ASSIGN(auto o, engine_->Attach("bystander", "w", &sink));
  // The bystander holds 3 steps of 4 KiB: pool used and its open reservation become figures
  // that differ from anything of greedy's.
  ASSERT_OK_AND_ASSIGN(v1::PageTable os, NewSequence("bystander", o.session_id));
  ASSERT_OK(Allocate("bystander", os.sequence_id(), 48));
  ASSERT_OK_AND_ASSIGN(v1::PageTable gs, NewSequence("greedy", g.session_id));
  absl::Status refused;
  for (int i = 0; i < 1000 && refused.ok(); ++i) {
    refused = Allocate("greedy", gs.sequence_id(), 16);
    if (refused.ok()) {
      ASSERT_OK(Commit("greedy", gs.sequence_id(), 16));
    }
  }
  ASSERT_THAT(refused, StatusIs(StatusCode::kResourceExhausted, "pool exhausted for tenant"));
  const uint64_t greedy_used = engine_->Status().pool_used_bytes() - (12 << 10);
  const std::string other_reserved = std::to_string((256 << 10) - (12 << 10));
  const std::string pool_used = std::to_string(engine_->Status().pool_used_bytes());
  EXPECT_THAT(std::string(refused.message()), HasSubstr(std::to_string(greedy_used)));
  EXPECT_THAT(std::string(refused.message()), Not(HasSubstr(other_reserved)));
  EXPECT_THAT(std::string(refused.message()), Not(HasSubstr(pool_used)));
  EXPECT_THAT(std::string(refused.message()), Not(HasSubstr("bystander")));
}

// Defect 5: a tenant token equal to the admin token authenticated as both.
TEST_F(HostileTenantTest, TenantTokenEqualToTheAdminTokenIsRefusedBothWays) {
  const std::string admin = "admin-token-0123456789abcdef";
  ASSERT_OK(engine_->ReserveAdminToken(HashToken(admin)));
  EXPECT_THAT(Tenant("a", 0, admin).status(),
              StatusIs(StatusCode::kAlreadyExists, "admin token"));
  EXPECT_EQ(engine_->ListTenants().tenants_size(), 0);
  EXPECT_THAT(engine_->AuthenticateTenant(admin), StatusIs(StatusCode::kUnauthenticated));
  // The other direction: a tenant (loaded at start) already holds the token the admin file now
  // gives. The daemon must not accept it as its admin token.
  ASSERT_OK(Tenant("b", 0, "tenant-token-0123456789abcdef").status());
  Reopen();
  EXPECT_THAT(engine_->ReserveAdminToken(HashToken("tenant-token-0123456789abcdef")),
              StatusIs(StatusCode::kFailedPrecondition, "tenant \"b\""));
  EXPECT_OK(engine_->ReserveAdminToken(HashToken(admin)));
}

// Defect 1: a layout within the documented limits made CreateSequence create a sequence whose
// reply could not be sent (the caller never learned its id).
TEST_F(HostileTenantTest, CreateSequenceWhoseReplyCannotBeSentCreatesNothing) {
  ASSERT_OK(Tenant("a").status());
  ASSERT_OK(RegisterModel("a", Layout(1024, 1024, 2, 1)));
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto s, engine_->Attach("a", "w", &sink));
  EXPECT_THAT(NewSequence("a", s.session_id),
              StatusIs(StatusCode::kResourceExhausted, "message limit"));
  EXPECT_EQ(engine_->ListSequences("a").sequences_size(), 0);
}

// Defect 1: empty sequences of a wide layout held daemon heap charged to nobody. Now each is
// charged, a tenant's total is bounded, and a drop gives the charge back.
TEST_F(HostileTenantTest, SequenceHeapIsChargedAndBoundedPerTenant) {
  options_.max_metadata_bytes_per_tenant = 1 << 20;
  Reopen();
  ASSERT_OK(Tenant("a").status());
  ASSERT_OK(Tenant("b").status());
  ASSERT_OK(RegisterModel("a", Layout(64, 64, 2, 1)));  // 4096 head tables per sequence
  ASSERT_OK(RegisterModel("b", Layout(64, 64, 2, 1)));
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto sa, engine_->Attach("a", "w", &sink));
  ASSERT_OK_AND_ASSIGN(auto sb, engine_->Attach("b", "w", &sink));
  ASSERT_OK(NewSequence("b", sb.session_id).status());  // b's heap is not a's
  std::vector<std::string> made;
  absl::Status refused;
  while (refused.ok() && made.size() < 64) {
    auto table = NewSequence("a", sa.session_id);
    if (table.ok()) made.push_back(table->sequence_id());
    refused = table.status();
  }
  EXPECT_THAT(refused, StatusIs(StatusCode::kResourceExhausted, "tenant a metadata limit"));
  EXPECT_THAT(std::string(refused.message()), Not(HasSubstr("tenant b")));
  ASSERT_GE(made.size(), 1u);
  EXPECT_LT(made.size(), 10u);  // each holds ~4096 x sizeof(SequenceTable::Head)
  EXPECT_EQ(engine_->ListSequences("a").sequences_size(), static_cast<int>(made.size()));
  // Dropping one gives its heap back: one more fits again.
  v1::DropRequest drop;
  drop.set_session_id(sa.session_id);
  drop.set_sequence_id(made.back());
  ASSERT_OK(engine_->Drop("a", drop).status());
  EXPECT_OK(NewSequence("a", sa.session_id).status());
  EXPECT_THAT(NewSequence("a", sa.session_id).status(),
              StatusIs(StatusCode::kResourceExhausted, "metadata limit"));
}

// Defect 2: statistics windows were bounded by next_position (which a tenant sets with one commit
// at a far position), not by the tokens the sequence holds.
TEST_F(HostileTenantTest, StatisticsWindowIsBoundedByCommittedTokens) {
  ASSERT_OK(Tenant("a").status());
  ASSERT_OK(RegisterSmallModel("a"));
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto s, engine_->Attach("a", "w", &sink));
  ASSERT_OK_AND_ASSIGN(v1::PageTable seq, NewSequence("a", s.session_id));
  ASSERT_OK(Allocate("a", seq.sequence_id(), 1));
  v1::CommitRequest c;
  c.set_sequence_id(seq.sequence_id());
  c.set_tokens(1);
  c.add_positions(1000000);
  ASSERT_OK(engine_->CommitTokens("a", c).status());
  v1::StatsChunk chunk;
  chunk.set_sequence_id(seq.sequence_id());
  chunk.mutable_stats()->set_layer(0);
  chunk.mutable_stats()->set_window(2);
  for (int i = 0; i < 2 * 2 * 16; ++i) chunk.mutable_stats()->add_window_queries(0.5f);
  EXPECT_THAT(engine_->PutStats("a", chunk),
              StatusIs(StatusCode::kInvalidArgument, "exceeds the sequence's 1 committed tokens"));
}

// Defect 2: statistics were never charged. Now they count against the tenant's heap bound.
TEST_F(HostileTenantTest, StatisticsAreChargedAgainstTheTenantsHeapBound) {
  options_.max_metadata_bytes_per_tenant = 48 << 10;
  Reopen();
  ASSERT_OK(Tenant("a").status());
  ASSERT_OK(RegisterSmallModel("a"));
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto s, engine_->Attach("a", "w", &sink));
  ASSERT_OK_AND_ASSIGN(v1::PageTable seq, NewSequence("a", s.session_id));
  ASSERT_OK(Allocate("a", seq.sequence_id(), 512));
  ASSERT_OK(Commit("a", seq.sequence_id(), 512));
  auto window = [&](uint32_t layer, uint32_t w) {
    v1::StatsChunk chunk;
    chunk.set_sequence_id(seq.sequence_id());
    chunk.mutable_stats()->set_layer(layer);
    chunk.mutable_stats()->set_window(w);
    for (uint32_t i = 0; i < 2 * w * 16; ++i) chunk.mutable_stats()->add_window_queries(0.25f);
    return engine_->PutStats("a", chunk);
  };
  EXPECT_OK(window(0, 64));  // 8 KiB
  // 64 KiB of window queries: more than the tenant may hold.
  EXPECT_THAT(window(1, 512), StatusIs(StatusCode::kResourceExhausted, "metadata limit"));
  // Replacing the window with a short one frees the charge of the long one.
  EXPECT_OK(window(0, 8));
  EXPECT_OK(window(1, 128));  // 16 KiB
}

// A raw ReadKV listing one page many times streamed that page each time (400,000 times: 400 MB).
TEST_F(HostileTenantTest, RawReadListingAPageTwiceIsRefused) {
  ASSERT_OK(Tenant("a").status());
  ASSERT_OK(RegisterSmallModel("a"));
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto s, engine_->Attach("a", "w", &sink));
  ASSERT_OK_AND_ASSIGN(v1::PageTable seq, NewSequence("a", s.session_id));
  v1::AllocateRequest allocate;
  allocate.set_sequence_id(seq.sequence_id());
  allocate.set_tokens(16);
  ASSERT_OK_AND_ASSIGN(v1::PageTableDelta delta, engine_->AllocatePages("a", allocate));
  const uint64_t page = delta.heads(0).pages(0);
  const uint64_t other = delta.heads(1).pages(0);
  v1::ReadRequest read;
  read.add_pages(page);
  read.add_pages(other);
  EXPECT_OK(engine_->OpenRead("a", read).status());  // distinct pages: fine
  for (int i = 0; i < 1000; ++i) read.add_pages(page);
  EXPECT_THAT(engine_->OpenRead("a", read).status(),
              StatusIs(StatusCode::kInvalidArgument, "lists page"));
}

}  // namespace
}  // namespace kvkeep
