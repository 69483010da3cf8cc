// kvkeep::Client and AdminClient against the real services, through an in-process gRPC channel:
// KvCacheService and AdminService over a real CacheEngine (CPU backend: POSIX shared memory the
// client maps; RocksDB metadata in a temporary directory). No daemon process.
#include <cstring>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "client/admin_client.h"
#include "client/client.h"
#include "client/unary_call.h"
#include "common/status_matchers.h"
#include "gmock/gmock.h"
#include "gpu/backend.h"
#include "grpcpp/server.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "service/arena_channel/arena_channel_server.h"
#include "service/arena_channel/engine_arena_fd_source.h"
#include "service/engine/cache_engine.h"
#include "service/executor.h"
#include "service/rpc/admin_service.h"
#include "service/rpc/kvcache_service.h"
#include "service/rpc/session_limits.h"
#include "service/storage/metadata_store.h"
#include "service/token_auth.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using ::testing::HasSubstr;

constexpr char kAdminToken[] = "in-process-admin-token-0123456789";
constexpr uint32_t kLayers = 2, kKvHeads = 2, kHeadDim = 16, kTokensPerPage = 16;
constexpr uint64_t kTokenBytes = kHeadDim * 2;  // fp16

// `tokens` rows of finite fp16 values (|x| in [2^-5, 4)), different for each seed.
std::string Fp16Rows(uint32_t tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string out(tokens * kTokenBytes, '\0');
  for (size_t i = 0; i < out.size(); i += 2) {
    const uint16_t sign = rng() & 1;
    const uint16_t exponent = 10 + rng() % 8;
    const uint16_t mantissa = rng() & 0x3ff;
    const uint16_t bits = static_cast<uint16_t>(sign << 15 | exponent << 10 | mantissa);
    std::memcpy(&out[i], &bits, 2);
  }
  return out;
}

v1::ModelLayout Layout() {
  v1::ModelLayout l;
  l.set_name("inproc");
  l.set_layers(kLayers);
  l.set_q_heads(4);
  l.set_kv_heads(kKvHeads);
  l.set_head_dim(kHeadDim);
  l.set_dtype(v1::DTYPE_FP16);
  l.set_tokens_per_page(kTokensPerPage);
  return l;
}

class ClientInProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/client-inproc-", std::random_device()());
    std::filesystem::create_directories(dir_);
    ASSERT_OK_AND_ASSIGN(store_, MetadataStore::Open(dir_ + "/db"));
    ASSERT_OK_AND_ASSIGN(
        backend_, CreateBackend({.kind = BackendKind::kCpu,
                                 .shm_prefix = absl::StrCat("kvkeep-inproc-", getpid())}));
    EngineOptions options;
    options.pool = {.capacity_bytes = 4 << 20, .arena_bytes = 256 << 10};
    ASSERT_OK_AND_ASSIGN(engine_, CacheEngine::Create(backend_.get(), store_.get(), options));
    executor_ = std::make_unique<Executor>(2);
    limits_ = std::make_unique<SessionLimits>(SessionLimitOptions());
    kvcache_ = std::make_unique<KvCacheService>(engine_.get(), executor_.get(),
                                                HashToken(kAdminToken), limits_.get());
    // Arenas go to the client as fds over the arena channel (a real Unix socket).
    arena_fd_source_ = std::make_unique<EngineArenaFdSource>(engine_.get());
    ASSERT_OK_AND_ASSIGN(arena_channel_, ArenaChannelServer::Start(dir_ + "/arenas.sock",
                                                                   arena_fd_source_.get()));
    kvcache_->set_arena_channel(arena_channel_.get());
    admin_service_ =
        std::make_unique<AdminService>(engine_.get(), executor_.get(), HashToken(kAdminToken));
    grpc::ServerBuilder builder;  // no listening port: in-process only
    builder.RegisterService(kvcache_.get());
    builder.RegisterService(admin_service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = server_->InProcessChannel(grpc::ChannelArguments());
    admin_ = AdminClient::Connect(channel_, kAdminToken);
  }

  void TearDown() override {
    if (server_ != nullptr) {
      engine_->EndAllSessions(absl::OkStatus());
      server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
      server_->Wait();
    }
    server_.reset();
    executor_.reset();
    kvcache_.reset();
    admin_service_.reset();
    arena_channel_.reset();
    arena_fd_source_.reset();
    engine_.reset();
    backend_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A new tenant's token.
  std::string CreateTenant(const std::string& name) {
    v1::CreateTenantRequest request;
    request.set_name(name);
    request.set_quota_bytes(1 << 20);
    absl::StatusOr<v1::CreateTenantReply> created = admin_->CreateTenant(request);
    EXPECT_OK(created);
    return created.ok() ? created->token() : "";
  }

  std::string dir_;
  std::unique_ptr<MetadataStore> store_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<CacheEngine> engine_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<SessionLimits> limits_;
  std::unique_ptr<KvCacheService> kvcache_;
  std::unique_ptr<EngineArenaFdSource> arena_fd_source_;
  std::unique_ptr<ArenaChannelServer> arena_channel_;
  std::unique_ptr<AdminService> admin_service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<AdminClient> admin_;
};

