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
#include "service/rpc/kv_batch_service.h"
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
    kv_batch_ = std::make_unique<KvBatchService>(kvcache_.get());
    grpc::ServerBuilder builder;  // no listening port: in-process only
    builder.RegisterService(kvcache_.get());
    // Without KvBatch the daemon is an older one for the bytes path (ClientKvBatchTest adds it).
    if (with_kv_batch_) builder.RegisterService(kv_batch_.get());
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
    kv_batch_.reset();
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
  bool with_kv_batch_ = false;
  std::unique_ptr<KvBatchService> kv_batch_;
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

// ---- Several chunks per message (kvkeep.v1.KvBatch) ----

class ClientKvBatchTest : public ClientInProcessTest {
 protected:
  void SetUp() override {
    with_kv_batch_ = true;
    ClientInProcessTest::SetUp();
  }
};

// One chunk per page of one head (the small-chunk case batching is for), every head of the
// sequence, each with its own bytes.
std::vector<v1::KvChunk> PageChunks(const std::string& seq, uint32_t tokens) {
  std::vector<v1::KvChunk> chunks;
  for (uint32_t layer = 0; layer < kLayers; ++layer) {
    for (uint32_t head = 0; head < kKvHeads; ++head) {
      for (uint32_t at = 0; at < tokens; at += kTokensPerPage) {
        v1::KvChunk& c = chunks.emplace_back();
        c.set_sequence_id(seq);
        c.set_layer(layer);
        c.set_kv_head(head);
        c.set_token_offset(at);
        c.set_token_count(kTokensPerPage);
        const uint32_t seed = static_cast<uint32_t>(chunks.size());
        c.set_keys(Fp16Rows(kTokensPerPage, seed));
        c.set_values(Fp16Rows(kTokensPerPage, seed + 1000));
      }
    }
  }
  return chunks;
}

void ExpectSameChunks(const std::vector<v1::KvChunk>& got, const std::vector<v1::KvChunk>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].layer(), want[i].layer()) << i;
    EXPECT_EQ(got[i].kv_head(), want[i].kv_head()) << i;
    EXPECT_EQ(got[i].token_offset(), want[i].token_offset()) << i;
    EXPECT_EQ(got[i].token_count(), want[i].token_count()) << i;
    EXPECT_TRUE(got[i].keys() == want[i].keys()) << i;
    EXPECT_TRUE(got[i].values() == want[i].values()) << i;
    EXPECT_EQ(got[i].positions_size(), static_cast<int>(want[i].token_count())) << i;
  }
}

v1::ReadRequest PageRead(const std::string& seq) {
  v1::ReadRequest r;
  r.set_sequence_id(seq);
  r.set_max_chunk_bytes(2 * kTokensPerPage * kTokenBytes);  // one page of one head per chunk
  return r;
}

TEST_F(ClientKvBatchTest, BatchedWriteAndReadRoundTripBitExact) {
  const std::string token = CreateTenant("team-a");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client, Client::Attach(channel_, token, "w0"));
  ASSERT_OK(client->RegisterModel(Layout()).status());
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("inproc"));
  const uint32_t tokens = 4 * kTokensPerPage;
  ASSERT_OK(client->Allocate(seq, tokens).status());
  const std::vector<v1::KvChunk> chunks = PageChunks(seq, tokens);  // 16 chunks of 1 KiB
  // 3.5 chunks per message: messages of 3 chunks, the budget never passed, none split.
  client->set_batch_message_bytes(3 * 1024 + 512);
  EXPECT_EQ(client->daemon_has_kv_batch(), -1);
  ASSERT_OK_AND_ASSIGN(v1::WriteSummary written, client->WriteKV(chunks));
  EXPECT_EQ(client->daemon_has_kv_batch(), 1);
  EXPECT_EQ(written.chunks(), chunks.size());
  EXPECT_EQ(written.tokens(), uint64_t{tokens} * kLayers * kKvHeads);
  EXPECT_EQ(written.bytes(), chunks.size() * 2 * kTokensPerPage * kTokenBytes);
  ASSERT_OK(client->Commit(seq, tokens).status());

  ASSERT_OK_AND_ASSIGN(std::vector<v1::KvChunk> back, client->ReadKV(PageRead(seq)));
  ExpectSameChunks(back, chunks);
  // A budget below one chunk: one chunk per message, still every chunk, whole.
  client->set_batch_message_bytes(100);
  ASSERT_OK_AND_ASSIGN(back, client->ReadKV(PageRead(seq)));
  ExpectSameChunks(back, chunks);
  // A budget over the message limit is capped by the daemon (the reply still arrives).
  client->set_batch_message_bytes(uint64_t{1} << 40);
  ASSERT_OK_AND_ASSIGN(back, client->ReadKV(PageRead(seq)));
  ExpectSameChunks(back, chunks);
  // Straight into the caller's buffers, as ReadHeadInto does.
  std::string keys(tokens * kTokenBytes, '\0'), values(tokens * kTokenBytes, '\0');
  ASSERT_OK_AND_ASSIGN(uint32_t read, client->ReadHeadInto(seq, 1, 1, keys.data(), values.data(),
                                                           keys.size()));
  EXPECT_EQ(read, tokens);
  std::string want_keys;
  for (const v1::KvChunk& c : chunks) {
    if (c.layer() == 1 && c.kv_head() == 1) want_keys += c.keys();
  }
  EXPECT_TRUE(keys == want_keys);

  // Another tenant's batched read sees nothing of it, as with ReadKV.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> other,
                       Client::Attach(channel_, CreateTenant("team-b"), "w1"));
  EXPECT_THAT(other->ReadKV(PageRead(seq)), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_EQ(other->daemon_has_kv_batch(), 1);
}

