// Pool pressure in the engine (cache_engine_pressure.cc): capacity-aware page eviction, fair
// shares, guarantees, leases, and compression under pressure (--pressure_policy=compress). One-page arenas so that freed pages are reusable by any tenant.
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gpu/cpu/cpu_backend.h"
#include "gpu/math/dtype.h"
#include "gtest/gtest.h"
#include "service/engine/cache_engine.h"
#include "service/engine/metadata_charge.h"
#include "service/storage/fault_env.h"
#include "service/storage/spill_store.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

constexpr uint32_t kTpp = 16, kDim = 16;
constexpr uint64_t kPage = kTpp * kDim * 2 * 2;  // fp16 keys + values: 1 KiB

class NullSink : public SessionSink {
 public:
  void ArenaAdded(const ArenaInfo&) override {}
  void End(const absl::Status&) override {}
};

class PoolPressureTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/pressure-", std::random_device()());
    std::filesystem::create_directories(dir_);
    ASSERT_OK_AND_ASSIGN(store_, MetadataStore::Open(dir_ + "/db"));
    ASSERT_OK_AND_ASSIGN(backend_, CreateBackend({.kind = BackendKind::kCpu,
                                                  .shm_prefix = "kvkeep-pressuretest"}));
  }
  void TearDown() override {
    engine_.reset();
    spill_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  void Open(uint64_t pages, PressurePolicy policy = PressurePolicy::kCapacity,
            bool with_spill = false) {
    EngineOptions options;
    options.pool = {.capacity_bytes = pages * kPage, .arena_bytes = kPage};
    options.pressure_policy = policy;
    if (with_spill) {
      ASSERT_OK_AND_ASSIGN(spill_, SpillStore::Open({.path = dir_ + "/spill", .env = spill_env_}));
    }
    ASSERT_OK_AND_ASSIGN(engine_,
                         CacheEngine::Create(backend_.get(), store_.get(), options, spill_.get()));
    v1::Watermarks w;  // relief only for allocations that do not fit: exact targets
    w.set_low_free(0);
    w.set_high_free(0);
    ASSERT_OK(engine_->SetWatermarks(w));
  }
  // Every tenant's model "m": one layer, one KV head.
  static v1::ModelLayout Layout() {
    v1::ModelLayout l;
    l.set_name("m");
    l.set_layers(1);
    l.set_q_heads(1);
    l.set_kv_heads(1);
    l.set_head_dim(kDim);
    l.set_dtype(v1::DTYPE_FP16);
    l.set_tokens_per_page(kTpp);
    return l;
  }
  // What metadata_charge.h computes for one sequence of model "m" without statistics whose head
  // holds `pages` full pages and nothing more: the empty sequence, then its page ids and
  // positions, each vector holding exactly what it needs.
  static uint64_t ShrunkSequenceBytes(uint64_t pages) {
    absl::StatusOr<Model> model = Model::FromLayout(Layout());
    EXPECT_OK(model);
    if (!model.ok()) return 0;
    return EmptySequenceBytes(*model) + pages * sizeof(uint64_t) + pages * kTpp * sizeof(int32_t);
  }
  std::string Tenant(const std::string& name, uint64_t quota_pages = 0, uint32_t weight = 1,
                     bool no_protection = false) {
    v1::CreateTenantRequest r;
    r.set_name(name);
    r.set_quota_bytes(quota_pages * kPage);
    r.set_weight(weight);
    r.set_spill_quota_bytes(64 * kPage);
    EXPECT_OK(engine_->CreateTenant(r));
    auto model = Model::FromLayout(Layout());
    EXPECT_OK(model);
    EXPECT_OK(engine_->RegisterModel(name, std::move(*model)));
    if (no_protection) {
      v1::SetPolicyRequest p;
      p.set_tenant(name);
      p.mutable_policy()->set_scorer("capkv");
      p.mutable_policy()->set_sinks(0);
      p.mutable_policy()->set_window(0);
      EXPECT_OK(engine_->SetPolicy(p));
    }
    auto s = engine_->Attach(name, "w", &sink_);
    EXPECT_OK(s);
    return s.ok() ? s->session_id : "";
  }
  // A sequence of one page per entry of `scales`; token j of page p holds the value
  // scales[p] * e_(j mod 16) (keys zero). Released (no lease) unless `keep_lease`.
  std::string Make(const std::string& tenant, const std::string& session,
                   const std::vector<float>& scales, bool keep_lease = false) {
    v1::CreateSequenceRequest r;
    r.set_session_id(session);
    r.set_model("m");
    r.set_retain(true);
    auto table = engine_->CreateSequence(tenant, r);
    EXPECT_OK(table);
    const std::string id = table.ok() ? table->sequence_id() : "";
    const uint32_t n = static_cast<uint32_t>(scales.size()) * kTpp;
    if (n == 0) return id;  // empty, leased by its creator
    v1::AllocateRequest a;
    a.set_sequence_id(id);
    a.set_tokens(n);
    EXPECT_OK(engine_->AllocatePages(tenant, a));
    v1::CommitRequest c;
    c.set_sequence_id(id);
    c.set_tokens(n);
    EXPECT_OK(engine_->CommitTokens(tenant, c));
    std::vector<uint16_t> keys(size_t{n} * kDim, 0), values(size_t{n} * kDim, 0);
    for (uint32_t j = 0; j < n; ++j) {
      values[size_t{j} * kDim + j % kDim] = gpu_math::FloatToHalfBits(scales[j / kTpp]);
    }
    v1::KvChunk chunk;
    chunk.set_sequence_id(id);
    chunk.set_token_count(n);
    chunk.set_keys(keys.data(), keys.size() * 2);
    chunk.set_values(values.data(), values.size() * 2);
    EXPECT_OK(engine_->WriteChunk(tenant, chunk));
    if (!keep_lease) {
      v1::ReleaseRequest rel;
      rel.set_session_id(session);
      rel.set_sequence_id(id);
      EXPECT_OK(engine_->Release(tenant, rel));
    }
    return id;
  }
  // The surviving tokens' positions, divided by the page size (one entry per page).
  std::vector<int32_t> Pages(const std::string& tenant, const std::string& id) {
    auto t = engine_->GetSequence(tenant, id, /*with_positions=*/true);
    EXPECT_OK(t);
    std::vector<int32_t> pages;
    if (!t.ok()) return pages;
    const auto& positions = t->heads(0).positions();
    for (int i = 0; i < positions.size(); i += kTpp) pages.push_back(positions[i] / kTpp);
    return pages;
  }
  uint64_t UsedPages(const std::string& tenant) {
    const v1::DaemonStatus status = engine_->Status();
    for (const auto& t : status.tenant_usage()) {
      if (t.name() == tenant) return t.used_pages();
    }
    return 0;
  }
  v1::TenantInfo Info(const std::string& tenant) {
    const v1::DaemonStatus status = engine_->Status();
    for (const auto& t : status.tenant_usage()) {
      if (t.name() == tenant) return t;
    }
    return {};
  }
  // The tenant's default policy: `scorer` with `sinks` and `window` (no budget).
  void SetPolicy(const std::string& tenant, const std::string& scorer, uint32_t sinks,
                 uint32_t window) {
    v1::SetPolicyRequest p;
    p.set_tenant(tenant);
    p.mutable_policy()->set_scorer(scorer);
    p.mutable_policy()->set_sinks(sinks);
    p.mutable_policy()->set_window(window);
    EXPECT_OK(engine_->SetPolicy(p));
  }
  // Every value read back, in order, and the positions of the head's tokens.
  std::pair<std::string, std::vector<int32_t>> ReadBack(const std::string& tenant,
                                                        const std::string& id) {
    std::pair<std::string, std::vector<int32_t>> out;
    auto t = engine_->GetSequence(tenant, id, /*with_positions=*/true);
    EXPECT_OK(t);
    if (t.ok()) out.second.assign(t->heads(0).positions().begin(), t->heads(0).positions().end());
    v1::ReadRequest read;
    read.set_sequence_id(id);
    auto cursor = engine_->OpenRead(tenant, read);
    EXPECT_OK(cursor);
    if (!cursor.ok()) return out;
    v1::KvChunk chunk;
    while (true) {
      auto more = (*cursor)->Next(&chunk);
      EXPECT_OK(more);
      if (!more.ok() || !*more) break;
      out.first += chunk.values();
    }
    return out;
  }
  // The fp16 values Make wrote for token positions `positions` of a sequence of `scales`.
  static std::string ValuesAt(const std::vector<float>& scales,
                              const std::vector<int32_t>& positions) {
    std::vector<uint16_t> v(positions.size() * kDim, 0);
    for (size_t i = 0; i < positions.size(); ++i) {
      const int32_t j = positions[i];
      v[i * kDim + j % kDim] = gpu_math::FloatToHalfBits(scales[j / kTpp]);
    }
    return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
  }
  absl::Status Allocate(const std::string& tenant, const std::string& id, uint32_t tokens) {
    v1::AllocateRequest a;
    a.set_sequence_id(id);
    a.set_tokens(tokens);
    return engine_->AllocatePages(tenant, a).status();
  }

  std::string dir_;
  NullSink sink_;
  std::unique_ptr<MetadataStore> store_;
  rocksdb::Env* spill_env_ = nullptr;  // a FaultEnv's, for the full-disk tests
  std::unique_ptr<SpillStore> spill_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<CacheEngine> engine_;
};