TEST_F(ClientInProcessTest, WorkerWritesBothWaysReadsBackCompressesAndDrops) {
  const std::string token = CreateTenant("team-a");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client, Client::Attach(channel_, token, "w0"));
  EXPECT_EQ(client->tenant(), "team-a");
  EXPECT_FALSE(client->session_id().empty());
  EXPECT_OK(client->session_status());

  ASSERT_OK_AND_ASSIGN(v1::RegisterModelReply model, client->RegisterModel(Layout()));
  EXPECT_EQ(model.geometry().page_bytes(), 2 * kTokensPerPage * kTokenBytes);
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("inproc"));

  const uint32_t tokens = 40;  // 2.5 pages per head
  ASSERT_OK_AND_ASSIGN(v1::PageTableDelta delta, client->Allocate(seq, tokens));
  EXPECT_EQ(delta.heads_size(), static_cast<int>(kLayers * kKvHeads));
  EXPECT_FALSE(client->MappedArenas().empty());  // the arenas' fds are mapped in this process

  // Layer 0 through the mapped pages (zero-copy), layer 1 over WriteKV (bytes).
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    for (uint32_t head = 0; head < kKvHeads; ++head) {
      const uint32_t seed = layer * kKvHeads + head;
      const std::string keys = Fp16Rows(tokens, seed), values = Fp16Rows(tokens, seed + 100);
      if (layer == 0) {
        ASSERT_OK(client->WriteInPlace(seq, layer, head, 0, tokens, keys.data(), values.data()));
      } else {
        ASSERT_OK_AND_ASSIGN(v1::WriteSummary written,
                             client->WriteHead(seq, layer, head, 0, tokens, keys.data(),
                                               values.data()));
        EXPECT_EQ(written.tokens(), tokens);
        EXPECT_EQ(written.bytes(), 2 * tokens * kTokenBytes);
      }
    }
  }
  ASSERT_OK_AND_ASSIGN(v1::CommitReply committed, client->Commit(seq, tokens));
  EXPECT_FALSE(committed.has_compressed());

  // Both paths read back bit-exact, over ReadKV and from the mapped pages.
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    for (uint32_t head = 0; head < kKvHeads; ++head) {
      const uint32_t seed = layer * kKvHeads + head;
      ASSERT_OK_AND_ASSIGN(HeadData back, client->ReadHead(seq, layer, head));
      EXPECT_EQ(back.keys, Fp16Rows(tokens, seed)) << layer << "," << head;
      EXPECT_EQ(back.values, Fp16Rows(tokens, seed + 100)) << layer << "," << head;
      ASSERT_EQ(back.positions.size(), tokens);
      EXPECT_EQ(back.positions.back(), static_cast<int32_t>(tokens - 1));
      std::string keys(tokens * kTokenBytes, '\0'), values(tokens * kTokenBytes, '\0');
      ASSERT_OK(client->ReadInPlace(seq, layer, head, 0, tokens, keys.data(), values.data()));
      EXPECT_EQ(keys, back.keys);
      EXPECT_EQ(values, back.values);
    }
  }

  // Compress to half by key norm: each head keeps rows of the original, at their positions.
  v1::Policy policy;
  policy.set_scorer("knorm");
  policy.set_keep_ratio(0.5);
  ASSERT_OK_AND_ASSIGN(v1::CompressReply compressed, client->Compress(seq, policy));
  EXPECT_EQ(compressed.summary().tokens_before(), uint64_t{tokens} * kLayers * kKvHeads);
  EXPECT_LT(compressed.summary().tokens_after(), compressed.summary().tokens_before());
  for (uint32_t head = 0; head < kKvHeads; ++head) {
    const std::string original = Fp16Rows(tokens, head);
    ASSERT_OK_AND_ASSIGN(HeadData kept, client->ReadHead(seq, 0, head));
    ASSERT_FALSE(kept.positions.empty());
    ASSERT_LT(kept.positions.size(), tokens);
    ASSERT_EQ(kept.keys.size(), kept.positions.size() * kTokenBytes);
    for (size_t i = 0; i < kept.positions.size(); ++i) {
      if (i > 0) {
        EXPECT_LT(kept.positions[i - 1], kept.positions[i]);
      }
      EXPECT_EQ(kept.keys.substr(i * kTokenBytes, kTokenBytes),
                original.substr(kept.positions[i] * kTokenBytes, kTokenBytes))
          << "head " << head << " row " << i;
    }
    // The client's page table followed the compaction: the mapped pages hold the same rows.
    const uint32_t count = static_cast<uint32_t>(kept.positions.size());
    std::string keys(count * kTokenBytes, '\0'), values(count * kTokenBytes, '\0');
    ASSERT_OK(client->ReadInPlace(seq, 0, head, 0, count, keys.data(), values.data()));
    EXPECT_EQ(keys, kept.keys);
  }

  ASSERT_OK(client->Drop(seq).status());
  EXPECT_THAT(client->GetSequence(seq, false), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(client->WriteInPlace(seq, 0, 0, 0, 1, "k", "v"),
              StatusIs(absl::StatusCode::kNotFound));
  ASSERT_OK(client->Ping());
  client->Close();
  EXPECT_THAT(client->session_status(), StatusIs(absl::StatusCode::kCancelled));
}

