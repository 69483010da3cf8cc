// End-to-end: the real kvkeepd process on a real Unix socket, real clients, real shared memory,
// real RocksDB.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;

constexpr uint64_t kTokenBytes = 8 * 2;  // head_dim 8, fp16

class EndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK(daemon_.Start()); }

  std::unique_ptr<Client> Attach(const std::string& token, const std::string& worker) {
    auto client = Client::Attach(daemon_.channel(), token, worker);
    EXPECT_OK(client);
    if (!client.ok()) return nullptr;
    EXPECT_OK((*client)->RegisterModel(TestLayout()));
    return std::move(*client);
  }

  uint64_t PagesInUse() {
    auto status = daemon_.Admin()->GetStatus();
    EXPECT_OK(status);
    return status.ok() ? status->pages_in_use() : UINT64_MAX;
  }

  // Waits until `pred(status)` holds or 10 s pass.
  template <typename Pred>
  bool WaitFor(Pred pred) {
    for (int i = 0; i < 200; ++i) {
      auto status = daemon_.Admin()->GetStatus();
      if (status.ok() && pred(*status)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  DaemonProcess daemon_;
};

// Writes `tokens` tokens of every head, half of the heads zero-copy and half over WriteKV when
// `mixed`, commits, and returns the seed base used.
void FillSequence(Client& c, const std::string& seq, uint32_t tokens, uint64_t seed, bool zero_copy) {
  ASSERT_OK(c.Allocate(seq, tokens));
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      std::string k = PatternBytes(seed + layer * 2 + head, tokens * kTokenBytes);
      std::string v = PatternBytes(seed + 100 + layer * 2 + head, tokens * kTokenBytes);
      if (zero_copy) {
        ASSERT_OK(c.WriteInPlace(seq, layer, head, 0, tokens, k.data(), v.data()));
      } else {
        ASSERT_OK(c.WriteHead(seq, layer, head, 0, tokens, k.data(), v.data()));
      }
    }
  }
  ASSERT_OK(c.Commit(seq, tokens));
}

void VerifySequence(Client& c, const std::string& seq, uint32_t tokens, uint64_t seed) {
  for (uint32_t layer = 0; layer < 2; ++layer) {
    for (uint32_t head = 0; head < 2; ++head) {
      ASSERT_OK_AND_ASSIGN(HeadData back, c.ReadHead(seq, layer, head));
      EXPECT_EQ(back.keys, PatternBytes(seed + layer * 2 + head, tokens * kTokenBytes));
      EXPECT_EQ(back.values, PatternBytes(seed + 100 + layer * 2 + head, tokens * kTokenBytes));
      ASSERT_EQ(back.positions.size(), tokens);
      for (uint32_t i = 0; i < tokens; ++i) ASSERT_EQ(back.positions[i], static_cast<int32_t>(i));
    }
  }
}