TEST_F(PoolPressureTest, CheapestPagesGoFirstAcrossSequencesAndTenants) {
  Open(20);
  const std::string sa = Tenant("a"), sb = Tenant("b"), sc = Tenant("c");
  // Page 0 holds the sinks, pages 6-7 the 32-token window: never candidates. Zero values carry
  // no capacity; otherwise A's page of scale 1 is the cheapest (s = 1/15 < B's 2.25/16.25).
  const std::string a = Make("a", sa, {0, 0, 1, 0, 2, 3, 0, 0});
  const std::string b = Make("b", sb, {0, 1.5, 0, 2, 0, 3, 0, 0});
  // c is then guaranteed 9 pages (shares: a = b = 11 / 3, c = 9 + 11 / 3) and asks for them;
  // 4 are free: 5 must go, from a and b, both above their shares.
  v1::SetQuotaRequest q;
  q.set_name("c");
  q.set_quota_bytes(9 * kPage);
  ASSERT_OK(engine_->SetQuota(q));
  const std::string c = Make("c", sc, {}, /*keep_lease=*/true);
  ASSERT_OK(Allocate("c", c, 9 * kTpp));
  EXPECT_EQ(Pages("a", a), (std::vector<int32_t>{0, 4, 5, 6, 7}));
  EXPECT_EQ(Pages("b", b), (std::vector<int32_t>{0, 1, 3, 5, 6, 7}));
  v1::DaemonStatus s = engine_->Status();
  EXPECT_EQ(s.pressure_policy(), "capacity");
  EXPECT_EQ(s.pressure_evicted_pages(), 5u);
  EXPECT_EQ(s.pressure_evicted_tokens(), 5u * kTpp);
  EXPECT_EQ(s.pressure_spills(), 0u);
  EXPECT_GE(s.page_cost_passes(), 2u);
  EXPECT_EQ(Info("a").pressure_evicted_pages(), 3u);
  EXPECT_EQ(Info("b").pressure_evicted_pages(), 2u);
  EXPECT_EQ(s.pool_used_bytes(), 20 * kPage);
  // The surviving tokens are the original ones, in order: A's page at position 64 holds scale 2.
  v1::ReadRequest read;
  read.set_sequence_id(a);
  ASSERT_OK_AND_ASSIGN(auto cursor, engine_->OpenRead("a", read));
  v1::KvChunk chunk;
  std::string values;
  while (true) {
    ASSERT_OK_AND_ASSIGN(bool more, cursor->Next(&chunk));
    if (!more) break;
    values += chunk.values();
  }
  ASSERT_EQ(values.size(), 5 * kTpp * kDim * 2);
  const uint16_t* v = reinterpret_cast<const uint16_t*>(values.data());
  EXPECT_EQ(gpu_math::HalfBitsToFloat(v[1 * kTpp * kDim]), 2.0f);       // page 4, token 0
  EXPECT_EQ(gpu_math::HalfBitsToFloat(v[2 * kTpp * kDim + kDim + 1]), 3.0f);  // page 5, token 1
}

