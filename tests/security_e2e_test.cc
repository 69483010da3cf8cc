// Security checks against the real daemon: credentials, the admin/tenant split, tenant-scoped ids,
// forged arena ids and names, replayed session ids. Each refusal has its documented status and
// changes nothing. Checks that live in other suites (not repeated here; docs/quality.md lists
// them all):
//   bad_input_test   MissingOrWrongTokensAreRejected: no / unknown / non-bearer token on the
//                    worker API (UNAUTHENTICATED), admin token on the worker API and a tenant
//                    token on Admin.GetStatus (PERMISSION_DENIED)
//   e2e_test         TenantsCannotSeeOrMapEachOthersPages (another tenant's sequence id: NOT_FOUND;
//                    its page refs and arena id: PERMISSION_DENIED), and
//                    NewSessionWithSameWorkerNameSupersedesTheOld (a superseded session id)
//   tls_test         TLS and client certificates on TCP
//   kvkeepctl_test   WrongAdminTokenIsUnauthenticated
#include <functional>
#include <map>

#include "absl/strings/str_cat.h"
#include "client/arena_mapping.h"
#include "common/status_matchers.h"
#include "google/protobuf/descriptor.h"
#include "gtest/gtest.h"
#include "kvkeep/v1/admin.grpc.pb.h"
#include "kvkeep/v1/kv_batch.grpc.pb.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;
constexpr uint64_t kTokenBytes = 8 * 2;

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(daemon_.Start());
    ASSERT_OK_AND_ASSIGN(token_a_, daemon_.CreateTenant("alpha"));
    ASSERT_OK_AND_ASSIGN(token_b_, daemon_.CreateTenant("beta"));
    a_ = AttachAs(token_a_, "wa");
    b_ = AttachAs(token_b_, "wb");
    ASSERT_NE(a_, nullptr);
    ASSERT_NE(b_, nullptr);
    ASSERT_OK_AND_ASSIGN(seq_a_, a_->CreateSequence("test-model"));
    ASSERT_OK(a_->Allocate(seq_a_, 8));
    keys_ = PatternBytes(7, 8 * kTokenBytes);
    for (uint32_t l = 0; l < 2; ++l) {
      for (uint32_t h = 0; h < 2; ++h) {
        ASSERT_OK(a_->WriteInPlace(seq_a_, l, h, 0, 8, keys_.data(), keys_.data()));
      }
    }
    ASSERT_OK(a_->Commit(seq_a_, 8));
    ASSERT_OK_AND_ASSIGN(table_a_, a_->GetSequence(seq_a_, true));
  }

  std::unique_ptr<Client> AttachAs(const std::string& token, const std::string& worker) {
    auto c = Client::Attach(daemon_.channel(), token, worker);
    EXPECT_OK(c);
    if (!c.ok()) return nullptr;
    EXPECT_OK((*c)->RegisterModel(TestLayout()));
    return std::move(*c);
  }

  // alpha's sequence is exactly as it was after SetUp, and the daemon's totals too.
  void ExpectAlphaUnchanged() {
    ASSERT_OK_AND_ASSIGN(v1::PageTable now, a_->GetSequence(seq_a_, true));
    EXPECT_EQ(now.SerializeAsString(), table_a_.SerializeAsString());
    ASSERT_OK_AND_ASSIGN(HeadData head, a_->ReadHead(seq_a_, 1, 1));
    EXPECT_EQ(head.keys, keys_);
    auto status = daemon_.Admin()->GetStatus();
    ASSERT_OK(status);
    EXPECT_EQ(status->tenants(), 2u);
    EXPECT_EQ(status->sequences(), 1u);
  }

  DaemonProcess daemon_;
  std::string token_a_, token_b_, seq_a_, keys_;
  std::unique_ptr<Client> a_, b_;
  v1::PageTable table_a_;
};

