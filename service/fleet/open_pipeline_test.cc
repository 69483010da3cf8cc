#include "service/fleet/open_pipeline.h"

#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "service/fleet/fleet_keys.h"

namespace kvkeep::fleet {
namespace {

v1::ModelLayout Layout() {
  v1::ModelLayout layout;
  layout.set_name("pipeline");
  layout.set_layers(4);
  layout.set_q_heads(4);
  layout.set_kv_heads(2);
  layout.set_head_dim(128);
  layout.set_dtype(v1::DTYPE_BF16);
  layout.set_tokens_per_page(16);
  return layout;
}

// Collects what the pipeline writes, per page.
class Collect final : public PayloadWriter {
 public:
  explicit Collect(size_t pages, size_t bytes) : got_(pages, std::string(bytes, '\0')) {}
  absl::Status Write(size_t page, uint64_t offset, absl::string_view bytes) override {
    absl::MutexLock lock(&mu_);
    std::memcpy(got_[page].data() + offset, bytes.data(), bytes.size());
    return absl::OkStatus();
  }
  std::string page(size_t i) {
    absl::MutexLock lock(&mu_);
    return got_[i];
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> got_;
};

class OpenPipelineTest : public ::testing::Test {
 protected:
  OpenPipelineTest() {
    absl::StatusOr<FleetScope> scope = FleetScope::Make("g", "a-group-secret-0123456789", Layout());
    EXPECT_TRUE(scope.ok()) << scope.status();
    scope_ = *scope;
    std::vector<uint32_t> tokens(kPages * 16);
    for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<uint32_t>(i * 7);
    names_ = scope_.KeyNames(tokens);
    std::mt19937 rng(1);
    for (size_t i = 0; i < kPages; ++i) {
      std::string payload(scope_.shape.payload_bytes(), '\0');
      for (char& c : payload) c = static_cast<char>(rng());
      absl::StatusOr<std::string> value = SealPageValue(
          scope_.shape, scope_.layout_hash, names_[i], payload, scope_.keys->value_key);
      EXPECT_TRUE(value.ok());
      payloads_.push_back(payload);
      values_.push_back(*value);
    }
  }
  // Delivers value `v` as page i's reply, the way the RESP reader does.
  static void Deliver(OpenPipeline& pipeline, size_t i, const std::string& v) {
    BulkSink* sink = pipeline.SinkFor(i);
    char* buffer = sink->Buffer(v.size());
    if (buffer == nullptr) return;  // refused: the reader drops the bytes
    std::memcpy(buffer, v.data(), v.size());
    sink->Filled(v.size());
  }

  static constexpr size_t kPages = 12;
  FleetScope scope_;
  std::vector<std::string> names_, payloads_, values_;
  ValueBufferCache buffers_{8};
};

TEST_F(OpenPipelineTest, OpensEveryValueIntoItsPageWhileSlotsAreReused) {
  Collect out(kPages, scope_.shape.payload_bytes());
  {
    OpenPipeline pipeline(scope_, names_, out, {.threads = 3, .slots = 4}, &buffers_);
    for (size_t first = 0; first < kPages; first += 2) {  // windows of 2 over 4 slots
      pipeline.WaitForSlots(first, 2);
      Deliver(pipeline, first, values_[first]);
      Deliver(pipeline, first + 1, values_[first + 1]);
    }
    pipeline.Finish();
    for (size_t i = 0; i < kPages; ++i) {
      EXPECT_EQ(pipeline.end(i), OpenPipeline::PageEnd::kOk) << i;
      EXPECT_TRUE(out.page(i) == payloads_[i]) << "page " << i;
    }
    EXPECT_FALSE(pipeline.AnyRefused());
  }
}

// Like Collect, but the pipeline decrypts straight into its pages (no Write calls).
class DirectCollect final : public PayloadWriter {
 public:
  explicit DirectCollect(size_t pages, size_t bytes) : got_(pages, std::string(bytes, '\0')) {}
  absl::Status Write(size_t, uint64_t, absl::string_view) override {
    ++writes_;
    return absl::InternalError("Write called although Destination had memory");
  }
  char* Destination(size_t page, uint64_t offset, size_t size) override {
    return offset + size <= got_[page].size() ? got_[page].data() + offset : nullptr;
  }
  const std::string& page(size_t i) const { return got_[i]; }
  int writes() const { return writes_.load(); }

