// The byte layout the fuzz targets (and fuzz_make_seeds) share: a reader of little-endian integers
// and length-prefixed records, and the check that ends the process when an invariant breaks.
//
//   FuzzInput in(data, size);
//   while (!in.empty()) {
//     std::string chunk = in.Record();   // [u16 length][length bytes], truncated at the end
//     ...
//   }
//
// A record's length field is little-endian uint16; a length past the end takes what is left, so
// every input parses.
#ifndef KVKEEP_TESTS_FUZZ_FUZZ_INPUT_H_
#define KVKEEP_TESTS_FUZZ_FUZZ_INPUT_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "absl/status/status.h"
#include "google/protobuf/stubs/logging.h"

namespace kvkeep::fuzz {

class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool empty() const { return pos_ >= size_; }
  uint8_t U8() { return pos_ < size_ ? data_[pos_++] : 0; }
  uint16_t U16() {
    uint16_t lo = U8();
    return static_cast<uint16_t>(lo | (uint16_t{U8()} << 8));
  }
  std::string Bytes(size_t n) {
    const size_t left = pos_ < size_ ? size_ - pos_ : 0;
    if (n > left) n = left;
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }
  std::string Record() { return Bytes(U16()); }
  std::string Rest() { return Bytes(size_ - pos_); }

 private:
  const uint8_t* const data_;
  const size_t size_;
  size_t pos_ = 0;
};

// Appends a record in the layout Record() reads (for the seed writer).
inline void AppendRecord(const std::string& bytes, std::string* out) {
  const size_t n = bytes.size() < 0xffff ? bytes.size() : 0xffff;
  out->push_back(static_cast<char>(n & 0xff));
  out->push_back(static_cast<char>(n >> 8));
  out->append(bytes, 0, n);
}

// Parsing hostile bytes makes protobuf log (e.g. invalid UTF-8 in a string field) on every input:
// slow and noisy. Called from each target's LLVMFuzzerInitialize.
inline void SilenceProtobufLogs() { google::protobuf::SetLogHandler(nullptr); }

// An invariant broke: print it and abort, so libFuzzer keeps the input as a crash.
[[noreturn]] inline void Fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "\n*** kvkeep fuzz invariant failed at %s:%d: %s\n", file, line,
               what.c_str());
  std::abort();
}

}  // namespace kvkeep::fuzz

#define FUZZ_CHECK(cond, what)                                                      \
  do {                                                                              \
    if (!(cond)) ::kvkeep::fuzz::Fail(__FILE__, __LINE__, std::string(#cond ": ") + (what)); \
  } while (0)

// Every error status the daemon returns must say what was wrong.
#define FUZZ_CHECK_STATUS_MESSAGE(status)                                                     \
  FUZZ_CHECK((status).ok() || !(status).message().empty(),                                    \
             std::string("error status without a message: code ") +                           \
                 std::to_string(static_cast<int>((status).code())))

#endif  // KVKEEP_TESTS_FUZZ_FUZZ_INPUT_H_