// Shared prefix pages are referenced by their sequence: capacity-aware relief never drops them,
// even when they are the cheapest pages in the pool (zero values: no capacity at all).
TEST_F(PoolPressureTest, SharedPrefixPagesAreNeverEvicted) {
  Open(12);
  const std::string sa = Tenant("a", 0, 1, /*no_protection=*/true);
  v1::SetQuotaRequest group;
  group.set_name("a");
  group.set_sharing_group("team");
  ASSERT_OK(engine_->SetQuota(group));
  const std::string sc = Tenant("c");
  // a: pages 0-1 hold nothing (cheapest), pages 2-5 carry values.
  const std::string a = Make("a", sa, {0, 0, 1, 2, 3, 4});
  v1::PublishPrefixRequest publish;
  publish.set_sequence_id(a);
  for (uint32_t t = 0; t < 2 * kTpp; ++t) publish.add_token_ids(1000 + t);
  ASSERT_OK_AND_ASSIGN(v1::PublishPrefixReply published, engine_->PublishPrefix("a", publish));
  ASSERT_EQ(published.shared_pages(), 2u);
  // c, guaranteed 8 pages, asks for them: 6 are free, two of a's private pages must go (its
  // cheapest private ones, scales 1 and 2), never the two shared ones.
  v1::SetQuotaRequest q;
  q.set_name("c");
  q.set_quota_bytes(8 * kPage);
  ASSERT_OK(engine_->SetQuota(q));
  const std::string c = Make("c", sc, {}, /*keep_lease=*/true);
  ASSERT_OK(Allocate("c", c, 8 * kTpp));
  EXPECT_EQ(Pages("a", a), (std::vector<int32_t>{0, 1, 4, 5}));
  EXPECT_EQ(engine_->Status().shared_pages_referenced(), 2u);
  EXPECT_EQ(Info("a").pressure_evicted_pages(), 2u);
}

