// ReadKV chunks that reference page memory (reply_pins.h), at the engine: the views point into the
// arena, the pages stay pinned while a chunk is held, a Drop meanwhile retires them (bytes and
// arena intact, never reused), and Compress waits for the pins or refuses cleanly.
#include "service/engine/reply_pins.h"

#include <filesystem>
#include <random>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "service/engine/cache_engine.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

class NullSink : public SessionSink {
 public:
  void ArenaAdded(const ArenaInfo&) override {}
  void End(const absl::Status&) override {}
};

// 2 layers x 2 KV heads, head_dim 64 fp16 (128-byte tokens), 16-token pages: 2 KiB runs of keys
// per page, long enough to be referenced rather than copied.
constexpr uint32_t kTokenBytes = 128;
constexpr uint32_t kTokens = 64;

char KeyByte(uint32_t seed, uint32_t head, uint32_t token) {
  return static_cast<char>((seed + head + token) & 0x3f);
}
char ValueByte(uint32_t seed, uint32_t head, uint32_t token) {
  return static_cast<char>(((seed + head + token) & 0x3f) ^ 0x2a);
}

v1::ModelLayout Layout() {
  v1::ModelLayout l;
  l.set_name("m");
  l.set_layers(2);
  l.set_q_heads(2);
  l.set_kv_heads(2);
  l.set_head_dim(64);
  l.set_dtype(v1::DTYPE_FP16);
  l.set_tokens_per_page(16);
  return l;
}

class ReplyPinsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = absl::StrCat(::testing::TempDir(), "/pins-", std::random_device()());
    std::filesystem::create_directories(dir_);
    ASSERT_OK_AND_ASSIGN(store_, MetadataStore::Open(dir_ + "/db"));
    ASSERT_OK_AND_ASSIGN(backend_, CreateBackend({.kind = BackendKind::kCpu,
                                                  .shm_prefix = "kvkeep-pinstest"}));
    EngineOptions options;
    options.pool = {.capacity_bytes = 4 << 20, .arena_bytes = 256 << 10};
    ASSERT_OK_AND_ASSIGN(engine_, CacheEngine::Create(backend_.get(), store_.get(), options));
    v1::CreateTenantRequest t;
    t.set_name("a");
    ASSERT_OK(engine_->CreateTenant(t));
    ASSERT_OK_AND_ASSIGN(Model model, Model::FromLayout(Layout()));
    ASSERT_OK(engine_->RegisterModel("a", std::move(model)));
    ASSERT_OK_AND_ASSIGN(auto attached, engine_->Attach("a", "w", &sink_));
    session_ = attached.session_id;
  }
  void TearDown() override {
    engine_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A committed sequence whose head h, token i holds bytes KeyByte(seed, h, i) in its keys and
  // ValueByte(...) in its values (finite fp16 values: the scorers refuse NaN and Inf).
  std::string Filled(uint32_t seed) {
    v1::CreateSequenceRequest c;
    c.set_session_id(session_);
    c.set_model("m");
    auto table = engine_->CreateSequence("a", c);
    EXPECT_OK(table);
    const std::string seq = table.ok() ? table->sequence_id() : "";
    v1::AllocateRequest a;
    a.set_sequence_id(seq);
    a.set_tokens(kTokens);
    EXPECT_OK(engine_->AllocatePages("a", a));
    for (uint32_t h = 0; h < 4; ++h) {
      v1::KvChunk chunk;
      chunk.set_sequence_id(seq);
      chunk.set_layer(h / 2);
      chunk.set_kv_head(h % 2);
      chunk.set_token_count(kTokens);
      std::string* k = chunk.mutable_keys();
      std::string* v = chunk.mutable_values();
      for (uint32_t i = 0; i < kTokens; ++i) {
        k->append(kTokenBytes, KeyByte(seed, h, i));
        v->append(kTokenBytes, ValueByte(seed, h, i));
      }
      EXPECT_OK(engine_->WriteChunk("a", chunk));
    }
    v1::CommitRequest commit;
    commit.set_sequence_id(seq);
    commit.set_tokens(kTokens);
    EXPECT_OK(engine_->CommitTokens("a", commit));
    return seq;
  }

  std::unique_ptr<CacheEngine::ReadCursor> Open(const std::string& seq) {
    v1::ReadRequest r;
    r.set_sequence_id(seq);
    r.set_max_chunk_bytes(2 * 32 * kTokenBytes);  // 32 tokens: two pages per chunk
    auto cursor = engine_->OpenRead("a", r);
    EXPECT_OK(cursor);
    return cursor.ok() ? std::move(*cursor) : nullptr;
  }

  // Whether `chunk` holds the bytes Filled(seed) wrote for its tokens.
  static bool Holds(const ReadChunk& chunk, uint32_t seed) {
    std::string k, v;
    for (absl::string_view p : chunk.keys) k.append(p.data(), p.size());
    for (absl::string_view p : chunk.values) v.append(p.data(), p.size());
    const uint32_t h = chunk.header.layer() * 2 + chunk.header.kv_head();
    if (k.size() != chunk.header.token_count() * kTokenBytes || v.size() != k.size()) return false;
    for (uint32_t i = 0; i < chunk.header.token_count(); ++i) {
      const uint32_t t = chunk.header.token_offset() + i;
      if (k[i * kTokenBytes] != KeyByte(seed, h, t) ||
          v[i * kTokenBytes + kTokenBytes - 1] != ValueByte(seed, h, t)) {
        return false;
      }
    }
    return true;
  }

  std::string dir_;
  std::unique_ptr<MetadataStore> store_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<CacheEngine> engine_;
  NullSink sink_;
  NullSink sink_b_;  // tenant "b"'s session, where a test attaches one
  std::string session_;
};