TEST_F(ClientKvBatchTest, OldClientWithoutBatchesStillWorks) {
  const std::string token = CreateTenant("team-a");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client, Client::Attach(channel_, token, "w0"));
  client->set_batch_message_bytes(0);  // WriteKV / ReadKV, one chunk per message
  ASSERT_OK(client->RegisterModel(Layout()).status());
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("inproc"));
  const uint32_t tokens = 2 * kTokensPerPage;
  ASSERT_OK(client->Allocate(seq, tokens).status());
  const std::vector<v1::KvChunk> chunks = PageChunks(seq, tokens);
  ASSERT_OK_AND_ASSIGN(v1::WriteSummary written, client->WriteKV(chunks));
  EXPECT_EQ(written.chunks(), chunks.size());
  ASSERT_OK(client->Commit(seq, tokens).status());
  ASSERT_OK_AND_ASSIGN(std::vector<v1::KvChunk> back, client->ReadKV(PageRead(seq)));
  ExpectSameChunks(back, chunks);
  EXPECT_EQ(client->daemon_has_kv_batch(), -1);  // never asked
  // What a batching client wrote, an old client reads, and the other way round.
  client->set_batch_message_bytes(1 << 20);
  ASSERT_OK_AND_ASSIGN(back, client->ReadKV(PageRead(seq)));
  ExpectSameChunks(back, chunks);
  EXPECT_EQ(client->daemon_has_kv_batch(), 1);
}

TEST_F(ClientInProcessTest, BatchingClientFallsBackOnADaemonWithoutKvBatch) {
  const std::string token = CreateTenant("team-a");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client, Client::Attach(channel_, token, "w0"));
  ASSERT_OK(client->RegisterModel(Layout()).status());
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("inproc"));
  const uint32_t tokens = 2 * kTokensPerPage;
  ASSERT_OK(client->Allocate(seq, tokens).status());
  const std::vector<v1::KvChunk> chunks = PageChunks(seq, tokens);
  ASSERT_GT(client->batch_message_bytes(), 0u);  // batching by default
  ASSERT_OK_AND_ASSIGN(v1::WriteSummary written, client->WriteKV(chunks));
  EXPECT_EQ(client->daemon_has_kv_batch(), 0);  // UNIMPLEMENTED, then WriteKV
  EXPECT_EQ(written.chunks(), chunks.size());  // applied once, not twice or half
  ASSERT_OK(client->Commit(seq, tokens).status());
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> fresh, Client::Attach(channel_, token, "w1"));
  ASSERT_OK_AND_ASSIGN(std::vector<v1::KvChunk> back, fresh->ReadKV(PageRead(seq)));
  EXPECT_EQ(fresh->daemon_has_kv_batch(), 0);  // the read found out by itself
  ExpectSameChunks(back, chunks);
}

