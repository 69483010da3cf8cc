// Every bad input gets a precise gRPC status, changes nothing, and the daemon keeps serving.
// Runs against the real kvkeepd process.
#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "kvkeep/v1/admin.grpc.pb.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;
constexpr uint64_t kTokenBytes = 8 * 2;

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(daemon_.Start({"--max_message_mib=1"}));
    ASSERT_OK_AND_ASSIGN(token_, daemon_.CreateTenant("alpha"));
    auto c = Client::Attach(daemon_.channel(), token_, "w");
    ASSERT_OK(c);
    client_ = std::move(*c);
    ASSERT_OK(client_->RegisterModel(TestLayout()));
    ASSERT_OK_AND_ASSIGN(seq_, client_->CreateSequence("test-model"));
    ASSERT_OK(client_->Allocate(seq_, 10));
    keys_ = PatternBytes(1, 10 * kTokenBytes);
    for (uint32_t l = 0; l < 2; ++l) {
      for (uint32_t h = 0; h < 2; ++h) {
        ASSERT_OK(client_->WriteInPlace(seq_, l, h, 0, 10, keys_.data(), keys_.data()));
      }
    }
    ASSERT_OK(client_->Commit(seq_, 6));
    Snapshot(&before_);
  }

  struct State {
    v1::PageTable table;
    uint64_t pages = 0;
    std::string head00;
  };
  void Snapshot(State* s) {
    auto table = client_->GetSequence(seq_, true);
    ASSERT_OK(table);
    s->table = *table;
    auto status = daemon_.Admin()->GetStatus();
    ASSERT_OK(status);
    s->pages = status->pages_in_use();
    auto head = client_->ReadHead(seq_, 0, 0);
    ASSERT_OK(head);
    s->head00 = head->keys + head->values;
  }
  // Nothing changed and the daemon still answers.
  void ExpectUnchanged() {
    State after;
    Snapshot(&after);
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(before_.table, after.table));
    EXPECT_EQ(before_.pages, after.pages);
    EXPECT_EQ(before_.head00, after.head00);
    EXPECT_OK(client_->Ping());
  }

  v1::KvChunk Chunk(uint32_t layer, uint32_t head, uint32_t offset, uint32_t count) {
    v1::KvChunk c;
    c.set_sequence_id(seq_);
    c.set_layer(layer);
    c.set_kv_head(head);
    c.set_token_offset(offset);
    c.set_token_count(count);
    c.set_keys(std::string(count * kTokenBytes, 'k'));
    c.set_values(std::string(count * kTokenBytes, 'v'));
    return c;
  }

  DaemonProcess daemon_;
  std::string token_;
  std::unique_ptr<Client> client_;
  std::string seq_;
  std::string keys_;
  State before_;
};

