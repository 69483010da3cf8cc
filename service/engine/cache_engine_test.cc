#include "service/engine/cache_engine.h"

#include <filesystem>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gpu/cpu/cpu_backend.h"
#include "gtest/gtest.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

class NullSink : public SessionSink {
 public:
  void ArenaAdded(const ArenaInfo&) override { ++arenas; }
  void End(const absl::Status& s) override { ended = s; }
  std::atomic<int> arenas{0};
  absl::Status ended = absl::OkStatus();
};

class CacheEngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/engine-", std::random_device()());
    std::filesystem::create_directories(dir_);
    ASSERT_OK_AND_ASSIGN(store_, MetadataStore::Open(dir_ + "/db"));
    ASSERT_OK_AND_ASSIGN(backend_, CreateBackend({.kind = BackendKind::kCpu,
                                                  .shm_prefix = "kvkeep-enginetest"}));
    Reopen();
  }
  void TearDown() override {
    engine_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Reopen() {
    engine_.reset();
    EngineOptions options;
    options.pool = {.capacity_bytes = 1 << 20, .arena_bytes = 64 << 10};
    auto engine = CacheEngine::Create(backend_.get(), store_.get(), options);
    ASSERT_OK(engine);
    engine_ = std::move(*engine);
  }
  std::string Tenant(const std::string& name, uint64_t quota = 0, uint64_t max = 0) {
    v1::CreateTenantRequest r;
    r.set_name(name);
    r.set_quota_bytes(quota);
    r.set_max_bytes(max);
    auto reply = engine_->CreateTenant(r);
    EXPECT_OK(reply);
    return reply.ok() ? reply->token() : "";
  }
  // Registers a model with 1 KiB pages (16 tokens x 16 dims x fp16 x 2) and 4 head tables.
  void RegisterModel(const std::string& tenant) {
    v1::ModelLayout l;
    l.set_name("m");
    l.set_layers(2);
    l.set_q_heads(2);
    l.set_kv_heads(2);
    l.set_head_dim(16);
    l.set_dtype(v1::DTYPE_FP16);
    l.set_tokens_per_page(16);
    auto model = Model::FromLayout(l);
    ASSERT_OK(model);
    ASSERT_OK(engine_->RegisterModel(tenant, std::move(*model)));
  }
  std::string NewSequence(const std::string& tenant, const std::string& session) {
    v1::CreateSequenceRequest r;
    r.set_session_id(session);
    r.set_model("m");
    auto table = engine_->CreateSequence(tenant, r);
    EXPECT_OK(table);
    return table.ok() ? table->sequence_id() : "";
  }
  absl::Status Allocate(const std::string& tenant, const std::string& seq, uint32_t tokens) {
    v1::AllocateRequest r;
    r.set_sequence_id(seq);
    r.set_tokens(tokens);
    return engine_->AllocatePages(tenant, r).status();
  }

  std::string dir_;
  std::unique_ptr<MetadataStore> store_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<CacheEngine> engine_;
};

TEST_F(CacheEngineTest, TokensAuthenticateOnlyTheirTenantAndSurviveReopen) {
  std::string a = Tenant("a");
  std::string b = Tenant("b");
  ASSERT_OK_AND_ASSIGN(std::string who, engine_->AuthenticateTenant(a));
  EXPECT_EQ(who, "a");
  EXPECT_THAT(engine_->AuthenticateTenant(""), StatusIs(StatusCode::kUnauthenticated));
  EXPECT_THAT(engine_->AuthenticateTenant(a + "x"), StatusIs(StatusCode::kUnauthenticated));
  Reopen();
  ASSERT_OK_AND_ASSIGN(who, engine_->AuthenticateTenant(b));
  EXPECT_EQ(who, "b");
  // Only the hash is stored.
  auto rows = store_->Scan("tenant/");
  ASSERT_OK(rows);
  for (const auto& [key, value] : *rows) {
    EXPECT_EQ(value.find(a), std::string::npos);
    EXPECT_EQ(value.find(b), std::string::npos);
  }
}