TEST_F(ReplyPinsTest, ChunksReferenceTheArenaAndPinTheirPagesWhileHeld) {
  const std::string seq = Filled(1);
  auto cursor = Open(seq);
  ASSERT_NE(cursor, nullptr);
  ReadChunk chunk;
  ASSERT_OK_AND_ASSIGN(bool more, cursor->NextReferenced(&chunk));
  ASSERT_TRUE(more);
  EXPECT_TRUE(Holds(chunk, 1));
  ASSERT_EQ(chunk.keys.size(), 2u);  // one view per page segment: no copy
  // The views are the pages' own bytes: head 0's first page, keys then values.
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, engine_->GetSequence("a", seq, false));
  ASSERT_OK_AND_ASSIGN(PagePool::Location loc,
                       engine_->pool().Locate("a", table.heads(0).pages(0)));
  const char* page = static_cast<const char*>(backend_->HostAddress(*loc.arena)) + loc.offset;
  EXPECT_EQ(chunk.keys[0].data(), page);
  EXPECT_EQ(chunk.values[0].data(), page + loc.geometry.value_offset);
  EXPECT_EQ(engine_->pool().Pins().pinned_pages, 2u);
  ReadChunk copy = chunk;  // a second holder (gRPC's slices)
  chunk.Clear();
  EXPECT_EQ(engine_->pool().Pins().pinned_pages, 2u);
  copy.Clear();
  EXPECT_EQ(engine_->pool().Pins().pins, 0u);
}