TEST_F(PoolPressureTest, LeasedSequencesAndGuaranteesAreNeverTouched) {
  Open(16);
  const std::string sa = Tenant("a", /*quota_pages=*/6), sb = Tenant("b"), sc = Tenant("c");
  // a: 6 pages inside its guarantee; b: a leased sequence of free-to-lose pages.
  const std::string a = Make("a", sa, {0, 0, 0, 0, 0, 0}, false);
  const std::string b = Make("b", sb, {0, 0, 0, 0, 0, 0}, /*keep_lease=*/true);
  const std::string c = Make("c", sc, {}, true);
  // 4 pages free; c wants 6: nothing may go (a at its guarantee, b leased) and there is no spill
  // tier: RESOURCE_EXHAUSTED, and nothing changed.
  EXPECT_THAT(Allocate("c", c, 6 * kTpp), StatusIs(StatusCode::kResourceExhausted));
  EXPECT_EQ(Pages("a", a).size(), 6u);
  EXPECT_EQ(Pages("b", b).size(), 6u);
  EXPECT_EQ(engine_->Status().pressure_evicted_pages(), 0u);
  EXPECT_EQ(UsedPages("c"), 0u);
  // Once b releases its lease, its pages outside sinks and window (1-3) may go.
  v1::ReleaseRequest rel;
  rel.set_session_id(sb);
  rel.set_sequence_id(b);
  ASSERT_OK(engine_->Release("b", rel));
  ASSERT_OK(Allocate("c", c, 5 * kTpp));
  EXPECT_EQ(Pages("a", a).size(), 6u);
  // One page short: b's cheapest candidate (page 1; pages 4-5 hold the window) went.
  EXPECT_EQ(Pages("b", b), (std::vector<int32_t>{0, 2, 3, 4, 5}));
}