TEST_F(ClientKvBatchTest, BadChunkInsideABatchFailsTheStreamAndSaysWhatWasApplied) {
  const std::string token = CreateTenant("team-a");
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client, Client::Attach(channel_, token, "w0"));
  ASSERT_OK(client->RegisterModel(Layout()).status());
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("inproc"));
  const uint32_t tokens = kTokensPerPage;
  ASSERT_OK(client->Allocate(seq, tokens).status());
  std::vector<v1::KvChunk> chunks = PageChunks(seq, tokens);  // 4 chunks, one per head
  ASSERT_EQ(chunks.size(), 4u);
  chunks[2].mutable_keys()->pop_back();  // sizes no longer match the layout
  // Two chunks per message (1 KiB of keys and values and ~100 bytes of the rest each): the bad
  // one is item 0 of message 1.
  client->set_batch_message_bytes(2400);
  absl::StatusOr<v1::WriteSummary> written = client->WriteKV(chunks);
  EXPECT_THAT(written, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(written.status().message(), HasSubstr("chunk 2 (message 1, item 0): "));
  EXPECT_THAT(written.status().message(), HasSubstr("applied before it: chunks: 2"));
  EXPECT_THAT(written.status().message(), HasSubstr("nothing after it"));
  // Inside one message: the item after the bad one is not applied either.
  client->set_batch_message_bytes(1 << 20);
  written = client->WriteKV(chunks);
  EXPECT_THAT(written, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(written.status().message(), HasSubstr("chunk 2 (message 0, item 2): "));
  ASSERT_OK(client->Commit(seq, tokens).status());
  ASSERT_OK_AND_ASSIGN(HeadData landed, client->ReadHead(seq, 0, 1));
  EXPECT_TRUE(landed.keys == chunks[1].keys());
  ASSERT_OK_AND_ASSIGN(HeadData skipped, client->ReadHead(seq, 1, 1));
  EXPECT_FALSE(skipped.values == chunks[3].values()) << "a chunk after the bad one landed";
}

// The default batch (3 MiB) is above a small channel limit: the client asks the daemon for reply
// messages it can receive (its limit less 64 KiB), so a read larger than the limit still arrives.
TEST_F(ClientKvBatchTest, ReadsStayBelowTheClientsOwnMessageLimit) {
  const std::string token = CreateTenant("team-a");
  constexpr int kLimit = 96 << 10;
  grpc::ChannelArguments args;  // a channel that receives at most kLimit, as the client is told
  args.SetMaxReceiveMessageSize(kLimit);
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client,
                       Client::Attach(server_->InProcessChannel(args), token, "w0",
                                      absl::Seconds(10), kLimit));
  EXPECT_EQ(client->batch_message_bytes(), uint64_t{3} << 20);
  ASSERT_OK(client->RegisterModel(Layout()).status());
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("inproc"));
  const uint32_t tokens = 32 * kTokensPerPage;
  ASSERT_OK(client->Allocate(seq, tokens).status());
  const std::vector<v1::KvChunk> chunks = PageChunks(seq, tokens);  // 128 chunks of 1 KiB
  ASSERT_GT(chunks.size() * 2 * kTokensPerPage * kTokenBytes, uint64_t{kLimit});
  ASSERT_OK(client->WriteKV(chunks).status());
  ASSERT_OK(client->Commit(seq, tokens).status());
  ASSERT_OK_AND_ASSIGN(std::vector<v1::KvChunk> back, client->ReadKV(PageRead(seq)));
  ExpectSameChunks(back, chunks);
}

TEST_F(ClientKvBatchTest, MessageOverTheLimitIsRefusedWithResourceExhausted) {
  const std::string token = CreateTenant("team-a");
  // A client whose own limit (16 MiB) is above the daemon's (4 MiB), so that it sends the message.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> client,
                       Client::Attach(channel_, token, "w0", absl::Seconds(10), 16 << 20));
  ASSERT_OK(client->RegisterModel(Layout()).status());
  ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("inproc"));
  ASSERT_OK(client->Allocate(seq, kTokensPerPage).status());
  // Two chunks of 2.5 MiB in one message: over the daemon's 4 MiB receive limit.
  std::vector<v1::KvChunk> chunks(2);
  for (v1::KvChunk& c : chunks) {
    c.set_sequence_id(seq);
    c.set_token_count(kTokensPerPage);
    c.set_keys(std::string(5 << 19, 'k'));
  }
  client->set_batch_message_bytes(8 << 20);
  EXPECT_THAT(client->WriteKV(chunks), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(client->daemon_has_kv_batch(), 1);
  // A client with the daemon's limit keeps its messages below it, whatever the budget: each chunk
  // goes alone and reaches the daemon, which refuses its sizes.
  ASSERT_OK_AND_ASSIGN(std::unique_ptr<Client> bounded, Client::Attach(channel_, token, "w1"));
  bounded->set_batch_message_bytes(8 << 20);
  absl::StatusOr<v1::WriteSummary> written = bounded->WriteKV(chunks);
  EXPECT_THAT(written, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(written.status().message(), HasSubstr("chunk 0 (message 0, item 0): "));
}

}  // namespace
}  // namespace kvkeep
