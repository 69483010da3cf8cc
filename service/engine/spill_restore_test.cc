// Streamed restores (spiller.cc, restore_sink.h): a real engine on the CPU backend with a real
// spill store (RocksDB on disk). The restores are large enough (> 4 MiB) to be read on two
// threads, so pages arrive concurrently and out of order.
#include <filesystem>
#include <map>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gpu/backend.h"
#include "gtest/gtest.h"
#include "service/engine/cache_engine.h"
#include "service/storage/metadata_store.h"
#include "service/storage/spill_store.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

constexpr uint32_t kTpp = 16, kDim = 128, kLayers = 2, kKvHeads = 2;
constexpr uint32_t kHeads = kLayers * kKvHeads;
constexpr uint64_t kPage = kTpp * kDim * 2 * 2;  // fp16 keys + values: 8 KiB
constexpr uint32_t kTokens = 2600;  // 163 pages per head (the last one partly filled): 5.2 MiB

class NullSink : public SessionSink {
 public:
  void ArenaAdded(const ArenaInfo&) override {}
  void End(const absl::Status&) override {}
};

// Per head (layer-major): the keys then the values of its committed tokens, as written.
using HeadBytes = std::map<uint32_t, std::string>;

class SpillRestoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/spill-restore-", std::random_device()());
    std::filesystem::create_directories(dir_);
    ASSERT_OK_AND_ASSIGN(store_, MetadataStore::Open(dir_ + "/db"));
    ASSERT_OK_AND_ASSIGN(backend_, CreateBackend({.kind = BackendKind::kCpu,
                                                  .shm_prefix = "kvkeep-restoretest"}));
  }
  void TearDown() override {
    engine_.reset();
    spill_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  // Opens the spill store (writing `pages_per_value` pages per value, spills over
  // `write_batch_bytes` in batches) and the engine over it.
  void Open(uint32_t pages_per_value = 32, uint64_t write_batch_bytes = 64ull << 20) {
    engine_.reset();
    spill_.reset();
    SpillStore::Options so;
    so.path = dir_ + "/spill";
    so.pages_per_value = pages_per_value;
    so.read_threads = 2;
    so.read_batch_mib = 1;  // several MultiGet batches per thread
    so.write_batch_bytes = write_batch_bytes;
    ASSERT_OK_AND_ASSIGN(spill_, SpillStore::Open(so));
    EngineOptions options;
    options.pool = {.capacity_bytes = 4096 * kPage, .arena_bytes = 512 * kPage};
    ASSERT_OK_AND_ASSIGN(engine_,
                         CacheEngine::Create(backend_.get(), store_.get(), options, spill_.get()));
  }
  void Tenant(const std::string& name) {
    v1::CreateTenantRequest r;
    r.set_name(name);
    r.set_spill_quota_bytes(uint64_t{1} << 30);
    ASSERT_OK(engine_->CreateTenant(r));
    v1::ModelLayout l;
    l.set_name("m");
    l.set_layers(kLayers);
    l.set_q_heads(kKvHeads);
    l.set_kv_heads(kKvHeads);
    l.set_head_dim(kDim);
    l.set_dtype(v1::DTYPE_FP16);
    l.set_tokens_per_page(kTpp);
    ASSERT_OK_AND_ASSIGN(auto model, Model::FromLayout(l));
    ASSERT_OK(engine_->RegisterModel(name, std::move(model)));
  }
  std::string Session(const std::string& tenant) {
    auto s = engine_->Attach(tenant, "w", &sink_);
    EXPECT_OK(s);
    return s.ok() ? s->session_id : "";
  }
  // A committed sequence of kTokens tokens of random bytes in every head; *written gets them.
  std::string Make(const std::string& tenant, const std::string& session, uint64_t seed,
                   HeadBytes* written) {
    v1::CreateSequenceRequest r;
    r.set_session_id(session);
    r.set_model("m");
    r.set_retain(true);
    auto table = engine_->CreateSequence(tenant, r);
    EXPECT_OK(table);
    const std::string id = table.ok() ? table->sequence_id() : "";
    v1::AllocateRequest a;
    a.set_sequence_id(id);
    a.set_tokens(kTokens);
    EXPECT_OK(engine_->AllocatePages(tenant, a));
    v1::CommitRequest c;
    c.set_sequence_id(id);
    c.set_tokens(kTokens);
    EXPECT_OK(engine_->CommitTokens(tenant, c));
    std::mt19937_64 rng(seed);
    for (uint32_t h = 0; h < kHeads; ++h) {
      std::string keys(size_t{kTokens} * kDim * 2, '\0'), values(keys.size(), '\0');
      for (std::string* s : {&keys, &values}) {
        for (size_t i = 0; i + 8 <= s->size(); i += 8) {
          const uint64_t v = rng();
          std::memcpy(&(*s)[i], &v, 8);
        }
      }
      v1::KvChunk chunk;
      chunk.set_sequence_id(id);
      chunk.set_layer(h / kKvHeads);
      chunk.set_kv_head(h % kKvHeads);
      chunk.set_token_count(kTokens);
      chunk.set_keys(keys);
      chunk.set_values(values);
      EXPECT_OK(engine_->WriteChunk(tenant, chunk));
      (*written)[h] = keys + values;
    }
    return id;
  }
  // Every head's committed keys then values, read back through ReadKV's cursor.
  HeadBytes ReadBack(const std::string& tenant, const std::string& id) {
    std::map<uint32_t, std::pair<std::string, std::string>> parts;
    v1::ReadRequest read;
    read.set_sequence_id(id);
    auto cursor = engine_->OpenRead(tenant, read);
    EXPECT_OK(cursor);
    if (!cursor.ok()) return {};
    v1::KvChunk chunk;
    while (true) {
      auto more = (*cursor)->Next(&chunk);
      EXPECT_OK(more);
      if (!more.ok() || !*more) break;
      auto& [keys, values] = parts[chunk.layer() * kKvHeads + chunk.kv_head()];
      EXPECT_EQ(keys.size(), size_t{chunk.token_offset()} * kDim * 2);  // chunks come in order
      keys += chunk.keys();
      values += chunk.values();
    }
    HeadBytes out;
    for (auto& [h, kv] : parts) out[h] = kv.first + kv.second;
    return out;
  }
  // Spill by the sequence's own session (which holds its lease; AdminSpill refuses leased ones).
  absl::Status SpillOwn(const std::string& tenant, const std::string& session,
                        const std::string& id) {
    v1::SpillRequest r;
    r.set_session_id(session);
    r.set_sequence_id(id);
    return engine_->Spill(tenant, r).status();
  }
  static v1::SequenceRef Ref(const std::string& tenant, const std::string& id) {
    v1::SequenceRef ref;
    ref.set_tenant(tenant);
    ref.set_sequence_id(id);
    return ref;
  }
  v1::TenantInfo Usage(const std::string& tenant) {
    const auto status = engine_->Status();  // the loop must not outlive it
    for (const auto& t : status.tenant_usage()) {
      if (t.name() == tenant) return t;
    }
    return {};
  }
  v1::Tier TierOf(const std::string& tenant, const std::string& id) {
    const auto list = engine_->ListSequences(tenant);
    for (const auto& s : list.sequences()) {
      if (s.sequence_id() == id) return s.tier();
    }
    return v1::TIER_UNSPECIFIED;
  }
  // Bytes equal, without printing megabytes on failure.
  static void ExpectSame(const HeadBytes& got, const HeadBytes& want) {
    ASSERT_EQ(got.size(), want.size());
    for (const auto& [h, bytes] : want) {
      auto it = got.find(h);
      ASSERT_NE(it, got.end()) << "head " << h;
      EXPECT_TRUE(it->second == bytes) << "head " << h << " differs";
    }
  }

  std::string dir_;
  NullSink sink_;
  std::unique_ptr<MetadataStore> store_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<SpillStore> spill_;
  std::unique_ptr<CacheEngine> engine_;
};