TEST_F(PoolPressureTest, OverCommittedPoolSettlesOnGuaranteesPlusWeights) {
  // 60 pages; guarantees 6, 3, 0 pages; weights 1, 2, 3. unreserved = 51:
  // shares 6 + 8.5 = 14.5, 3 + 17 = 20, 0 + 25.5 = 25.5 pages.
  Open(60);
  const std::vector<std::string> names = {"x", "y", "z"};
  const std::vector<uint64_t> quota = {6, 3, 0};
  const std::vector<uint32_t> weight = {1, 2, 3};
  std::vector<std::string> sessions;
  for (int t = 0; t < 3; ++t) {
    sessions.push_back(Tenant(names[t], quota[t], weight[t], /*no_protection=*/true));
  }
  // Every tenant keeps writing one-page sequences, round robin, far past the pool.
  int refused = 0;
  const std::vector<double> share = {14.5, 20, 25.5};
  for (int round = 0; round < 60; ++round) {
    for (int t = 0; t < 3; ++t) {
      v1::CreateSequenceRequest r;
      r.set_session_id(sessions[t]);
      r.set_model("m");
      r.set_retain(true);
      ASSERT_OK_AND_ASSIGN(auto table, engine_->CreateSequence(names[t], r));
      absl::Status s = Allocate(names[t], table.sequence_id(), kTpp);
      if (!s.ok()) {
        // Refused only to a tenant that one more page would take past its share, when nobody
        // else is a page above theirs.
        EXPECT_THAT(s, StatusIs(StatusCode::kResourceExhausted));
        EXPECT_GT(static_cast<double>(UsedPages(names[t]) + 1), share[t]) << names[t];
        ++refused;
        continue;
      }
      v1::CommitRequest c;
      c.set_sequence_id(table.sequence_id());
      c.set_tokens(kTpp);
      ASSERT_OK(engine_->CommitTokens(names[t], c));
      v1::ReleaseRequest rel;
      rel.set_session_id(sessions[t]);
      rel.set_sequence_id(table.sequence_id());
      ASSERT_OK(engine_->Release(names[t], rel));
    }
    // Guarantees hold at every step: one page a round, a tenant reaches its guarantee after
    // `quota` rounds and never falls below it again.
    for (int t = 0; t < 3; ++t) {
      if (static_cast<uint64_t>(round) + 1 >= quota[t]) {
        EXPECT_GE(UsedPages(names[t]), quota[t]) << names[t] << " round " << round;
      }
    }
  }
  for (int t = 0; t < 3; ++t) {
    const v1::TenantInfo info = Info(names[t]);
    EXPECT_NEAR(static_cast<double>(info.used_pages()), share[t], 1.0) << names[t];
    EXPECT_EQ(info.fair_share_bytes(), static_cast<uint64_t>(share[t] * kPage)) << names[t];
  }
  EXPECT_EQ(engine_->Status().pool_used_bytes(), 60 * kPage);
  EXPECT_GT(engine_->Status().pressure_evicted_pages(), 0u);
  EXPECT_LT(refused, 60);  // most requests were served by displacing pages
}

TEST_F(PoolPressureTest, LruSpillsTenantsAboveTheirFairShareFirst) {
  Open(16, PressurePolicy::kLru, /*with_spill=*/true);
  // Weights 1 : 3 over 16 pages: shares a = 4, b = 12 pages.
  const std::string sa = Tenant("a", 0, 1), sb = Tenant("b", 0, 3);
  const std::string b1 = Make("b", sb, {0, 0, 0, 0});  // least recently used
  const std::string a1 = Make("a", sa, {0, 0, 0, 0});
  const std::string a2 = Make("a", sa, {0, 0, 0, 0});
  const std::string b2 = Make("b", sb, {0, 0, 0, 0});
  // b (8 pages, below its share) needs 4 more: a (8, above its share of 4) loses its least recently
  // used sequence, not b's older one.
  const std::string b3 = Make("b", sb, {}, /*keep_lease=*/true);
  ASSERT_OK(Allocate("b", b3, 4 * kTpp));
  auto tier = [&](const std::string& tenant, const std::string& id) {
    auto list = engine_->ListSequences(tenant);
    for (const auto& s : list.sequences()) {
      if (s.sequence_id() == id) return s.tier();
    }
    return v1::TIER_UNSPECIFIED;
  };
  EXPECT_EQ(tier("a", a1), v1::TIER_SPILLED);
  EXPECT_EQ(tier("a", a2), v1::TIER_DEVICE);
  EXPECT_EQ(tier("b", b1), v1::TIER_DEVICE);
  EXPECT_EQ(tier("b", b2), v1::TIER_DEVICE);
  EXPECT_EQ(engine_->Status().pressure_spills(), 1u);
  EXPECT_EQ(engine_->Status().pressure_evicted_pages(), 0u);  // lru never drops pages
}