// Every Admin RPC, called with `token` (empty: no authorization metadata at all).
std::map<std::string, grpc::StatusCode> CallEveryAdminRpc(v1::Admin::Stub& stub,
                                                          const std::string& token,
                                                          const std::string& seq) {
  auto ctx = [&] {
    return token.empty() ? std::make_unique<grpc::ClientContext>() : MakeCallContext(token);
  };
  v1::SequenceRef ref;
  ref.set_tenant("alpha");
  ref.set_sequence_id(seq);
  ref.set_force(true);
  std::map<std::string, grpc::StatusCode> codes;
  auto record = [&](const std::string& name, const grpc::Status& s) { codes[name] = s.error_code(); };
  {
    v1::DaemonStatus r;
    record("GetStatus", stub.GetStatus(ctx().get(), v1::GetStatusRequest(), &r));
  }
  {
    v1::CreateTenantRequest q;
    q.set_name("intruder");
    v1::CreateTenantReply r;
    record("CreateTenant", stub.CreateTenant(ctx().get(), q, &r));
  }
  {
    v1::ListTenantsReply r;
    record("ListTenants", stub.ListTenants(ctx().get(), v1::ListTenantsRequest(), &r));
  }
  {
    v1::DeleteTenantRequest q;
    q.set_name("beta");
    q.set_force(true);
    v1::DeleteTenantReply r;
    record("DeleteTenant", stub.DeleteTenant(ctx().get(), q, &r));
  }
  {
    v1::SetQuotaRequest q;
    q.set_name("alpha");
    q.set_max_bytes(1);
    v1::TenantInfo r;
    record("SetQuota", stub.SetQuota(ctx().get(), q, &r));
  }
  {
    v1::SetPolicyRequest q;
    q.set_tenant("alpha");
    q.mutable_policy()->set_scorer("random");
    v1::Policy r;
    record("SetPolicy", stub.SetPolicy(ctx().get(), q, &r));
    v1::ValidatePolicyReply v;
    record("ValidatePolicy", stub.ValidatePolicy(ctx().get(), q, &v));
  }
  {
    v1::GetPolicyRequest q;
    q.set_tenant("alpha");
    v1::Policy r;
    record("GetPolicy", stub.GetPolicy(ctx().get(), q, &r));
  }
  {
    v1::ListSequencesReply r;
    record("ListSequences", stub.ListSequences(ctx().get(), v1::ListSequencesRequest(), &r));
  }
  {
    v1::SpillReply r;
    record("SpillSequence", stub.SpillSequence(ctx().get(), ref, &r));
    v1::SequenceInfo i;
    record("RestoreSequence", stub.RestoreSequence(ctx().get(), ref, &i));
    v1::SequenceDetail d;
    record("GetSequence", stub.GetSequence(ctx().get(), ref, &d));
    v1::CompressSequenceRequest c;
    c.set_tenant("alpha");
    c.set_sequence_id(seq);
    c.mutable_policy()->set_keep_ratio(0.5);
    c.mutable_policy()->set_scorer("knorm");
    v1::CompressReply cr;
    record("CompressSequence", stub.CompressSequence(ctx().get(), c, &cr));
    v1::DropReply dr;
    record("DropSequence", stub.DropSequence(ctx().get(), ref, &dr));
  }
  {
    v1::Watermarks w;
    w.set_low_free(0.5);
    w.set_high_free(0.9);
    v1::Watermarks r;
    record("SetWatermarks", stub.SetWatermarks(ctx().get(), w, &r));
  }
  {
    v1::SetGroupSecretRequest g;
    g.set_group("shared");
    g.set_secret(std::string(32, 's'));
    v1::SetGroupSecretReply r;
    record("SetGroupSecret", stub.SetGroupSecret(ctx().get(), g, &r));
    v1::FleetStatus f;
    record("GetFleetStatus", stub.GetFleetStatus(ctx().get(), v1::GetFleetStatusRequest(), &f));
  }
  return codes;
}