TEST_F(SpillRestoreTest, StreamedRestoreIsBitExact) {
  Open();
  Tenant("a");
  const std::string session = Session("a");
  HeadBytes written;
  const std::string id = Make("a", session, 1, &written);
  ExpectSame(ReadBack("a", id), written);
  const uint64_t used = Usage("a").used_bytes();
  ASSERT_OK(SpillOwn("a", session, id));
  ASSERT_EQ(TierOf("a", id), v1::TIER_SPILLED);
  EXPECT_LT(Usage("a").used_bytes(), used);
  v1::RestoreRequest r;
  r.set_session_id(session);
  r.set_sequence_id(id);
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, engine_->Restore("a", r));
  EXPECT_EQ(table.heads_size(), static_cast<int>(kHeads));
  EXPECT_EQ(TierOf("a", id), v1::TIER_DEVICE);
  EXPECT_EQ(Usage("a").used_bytes(), used);
  EXPECT_EQ(Usage("a").spilled_bytes(), 0u);
  ExpectSame(ReadBack("a", id), written);
  ASSERT_OK_AND_ASSIGN(auto listed, spill_->List("a"));
  EXPECT_TRUE(listed.empty());  // the disk copy is gone
}

// A page corrupt on disk in the middle of the sequence: pages before it were already written
// into device pages when it is found. The restore is DATA_LOSS, and nothing of it is visible:
// the sequence is still spilled (and restorable as often as asked, with the same answer), its
// pages went back to the pool, the tenant's charge is what it was.
TEST_F(SpillRestoreTest, CorruptPageHalfwayLeavesNothingHalfRestored) {
  Open();
  Tenant("a");
  const std::string session = Session("a");
  HeadBytes written;
  const std::string id = Make("a", session, 2, &written);
  ASSERT_OK(SpillOwn("a", session, id));
  ASSERT_OK_AND_ASSIGN(SpillRecord record, spill_->Get("a", id));
  std::string bad = record.heads[2].pages[90];
  bad[100] ^= 0x40;
  ASSERT_OK(spill_->OverwritePageForTest("a", id, 2, 90, bad));
  const v1::TenantInfo before = Usage("a");
  const PoolStats pool_before = engine_->pool().Stats();
  const uint64_t spilled_before = engine_->Status().spilled_bytes();
  ASSERT_GT(before.spilled_bytes(), 0u);
  for (int attempt = 0; attempt < 2; ++attempt) {
    v1::RestoreRequest r;
    r.set_session_id(session);
    r.set_sequence_id(id);
    EXPECT_THAT(engine_->Restore("a", r), StatusIs(StatusCode::kDataLoss, "page 90 of head 2"));
    EXPECT_EQ(TierOf("a", id), v1::TIER_SPILLED);
    EXPECT_EQ(Usage("a").used_bytes(), before.used_bytes());
    EXPECT_EQ(Usage("a").used_pages(), before.used_pages());
    EXPECT_EQ(Usage("a").spilled_bytes(), before.spilled_bytes());
    EXPECT_EQ(engine_->pool().Stats().used_pages, pool_before.used_pages);
    EXPECT_EQ(engine_->Status().spilled_bytes(), spilled_before);
  }
  ASSERT_OK_AND_ASSIGN(auto listed, spill_->List("a"));
  EXPECT_EQ(listed.size(), 1u);  // the disk copy is kept
  // With the page put back the same sequence restores bit-exact.
  ASSERT_OK(spill_->OverwritePageForTest("a", id, 2, 90, record.heads[2].pages[90]));
  ASSERT_OK(engine_->AdminRestore(Ref("a", id)).status());
  ExpectSame(ReadBack("a", id), written);
}