// Issue 13: an operator frees a full spill disk by dropping spilled sequences (kvkeepctl seq
// drop = AdminDrop): the drop must work while RocksDB refuses writes, and release the charge.
TEST_F(PoolPressureTest, AdminDropOfASpilledSequenceWorksOnAFullDisk) {
  FaultEnv fault;
  spill_env_ = fault.env();
  Open(16, PressurePolicy::kLru, /*with_spill=*/true);
  const std::string sa = Tenant("a");
  const std::string a1 = Make("a", sa, {0, 0, 0, 0});
  v1::SequenceRef ref;
  ref.set_tenant("a");
  ref.set_sequence_id(a1);
  ASSERT_OK(engine_->AdminSpill(ref).status());
  ASSERT_GT(engine_->Status().spilled_bytes(), 0u);
  fault.SetWriteFault(FaultEnv::Fault::kNoSpace);
  ASSERT_OK(engine_->AdminDrop(ref).status());
  EXPECT_GT(fault.injected(), 0u);
  EXPECT_EQ(engine_->Status().spilled_bytes(), 0u);
  EXPECT_EQ(engine_->ListSequences("a").sequences_size(), 0);
  // After a restart (disk still full at shutdown) the dropped sequence does not come back.
  engine_.reset();
  spill_.reset();
  fault.SetWriteFault(FaultEnv::Fault::kNone);
  Open(16, PressurePolicy::kLru, /*with_spill=*/true);
  ASSERT_OK_AND_ASSIGN(auto listed, spill_->List("a"));
  EXPECT_TRUE(listed.empty());
  engine_.reset();
  spill_.reset();
}

TEST_F(PoolPressureTest, LruPolicyEvictsNoPages) {
  Open(8, PressurePolicy::kLru);
  const std::string sa = Tenant("a"), sb = Tenant("b");
  Make("a", sa, {0, 0, 0, 0, 0, 0});
  const std::string b = Make("b", sb, {}, true);
  // No spill tier: LRU cannot relieve, and pages are never dropped.
  EXPECT_THAT(Allocate("b", b, 4 * kTpp), StatusIs(StatusCode::kResourceExhausted));
  EXPECT_EQ(engine_->Status().pressure_evicted_pages(), 0u);
  EXPECT_EQ(engine_->Status().pressure_policy(), "lru");
}

// --pressure_policy=compress: the sequence with the smallest loss per freed page is compressed by
// its tenant's policy (streaming here: sinks + the most recent tokens, no statistics needed); the
// dearer one and the leased one stay whole, and the kept tokens read back bit-exact.
TEST_F(PoolPressureTest, CompressPolicyCompressesTheCheapestUnleasedSequence) {
  Open(28, PressurePolicy::kCompress);
  const std::string sa = Tenant("a"), sb = Tenant("b"), sc = Tenant("c");
  SetPolicy("a", "streaming", /*sinks=*/kTpp, /*window=*/kTpp);
  // a1's middle pages carry no capacity (loss 0), a2's all do; b's is leased.
  const std::vector<float> cheap = {1, 0, 0, 0, 0, 0, 0, 1}, dear = {1, 2, 3, 4, 5, 6, 7, 8};
  const std::string a1 = Make("a", sa, cheap);
  const std::string a2 = Make("a", sa, dear);
  const std::string b = Make("b", sb, {0, 0, 0, 0}, /*keep_lease=*/true);
  // c, guaranteed 12 pages, asks for them: 8 are free, 4 pages must go.
  v1::SetQuotaRequest q;
  q.set_name("c");
  q.set_quota_bytes(12 * kPage);
  ASSERT_OK(engine_->SetQuota(q));
  const std::string c = Make("c", sc, {}, /*keep_lease=*/true);
  ASSERT_OK(Allocate("c", c, 12 * kTpp));
  // a1 compressed to half its tokens: the sink page and the 48 most recent tokens.
  std::vector<int32_t> kept;
  for (int32_t j = 0; j < 8 * static_cast<int32_t>(kTpp); ++j) {
    if (j < static_cast<int32_t>(kTpp) || j >= 5 * static_cast<int32_t>(kTpp)) kept.push_back(j);
  }
  const auto [values, positions] = ReadBack("a", a1);
  EXPECT_EQ(positions, kept);
  EXPECT_TRUE(values == ValuesAt(cheap, kept)) << "kept tokens changed";
  EXPECT_EQ(Pages("a", a2).size(), 8u);
  EXPECT_EQ(Pages("b", b).size(), 4u);
  const v1::DaemonStatus s = engine_->Status();
  EXPECT_EQ(s.pressure_policy(), "compress");
  EXPECT_EQ(s.pressure_compressions(), 1u);
  EXPECT_EQ(s.pressure_compressed_pages(), 4u);
  EXPECT_EQ(s.pressure_compressed_tokens(), 4u * kTpp);
  EXPECT_EQ(s.pressure_evicted_pages(), 0u);
  EXPECT_EQ(s.pressure_spills(), 0u);
  EXPECT_EQ(Info("a").pressure_evicted_pages(), 4u);
  EXPECT_EQ(UsedPages("c"), 12u);
}

