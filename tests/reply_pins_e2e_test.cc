// End-to-end: ReadKV replies whose slices reference page memory (service/engine/reply_pins.h),
// against the real kvkeepd on a real Unix socket. A reader that stops consuming its stream keeps
// the daemon's chunks in flight (HTTP/2 flow control), with their pages pinned; meanwhile the
// sequence is dropped (and its pages offered to a new sequence written with other bytes) or
// compressed in place. Every byte the reader receives must be the bytes of the token its
// position says, and every page must come back once the reads are done.
#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "service/rpc/kv_wire.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {
namespace {

using absl::StatusCode;

// fp32, head_dim 128: 512-byte tokens, 16-token pages (16 KiB of keys and values per page).
constexpr uint32_t kLayers = 2, kKvHeads = 2, kHeads = kLayers * kKvHeads;
constexpr uint32_t kDim = 128;
constexpr uint64_t kTokenBytes = kDim * 4;
// 8,192 tokens: 4 MiB of keys and 4 MiB of values per head, 32 MiB per sequence, far more than
// the HTTP/2 windows let the daemon send ahead of a reader that stopped.
constexpr uint32_t kTokens = 8192;
constexpr uint32_t kChunkBytes = 64 << 10;

v1::ModelLayout BigLayout() {
  v1::ModelLayout layout;
  layout.set_name("pins-model");
  layout.set_layers(kLayers);
  layout.set_q_heads(4);
  layout.set_kv_heads(kKvHeads);
  layout.set_head_dim(kDim);
  layout.set_dtype(v1::DTYPE_FP32);
  layout.set_tokens_per_page(16);
  layout.mutable_rope()->set_theta(10000);
  return layout;
}

// Finite floats (the scorers refuse NaN and Inf), distinct per seed, head and token.
std::string FloatBytes(uint64_t seed, uint32_t head, bool values) {
  std::mt19937 rng(static_cast<uint32_t>(seed * 7919 + head * 31 + (values ? 17 : 0)));
  std::uniform_real_distribution<float> uniform(-2.0f, 2.0f);
  std::string out(uint64_t{kTokens} * kTokenBytes, '\0');
  for (size_t i = 0; i < out.size(); i += 4) {
    const float f = uniform(rng);
    std::memcpy(out.data() + i, &f, 4);
  }
  return out;
}

struct Source {
  std::vector<std::string> keys, values;  // [head]
};

class ReplyPinsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(daemon_.Start(DaemonFlags()));
    ASSERT_OK_AND_ASSIGN(std::string token, daemon_.CreateTenant("alpha"));
    ASSERT_OK_AND_ASSIGN(client_, Client::Attach(daemon_.channel(), token, "w"));
    ASSERT_OK(client_->RegisterModel(BigLayout()));
  }
  virtual std::vector<std::string> DaemonFlags() const { return {}; }

  // A committed sequence of kTokens tokens in every head, written over WriteKV (by `client`,
  // whose tenant registered BigLayout; client_ when null).
  std::string Fill(uint64_t seed, Source* source, Client* client = nullptr) {
    if (client == nullptr) client = client_.get();
    auto seq = client->CreateSequence("pins-model");
    EXPECT_OK(seq);
    if (!seq.ok()) return "";
    EXPECT_OK(client->Allocate(*seq, kTokens));
    source->keys.resize(kHeads);
    source->values.resize(kHeads);
    for (uint32_t h = 0; h < kHeads; ++h) {
      source->keys[h] = FloatBytes(seed, h, false);
      source->values[h] = FloatBytes(seed, h, true);
      EXPECT_OK(client->WriteHead(*seq, h / kKvHeads, h % kKvHeads, 0, kTokens,
                                  source->keys[h].data(), source->values[h].data()));
    }
    EXPECT_OK(client->Commit(*seq, kTokens));
    return *seq;
  }

  uint64_t PagesInUse() {
    auto status = daemon_.Admin()->GetStatus();
    EXPECT_OK(status);
    return status.ok() ? status->pages_in_use() : UINT64_MAX;
  }

  // Waits (up to 10 s) until the daemon holds `pages` pages.
  bool WaitForPagesInUse(uint64_t pages) {
    for (int i = 0; i < 200; ++i) {
      if (PagesInUse() == pages) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }

  DaemonProcess daemon_;
  std::unique_ptr<Client> client_;
};