TEST_F(ClientInProcessTest, AdminManagesTenantsPoliciesAndSequences) {
  const std::string token = CreateTenant("team-b");
  ASSERT_FALSE(token.empty());

  v1::SetQuotaRequest quota;
  quota.set_name("team-b");
  quota.set_max_bytes(2 << 20);
  ASSERT_OK_AND_ASSIGN(v1::TenantInfo info, admin_->SetQuota(quota));
  EXPECT_EQ(info.name(), "team-b");
  EXPECT_EQ(info.quota_bytes(), 1u << 20);
  EXPECT_EQ(info.max_bytes(), 2u << 20);

  v1::Policy policy;
  policy.set_scorer("knorm");
  policy.set_keep_ratio(0.25);
  ASSERT_OK_AND_ASSIGN(v1::Policy stored, admin_->SetPolicy("team-b", policy));
  EXPECT_EQ(stored.scorer(), "knorm");
  ASSERT_OK_AND_ASSIGN(v1::Policy read, admin_->GetPolicy("team-b"));
  EXPECT_EQ(read.scorer(), "knorm");
  EXPECT_FLOAT_EQ(read.keep_ratio(), 0.25f);

  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client, Client::Attach(channel_, token, "w1"));
  ASSERT_OK(client->RegisterModel(Layout()).status());
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("inproc", /*retain=*/true));
  ASSERT_OK(client->Allocate(seq, 20).status());
  ASSERT_OK(client->Commit(seq, 20).status());

  ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, admin_->GetStatus());
  EXPECT_EQ(status.backend(), "cpu");
  EXPECT_EQ(status.tenants(), 1u);
  EXPECT_EQ(status.sessions(), 1u);
  EXPECT_EQ(status.sequences(), 1u);
  EXPECT_EQ(status.pages_in_use(), uint64_t{kLayers} * kKvHeads * 2);  // 20 tokens: 2 pages

  ASSERT_OK_AND_ASSIGN(v1::ListSequencesReply listed, admin_->ListSequences("team-b"));
  ASSERT_EQ(listed.sequences_size(), 1);
  EXPECT_EQ(listed.sequences(0).sequence_id(), seq);
  EXPECT_EQ(listed.sequences(0).tokens(), 20u);
  EXPECT_TRUE(listed.sequences(0).retain());

  v1::SequenceRef ref;
  ref.set_tenant("team-b");
  ref.set_sequence_id(seq);
  ref.set_force(true);
  ASSERT_OK(admin_->DropSequence(ref).status());
  ASSERT_OK_AND_ASSIGN(listed, admin_->ListSequences("team-b"));
  EXPECT_EQ(listed.sequences_size(), 0);
}

TEST_F(ClientInProcessTest, ErrorsArriveWithTheirCodeAndMessage) {
  const std::string token = CreateTenant("team-c");
  // The engine's refusals keep their code and message across the channel.
  absl::StatusOr<v1::Policy> missing = admin_->GetPolicy("nobody");
  EXPECT_THAT(missing, StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(missing.status().message(), "no tenant \"nobody\"");
  v1::CreateTenantRequest again;
  again.set_name("team-c");
  absl::StatusOr<v1::CreateTenantReply> duplicate = admin_->CreateTenant(again);
  EXPECT_THAT(duplicate, StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(duplicate.status().message(), "tenant \"team-c\" exists");

  // Each API takes only its own kind of token.
  auto as_tenant = AdminClient::Connect(channel_, token);
  absl::StatusOr<v1::DaemonStatus> denied = as_tenant->GetStatus();
  EXPECT_THAT(denied, StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_EQ(denied.status().message(), "a tenant token cannot call the admin API");
  EXPECT_THAT(AdminClient::Connect(channel_, "not-a-token")->ListTenants(),
              StatusIs(absl::StatusCode::kUnauthenticated));
  absl::StatusOr<std::unique_ptr<Client>> admin_as_worker =
      Client::Attach(channel_, kAdminToken, "w");
  EXPECT_THAT(admin_as_worker, StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_THAT(std::string(admin_as_worker.status().message()), HasSubstr("use a tenant token"));

  // A worker call on a sequence that does not exist, and a deadline that has passed.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client, Client::Attach(channel_, token, "w"));
  EXPECT_THAT(client->Allocate("seq-none", 16), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(UnaryCall(token, client->stub(), &v1::KvCache::Stub::Ping, v1::PingRequest(),
                        absl::Seconds(-1)),
              StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_OK(UnaryCall(token, client->stub(), &v1::KvCache::Stub::Ping, v1::PingRequest(),
                      absl::Seconds(30)));
}

}  // namespace
}  // namespace kvkeep