// Several sequences restored at the same time, each on two read threads: every one bit-exact,
// and the charges add up.
TEST_F(SpillRestoreTest, ConcurrentRestoresOfDifferentSequences) {
  Open();
  Tenant("a");
  Tenant("b");
  constexpr int kSequences = 4;
  std::vector<std::pair<std::string, std::string>> seqs;  // (tenant, id)
  std::map<std::string, std::string> sessions = {{"a", Session("a")}, {"b", Session("b")}};
  std::vector<HeadBytes> written(kSequences);
  for (int i = 0; i < kSequences; ++i) {
    const std::string tenant = i % 2 ? "b" : "a";
    seqs.emplace_back(tenant, Make(tenant, sessions[tenant], 10 + i, &written[i]));
  }
  const uint64_t used_a = Usage("a").used_bytes(), used_b = Usage("b").used_bytes();
  for (const auto& [tenant, id] : seqs) ASSERT_OK(SpillOwn(tenant, sessions[tenant], id));
  std::vector<absl::Status> status(kSequences);
  std::vector<std::thread> threads;
  for (int i = 0; i < kSequences; ++i) {
    threads.emplace_back([&, i] {
      status[i] = engine_->AdminRestore(Ref(seqs[i].first, seqs[i].second)).status();
    });
  }
  for (std::thread& t : threads) t.join();
  for (int i = 0; i < kSequences; ++i) {
    ASSERT_OK(status[i]);
    ExpectSame(ReadBack(seqs[i].first, seqs[i].second), written[i]);
  }
  EXPECT_EQ(Usage("a").used_bytes(), used_a);
  EXPECT_EQ(Usage("b").used_bytes(), used_b);
  EXPECT_EQ(engine_->Status().spilled_bytes(), 0u);
}