// A reader checking every chunk against `source` token by token (by the positions the chunk
// carries: a fresh sequence's positions are its token indices). It stops after its first chunk
// until `go` (when given), so the daemon's next chunks wait in flight.
struct CheckingReader {
  const Source* source = nullptr;
  absl::Notification first_chunk;
  absl::Notification* go = nullptr;
  uint64_t chunks = 0;
  uint64_t tokens = 0;
  uint64_t compacted_chunks = 0;  // chunks whose positions are not their token indices
  std::string mismatch;  // the first one

  absl::Status operator()(const v1::KvChunk& header, absl::Span<const absl::string_view> keys,
                          absl::Span<const absl::string_view> values) {
    if (chunks++ == 0) {
      first_chunk.Notify();
      if (go != nullptr) go->WaitForNotification();
    }
    std::string k, v;
    for (absl::string_view p : keys) k.append(p.data(), p.size());
    for (absl::string_view p : values) v.append(p.data(), p.size());
    const uint32_t h = header.layer() * kKvHeads + header.kv_head();
    if (h >= kHeads || k.size() != header.token_count() * kTokenBytes || v.size() != k.size() ||
        header.positions_size() != static_cast<int>(header.token_count())) {
      return absl::DataLossError(absl::StrCat("malformed chunk ", header.ShortDebugString()));
    }
    for (uint32_t i = 0; i < header.token_count(); ++i) {
      if (header.positions(i) != static_cast<int32_t>(header.token_offset() + i)) {
        ++compacted_chunks;
        break;
      }
    }
    for (uint32_t i = 0; i < header.token_count() && mismatch.empty(); ++i) {
      const uint64_t p = static_cast<uint64_t>(header.positions(i));
      if (p >= kTokens ||
          std::memcmp(k.data() + i * kTokenBytes, source->keys[h].data() + p * kTokenBytes,
                      kTokenBytes) != 0 ||
          std::memcmp(v.data() + i * kTokenBytes, source->values[h].data() + p * kTokenBytes,
                      kTokenBytes) != 0) {
        mismatch = absl::StrCat("chunk ", chunks - 1, " (head ", h, ", slot ",
                                header.token_offset() + i, ", position ", p,
                                ") holds other bytes than the token's");
      }
    }
    tokens += header.token_count();
    return absl::OkStatus();
  }
};

v1::ReadRequest ReadAll(const std::string& seq) {
  v1::ReadRequest request;
  request.set_sequence_id(seq);
  request.set_max_chunk_bytes(kChunkBytes);
  return request;
}

// The compression the tests ask for: keep half of every head's tokens by key norm.
v1::Policy HalfByKnorm() {
  v1::Policy policy;
  policy.set_scorer("knorm");
  policy.set_keep_ratio(0.5);
  return policy;
}

// A read of a whole sequence on its own thread, checked against `source`, whose reader stops after
// its first chunk: Start returns once that chunk arrived and the daemon had 200 ms to fill the
// HTTP/2 windows; Finish lets the reader go on and waits for the read's status.
struct StalledRead {
  absl::Notification go;
  CheckingReader reader;
  absl::Status status;
  std::thread thread;