// A sequence holding shared prefix pages is not compressed (compressing would copy them first):
// the plan's pages come from the tenant's other sequence.
TEST_F(PoolPressureTest, CompressPolicyLeavesSequencesWithSharedPrefixPagesAlone) {
  Open(24, PressurePolicy::kCompress);
  const std::string sa = Tenant("a"), sc = Tenant("c");
  SetPolicy("a", "streaming", 0, 0);
  v1::SetQuotaRequest group;
  group.set_name("a");
  group.set_sharing_group("team");
  ASSERT_OK(engine_->SetQuota(group));
  const std::string shared = Make("a", sa, {1, 1, 0, 0, 0, 0, 0, 1});  // cheapest pages
  const std::string other = Make("a", sa, {1, 2, 3, 4, 5, 6, 7, 8});
  v1::PublishPrefixRequest publish;
  publish.set_sequence_id(shared);
  for (uint32_t t = 0; t < 2 * kTpp; ++t) publish.add_token_ids(1000 + t);
  ASSERT_OK_AND_ASSIGN(v1::PublishPrefixReply published, engine_->PublishPrefix("a", publish));
  ASSERT_EQ(published.shared_pages(), 2u);
  v1::SetQuotaRequest q;
  q.set_name("c");
  q.set_quota_bytes(10 * kPage);
  ASSERT_OK(engine_->SetQuota(q));
  const std::string c = Make("c", sc, {}, /*keep_lease=*/true);
  ASSERT_OK(Allocate("c", c, 10 * kTpp));  // 8 free: 2 pages must go
  EXPECT_EQ(Pages("a", shared).size(), 8u);
  EXPECT_EQ(Pages("a", other), (std::vector<int32_t>{2, 3, 4, 5, 6, 7}));  // streaming: recent
  EXPECT_EQ(engine_->Status().shared_pages_referenced(), 2u);
  EXPECT_EQ(engine_->Status().pressure_compressions(), 1u);
}

// When compression cannot free the room (here: the tenant's scorer needs statistics the
// sequence never received), the least recently used sequence is spilled.
TEST_F(PoolPressureTest, CompressPolicySpillsWhenCompressionIsNotEnough) {
  Open(16, PressurePolicy::kCompress, /*with_spill=*/true);
  const std::string sa = Tenant("a"), sb = Tenant("b");
  SetPolicy("a", "snapkv", 0, 0);  // needs window queries: none were sent
  const std::string a = Make("a", sa, {1, 0, 0, 0, 0, 0, 0, 1});
  v1::SetQuotaRequest q;
  q.set_name("b");
  q.set_quota_bytes(12 * kPage);
  ASSERT_OK(engine_->SetQuota(q));
  const std::string b = Make("b", sb, {}, /*keep_lease=*/true);
  ASSERT_OK(Allocate("b", b, 12 * kTpp));
  auto list = engine_->ListSequences("a");
  ASSERT_EQ(list.sequences_size(), 1);
  EXPECT_EQ(list.sequences(0).tier(), v1::TIER_SPILLED);
  EXPECT_EQ(engine_->Status().pressure_compressions(), 0u);
  EXPECT_EQ(engine_->Status().pressure_spills(), 1u);
}

