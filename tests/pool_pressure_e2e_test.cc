// Capacity-aware pool pressure through the real daemon (--pressure_policy=capacity): an
// over-committed pool shared by three tenants; a guaranteed tenant's allocation frees the
// cheapest pages of the others (checked token by token through GetSequence and ReadKV), then,
// when dropping pages is not enough, the least recently used sequence is spilled. And
// --pressure_policy=compress: the allocation succeeds by compressing another tenant's unleased
// sequence (its kept tokens read back bit-exact), leased sequences untouched.
#include <sys/wait.h>

#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

// 1 layer x 1 KV head, head_dim 128, fp32, 1024 tokens per page: 1 MiB pages, one per 1 MiB
// arena, so a freed page is room for any tenant.
constexpr uint32_t kTpp = 1024, kDim = 128;
constexpr uint64_t kMiB = 1 << 20;

v1::ModelLayout OnePagePerArena() {
  v1::ModelLayout l;
  l.set_name("m");
  l.set_layers(1);
  l.set_q_heads(1);
  l.set_kv_heads(1);
  l.set_head_dim(kDim);
  l.set_dtype(v1::DTYPE_FP32);
  l.set_tokens_per_page(kTpp);
  return l;
}

// Token j of page p: keys zero, values scales[p] * e_(j mod 128).
std::string Values(const std::vector<float>& scales) {
  std::vector<float> v(scales.size() * kTpp * kDim, 0.0f);
  for (size_t j = 0; j < scales.size() * kTpp; ++j) v[j * kDim + j % kDim] = scales[j / kTpp];
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

class PoolPressureE2eTest : public ::testing::Test {
 protected:
  virtual std::string Policy() const { return "capacity"; }

  void SetUp() override {
    ASSERT_OK(daemon_.Start({"--pool_mib=14", "--arena_mib=1", "--pressure_policy=" + Policy(),
                             "--low_free=0", "--high_free=0"}));
    for (const char* name : {"a", "b", "c"}) {
      v1::CreateTenantRequest r;
      r.set_name(name);
      r.set_spill_quota_bytes(64 * kMiB);
      ASSERT_OK_AND_ASSIGN(auto reply, daemon_.Admin()->CreateTenant(r));
      ASSERT_OK_AND_ASSIGN(clients_[name], Client::Attach(daemon_.channel(), reply.token(), "w"));
      ASSERT_OK(clients_[name]->RegisterModel(OnePagePerArena()));
    }
  }

  void TearDown() override {
    clients_.clear();
    daemon_.Stop(SIGTERM);  // a clean shutdown removes the daemon's shared-memory arenas
  }

  // A retained, released sequence with one page per scale.
  std::string Make(const std::string& tenant, const std::vector<float>& scales) {
    Client& c = *clients_[tenant];
    auto seq = c.CreateSequence("m", /*retain=*/true);
    EXPECT_OK(seq);
    const uint32_t n = static_cast<uint32_t>(scales.size()) * kTpp;
    EXPECT_OK(c.Allocate(*seq, n));
    const std::string keys(size_t{n} * kDim * 4, '\0'), values = Values(scales);
    EXPECT_OK(c.WriteInPlace(*seq, 0, 0, 0, n, keys.data(), values.data()));
    EXPECT_OK(c.Commit(*seq, n));
    EXPECT_OK(c.Release(*seq));
    return *seq;
  }

  // Original page index of each surviving page (positions / tokens per page), and a check that
  // every surviving token still holds its original value.
  std::vector<int32_t> Surviving(const std::string& tenant, const std::string& seq,
                                 const std::vector<float>& scales) {
    Client& c = *clients_[tenant];
    auto table = c.GetSequence(seq, /*with_positions=*/true);
    EXPECT_OK(table);
    std::vector<int32_t> pages;
    if (!table.ok()) return pages;
    const auto& positions = table->heads(0).positions();
    for (int i = 0; i < positions.size(); i += kTpp) pages.push_back(positions[i] / kTpp);
    auto head = c.ReadHead(seq, 0, 0);
    EXPECT_OK(head);
    if (!head.ok()) return pages;
    const std::string all = Values(scales);
    std::string want;
    for (int32_t p : positions) want.append(all, size_t(p) * kDim * 4, kDim * 4);
    EXPECT_EQ(head->values.size(), want.size());
    EXPECT_TRUE(head->values == want) << "surviving tokens changed";
    EXPECT_EQ(head->positions, std::vector<int32_t>(positions.begin(), positions.end()));
    return pages;
  }

  v1::Tier TierOf(const std::string& tenant, const std::string& seq) {
    auto list = daemon_.Admin()->ListSequences(tenant);
    EXPECT_OK(list);
    for (const auto& s : list->sequences()) {
      if (s.sequence_id() == seq) return s.tier();
    }
    return v1::TIER_UNSPECIFIED;
  }

  DaemonProcess daemon_;
  std::map<std::string, std::unique_ptr<Client>> clients_;
};

TEST_F(PoolPressureE2eTest, GuaranteedTenantGetsTheCheapestPagesThenSpills) {
  // Page 0 holds the sinks, page 5 the observation window: candidates are pages 1-4. Zero values
  // carry no capacity.
  const std::vector<float> sa = {0, 0, 1, 0, 2, 0}, sb = {0, 1.5f, 0, 2, 0, 0};
  const std::string a = Make("a", sa);
  const std::string b = Make("b", sb);
  // c is guaranteed 6 MiB and asks for them: 12 of 14 MiB are in use, so 4 pages must go.
  v1::SetQuotaRequest q;
  q.set_name("c");
  q.set_quota_bytes(6 * kMiB);
  ASSERT_OK(daemon_.Admin()->SetQuota(q));
  ASSERT_OK_AND_ASSIGN(std::string c, clients_["c"]->CreateSequence("m"));
  ASSERT_OK(clients_["c"]->Allocate(c, 6 * kTpp));
  EXPECT_EQ(Surviving("a", a, sa), (std::vector<int32_t>{0, 2, 4, 5}));
  EXPECT_EQ(Surviving("b", b, sb), (std::vector<int32_t>{0, 1, 3, 5}));
  ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, daemon_.Admin()->GetStatus());
  EXPECT_EQ(status.pressure_policy(), "capacity");
  EXPECT_EQ(status.pressure_evicted_pages(), 4u);
  EXPECT_EQ(status.pressure_spills(), 0u);
  for (const auto& t : status.tenant_usage()) {
    if (t.name() == "c") {
      EXPECT_EQ(t.used_bytes(), 6 * kMiB);
      EXPECT_EQ(t.fair_share_bytes(), 6 * kMiB + 8 * kMiB / 3);
    } else {
      EXPECT_EQ(t.used_bytes(), 4 * kMiB) << t.name();
      EXPECT_EQ(t.pressure_evicted_pages(), 2u) << t.name();
    }
  }

  // c asks for 4 more: at 10 MiB it would stand above its share (6 + 8/3 MiB), so only pages of
  // tenants above their own shares (8/3 MiB) may go: one page each of a and b, the cheaper
  // candidate; the least recently used sequence (a) is then spilled for the rest.
  ASSERT_OK(clients_["c"]->Commit(c, 6 * kTpp));
  ASSERT_OK(clients_["c"]->Allocate(c, 4 * kTpp));
  EXPECT_EQ(TierOf("a", a), v1::TIER_SPILLED);
  EXPECT_EQ(TierOf("b", b), v1::TIER_DEVICE);
  EXPECT_EQ(Surviving("b", b, sb), (std::vector<int32_t>{0, 3, 5}));
  ASSERT_OK_AND_ASSIGN(status, daemon_.Admin()->GetStatus());
  EXPECT_EQ(status.pressure_evicted_pages(), 6u);
  EXPECT_EQ(status.pressure_spills(), 1u);
  // a comes back from the spill tier as it left: pages 0, 4, 5 (page 2, the cheaper, went).
  ASSERT_OK(clients_["c"]->Drop(c));
  ASSERT_OK(clients_["a"]->Acquire(a));
  EXPECT_EQ(Surviving("a", a, sa), (std::vector<int32_t>{0, 4, 5}));
}

