#include "service/fleet/resp_reader.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_matchers.h"

namespace kvkeep::fleet {
namespace {

using ::kvkeep::testing::StatusIs;

// A stream of `bytes` handed out at most `chunk` bytes per read, then "closed".
class StringStream {
 public:
  StringStream(std::string bytes, size_t chunk) : bytes_(std::move(bytes)), chunk_(chunk) {}
  absl::StatusOr<size_t> Read(char* dst, size_t n) {
    ++reads_;
    largest_ask_ = std::max(largest_ask_, n);
    if (at_ == bytes_.size()) return absl::UnavailableError("closed by the server");
    const size_t take = std::min({n, chunk_, bytes_.size() - at_});
    std::memcpy(dst, bytes_.data() + at_, take);
    at_ += take;
    return take;
  }
  size_t consumed() const { return at_; }
  size_t largest_ask() const { return largest_ask_; }

 private:
  std::string bytes_;
  size_t chunk_;
  size_t at_ = 0;
  size_t reads_ = 0;
  size_t largest_ask_ = 0;
};

// A sink with one buffer of `capacity` bytes; refuses lengths other than `accept` when set.
class BufferSink : public BulkSink {
 public:
  explicit BufferSink(size_t capacity, std::optional<size_t> accept = std::nullopt)
      : buffer_(capacity, '\0'), accept_(accept) {}
  char* Buffer(size_t length) override {
    ++buffers;
    if (length > buffer_.size() || (accept_ && length != *accept_)) return nullptr;
    return buffer_.data();
  }
  void Filled(size_t length) override {
    ++filled;
    last = buffer_.substr(0, length);
  }
  int buffers = 0, filled = 0;
  std::string last;