TEST_F(SecurityTest, EveryAdminRpcRefusesTenantWrongAndMissingTokens) {
  auto stub = v1::Admin::NewStub(MakeChannel(daemon_.channel()));
  const int rpcs = google::protobuf::DescriptorPool::generated_pool()
                       ->FindServiceByName("kvkeep.v1.Admin")
                       ->method_count();
  const struct {
    std::string token;
    grpc::StatusCode want;
  } cases[] = {{token_a_, grpc::StatusCode::PERMISSION_DENIED},
               {token_b_, grpc::StatusCode::PERMISSION_DENIED},
               {"not-the-admin-token-0123456789abcdef", grpc::StatusCode::UNAUTHENTICATED},
               {"", grpc::StatusCode::UNAUTHENTICATED}};
  for (const auto& c : cases) {
    auto codes = CallEveryAdminRpc(*stub, c.token, seq_a_);
    EXPECT_EQ(static_cast<int>(codes.size()), rpcs) << "a new Admin RPC is not covered here";
    for (const auto& [rpc, code] : codes) {
      EXPECT_EQ(code, c.want) << rpc << " with token \"" << c.token << "\"";
    }
  }
  ExpectAlphaUnchanged();
  ASSERT_OK_AND_ASSIGN(v1::Policy policy, daemon_.Admin()->GetPolicy("alpha"));
  EXPECT_EQ(policy.scorer(), "");
  auto status = daemon_.Admin()->GetStatus();
  ASSERT_OK(status);
  EXPECT_DOUBLE_EQ(status->watermarks().low_free(), 0.05);
}

// The KvBatch service (several chunks per message) admits exactly as WriteKV/ReadKV do: no token,
// an unknown token, and the admin token get nothing written or read; another tenant's sequence id
// is NOT_FOUND; alpha's bytes are untouched.
TEST_F(SecurityTest, KvBatchRefusesBadTokensAndAnotherTenantsSequence) {
  auto stub = v1::KvBatch::NewStub(MakeChannel(daemon_.channel()));
  const std::string zeros(8 * kTokenBytes, '\0');
  const struct {
    std::string token;
    grpc::StatusCode want;
  } cases[] = {{"", grpc::StatusCode::UNAUTHENTICATED},
               {"not-a-token-of-this-daemon-0123456789", grpc::StatusCode::UNAUTHENTICATED},
               {daemon_.admin_token(), grpc::StatusCode::PERMISSION_DENIED},
               {token_b_, grpc::StatusCode::NOT_FOUND}};
  for (const auto& c : cases) {
    auto ctx = [&] {
      return c.token.empty() ? std::make_unique<grpc::ClientContext>() : MakeCallContext(c.token);
    };
    {
      v1::KvChunkBatch batch;
      v1::KvChunk* chunk = batch.add_chunks();
      chunk->set_sequence_id(seq_a_);
      chunk->set_layer(1);
      chunk->set_kv_head(1);
      chunk->set_token_count(8);
      chunk->set_keys(zeros);
      chunk->set_values(zeros);
      auto context = ctx();
      v1::WriteSummary summary;
      auto writer = stub->WriteKVBatch(context.get(), &summary);
      writer->Write(batch);  // may fail once the daemon has refused the call
      writer->WritesDone();
      EXPECT_EQ(writer->Finish().error_code(), c.want) << "WriteKVBatch, token \"" << c.token << "\"";
    }
    {
      v1::ReadBatchRequest request;
      request.mutable_read()->set_sequence_id(seq_a_);
      auto context = ctx();
      auto reader = stub->ReadKVBatch(context.get(), request);
      v1::KvChunkBatch batch;
      int messages = 0;
      while (reader->Read(&batch)) ++messages;
      EXPECT_EQ(messages, 0) << "ReadKVBatch sent alpha's bytes to token \"" << c.token << "\"";
      EXPECT_EQ(reader->Finish().error_code(), c.want) << "ReadKVBatch, token \"" << c.token << "\"";
    }
  }
  ExpectAlphaUnchanged();
  // Control: alpha's own token reads its bytes through the same service.
  auto context = MakeCallContext(token_a_);
  v1::ReadBatchRequest request;
  request.mutable_read()->set_sequence_id(seq_a_);
  auto reader = stub->ReadKVBatch(context.get(), request);
  v1::KvChunkBatch batch;
  int chunks = 0;
  while (reader->Read(&batch)) chunks += batch.chunks_size();
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_GT(chunks, 0);
}