class CompressPressureE2eTest : public PoolPressureE2eTest {
 protected:
  std::string Policy() const override { return "compress"; }
};

TEST_F(CompressPressureE2eTest, AllocationCompressesOthersUnleasedSequences) {
  // a's policy: streaming (sinks + the most recent tokens; needs no statistics), sinks and
  // window one page each. Its pages 1-4 carry no capacity: the cheapest in the pool.
  v1::Policy policy;
  policy.set_scorer("streaming");
  policy.set_sinks(kTpp);
  policy.set_window(kTpp);
  ASSERT_OK(daemon_.Admin()->SetPolicy("a", policy).status());
  const std::vector<float> sa = {1, 0, 0, 0, 0, 2};
  const std::string a = Make("a", sa);
  // b's sequence is leased (never released): it holds nothing, but pressure may not touch it.
  ASSERT_OK_AND_ASSIGN(std::string b, clients_["b"]->CreateSequence("m"));
  ASSERT_OK(clients_["b"]->Allocate(b, 4 * kTpp));
  ASSERT_OK(clients_["b"]->Commit(b, 4 * kTpp));
  // c is guaranteed 8 MiB and asks for them: 10 of 14 MiB are in use, 4 pages must go.
  v1::SetQuotaRequest q;
  q.set_name("c");
  q.set_quota_bytes(8 * kMiB);
  ASSERT_OK(daemon_.Admin()->SetQuota(q));
  ASSERT_OK_AND_ASSIGN(std::string c, clients_["c"]->CreateSequence("m"));
  ASSERT_OK(clients_["c"]->Allocate(c, 8 * kTpp));
  // a was compressed to a third (2 of 6 pages): the sink page and the most recent page, every
  // kept token as written.
  EXPECT_EQ(Surviving("a", a, sa), (std::vector<int32_t>{0, 5}));
  ASSERT_OK_AND_ASSIGN(v1::PageTable tb, clients_["b"]->GetSequence(b, false));
  EXPECT_EQ(tb.heads(0).token_count(), 4 * kTpp);
  ASSERT_OK_AND_ASSIGN(v1::DaemonStatus status, daemon_.Admin()->GetStatus());
  EXPECT_EQ(status.pressure_policy(), "compress");
  EXPECT_EQ(status.pressure_compressions(), 1u);
  EXPECT_EQ(status.pressure_compressed_pages(), 4u);
  EXPECT_EQ(status.pressure_compressed_tokens(), 4u * kTpp);
  EXPECT_EQ(status.pressure_spills(), 0u);
  EXPECT_EQ(TierOf("a", a), v1::TIER_DEVICE);
  // kvkeepctl status shows the policy and what it did, beside the other policies' counters.
  const ProcessExit ctl = RunToExit({DaemonProcess::BinaryDir() + "/kvkeepctl", "--socket",
                                     daemon_.dir() + "/kvkeepd.sock", "--admin-token-file",
                                     daemon_.dir() + "/admin.token", "status"});
  EXPECT_EQ(ctl.code, 0) << ctl.err;
  EXPECT_NE(ctl.out.find("pressure: policy compress, 0 pages (0 tokens) evicted by capacity cost, "
                         "1 compressions freed 4 pages, 0 sequences spilled"),
            std::string::npos)
      << ctl.out;
}

TEST(PressurePolicyFlag, UnknownPolicyStopsTheDaemonWithExitStatus2) {
  const std::string cmd = absl::StrCat(DaemonProcess::BinaryDir(), "/kvkeepd --data_dir=",
                                       ::testing::TempDir(), "/pressure-flag-unused",
                                       " --pressure_policy=oldest 2>&1");
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[256];
  while (fgets(buf, sizeof(buf), p) != nullptr) out += buf;
  const int status = pclose(p);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
  EXPECT_NE(out.find("--pressure_policy must be lru, capacity or compress"), std::string::npos) << out;
}

}  // namespace
}  // namespace kvkeep::testing