// Issue 13: a sequence pool pressure shrinks without a call of its owner is re-charged its daemon
// heap at once (under its mu), not at the owner's next call. Spilled: its table's vectors are
// freed, only the empty sequence stays charged.
TEST_F(PoolPressureTest, PressureSpillRechargesTheSequencesMetadataAtOnce) {
  Open(16, PressurePolicy::kLru, /*with_spill=*/true);
  const std::string sa = Tenant("a"), sb = Tenant("b");
  const uint64_t model_bytes = Info("a").metadata_bytes();  // its model "m"
  ASSERT_GT(model_bytes, 0u);
  EXPECT_EQ(Info("a").max_metadata_bytes(), EngineOptions().max_metadata_bytes_per_tenant);
  const std::string a = Make("a", sa, {0, 0, 0, 0, 0, 0, 0, 0});
  ASSERT_GE(Info("a").metadata_bytes(), model_bytes + ShrunkSequenceBytes(8));
  // b needs 12 pages, 8 are free: a's sequence (unleased, least recently used) is spilled.
  const std::string b = Make("b", sb, {}, /*keep_lease=*/true);
  ASSERT_OK(Allocate("b", b, 12 * kTpp));
  ASSERT_EQ(engine_->Status().pressure_spills(), 1u);
  EXPECT_EQ(Info("a").metadata_bytes(), model_bytes + ShrunkSequenceBytes(0));
  // Restoring it (its owner's call) charges the table again.
  v1::ReleaseRequest rel;
  rel.set_session_id(sb);
  rel.set_sequence_id(b);
  ASSERT_OK(engine_->Release("b", rel));
  v1::DropRequest drop;
  drop.set_sequence_id(b);
  ASSERT_OK(engine_->Drop("b", drop).status());
  v1::RestoreRequest restore;
  restore.set_sequence_id(a);
  ASSERT_OK(engine_->Restore("a", restore).status());
  EXPECT_GE(Info("a").metadata_bytes(), model_bytes + ShrunkSequenceBytes(8));
}

// Pages dropped by capacity cost: the table's vectors are shrunk to the pages and tokens left and
// the tenant is charged exactly that, with no further call.
TEST_F(PoolPressureTest, CapacityEvictionRechargesTheShrunkTableAtOnce) {
  Open(12);
  const std::string sa = Tenant("a"), sc = Tenant("c");
  const uint64_t model_bytes = Info("a").metadata_bytes();
  const std::string a = Make("a", sa, {0, 0, 1, 0, 2, 3, 0, 0});
  const uint64_t before = Info("a").metadata_bytes();
  ASSERT_GE(before, model_bytes + ShrunkSequenceBytes(8));
  // c, guaranteed 8 pages, asks for them: 4 are free, 4 of a's pages go.
  v1::SetQuotaRequest q;
  q.set_name("c");
  q.set_quota_bytes(8 * kPage);
  ASSERT_OK(engine_->SetQuota(q));
  const std::string c = Make("c", sc, {}, /*keep_lease=*/true);
  ASSERT_OK(Allocate("c", c, 8 * kTpp));
  ASSERT_EQ(engine_->Status().pressure_evicted_pages(), 4u);
  EXPECT_EQ(Info("a").metadata_bytes(), model_bytes + ShrunkSequenceBytes(4));
  EXPECT_LT(Info("a").metadata_bytes(), before);
  EXPECT_EQ(Pages("a", a).size(), 4u);  // only read after the charge was checked
}

// Compressed under --pressure_policy=compress: the same, for the compressed table.
TEST_F(PoolPressureTest, PressureCompressionRechargesTheShrunkTableAtOnce) {
  Open(20, PressurePolicy::kCompress);
  const std::string sa = Tenant("a"), sb = Tenant("b"), sc = Tenant("c");
  SetPolicy("a", "streaming", /*sinks=*/kTpp, /*window=*/kTpp);
  const uint64_t model_bytes = Info("a").metadata_bytes();
  const std::string a = Make("a", sa, {1, 0, 0, 0, 0, 0, 0, 1});
  Make("b", sb, {0, 0, 0, 0}, /*keep_lease=*/true);
  // c, guaranteed 12 pages, asks for them: 8 are free, a's sequence gives 4.
  v1::SetQuotaRequest q;
  q.set_name("c");
  q.set_quota_bytes(12 * kPage);
  ASSERT_OK(engine_->SetQuota(q));
  const std::string c = Make("c", sc, {}, /*keep_lease=*/true);
  ASSERT_OK(Allocate("c", c, 12 * kTpp));
  ASSERT_EQ(engine_->Status().pressure_compressed_pages(), 4u);
  EXPECT_EQ(Info("a").metadata_bytes(), model_bytes + ShrunkSequenceBytes(4));
  EXPECT_EQ(Pages("a", a).size(), 4u);
}

}  // namespace
}  // namespace kvkeep