TEST_F(SecurityTest, AnotherTenantsSequenceIdIsNotFoundOnEveryWorkerRpc) {
  // (GetSequence, ReadKV, Allocate, Commit, Acquire, Drop, WriteKV: e2e_test.)
  auto stub = v1::KvCache::NewStub(MakeChannel(daemon_.channel()));
  auto ctx = [&] { return MakeCallContext(token_b_); };
  {
    v1::CompressRequest q;
    q.set_sequence_id(seq_a_);
    q.mutable_policy()->set_scorer("knorm");
    q.mutable_policy()->set_keep_ratio(0.5);
    v1::CompressReply r;
    EXPECT_EQ(stub->Compress(ctx().get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::SpillRequest q;
    q.set_sequence_id(seq_a_);
    v1::SpillReply r;
    EXPECT_EQ(stub->Spill(ctx().get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::RestoreRequest q;
    q.set_sequence_id(seq_a_);
    v1::PageTable r;
    EXPECT_EQ(stub->Restore(ctx().get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::ReleaseRequest q;
    q.set_session_id(b_->session_id());
    q.set_sequence_id(seq_a_);
    v1::ReleaseReply r;
    EXPECT_EQ(stub->Release(ctx().get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::StatsChunk chunk;
    chunk.set_sequence_id(seq_a_);
    chunk.mutable_stats()->set_layer(0);
    EXPECT_THAT(b_->PutStats(seq_a_, {chunk.stats()}), StatusIs(StatusCode::kNotFound));
  }
  // The operator must name the owning tenant: the right id under another tenant is NOT_FOUND.
  v1::SequenceRef wrong;
  wrong.set_tenant("beta");
  wrong.set_sequence_id(seq_a_);
  EXPECT_THAT(daemon_.Admin()->GetSequence(wrong), StatusIs(StatusCode::kNotFound));
  v1::CompressSequenceRequest compress;
  compress.set_tenant("beta");
  compress.set_sequence_id(seq_a_);
  compress.mutable_policy()->set_keep_ratio(0.5);
  EXPECT_THAT(daemon_.Admin()->CompressSequence(compress), StatusIs(StatusCode::kNotFound));
  wrong.set_tenant("no-such-tenant");
  EXPECT_THAT(daemon_.Admin()->GetSequence(wrong), StatusIs(StatusCode::kNotFound, "tenant"));
  ExpectAlphaUnchanged();
}

TEST_F(SecurityTest, ForgedArenaIdsPageRefsAndNamesAreRefused) {
  const uint64_t page = table_a_.heads(0).pages(0);
  const uint32_t arena = static_cast<uint32_t>(page >> 32);
  // A made-up arena id: NOT_FOUND (another tenant's: PERMISSION_DENIED, e2e_test).
  EXPECT_THAT(b_->GetArena(arena + 1000), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(a_->GetArena(0xffffffffu), StatusIs(StatusCode::kNotFound));
  // Raw page refs: made-up arena NOT_FOUND, own arena but an index past its end OUT_OF_RANGE.
  v1::ReadRequest raw;
  raw.add_pages((uint64_t{arena + 1000} << 32) | 0);
  EXPECT_THAT(a_->ReadKV(raw), StatusIs(StatusCode::kNotFound));
  ASSERT_OK_AND_ASSIGN(v1::ArenaExport own, a_->GetArena(arena));
  raw.set_pages(0, (uint64_t{arena} << 32) | own.page_count());
  EXPECT_THAT(a_->ReadKV(raw), StatusIs(StatusCode::kOutOfRange));
  // Arenas have no name at all: they come as fds over the arena channel (arena_fd_e2e_test).
  // An export alone maps nothing, and a forged named export finds no object.
  EXPECT_EQ(own.kind(), v1::HOST_MEMFD);
  EXPECT_TRUE(own.handle().empty());
  EXPECT_THAT(ArenaMapping::Map(own), StatusIs(StatusCode::kFailedPrecondition));
  v1::ArenaExport forged = own;
  forged.set_kind(v1::HOST_SHM);
  forged.set_handle("/kvkeep-" + std::string(12, '0') + "." + std::string(32, '0'));
  EXPECT_THAT(ArenaMapping::Map(forged), StatusIs(StatusCode::kNotFound));
  // beta never received alpha's arena.
  for (uint32_t id : b_->MappedArenas()) EXPECT_NE(id, arena);
  ExpectAlphaUnchanged();
}

TEST_F(SecurityTest, ReplayedSessionIdsAreRefused) {
  auto stub = v1::KvCache::NewStub(MakeChannel(daemon_.channel()));
  // 1. Another tenant's live session id, with one's own token: NOT_FOUND (ids are tenant-scoped).
  {
    v1::CreateSequenceRequest q;
    q.set_session_id(a_->session_id());
    q.set_model("test-model");
    auto ctx = MakeCallContext(token_b_);
    v1::PageTable r;
    EXPECT_EQ(stub->CreateSequence(ctx.get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::AcquireRequest q;
    q.set_session_id(a_->session_id());
    q.set_sequence_id(seq_a_);
    auto ctx = MakeCallContext(token_b_);
    v1::PageTable r;
    EXPECT_EQ(stub->Acquire(ctx.get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // 2. The id of a session that ended (its worker closed the stream), replayed by the same
  //    tenant: NOT_FOUND on every call that names it. (Superseded sessions: e2e_test.)
  auto gone = AttachAs(token_a_, "short-lived");
  ASSERT_NE(gone, nullptr);
  const std::string dead = gone->session_id();
  gone->Close();
  bool ended = false;
  for (int i = 0; i < 200 && !ended; ++i) {
    auto status = daemon_.Admin()->GetStatus();
    ASSERT_OK(status);
    ended = status->sessions() == 2;
    if (!ended) absl::SleepFor(absl::Milliseconds(20));
  }
  ASSERT_TRUE(ended);
  auto ctx = [&] { return MakeCallContext(token_a_); };
  {
    v1::CreateSequenceRequest q;
    q.set_session_id(dead);
    q.set_model("test-model");
    v1::PageTable r;
    EXPECT_EQ(stub->CreateSequence(ctx().get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::AllocateRequest q;
    q.set_session_id(dead);
    q.set_sequence_id(seq_a_);
    q.set_tokens(4);
    v1::PageTableDelta r;
    EXPECT_EQ(stub->AllocatePages(ctx().get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::DropRequest q;
    q.set_session_id(dead);
    q.set_sequence_id(seq_a_);
    v1::DropReply r;
    EXPECT_EQ(stub->Drop(ctx().get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    v1::AcquireRequest q;
    q.set_session_id(dead);
    q.set_sequence_id(seq_a_);
    v1::PageTable r;
    EXPECT_EQ(stub->Acquire(ctx().get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  // 3. A made-up id of the right shape.
  {
    v1::CommitRequest q;
    q.set_session_id("sess-000000000000000000000000");
    q.set_sequence_id(seq_a_);
    q.set_tokens(1);
    v1::CommitReply r;
    EXPECT_EQ(stub->CommitTokens(ctx().get(), q, &r).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  ExpectAlphaUnchanged();
}

}  // namespace
}  // namespace kvkeep::testing