  void Start(Client* client, const std::string& seq, const Source* source) {
    reader.source = source;
    reader.go = &go;
    thread = std::thread([this, client, seq] {
      status = client->ReadKvInto(ReadAll(seq), std::ref(reader));
    });
    reader.first_chunk.WaitForNotification();
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  void Finish() {
    go.Notify();
    thread.join();
  }
};

TEST_F(ReplyPinsTest, DropDuringAStalledReadSendsOnlyTheRightBytesAndReturnsEveryPage) {
  Source first, second;
  const std::string seq = Fill(1, &first);
  const uint64_t pages_of_one = PagesInUse();
  ASSERT_GT(pages_of_one, 0u);
  StalledRead stalled;
  stalled.Start(client_.get(), seq, &first);  // the daemon fills the windows meanwhile
  ASSERT_OK(client_->Drop(seq));
  // The pages freed by the drop, were they reused, would now hold these other bytes.
  const std::string other = Fill(2, &second);
  stalled.Finish();
  EXPECT_TRUE(stalled.reader.mismatch.empty()) << stalled.reader.mismatch;
  // The drop came mid-stream: the chunks already in flight arrived, then the read ended cleanly.
  EXPECT_THAT(stalled.status, StatusIs(StatusCode::kAborted, "dropped"));
  EXPECT_GT(stalled.reader.chunks, 1u);
  EXPECT_LT(stalled.reader.tokens, uint64_t{kTokens} * kHeads);
  // The retired pages came back once the replies were gone.
  EXPECT_TRUE(WaitForPagesInUse(pages_of_one)) << PagesInUse();
  ASSERT_OK(client_->Drop(other));
  EXPECT_TRUE(WaitForPagesInUse(0)) << PagesInUse();
}

TEST_F(ReplyPinsTest, CompressWaitsForRepliesInFlightThenCompactsAndTheReadStopsCleanly) {
  client_->set_batch_message_bytes(0);  // one chunk per message: the stall always holds a pin
  Source source;
  const std::string seq = Fill(3, &source);
  StalledRead stalled;
  stalled.Start(client_.get(), seq, &source);  // the daemon fills the windows meanwhile
  std::atomic<bool> compressed{false};
  absl::StatusOr<v1::CompressReply> reply;
  std::thread c([&] {
    reply = client_->Compress(seq, HalfByKnorm());
    compressed = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // Still waiting: the stalled reader's chunks reference pages that compaction would move.
  EXPECT_FALSE(compressed.load());
  stalled.Finish();
  c.join();
  ASSERT_OK(reply);
  EXPECT_LT(reply->summary().tokens_after(), reply->summary().tokens_before());
  EXPECT_TRUE(stalled.reader.mismatch.empty()) << stalled.reader.mismatch;
  // The chunks in flight arrive intact, then the stream stops: it never goes on in the new order.
  EXPECT_THAT(stalled.status, StatusIs(StatusCode::kAborted, "compressed during the read"));
  EXPECT_EQ(stalled.reader.compacted_chunks, 0u);
  // Read again after: exactly the kept tokens, each with its own bytes.
  CheckingReader after;
  after.source = &source;
  ASSERT_OK(client_->ReadKvInto(ReadAll(seq), std::ref(after)));
  EXPECT_TRUE(after.mismatch.empty()) << after.mismatch;
  EXPECT_EQ(after.tokens, reply->summary().tokens_after());
}

TEST_F(ReplyPinsTest, CompressRefusesCleanlyWhileAReaderStaysStalled) {
  // One chunk per message (ReadKV): flow control always holds one back, pinned, so Compress must
  // be refused. (With 1 MiB ReadKVBatch messages the stall can also settle between two messages,
  // nothing pinned: the next test.)
  client_->set_batch_message_bytes(0);
  Source source;
  const std::string seq = Fill(4, &source);
  StalledRead stalled;
  stalled.Start(client_.get(), seq, &source);  // the daemon fills the windows meanwhile
  EXPECT_THAT(client_->Compress(seq, HalfByKnorm()),
              StatusIs(StatusCode::kUnavailable, "ReadKV replies still reference pages"));
  stalled.Finish();
  EXPECT_OK(stalled.status);
  EXPECT_TRUE(stalled.reader.mismatch.empty()) << stalled.reader.mismatch;
  // Nothing was compressed.
  EXPECT_EQ(stalled.reader.tokens, uint64_t{kTokens} * kHeads);
  ASSERT_OK_AND_ASSIGN(v1::PageTable table, client_->GetSequence(seq, false));
  for (const auto& head : table.heads()) EXPECT_EQ(head.token_count(), kTokens);
}

// ReadKVBatch's 1 MiB messages: the stall settles with a message pinned (Compress refused, the
// read goes on whole) or between two messages with nothing pinned (Compress goes ahead and the
// stream ends ABORTED). Never a chunk of the moved tokens in a stream that began before them.
TEST_F(ReplyPinsTest, CompressDuringABatchedReadIsRefusedOrEndsTheReadCleanly) {
  Source source;
  const std::string seq = Fill(7, &source);
  StalledRead stalled;
  stalled.Start(client_.get(), seq, &source);  // the daemon fills the windows meanwhile
  const absl::Status compressed = client_->Compress(seq, HalfByKnorm()).status();
  stalled.Finish();
  EXPECT_TRUE(stalled.reader.mismatch.empty()) << stalled.reader.mismatch;
  EXPECT_EQ(stalled.reader.compacted_chunks, 0u);
  if (compressed.ok()) {
    EXPECT_THAT(stalled.status, StatusIs(StatusCode::kAborted, "compressed during the read"));
    EXPECT_LT(stalled.reader.tokens, uint64_t{kTokens} * kHeads);
  } else {
    EXPECT_THAT(compressed,
                StatusIs(StatusCode::kUnavailable, "ReadKV replies still reference pages"));
    EXPECT_OK(stalled.status);
    EXPECT_EQ(stalled.reader.tokens, uint64_t{kTokens} * kHeads);
  }
  // A read started after it sees one consistent sequence, compacted or not.
  CheckingReader after;
  after.source = &source;
  ASSERT_OK(client_->ReadKvInto(ReadAll(seq), std::ref(after)));
  EXPECT_TRUE(after.mismatch.empty()) << after.mismatch;
  EXPECT_EQ(after.compacted_chunks > 0, compressed.ok());
}

TEST_F(ReplyPinsTest, ManyConcurrentReadersWhileOtherSequencesComeAndGo) {
  Source source;
  const std::string seq = Fill(5, &source);
  const uint64_t pages_of_one = PagesInUse();
  std::atomic<bool> stop{false};
  // Churn: sequences written, read and dropped, so freed pages are reused all along.
  std::thread churn([&] {
    for (uint64_t seed = 100; !stop; ++seed) {
      auto s = client_->CreateSequence("pins-model");
      if (!s.ok()) break;
      std::string k = FloatBytes(seed, 0, false).substr(0, 512 * kTokenBytes);
      if (client_->Allocate(*s, 512).ok()) {
        for (uint32_t h = 0; h < kHeads; ++h) {
          (void)client_->WriteHead(*s, h / kKvHeads, h % kKvHeads, 0, 512, k.data(), k.data());
        }
      }
      (void)client_->Drop(*s);
    }
  });
  constexpr int kReaders = 6;
  std::vector<std::thread> readers;
  std::vector<CheckingReader> checks(kReaders);
  std::vector<absl::Status> results(kReaders);
  for (int r = 0; r < kReaders; ++r) {
    checks[r].source = &source;
    readers.emplace_back([&, r] {
      v1::ReadRequest request = ReadAll(seq);
      request.set_token_end(kTokens / 4);                   // 8 MiB per reader
      request.set_max_chunk_bytes(kChunkBytes << (r % 3));  // 64, 128, 256 KiB chunks
      results[r] = client_->ReadKvInto(request, std::ref(checks[r]));
    });
  }
  for (auto& t : readers) t.join();
  stop = true;
  churn.join();
  for (int r = 0; r < kReaders; ++r) {
    EXPECT_OK(results[r]) << r;
    EXPECT_TRUE(checks[r].mismatch.empty()) << checks[r].mismatch;
    EXPECT_EQ(checks[r].tokens, uint64_t{kTokens / 4} * kHeads) << r;
  }
  EXPECT_TRUE(WaitForPagesInUse(pages_of_one)) << PagesInUse();
}

// The client's direct paths: WriteKvViews from the caller's buffers, ReadHeadInto straight into
// the caller's, and the refusal when they are too small.
TEST_F(ReplyPinsTest, ClientReadsStraightIntoTheCallersBuffers) {
  Source source;
  const std::string seq = Fill(6, &source);
  std::string keys(source.keys[3].size(), '\0'), values(keys.size(), '\0');
  std::vector<int32_t> positions;
  ASSERT_OK_AND_ASSIGN(uint32_t tokens, client_->ReadHeadInto(seq, 1, 1, keys.data(),
                                                              values.data(), keys.size(),
                                                              &positions));
  EXPECT_EQ(tokens, kTokens);
  EXPECT_TRUE(keys == source.keys[3]);
  EXPECT_TRUE(values == source.values[3]);
  ASSERT_EQ(positions.size(), kTokens);
  EXPECT_EQ(positions.back(), static_cast<int32_t>(kTokens - 1));
  EXPECT_THAT(client_->ReadHeadInto(seq, 1, 1, keys.data(), values.data(), keys.size() - 1),
              StatusIs(StatusCode::kOutOfRange, "do not fit"));
  // The vector-of-chunks API reads the same bytes.
  v1::ReadRequest one;
  one.set_sequence_id(seq);
  one.set_layer_begin(0);
  one.set_layer_end(1);
  one.set_kv_head_begin(1);
  one.set_kv_head_end(2);
  ASSERT_OK_AND_ASSIGN(std::vector<v1::KvChunk> chunks, client_->ReadKV(one));
  std::string joined;
  for (const auto& c : chunks) joined += c.keys();
  EXPECT_TRUE(joined == source.keys[1]);
}

// A tenant's open read streams are bounded (--max_read_streams_per_tenant), so stalled readers
// cannot pile up pinned pages: the stream over the limit is refused at once, naming the flag;
// another tenant reads meanwhile; a stream that ends gives its place back.
class ReadStreamLimitTest : public ReplyPinsTest {
 protected:
  std::vector<std::string> DaemonFlags() const override {
    return {"--max_read_streams_per_tenant=2"};
  }
};

TEST_F(ReadStreamLimitTest, StalledReadersAreBoundedPerTenant) {
  Source source;
  const std::string seq = Fill(8, &source);
  absl::Notification go;
  CheckingReader readers[2];
  absl::Status results[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r) {
    readers[r].source = &source;
    readers[r].go = &go;
    threads.emplace_back([&, r] { results[r] = client_->ReadKvInto(ReadAll(seq), std::ref(readers[r])); });
    readers[r].first_chunk.WaitForNotification();
  }
  CheckingReader third;
  third.source = &source;
  EXPECT_THAT(client_->ReadKvInto(ReadAll(seq), std::ref(third)),
              StatusIs(StatusCode::kResourceExhausted, "--max_read_streams_per_tenant"));
  client_->set_batch_message_bytes(0);  // the one-chunk-per-message ReadKV too
  EXPECT_THAT(client_->ReadKvInto(ReadAll(seq), std::ref(third)),
              StatusIs(StatusCode::kResourceExhausted, "already has 2 ReadKV/ReadKVBatch"));
  EXPECT_EQ(third.chunks, 0u);
  // Another tenant is not held back by alpha's streams.
  ASSERT_OK_AND_ASSIGN(std::string beta_token, daemon_.CreateTenant("beta"));
  ASSERT_OK_AND_ASSIGN(auto beta, Client::Attach(daemon_.channel(), beta_token, "wb"));
  ASSERT_OK(beta->RegisterModel(BigLayout()));
  Source beta_source;
  const std::string beta_seq = Fill(9, &beta_source, beta.get());
  CheckingReader beta_reader;
  beta_reader.source = &beta_source;
  ASSERT_OK(beta->ReadKvInto(ReadAll(beta_seq), std::ref(beta_reader)));
  EXPECT_TRUE(beta_reader.mismatch.empty()) << beta_reader.mismatch;
  go.Notify();
  for (auto& t : threads) t.join();
  for (int r = 0; r < 2; ++r) {
    EXPECT_OK(results[r]);
    EXPECT_TRUE(readers[r].mismatch.empty()) << readers[r].mismatch;
    EXPECT_EQ(readers[r].tokens, uint64_t{kTokens} * kHeads);
  }
  // The ended streams gave their places back (the count drops when gRPC is done with them).
  CheckingReader again;
  again.source = &source;
  absl::Status read;
  for (int i = 0; i < 50; ++i) {
    read = client_->ReadKvInto(ReadAll(seq), std::ref(again));
    if (read.code() != StatusCode::kResourceExhausted) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_OK(read);
  EXPECT_EQ(again.tokens, uint64_t{kTokens} * kHeads);
}

}  // namespace
}  // namespace kvkeep::testing