TEST_F(BadInputTest, WrongSizesAreInvalidArgument) {
  v1::KvChunk short_keys = Chunk(0, 0, 0, 2);
  short_keys.mutable_keys()->pop_back();
  EXPECT_THAT(client_->WriteKV({short_keys}), StatusIs(StatusCode::kInvalidArgument, "bytes of keys"));
  v1::KvChunk zero = Chunk(0, 0, 0, 1);
  zero.set_token_count(0);
  EXPECT_THAT(client_->WriteKV({zero}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(client_->WriteKV({Chunk(2, 0, 0, 1)}), StatusIs(StatusCode::kInvalidArgument, "layer 2"));
  EXPECT_THAT(client_->WriteKV({Chunk(0, 5, 0, 1)}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(client_->Allocate(seq_, 0), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(client_->Commit(seq_, 2, {1, 2, 3}), StatusIs(StatusCode::kInvalidArgument));
  EXPECT_THAT(client_->Commit(seq_, 1, {3}), StatusIs(StatusCode::kInvalidArgument, "increase"));
  ExpectUnchanged();
}

TEST_F(BadInputTest, OutOfRangeOffsetsAreRejected) {
  // 10 tokens allocated: 3 pages of 4 = 12 slots per head.
  EXPECT_THAT(client_->WriteKV({Chunk(0, 0, 11, 2)}), StatusIs(StatusCode::kOutOfRange));
  EXPECT_THAT(client_->WriteKV({Chunk(0, 0, 0xffffffffu, 1)}), StatusIs(StatusCode::kOutOfRange));
  v1::ReadRequest read;
  read.set_sequence_id(seq_);
  read.set_layer_begin(1);
  read.set_layer_end(3);
  EXPECT_THAT(client_->ReadKV(read), StatusIs(StatusCode::kOutOfRange));
  read.set_layer_end(0);
  read.set_token_begin(7);
  EXPECT_THAT(client_->ReadKV(read), StatusIs(StatusCode::kOutOfRange, "past the 6 committed"));
  EXPECT_THAT(client_->Commit(seq_, 7), StatusIs(StatusCode::kFailedPrecondition, "AllocatePages"));
  ExpectUnchanged();
}

TEST_F(BadInputTest, UnknownIdsAreNotFound) {
  EXPECT_THAT(client_->GetSequence("seq-nope", false), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(client_->Allocate("seq-nope", 1), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(client_->Drop(""), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(client_->CreateSequence("no-such-model"), StatusIs(StatusCode::kNotFound, "RegisterModel"));
  EXPECT_THAT(client_->GetArena(424242), StatusIs(StatusCode::kNotFound));
  v1::ReadRequest raw;
  raw.add_pages((uint64_t{424242} << 32) | 1);
  EXPECT_THAT(client_->ReadKV(raw), StatusIs(StatusCode::kNotFound));
  ExpectUnchanged();
}

TEST_F(BadInputTest, BadModelLayoutsAreInvalidArgument) {
  auto bad = [&](auto mutate) {
    v1::ModelLayout layout = TestLayout("other");
    mutate(&layout);
    return client_->RegisterModel(layout).status();
  };
  EXPECT_THAT(bad([](v1::ModelLayout* l) { l->set_dtype(static_cast<v1::DType>(9)); }),
              StatusIs(StatusCode::kInvalidArgument, "dtype"));
  EXPECT_THAT(bad([](v1::ModelLayout* l) { l->set_dtype(v1::DTYPE_UNSPECIFIED); }),
              StatusIs(StatusCode::kInvalidArgument, "dtype"));
  EXPECT_THAT(bad([](v1::ModelLayout* l) { l->set_kv_heads(3); }),
              StatusIs(StatusCode::kInvalidArgument, "kv_heads"));
  EXPECT_THAT(bad([](v1::ModelLayout* l) { l->set_head_dim(7); }),
              StatusIs(StatusCode::kInvalidArgument, "head_dim"));
  EXPECT_THAT(bad([](v1::ModelLayout* l) { l->set_tokens_per_page(0); }),
              StatusIs(StatusCode::kInvalidArgument, "tokens_per_page"));
  EXPECT_THAT(bad([](v1::ModelLayout* l) { l->set_name("../etc"); }),
              StatusIs(StatusCode::kInvalidArgument, "name"));
  // Same name, different layout.
  EXPECT_THAT(bad([](v1::ModelLayout* l) { l->set_name("test-model"); l->set_layers(3); }),
              StatusIs(StatusCode::kAlreadyExists));
  v1::WoGram gram;
  gram.set_layer(0);
  gram.set_q_head(0);
  gram.add_values(1.0f);
  EXPECT_THAT(client_->RegisterModel(TestLayout("gram"), {gram}),
              StatusIs(StatusCode::kInvalidArgument, "head_dim²"));
  ExpectUnchanged();
}

TEST_F(BadInputTest, MissingOrWrongTokensAreRejected) {
  auto stub = v1::KvCache::NewStub(MakeChannel(daemon_.channel()));
  auto admin_stub = v1::Admin::NewStub(MakeChannel(daemon_.channel()));
  v1::GetSequenceRequest get;
  get.set_sequence_id(seq_);
  v1::PageTable table;
  {
    grpc::ClientContext ctx;  // no token at all
    EXPECT_EQ(stub->GetSequence(&ctx, get, &table).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    auto ctx = MakeCallContext("not-a-real-token-0000000000");
    EXPECT_EQ(stub->GetSequence(ctx.get(), get, &table).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("authorization", "Basic " + token_);  // not a bearer token
    EXPECT_EQ(stub->GetSequence(&ctx, get, &table).error_code(), grpc::StatusCode::UNAUTHENTICATED);
  }
  {
    auto ctx = MakeCallContext(daemon_.admin_token());  // admin token on the worker API
    EXPECT_EQ(stub->GetSequence(ctx.get(), get, &table).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  {
    auto ctx = MakeCallContext(token_);  // tenant token on the admin API
    v1::DaemonStatus status;
    EXPECT_EQ(admin_stub->GetStatus(ctx.get(), v1::GetStatusRequest(), &status).error_code(),
              grpc::StatusCode::PERMISSION_DENIED);
  }
  EXPECT_THAT(Client::Attach(daemon_.channel(), "wrong-token-wrong-token", "x"),
              StatusIs(StatusCode::kUnauthenticated));
  ExpectUnchanged();
}

TEST_F(BadInputTest, OversizedMessagesAreResourceExhausted) {
  // The daemon runs with --max_message_mib=1.
  v1::KvChunk huge = Chunk(0, 0, 0, 1);
  huge.set_keys(std::string(2 << 20, 'x'));
  auto stub = v1::KvCache::NewStub(MakeChannel({.target = daemon_.target(),
                                                .max_message_bytes = 8 << 20}));
  auto ctx = MakeCallContext(token_);
  v1::WriteSummary summary;
  auto writer = stub->WriteKV(ctx.get(), &summary);
  writer->Write(huge);
  writer->WritesDone();
  EXPECT_EQ(writer->Finish().error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  ExpectUnchanged();
}

TEST_F(BadInputTest, AdminRequestsAreValidated) {
  auto admin = daemon_.Admin();
  v1::CreateTenantRequest bad_name;
  bad_name.set_name("Not_Valid");
  EXPECT_THAT(admin->CreateTenant(bad_name), StatusIs(StatusCode::kInvalidArgument));
  v1::CreateTenantRequest dup;
  dup.set_name("alpha");
  EXPECT_THAT(admin->CreateTenant(dup), StatusIs(StatusCode::kAlreadyExists));
  v1::CreateTenantRequest inverted;
  inverted.set_name("inverted");
  inverted.set_quota_bytes(10);
  inverted.set_max_bytes(5);
  EXPECT_THAT(admin->CreateTenant(inverted), StatusIs(StatusCode::kInvalidArgument));
  v1::CreateTenantRequest greedy;
  greedy.set_name("greedy");
  greedy.set_quota_bytes(uint64_t{1} << 40);  // more than the 64 MiB pool
  EXPECT_THAT(admin->CreateTenant(greedy), StatusIs(StatusCode::kInvalidArgument, "pool"));
  v1::SetQuotaRequest missing;
  missing.set_name("ghost");
  EXPECT_THAT(admin->SetQuota(missing), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(admin->DeleteTenant("alpha", false), StatusIs(StatusCode::kFailedPrecondition));
  EXPECT_THAT(admin->DeleteTenant("ghost", false), StatusIs(StatusCode::kNotFound));
  ExpectUnchanged();
}

}  // namespace
}  // namespace kvkeep::testing
