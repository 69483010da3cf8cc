#include "service/fleet/resp_reader.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvkeep::fleet {
namespace {

constexpr size_t kInitialBuffer = 64 * 1024;
constexpr size_t kDiscardChunk = 64 * 1024;
// "$" or "*", up to 20 digits and a sign, CRLF.
constexpr size_t kMaxLengthLine = 24;

// The offset of the CRLF ending the line at p[0] (searched in [1, n)), or npos.
size_t FindLineEnd(const char* p, size_t n) {
  for (size_t at = 1; at + 1 < n;) {
    const void* cr = std::memchr(p + at, '\r', n - 1 - at);
    if (cr == nullptr) return absl::string_view::npos;
    at = static_cast<const char*>(cr) - p;
    if (p[at + 1] == '\n') return at;
    ++at;
  }
  return absl::string_view::npos;
}

absl::Status ProtocolError(absl::string_view what) {
  return absl::DataLossError(absl::StrCat("RESP protocol error: ", what));
}

// The length or count in a "$N" / "*N" line (p[1, eol)); -1 is nil.
absl::StatusOr<int64_t> ParseLength(const char* p, size_t eol) {
  int64_t value = 0;
  const absl::string_view text(p + 1, eol - 1);
  if (text.empty() || !absl::SimpleAtoi(text, &value) || value < -1) {
    return ProtocolError(absl::StrCat("bad length \"", absl::CHexEscape(text.substr(0, 32)),
                                      "\" after '", absl::string_view(p, 1), "'"));
  }
  return value;
}

}  // namespace

RespReader::RespReader(RespLimits limits)
    : limits_(limits), buffer_(kInitialBuffer), builder_(redisReaderCreate()) {}

RespReader::~RespReader() {
  if (builder_ != nullptr) redisReaderFree(builder_);
}

absl::StatusOr<std::optional<size_t>> RespReader::Frame(const char* p, size_t n,
                                                        int depth) const {
  if (n == 0) return std::nullopt;
  const char type = p[0];
  const bool length_line = type == '$' || type == '*';
  const size_t eol = FindLineEnd(p, std::min(n, (length_line ? kMaxLengthLine : kMaxRespLine) + 2));
  if (eol == absl::string_view::npos) {
    if (n >= (length_line ? kMaxLengthLine : kMaxRespLine) + 2) {
      return ProtocolError(absl::StrCat("a '", absl::CHexEscape(absl::string_view(p, 1)),
                                        "' line without CRLF"));
    }
    return std::nullopt;
  }
  const size_t header = eol + 2;
  switch (type) {
    case '+':
    case '-':
    case ':':
      return header;
    case '$': {
      absl::StatusOr<int64_t> length = ParseLength(p, eol);
      if (!length.ok()) return length.status();
      if (*length == -1) return header;
      if (static_cast<uint64_t>(*length) > limits_.max_reply_bytes) {
        return ProtocolError(absl::StrCat("a bulk string of ", *length, " bytes; at most ",
                                          limits_.max_reply_bytes, " here"));
      }
      const size_t total = header + static_cast<size_t>(*length) + 2;
      if (total > n) return std::nullopt;
      if (p[total - 2] != '\r' || p[total - 1] != '\n') {
        return ProtocolError(
            absl::StrCat("a bulk string of ", *length, " bytes is not followed by CRLF"));
      }
      return total;
    }
    case '*': {
      absl::StatusOr<int64_t> count = ParseLength(p, eol);
      if (!count.ok()) return count.status();
      if (*count == -1) return header;
      if (depth >= kMaxRespDepth) {
        return ProtocolError(absl::StrCat("arrays nested deeper than ", kMaxRespDepth));
      }
      // Every element takes at least 3 bytes ("+\r\n").
      if (static_cast<uint64_t>(*count) > limits_.max_reply_bytes / 3) {
        return ProtocolError(absl::StrCat("an array of ", *count, " elements"));
      }
      size_t at = header;
      for (int64_t k = 0; k < *count; ++k) {
        absl::StatusOr<std::optional<size_t>> element = Frame(p + at, n - at, depth + 1);
        if (!element.ok() || !element->has_value()) return element;
        at += **element;
      }
      return at;
    }
    default:
      return ProtocolError(absl::StrCat("unknown reply type byte 0x",
                                        absl::Hex(static_cast<unsigned char>(type))));
  }
}

void RespReader::Compact() {
  if (begin_ == end_) {
    begin_ = end_ = 0;
  } else if (begin_ > 0) {
    std::memmove(buffer_.data(), buffer_.data() + begin_, end_ - begin_);
    end_ -= begin_;
    begin_ = 0;
  }
}

absl::Status RespReader::Fill(Source source) {
  if (end_ == buffer_.size()) Compact();
  if (end_ == buffer_.size()) {
    const size_t cap = limits_.max_reply_bytes + kMaxRespLine + 64;
    if (buffer_.size() >= cap) {
      return ProtocolError(
          absl::StrCat("a reply larger than ", limits_.max_reply_bytes, " bytes"));
    }
    buffer_.resize(std::min(cap, buffer_.size() * 2));
  }
  absl::StatusOr<size_t> got = source(buffer_.data() + end_, buffer_.size() - end_);
  if (!got.ok()) return got.status();
  end_ += *got;
  return absl::OkStatus();
}