// A spill larger than the store's write batch (5.2 MiB in batches of 512 KiB): the spiller's page
// source reads each page from its device page as the store asks, the pages go in batches without
// the WAL, then the manifest. After a restart it restores bit-exact, and no page key is left over.
TEST_F(SpillRestoreTest, SpillInBoundedBatchesRestoresBitExactAfterRestart) {
  Open(/*pages_per_value=*/32, /*write_batch_bytes=*/512 << 10);
  Tenant("a");
  HeadBytes written;
  const std::string session = Session("a");
  const std::string id = Make("a", session, 4, &written);
  const uint64_t used = Usage("a").used_bytes();
  ASSERT_OK(SpillOwn("a", session, id));
  EXPECT_EQ(Usage("a").spilled_bytes(), uint64_t{kHeads} * ((kTokens + kTpp - 1) / kTpp) * kPage);
  Open(/*pages_per_value=*/32, /*write_batch_bytes=*/512 << 10);  // restart
  ASSERT_EQ(TierOf("a", id), v1::TIER_SPILLED);
  ASSERT_OK(engine_->AdminRestore(Ref("a", id)).status());
  EXPECT_EQ(Usage("a").used_bytes(), used);
  ExpectSame(ReadBack("a", id), written);
  ASSERT_OK_AND_ASSIGN(SpillRecoveryReport report, spill_->Recover());
  EXPECT_EQ(report.orphan_pages, 0u);  // the restore's Delete took every run
  EXPECT_EQ(report.sequences, 0u);
}

// A sequence spilled by a release that wrote one page per value (manifest version 1) restores
// through the streamed path of a store that writes runs, after a restart.
TEST_F(SpillRestoreTest, VersionOneSpillRestoresAfterUpgradeAndRestart) {
  Open(/*pages_per_value=*/1);
  Tenant("a");
  HeadBytes written;
  const std::string session = Session("a");
  const std::string id = Make("a", session, 3, &written);
  ASSERT_OK(SpillOwn("a", session, id));
  Open(/*pages_per_value=*/32);  // restart: tenants and the spilled sequence are loaded
  ASSERT_EQ(TierOf("a", id), v1::TIER_SPILLED);
  ASSERT_OK(engine_->AdminRestore(Ref("a", id)).status());
  ExpectSame(ReadBack("a", id), written);
}

}  // namespace
}  // namespace kvkeep