 private:
  std::string buffer_;
  std::optional<size_t> accept_;
};

absl::StatusOr<RedisReply> ReadOne(const std::string& bytes, size_t chunk, BulkSink* sink = nullptr,
                                   RespLimits limits = {}) {
  StringStream stream(bytes, chunk);
  RespReader reader(limits);
  auto source = [&stream](char* dst, size_t n) { return stream.Read(dst, n); };
  return reader.Next(source, sink);
}

TEST(RespReader, BuildsEveryReplyTypeWhateverTheReadSizes) {
  const std::string stream =
      "+OK\r\n-ERR no such thing\r\n:42\r\n$-1\r\n$3\r\nabc\r\n$0\r\n\r\n*-1\r\n"
      "*1\r\n*3\r\n:0\r\n:16383\r\n*2\r\n$9\r\n127.0.0.1\r\n:7000\r\n";
  for (size_t chunk : {size_t{1}, size_t{2}, size_t{7}, size_t{4096}}) {
    StringStream s(stream, chunk);
    RespReader reader;
    auto source = [&s](char* dst, size_t n) { return s.Read(dst, n); };
    auto next = [&]() {
      absl::StatusOr<RedisReply> r = reader.Next(source, nullptr);
      EXPECT_TRUE(r.ok()) << r.status() << " (chunk " << chunk << ")";
      return r.ok() ? *std::move(r) : nullptr;
    };
    RedisReply r = next();
    ASSERT_NE(r, nullptr);
    EXPECT_EQ(r->type, REDIS_REPLY_STATUS);
    EXPECT_EQ(ReplyText(*r), "OK");
    r = next();
    EXPECT_EQ(r->type, REDIS_REPLY_ERROR);
    EXPECT_EQ(ReplyText(*r), "ERR no such thing");
    r = next();
    EXPECT_EQ(r->type, REDIS_REPLY_INTEGER);
    EXPECT_EQ(r->integer, 42);
    EXPECT_EQ(next()->type, REDIS_REPLY_NIL);
    r = next();
    EXPECT_EQ(r->type, REDIS_REPLY_STRING);
    EXPECT_EQ(ReplyText(*r), "abc");
    r = next();
    EXPECT_EQ(r->type, REDIS_REPLY_STRING);
    EXPECT_EQ(r->len, 0u);
    EXPECT_EQ(next()->type, REDIS_REPLY_NIL);
    r = next();  // CLUSTER SLOTS-shaped
    ASSERT_EQ(r->type, REDIS_REPLY_ARRAY);
    ASSERT_EQ(r->elements, 1u);
    const redisReply& range = *r->element[0];
    ASSERT_EQ(range.elements, 3u);
    EXPECT_EQ(range.element[1]->integer, 16383);
    EXPECT_EQ(ReplyText(*range.element[2]->element[0]), "127.0.0.1");
    EXPECT_EQ(range.element[2]->element[1]->integer, 7000);
    EXPECT_EQ(s.consumed(), stream.size());
    EXPECT_EQ(reader.buffered(), 0u);
  }
}

TEST(RespReader, BulkRepliesGoToTheSinkOthersAreBuiltAsUsual) {
  const std::string stream = "$5\r\nhello\r\n:1\r\n$-1\r\n-MOVED 3999 127.0.0.1:6381\r\n$6\r\nworld!\r\n";
  for (size_t chunk : {size_t{1}, size_t{3}, size_t{4096}}) {
    StringStream s(stream, chunk);
    RespReader reader;
    auto source = [&s](char* dst, size_t n) { return s.Read(dst, n); };
    BufferSink sink(16);
    ASSERT_OK_AND_ASSIGN(RedisReply hello, reader.Next(source, &sink));
    EXPECT_EQ(hello->type, REDIS_REPLY_STRING);
    EXPECT_EQ(hello->str, nullptr);  // the bytes are in the sink's buffer
    EXPECT_EQ(hello->len, 5u);
    EXPECT_EQ(sink.last, "hello");
    ASSERT_OK_AND_ASSIGN(RedisReply one, reader.Next(source, &sink));
    EXPECT_EQ(one->type, REDIS_REPLY_INTEGER);
    ASSERT_OK_AND_ASSIGN(RedisReply nil, reader.Next(source, &sink));
    EXPECT_EQ(nil->type, REDIS_REPLY_NIL);
    ASSERT_OK_AND_ASSIGN(RedisReply moved, reader.Next(source, &sink));
    EXPECT_EQ(moved->type, REDIS_REPLY_ERROR);
    EXPECT_EQ(ReplyText(*moved), "MOVED 3999 127.0.0.1:6381");
    EXPECT_EQ(sink.filled, 1);
    ASSERT_OK_AND_ASSIGN(RedisReply world, reader.Next(source, &sink));
    EXPECT_EQ(sink.last, "world!");
    EXPECT_EQ(sink.filled, 2);
    EXPECT_EQ(sink.buffers, 2);
  }
}

TEST(RespReader, ALargeValueIsReadStraightIntoTheSink) {
  std::mt19937 rng(3);
  std::string value(3 << 20, '\0');
  for (char& c : value) c = static_cast<char>(rng());
  StringStream s(absl::StrCat("$", value.size(), "\r\n", value, "\r\n:5\r\n"), 1 << 20);
  auto source = [&s](char* dst, size_t n) { return s.Read(dst, n); };
  RespReader reader;
  BufferSink sink(value.size());
  ASSERT_OK_AND_ASSIGN(RedisReply reply, reader.Next(source, &sink));
  EXPECT_EQ(reply->len, value.size());
  EXPECT_TRUE(sink.last == value);
  // Asked for the value's remaining bytes in one read: not through a small staging buffer.
  EXPECT_GT(s.largest_ask(), size_t{2} << 20);
  ASSERT_OK_AND_ASSIGN(RedisReply five, reader.Next(source, nullptr));
  EXPECT_EQ(five->integer, 5);
}

TEST(RespReader, ARefusedBulkIsDroppedAndTheStreamStaysInStep) {
  const std::string big(100000, 'x');
  StringStream s(absl::StrCat("$", big.size(), "\r\n", big, "\r\n$3\r\nabc\r\n"), 777);
  auto source = [&s](char* dst, size_t n) { return s.Read(dst, n); };
  RespReader reader;
  BufferSink sink(16, /*accept=*/3);
  ASSERT_OK_AND_ASSIGN(RedisReply dropped, reader.Next(source, &sink));
  EXPECT_EQ(dropped->type, REDIS_REPLY_STRING);
  EXPECT_EQ(dropped->len, big.size());
  EXPECT_EQ(sink.filled, 0);
  ASSERT_OK_AND_ASSIGN(RedisReply abc, reader.Next(source, &sink));
  EXPECT_EQ(sink.last, "abc");
}

TEST(RespReader, AStreamCutShortIsTheSourcesFailure) {
  for (const char* cut : {"$10\r\nabc", "*2\r\n:1\r\n", "+OK", "$1"}) {
    EXPECT_THAT(ReadOne(cut, 2), StatusIs(absl::StatusCode::kUnavailable, "closed")) << cut;
    BufferSink sink(16);
    EXPECT_THAT(ReadOne(cut, 2, &sink), StatusIs(absl::StatusCode::kUnavailable, "closed"))
        << cut;
    EXPECT_EQ(sink.filled, 0);
  }
}

TEST(RespReader, AnUnknownTypeByteIsAProtocolError) {
  EXPECT_THAT(ReadOne("?what\r\n", 64), StatusIs(absl::StatusCode::kDataLoss, "type byte 0x3f"));
  BufferSink sink(16);
  EXPECT_THAT(ReadOne("HTTP/1.1 400\r\n", 64, &sink),
              StatusIs(absl::StatusCode::kDataLoss, "unknown reply type"));
}

TEST(RespReader, BadLengthsAreProtocolErrors) {
  for (const char* bad : {"$abc\r\n", "$-5\r\n", "*-2\r\n", "$\r\n", "*1x\r\n"}) {
    EXPECT_THAT(ReadOne(bad, 64), StatusIs(absl::StatusCode::kDataLoss, "bad length")) << bad;
    BufferSink sink(16);
    EXPECT_THAT(ReadOne(bad, 64, &sink), StatusIs(absl::StatusCode::kDataLoss, "bad length"))
        << bad;
  }
}

TEST(RespReader, ABulkOfTheWrongLengthIsAProtocolError) {
  // Declared 3 bytes, sent 4: the CRLF is not where the length says.
  EXPECT_THAT(ReadOne("$3\r\nabcd\r\n", 64),
              StatusIs(absl::StatusCode::kDataLoss, "not followed by CRLF"));
  BufferSink sink(16);
  EXPECT_THAT(ReadOne("$3\r\nabcd\r\n", 1, &sink),
              StatusIs(absl::StatusCode::kDataLoss, "not followed by CRLF"));
  EXPECT_EQ(sink.filled, 0);  // never handed over as a whole value
}

TEST(RespReader, OversizedRepliesAreRefusedBeforeTheyAreRead) {
  RespLimits limits;
  limits.max_reply_bytes = 1024;
  limits.max_bulk_bytes = 4096;
  // A generic bulk over max_reply_bytes: refused from its header, nothing more is read.
  EXPECT_THAT(ReadOne("$2000\r\n", 64, nullptr, limits),
              StatusIs(absl::StatusCode::kDataLoss, "bulk string of 2000 bytes"));
  // A sink's bulk over max_bulk_bytes.
  BufferSink sink(1 << 20);
  EXPECT_THAT(ReadOne("$5000\r\n", 64, &sink, limits),
              StatusIs(absl::StatusCode::kDataLoss, "bulk string of 5000 bytes"));
  EXPECT_EQ(sink.buffers, 0);
  // Absurd lengths (a hostile or broken server) too.
  EXPECT_THAT(ReadOne("$99999999999999999999\r\n", 64, &sink),
              StatusIs(absl::StatusCode::kDataLoss));
  // A generic reply of many small pieces over max_reply_bytes.
  std::string many = "*300\r\n";
  for (int i = 0; i < 300; ++i) many += ":12345\r\n";
  EXPECT_THAT(ReadOne(many, 100, nullptr, limits),
              StatusIs(absl::StatusCode::kDataLoss, "larger than 1024"));
}

TEST(RespReader, LinesWithoutCrlfAndDeepNestingAreProtocolErrors) {
  EXPECT_THAT(ReadOne("$" + std::string(40, '1'), 64),
              StatusIs(absl::StatusCode::kDataLoss, "without CRLF"));
  EXPECT_THAT(ReadOne("+" + std::string(kMaxRespLine + 10, 'a'), 4096),
              StatusIs(absl::StatusCode::kDataLoss, "without CRLF"));
  std::string deep;
  for (int i = 0; i <= kMaxRespDepth; ++i) deep += "*1\r\n";
  deep += ":1\r\n";
  EXPECT_THAT(ReadOne(deep, 64), StatusIs(absl::StatusCode::kDataLoss, "nested deeper"));
  std::string ok_depth;
  for (int i = 0; i < kMaxRespDepth; ++i) ok_depth += "*1\r\n";
  ok_depth += ":1\r\n";
  EXPECT_OK(ReadOne(ok_depth, 64));
}

}  // namespace
}  // namespace kvkeep::fleet