TEST_F(EndToEndTest, TwoTenantsManyWorkersBothPathsReadBackBitExact) {
  ASSERT_OK_AND_ASSIGN(std::string ta, daemon_.CreateTenant("alpha"));
  ASSERT_OK_AND_ASSIGN(std::string tb, daemon_.CreateTenant("beta"));
  constexpr int kWorkersPerTenant = 3;
  std::vector<std::thread> threads;
  std::atomic<int> verified{0};
  for (int w = 0; w < 2 * kWorkersPerTenant; ++w) {
    threads.emplace_back([&, w] {
      const std::string& token = w % 2 == 0 ? ta : tb;
      auto client = Attach(token, absl::StrCat("worker-", w));
      ASSERT_NE(client, nullptr);
      for (int s = 0; s < 4; ++s) {
        const uint64_t seed = w * 1000 + s * 10;
        const uint32_t tokens = 37 + 13 * s;  // page tails not aligned
        ASSERT_OK_AND_ASSIGN(std::string seq, client->CreateSequence("test-model"));
        FillSequence(*client, seq, tokens, seed, /*zero_copy=*/s % 2 == 0);
        VerifySequence(*client, seq, tokens, seed);
        ++verified;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(verified.load(), 2 * kWorkersPerTenant * 4);
  auto status = daemon_.Admin()->GetStatus();
  ASSERT_OK(status);
  EXPECT_EQ(status->tenant_usage_size(), 2);
  // Workers closed: their unretained sequences were dropped and every page came back.
  EXPECT_TRUE(WaitFor([](const v1::DaemonStatus& s) { return s.pages_in_use() == 0; }));
}

TEST_F(EndToEndTest, QuotaIsHitAndReportedWithFigures) {
  // 64 pages of 128 bytes (4 tokens x 8 dims x fp16 x K+V) = 8192 bytes.
  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("small", 0, 8192));
  auto c = Attach(token, "w");
  ASSERT_NE(c, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, c->CreateSequence("test-model"));
  ASSERT_OK(c->Allocate(seq, 64));  // 16 pages per head x 4 heads = 64 pages: exactly the max
  ASSERT_OK(c->Commit(seq, 64));
  EXPECT_THAT(c->Allocate(seq, 1),
              StatusIs(StatusCode::kResourceExhausted, "used 8192 of max 8192 bytes"));
  auto table = c->GetSequence(seq, false);
  ASSERT_OK(table);
  EXPECT_EQ(table->heads(0).capacity(), 64u);  // the refused call changed nothing
  EXPECT_EQ(table->heads(0).token_count(), 64u);
  EXPECT_THAT(c->Commit(seq, 1), StatusIs(StatusCode::kFailedPrecondition));
  // Raising the quota through the admin API lets the same call through.
  v1::SetQuotaRequest raise;
  raise.set_name("small");
  raise.set_max_bytes(16384);
  ASSERT_OK(daemon_.Admin()->SetQuota(raise));
  ASSERT_OK(c->Allocate(seq, 1));
}

TEST_F(EndToEndTest, TenantsCannotSeeOrMapEachOthersPages) {
  ASSERT_OK_AND_ASSIGN(std::string ta, daemon_.CreateTenant("alpha"));
  ASSERT_OK_AND_ASSIGN(std::string tb, daemon_.CreateTenant("beta"));
  auto a = Attach(ta, "a");
  auto b = Attach(tb, "b");
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, a->CreateSequence("test-model"));
  FillSequence(*a, seq, 10, 1, true);
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, a->GetSequence(seq, false));
  const uint64_t page = table.heads(0).pages(0);
  const uint32_t arena = static_cast<uint32_t>(page >> 32);

  EXPECT_THAT(b->GetSequence(seq, false), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(b->ReadHead(seq, 0, 0), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(b->Allocate(seq, 4), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(b->Commit(seq, 1), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(b->Acquire(seq), StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(b->Drop(seq), StatusIs(StatusCode::kNotFound));
  std::string junk(kTokenBytes, 'x');
  EXPECT_THAT(b->WriteHead(seq, 0, 0, 0, 1, junk.data(), junk.data()),
              StatusIs(StatusCode::kNotFound));
  v1::ReadRequest raw;
  raw.add_pages(page);
  EXPECT_THAT(b->ReadKV(raw), StatusIs(StatusCode::kPermissionDenied));
  EXPECT_THAT(b->GetArena(arena), StatusIs(StatusCode::kPermissionDenied));
  for (uint32_t id : b->MappedArenas()) EXPECT_NE(id, arena) << "b mapped a's arena";
  // a reads its own raw page; its data is intact after all of b's attempts.
  ASSERT_OK_AND_ASSIGN(auto chunks, a->ReadKV(raw));
  ASSERT_EQ(chunks.size(), 1u);
  VerifySequence(*a, seq, 10, 1);
}

TEST_F(EndToEndTest, KilledWorkerProcessReturnsItsPagesToThePool) {
  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("alpha"));
  const std::string worker = DaemonProcess::BinaryDir() + "/kvkeep-test-worker";
  int out[2];
  ASSERT_EQ(pipe(out), 0);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    close(out[0]);
    execl(worker.c_str(), worker.c_str(), daemon_.target().c_str(), token.c_str(), "victim", "50",
          nullptr);
    _exit(127);
  }
  close(out[1]);
  char buf[256] = {};
  ssize_t n = read(out[0], buf, sizeof(buf) - 1);
  close(out[0]);
  ASSERT_GT(n, 0) << "worker did not report READY";
  ASSERT_EQ(std::string(buf).rfind("READY", 0), 0u) << buf;
  EXPECT_GT(PagesInUse(), 0u);
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  EXPECT_TRUE(WaitFor([](const v1::DaemonStatus& s) {
    return s.pages_in_use() == 0 && s.sessions() == 0 && s.sequences() == 0;
  })) << "pages in use after the kill: " << PagesInUse();
  // The pool hands them out again.
  auto c = Attach(token, "next");
  ASSERT_NE(c, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, c->CreateSequence("test-model"));
  FillSequence(*c, seq, 50, 9, true);
}

TEST_F(EndToEndTest, RetainedSequenceOutlivesItsWorkerAndCanBeAcquired) {
  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("alpha"));
  std::string seq;
  {
    auto c = Attach(token, "first");
    ASSERT_NE(c, nullptr);
    ASSERT_OK_AND_ASSIGN(seq, c->CreateSequence("test-model", /*retain=*/true));
    FillSequence(*c, seq, 21, 5, false);
  }  // session ends
  EXPECT_TRUE(WaitFor([](const v1::DaemonStatus& s) { return s.sessions() == 0; }));
  EXPECT_GT(PagesInUse(), 0u);
  auto c = Attach(token, "second");
  ASSERT_NE(c, nullptr);
  ASSERT_OK(c->Acquire(seq));
  VerifySequence(*c, seq, 21, 5);
  ASSERT_OK(c->Release(seq));
  EXPECT_THAT(c->Release(seq), StatusIs(StatusCode::kFailedPrecondition));
  ASSERT_OK(c->Drop(seq));
  EXPECT_EQ(PagesInUse(), 0u);
}

TEST_F(EndToEndTest, NewSessionWithSameWorkerNameSupersedesTheOld) {
  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("alpha"));
  auto old_client = Attach(token, "worker-7");
  ASSERT_NE(old_client, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, old_client->CreateSequence("test-model"));
  FillSequence(*old_client, seq, 12, 3, true);
  auto fresh = Attach(token, "worker-7");
  ASSERT_NE(fresh, nullptr);
  for (int i = 0; i < 500 && old_client->session_status().ok(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_THAT(old_client->session_status(), StatusIs(StatusCode::kAborted, "superseded"));
  // The old session id is dead: replaying it is refused.
  v1::CreateSequenceRequest replay;
  replay.set_session_id(old_client->session_id());
  replay.set_model("test-model");
  auto ctx = MakeCallContext(token);
  v1::PageTable unused;
  EXPECT_EQ(fresh->stub().CreateSequence(ctx.get(), replay, &unused).error_code(),
            grpc::StatusCode::NOT_FOUND);
  // Calls of the superseded worker that name its session are refused too.
  EXPECT_THAT(old_client->Allocate(seq, 4), StatusIs(StatusCode::kNotFound, "session"));
  EXPECT_THAT(old_client->Commit(seq, 1), StatusIs(StatusCode::kNotFound, "session"));
  old_client->Close();
  // The sequence moved to the new session: closing the old client did not drop it.
  VerifySequence(*fresh, seq, 12, 3);
  auto status = daemon_.Admin()->GetStatus();
  ASSERT_OK(status);
  EXPECT_EQ(status->sessions(), 1u);
}

TEST_F(EndToEndTest, DaemonRestartKeepsTenantsAndWorkersReattach) {
  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("alpha", 1024, 1 << 20));
  {
    auto c = Attach(token, "w");
    ASSERT_NE(c, nullptr);
    ASSERT_OK_AND_ASSIGN(std::string seq, c->CreateSequence("test-model"));
    FillSequence(*c, seq, 8, 1, true);
    int status = daemon_.Stop(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "exit status " << status;
    // The worker saw its session end.
    for (int i = 0; i < 500 && c->session_status().ok(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_FALSE(c->session_status().ok());
  }
  ASSERT_OK(daemon_.Start());
  auto tenants = daemon_.Admin()->ListTenants();
  ASSERT_OK(tenants);
  ASSERT_EQ(tenants->tenants_size(), 1);
  EXPECT_EQ(tenants->tenants(0).max_bytes(), 1u << 20);
  auto c = Client::Attach(daemon_.channel(), token, "w");  // same token still valid
  ASSERT_OK(c);
  // The model layout survived; the sequence (device pages) did not.
  ASSERT_OK_AND_ASSIGN(std::string seq, (*c)->CreateSequence("test-model"));
  FillSequence(**c, seq, 8, 2, false);
  VerifySequence(**c, seq, 8, 2);
}

TEST_F(EndToEndTest, KillNineThenRestartCleansUpAndServes) {
  ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("alpha"));
  {
    auto c = Attach(token, "w");
    ASSERT_NE(c, nullptr);
    ASSERT_OK_AND_ASSIGN(std::string seq, c->CreateSequence("test-model"));
    FillSequence(*c, seq, 8, 1, true);
    daemon_.Stop(SIGKILL);
  }
  ASSERT_OK(daemon_.Start());
  auto c = Attach(token, "w");
  ASSERT_NE(c, nullptr);
  ASSERT_OK_AND_ASSIGN(std::string seq, c->CreateSequence("test-model"));
  FillSequence(*c, seq, 8, 4, true);
  VerifySequence(*c, seq, 8, 4);
}

}  // namespace
}  // namespace kvkeep::testing