TEST_F(CacheEngineTest, GuaranteesHoldWhenAnotherTenantFillsThePool) {
  Tenant("greedy");
  Tenant("reserved", /*quota=*/256 << 10);
  RegisterModel("greedy");
  RegisterModel("reserved");
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto g, engine_->Attach("greedy", "w", &sink));
  ASSERT_OK_AND_ASSIGN(auto r, engine_->Attach("reserved", "w", &sink));
  std::string gs = NewSequence("greedy", g.session_id);
  // Each 16-token step takes 4 pages of 1 KiB. 1 MiB pool - 256 KiB reserved = 768 KiB.
  int steps = 0;
  while (Allocate("greedy", gs, 16).ok()) {
    v1::CommitRequest c;
    c.set_sequence_id(gs);
    c.set_tokens(16);
    ASSERT_OK(engine_->CommitTokens("greedy", c));
    ++steps;
  }
  EXPECT_EQ(steps, 192);  // 768 KiB / 4 KiB
  EXPECT_THAT(Allocate("greedy", gs, 16),
              StatusIs(StatusCode::kResourceExhausted, "reserved for other tenants"));
  std::string rs = NewSequence("reserved", r.session_id);
  EXPECT_OK(Allocate("reserved", rs, 16 * 64));  // 256 KiB: the whole guarantee
  engine_->EndSession(g.session_id);
  engine_->EndSession(r.session_id);
  EXPECT_EQ(engine_->Status().pages_in_use(), 0u);
}

TEST_F(CacheEngineTest, ConcurrentAllocateCommitDropKeepsAccountingExact) {
  Tenant("a");
  Tenant("b");
  RegisterModel("a");
  RegisterModel("b");
  NullSink sink;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      const std::string tenant = t % 2 ? "a" : "b";
      auto s = engine_->Attach(tenant, absl::StrCat("w", t), &sink);
      ASSERT_OK(s);
      std::mt19937 rng(t);
      for (int i = 0; i < 40; ++i) {
        std::string seq = NewSequence(tenant, s->session_id);
        for (int k = 0; k < 3; ++k) {
          uint32_t n = 1 + rng() % 20;
          if (!Allocate(tenant, seq, n).ok()) break;
          v1::CommitRequest c;
          c.set_sequence_id(seq);
          c.set_tokens(n);
          ASSERT_OK(engine_->CommitTokens(tenant, c));
        }
        if (rng() % 2) {
          v1::DropRequest d;
          d.set_session_id(s->session_id);
          d.set_sequence_id(seq);
          ASSERT_OK(engine_->Drop(tenant, d));
        }
      }
      engine_->EndSession(s->session_id);  // drops the rest
    });
  }
  for (auto& th : threads) th.join();
  v1::DaemonStatus status = engine_->Status();
  EXPECT_EQ(status.pages_in_use(), 0u);
  EXPECT_EQ(status.pool_used_bytes(), 0u);
  EXPECT_EQ(status.sequences(), 0u);
  for (const auto& t : status.tenant_usage()) EXPECT_EQ(t.used_bytes(), 0u) << t.name();
}

TEST_F(CacheEngineTest, SessionOfAnotherTenantIsNotFound) {
  Tenant("a");
  Tenant("b");
  RegisterModel("a");
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto sb, engine_->Attach("b", "w", &sink));
  v1::CreateSequenceRequest r;
  r.set_session_id(sb.session_id);
  r.set_model("m");
  EXPECT_THAT(engine_->CreateSequence("a", r), StatusIs(StatusCode::kNotFound, "session"));
  EXPECT_THAT(engine_->Attach("a", "bad name!", &sink), StatusIs(StatusCode::kInvalidArgument));
}

TEST_F(CacheEngineTest, SequencesAndSessionsPerTenantAreBounded) {
  engine_.reset();
  EngineOptions options;
  options.pool = {.capacity_bytes = 1 << 20, .arena_bytes = 64 << 10};
  options.max_sequences_per_tenant = 3;
  options.max_sessions_per_tenant = 2;
  ASSERT_OK_AND_ASSIGN(engine_, CacheEngine::Create(backend_.get(), store_.get(), options));
  Tenant("a");
  RegisterModel("a");
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto s1, engine_->Attach("a", "w1", &sink));
  ASSERT_OK(engine_->Attach("a", "w2", &sink));
  EXPECT_THAT(engine_->Attach("a", "w3", &sink),
              StatusIs(StatusCode::kResourceExhausted, "sessions"));
  // A worker re-attaching under its name replaces its session: not refused at the limit.
  ASSERT_OK_AND_ASSIGN(auto s2, engine_->Attach("a", "w2", &sink));
  for (int i = 0; i < 3; ++i) NewSequence("a", s1.session_id);
  v1::CreateSequenceRequest r;
  r.set_session_id(s1.session_id);
  r.set_model("m");
  EXPECT_THAT(engine_->CreateSequence("a", r),
              StatusIs(StatusCode::kResourceExhausted, "sequences"));
  engine_->EndSession(s1.session_id);  // its sequences go: room again
  ASSERT_OK_AND_ASSIGN(auto s3, engine_->Attach("a", "w3", &sink));
  NewSequence("a", s3.session_id);
}