TEST_F(ReplyPinsTest, DropWhileAChunkIsHeldRetiresItsPagesUntilReleased) {
  const std::string seq = Filled(2);
  auto cursor = Open(seq);
  ASSERT_NE(cursor, nullptr);
  ReadChunk chunk;
  ASSERT_OK_AND_ASSIGN(bool more, cursor->NextReferenced(&chunk));
  ASSERT_TRUE(more);
  const uint64_t used_before = engine_->pool().Stats().used_pages;
  v1::DropRequest drop;
  drop.set_session_id(session_);
  drop.set_sequence_id(seq);
  ASSERT_OK(engine_->Drop("a", drop));
  EXPECT_EQ(engine_->pool().Pins().retired_pages, 2u);
  EXPECT_EQ(engine_->pool().Stats().used_pages, 2u);
  // New sequences get other pages; the held chunk still reads its own bytes.
  const std::string other = Filled(100);
  const std::string third = Filled(200);
  EXPECT_TRUE(Holds(chunk, 2));
  // The cursor refuses to go on.
  ReadChunk next;
  EXPECT_THAT(cursor->NextReferenced(&next), StatusIs(StatusCode::kAborted, "dropped"));
  chunk.Clear();
  EXPECT_EQ(engine_->pool().Pins().retired_pages, 0u);
  EXPECT_EQ(engine_->pool().Stats().used_pages, 2 * used_before);
}

// Another owner takes every page the pool can give after the Drop and writes its own bytes in
// them: the held chunk still reads the dropped sequence's bytes (without the pins the dropped
// sequence's arena would be empty, given back, and its memory reused or unmapped).
TEST_F(ReplyPinsTest, AnotherOwnerFillingThePoolAfterTheDropNeverReachesTheHeldBytes) {
  const std::string seq = Filled(5);
  auto cursor = Open(seq);
  ASSERT_NE(cursor, nullptr);
  ReadChunk chunk;
  ASSERT_OK_AND_ASSIGN(bool more, cursor->NextReferenced(&chunk));
  ASSERT_TRUE(more);
  v1::DropRequest drop;
  drop.set_session_id(session_);
  drop.set_sequence_id(seq);
  ASSERT_OK(engine_->Drop("a", drop));
  // Tenant "b" allocates sequences until the pool is full, writing 0x7f into every token.
  v1::CreateTenantRequest t;
  t.set_name("b");
  ASSERT_OK(engine_->CreateTenant(t));
  ASSERT_OK_AND_ASSIGN(Model model, Model::FromLayout(Layout()));
  ASSERT_OK(engine_->RegisterModel("b", std::move(model)));
  ASSERT_OK_AND_ASSIGN(auto attached, engine_->Attach("b", "wb", &sink_b_));
  const std::string other(uint64_t{kTokens} * kTokenBytes, '\x7f');
  int sequences = 0;
  while (sequences < 1000) {
    v1::CreateSequenceRequest c;
    c.set_session_id(attached.session_id);
    c.set_model("m");
    ASSERT_OK_AND_ASSIGN(v1::PageTable created, engine_->CreateSequence("b", c));
    v1::AllocateRequest a;
    a.set_sequence_id(created.sequence_id());
    a.set_tokens(kTokens);
    if (!engine_->AllocatePages("b", a).ok()) break;
    for (uint32_t h = 0; h < 4; ++h) {
      v1::KvChunk w;
      w.set_sequence_id(created.sequence_id());
      w.set_layer(h / 2);
      w.set_kv_head(h % 2);
      w.set_token_count(kTokens);
      w.set_keys(other);
      w.set_values(other);
      ASSERT_OK(engine_->WriteChunk("b", w));
    }
    ++sequences;
  }
  EXPECT_GT(sequences, 0);
  EXPECT_TRUE(Holds(chunk, 5));
  EXPECT_EQ(engine_->pool().Pins().retired_pages, 2u);
  chunk.Clear();
  EXPECT_EQ(engine_->pool().Pins().retired_pages, 0u);
}