 private:
  std::vector<std::string> got_;
  std::atomic<int> writes_{0};
};

TEST_F(OpenPipelineTest, OpensOnTheReceivingThreadStraightIntoDestinations) {
  DirectCollect out(kPages, scope_.shape.payload_bytes());
  OpenPipeline pipeline(scope_, names_, out, {.threads = 0, .slots = 2}, &buffers_);
  std::string flipped = values_[5];
  flipped[flipped.size() - 30] ^= 0x02;  // in the tag
  for (size_t first = 0; first < kPages; first += 2) {
    pipeline.WaitForSlots(first, 2);  // opened inline: never waits
    Deliver(pipeline, first, first == 4 ? flipped : values_[first]);
    Deliver(pipeline, first + 1, values_[first + 1]);
  }
  pipeline.Finish();
  EXPECT_EQ(out.writes(), 0);
  for (size_t i = 0; i < kPages; ++i) {
    if (i == 4) {
      EXPECT_EQ(pipeline.end(i), OpenPipeline::PageEnd::kRefused);
      EXPECT_EQ(pipeline.verdict(i), PageValueVerdict::kChecksum);
      continue;
    }
    EXPECT_EQ(pipeline.end(i), OpenPipeline::PageEnd::kOk) << i;
    EXPECT_TRUE(out.page(i) == payloads_[i]) << "page " << i;
  }
  EXPECT_TRUE(pipeline.AnyRefused());
}

TEST_F(OpenPipelineTest, RefusedWrongSizedAndMissingValuesAreNeverOk) {
  Collect out(kPages, scope_.shape.payload_bytes());
  OpenPipeline pipeline(scope_, names_, out, {.threads = 2, .slots = 8}, &buffers_);
  std::string flipped = values_[1];
  flipped[1000] ^= 0x01;
  Deliver(pipeline, 0, values_[0]);
  Deliver(pipeline, 1, flipped);
  Deliver(pipeline, 2, values_[2].substr(0, 100));  // wrong size: refused by the sink
  Deliver(pipeline, 3, values_[4]);                 // another page's value: another key name
  // page 4: nothing arrived
  pipeline.Finish();
  EXPECT_EQ(pipeline.end(0), OpenPipeline::PageEnd::kOk);
  EXPECT_EQ(pipeline.end(1), OpenPipeline::PageEnd::kRefused);
  EXPECT_EQ(pipeline.verdict(1), PageValueVerdict::kChecksum);
  EXPECT_EQ(pipeline.end(2), OpenPipeline::PageEnd::kWrongSize);
  EXPECT_EQ(pipeline.end(3), OpenPipeline::PageEnd::kRefused);
  EXPECT_EQ(pipeline.verdict(3), PageValueVerdict::kAuthentication);
  EXPECT_EQ(pipeline.end(4), OpenPipeline::PageEnd::kPending);
  EXPECT_TRUE(pipeline.AnyRefused());
}

TEST(ValueBufferCache, KeepsBuffersOfTheNewestSizeUpToItsBound) {
  ValueBufferCache cache(2);
  std::unique_ptr<char[]> a = cache.Take(100), b = cache.Take(100), c = cache.Take(100);
  char* const a_at = a.get();
  char* const b_at = b.get();
  cache.Give(std::move(a), 100);
  cache.Give(std::move(b), 100);
  cache.Give(std::move(c), 100);  // over the bound of 2: freed, not kept
  // The kept ones come back, newest first.
  std::unique_ptr<char[]> x = cache.Take(100);
  std::unique_ptr<char[]> y = cache.Take(100);
  EXPECT_EQ(x.get(), b_at);
  EXPECT_EQ(y.get(), a_at);
  // A buffer of another size replaces the kept ones.
  cache.Give(std::move(x), 100);
  std::unique_ptr<char[]> big(new char[200]);
  char* const big_at = big.get();
  cache.Give(std::move(big), 200);
  EXPECT_EQ(cache.Take(200).get(), big_at);
}

}  // namespace
}  // namespace kvkeep::fleet