TEST_F(CacheEngineTest, DeleteTenantForceEndsSessionsAndFreesPages) {
  Tenant("a");
  RegisterModel("a");
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto s, engine_->Attach("a", "w", &sink));
  std::string seq = NewSequence("a", s.session_id);
  ASSERT_OK(Allocate("a", seq, 100));
  EXPECT_GT(sink.arenas.load(), 0);
  EXPECT_THAT(engine_->DeleteTenant("a", false), StatusIs(StatusCode::kFailedPrecondition));
  ASSERT_OK_AND_ASSIGN(auto reply, engine_->DeleteTenant("a", true));
  EXPECT_EQ(reply.sessions_ended(), 1u);
  EXPECT_EQ(reply.sequences_dropped(), 1u);
  EXPECT_THAT(sink.ended, StatusIs(StatusCode::kAborted, "deleted"));
  EXPECT_EQ(engine_->Status().pages_in_use(), 0u);
  EXPECT_EQ(engine_->Status().arenas(), 0u);
  Reopen();
  EXPECT_EQ(engine_->ListTenants().tenants_size(), 0);
}

// PublishPrefix keeps its promise: a call that fails leaves the index, the pool and the charges
// as they were. Here the tenant's own arenas fill the pool, so no arena is left for the group's
// copies of the prefix pages.
TEST_F(CacheEngineTest, PublishPrefixWithoutRoomForCopiesChangesNothing) {
  v1::CreateTenantRequest create;
  create.set_name("a");
  create.set_sharing_group("g");
  ASSERT_OK(engine_->CreateTenant(create).status());
  RegisterModel("a");
  NullSink sink;
  ASSERT_OK_AND_ASSIGN(auto s, engine_->Attach("a", "w", &sink));
  std::string seq = NewSequence("a", s.session_id);
  // 4 heads × 256 pages of 1 KiB: the whole 1 MiB pool, in the tenant's arenas.
  ASSERT_OK(Allocate("a", seq, 256 * 16));
  v1::CommitRequest commit;
  commit.set_sequence_id(seq);
  commit.set_tokens(32);
  ASSERT_OK(engine_->CommitTokens("a", commit).status());
  const v1::DaemonStatus before = engine_->Status();
  v1::PublishPrefixRequest publish;
  publish.set_sequence_id(seq);
  for (uint32_t t = 0; t < 32; ++t) publish.add_token_ids(1000 + t);
  EXPECT_THAT(engine_->PublishPrefix("a", publish).status(),
              StatusIs(StatusCode::kResourceExhausted));
  const v1::DaemonStatus after = engine_->Status();
  EXPECT_EQ(after.pool_used_bytes(), before.pool_used_bytes());
  EXPECT_EQ(after.pages_in_use(), before.pages_in_use());
  EXPECT_EQ(after.shared_pages_cached() + after.shared_pages_referenced(), 0u);
  ASSERT_EQ(after.tenant_usage_size(), 1);
  EXPECT_EQ(after.tenant_usage(0).used_bytes(), before.tenant_usage(0).used_bytes());
  EXPECT_EQ(after.tenant_usage(0).shared_charge_bytes(), 0u);
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, engine_->GetSequence("a", seq, false));
  EXPECT_EQ(table.shared_tokens(), 0u);
  v1::LookupPrefixRequest lookup;
  lookup.set_model("m");
  *lookup.mutable_token_ids() = publish.token_ids();
  ASSERT_OK_AND_ASSIGN(auto found, engine_->LookupPrefix("a", lookup));
  EXPECT_EQ(found.matched_pages(), 0u);
}

}  // namespace
}  // namespace kvkeep