absl::StatusOr<std::optional<int64_t>> RespReader::PeekBulkLength(Source source,
                                                                  size_t* header_bytes) {
  while (true) {
    if (end_ > begin_ && buffer_[begin_] != '$') return std::nullopt;
    const size_t held = end_ - begin_;
    const size_t eol = held == 0 ? absl::string_view::npos
                                 : FindLineEnd(buffer_.data() + begin_,
                                               std::min(held, kMaxLengthLine + 2));
    if (eol != absl::string_view::npos) {
      absl::StatusOr<int64_t> length = ParseLength(buffer_.data() + begin_, eol);
      if (!length.ok()) return length.status();
      if (*length == -1) return std::nullopt;  // nil: the generic path
      if (static_cast<uint64_t>(*length) > limits_.max_bulk_bytes) {
        return ProtocolError(absl::StrCat("a bulk string of ", *length, " bytes; at most ",
                                          limits_.max_bulk_bytes));
      }
      *header_bytes = eol + 2;
      return *length;
    }
    if (held >= kMaxLengthLine + 2) return ProtocolError("a '$' line without CRLF");
    if (absl::Status filled = Fill(source); !filled.ok()) return filled;
  }
}

absl::StatusOr<RedisReply> RespReader::ReadBulkIntoSink(Source source, BulkSink& sink,
                                                        size_t header_bytes, int64_t length) {
  const size_t n = static_cast<size_t>(length);
  begin_ += header_bytes;
  char* const dst = sink.Buffer(n);
  std::vector<char> discard;
  size_t done = std::min(n, end_ - begin_);
  if (dst != nullptr && done > 0) std::memcpy(dst, buffer_.data() + begin_, done);
  begin_ += done;
  if (dst == nullptr && done < n) discard.resize(std::min(kDiscardChunk, n - done));
  while (done < n) {
    // Straight from the socket into the caller's buffer: no copy of ours.
    absl::StatusOr<size_t> got =
        dst != nullptr ? source(dst + done, n - done)
                       : source(discard.data(), std::min(discard.size(), n - done));
    if (!got.ok()) return got.status();
    done += *got;
  }
  while (end_ - begin_ < 2) {
    Compact();
    if (absl::Status filled = Fill(source); !filled.ok()) return filled;
  }
  if (buffer_[begin_] != '\r' || buffer_[begin_ + 1] != '\n') {
    return ProtocolError(absl::StrCat("a bulk string of ", n, " bytes is not followed by CRLF"));
  }
  begin_ += 2;
  if (begin_ == end_) begin_ = end_ = 0;
  if (dst != nullptr) sink.Filled(n);
  auto* reply = static_cast<redisReply*>(std::calloc(1, sizeof(redisReply)));
  if (reply == nullptr) return absl::ResourceExhaustedError("out of memory for a reply");
  reply->type = REDIS_REPLY_STRING;
  reply->len = n;
  reply->str = nullptr;
  return RedisReply(reply);
}

absl::StatusOr<RedisReply> RespReader::BuildWithHiredis(size_t bytes) {
  if (builder_ == nullptr) return absl::ResourceExhaustedError("no hiredis reader");
  if (redisReaderFeed(builder_, buffer_.data() + begin_, bytes) != REDIS_OK) {
    return ProtocolError(builder_->errstr);
  }
  void* raw = nullptr;
  if (redisReaderGetReply(builder_, &raw) != REDIS_OK || raw == nullptr) {
    return ProtocolError(absl::StrCat("hiredis did not build the framed reply: ",
                                      builder_->errstr));
  }
  RedisReply reply(static_cast<redisReply*>(raw));
  if (builder_->len != builder_->pos) {
    return ProtocolError("hiredis and the framing disagree on a reply's length");
  }
  begin_ += bytes;
  if (begin_ == end_) begin_ = end_ = 0;
  return reply;
}

absl::StatusOr<RedisReply> RespReader::Next(Source source, BulkSink* sink) {
  if (sink != nullptr) {
    size_t header_bytes = 0;
    absl::StatusOr<std::optional<int64_t>> length = PeekBulkLength(source, &header_bytes);
    if (!length.ok()) return length.status();
    if (length->has_value()) return ReadBulkIntoSink(source, *sink, header_bytes, **length);
  }
  while (true) {
    absl::StatusOr<std::optional<size_t>> framed =
        Frame(buffer_.data() + begin_, end_ - begin_, 0);
    if (!framed.ok()) return framed.status();
    const size_t at_least = framed->has_value() ? **framed : end_ - begin_ + 1;
    if (at_least > limits_.max_reply_bytes) {
      return ProtocolError(
          absl::StrCat("a reply larger than ", limits_.max_reply_bytes, " bytes"));
    }
    if (framed->has_value()) return BuildWithHiredis(**framed);
    if (absl::Status filled = Fill(source); !filled.ok()) return filled;
  }
}

}  // namespace kvkeep::fleet