TEST_F(ReplyPinsTest, CompressWaitsForHeldChunksOrRefusesAndChangesNothing) {
  const std::string seq = Filled(3);
  auto cursor = Open(seq);
  ASSERT_NE(cursor, nullptr);
  ReadChunk chunk;
  ASSERT_OK_AND_ASSIGN(bool more, cursor->NextReferenced(&chunk));
  ASSERT_TRUE(more);
  v1::CompressRequest compress;
  compress.set_sequence_id(seq);
  compress.mutable_policy()->set_scorer("knorm");
  compress.mutable_policy()->set_keep_ratio(0.5);
  compress.mutable_policy()->set_sinks(0);
  compress.mutable_policy()->set_window(0);
  // Held past the wait: refused, nothing changed.
  EXPECT_THAT(engine_->Compress("a", compress),
              StatusIs(StatusCode::kUnavailable, "ReadKV replies still reference pages"));
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, engine_->GetSequence("a", seq, false));
  for (const auto& head : table.heads()) EXPECT_EQ(head.token_count(), kTokens);
  EXPECT_TRUE(Holds(chunk, 3));
  // Released while Compress waits: it goes ahead.
  std::thread release([&] {
    absl::SleepFor(absl::Milliseconds(200));
    chunk.Clear();
  });
  ASSERT_OK_AND_ASSIGN(v1::CompressReply reply, engine_->Compress("a", compress));
  release.join();
  EXPECT_LT(reply.summary().tokens_after(), reply.summary().tokens_before());
  // The stream sent chunks in the old token order: it stops rather than go on in the new one
  // (nothing pinned its pages between two chunks, so the Compress could go ahead).
  ReadChunk next;
  EXPECT_THAT(cursor->NextReferenced(&next),
              StatusIs(StatusCode::kAborted, "compressed during the read"));
  std::vector<ReadChunk> batch;
  EXPECT_THAT(cursor->NextReferencedBatch(&batch, 1 << 20),
              StatusIs(StatusCode::kAborted, "compressed during the read"));
  EXPECT_EQ(engine_->pool().Pins().pins, 0u);
}

// A read opened before a Compress but not yet started reads the compacted sequence whole: the
// stream's token order is fixed by its first chunk.
TEST_F(ReplyPinsTest, AReadNotYetStartedReadsTheCompactedSequence) {
  const std::string seq = Filled(6);
  auto cursor = Open(seq);
  ASSERT_NE(cursor, nullptr);
  v1::CompressRequest compress;
  compress.set_sequence_id(seq);
  compress.mutable_policy()->set_scorer("knorm");
  compress.mutable_policy()->set_keep_ratio(0.5);
  ASSERT_OK_AND_ASSIGN(v1::CompressReply reply, engine_->Compress("a", compress));
  ASSERT_LT(reply.summary().tokens_after(), reply.summary().tokens_before());
  uint64_t tokens = 0;
  for (;;) {
    ReadChunk chunk;
    ASSERT_OK_AND_ASSIGN(bool more, cursor->NextReferenced(&chunk));
    if (!more) break;
    tokens += chunk.header.token_count();
  }
  EXPECT_EQ(tokens, reply.summary().tokens_after());
}

// The CUDA backend's memory cannot be referenced from the host: the copy path answers the same
// bytes (the base class's NextReferenced, as raw page reads use).
TEST_F(ReplyPinsTest, RawPageReadsCopyAndPinNothing) {
  const std::string seq = Filled(4);
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, engine_->GetSequence("a", seq, false));
  v1::ReadRequest r;
  r.add_pages(table.heads(1).pages(0));
  ASSERT_OK_AND_ASSIGN(auto cursor, engine_->OpenRead("a", r));
  ReadChunk chunk;
  ASSERT_OK_AND_ASSIGN(bool more, cursor->NextReferenced(&chunk));
  ASSERT_TRUE(more);
  EXPECT_EQ(engine_->pool().Pins().pins, 0u);
  ASSERT_EQ(chunk.keys.size(), 1u);
  EXPECT_EQ(chunk.keys[0].size(), 16u * kTokenBytes);
  EXPECT_EQ(chunk.keys[0][0], KeyByte(4, 1, 0));
  EXPECT_EQ(chunk.header.page(), table.heads(1).pages(0));
}

}  // namespace
}  // namespace kvkeep
