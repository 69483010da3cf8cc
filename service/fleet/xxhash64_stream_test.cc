#include "service/fleet/xxhash64_stream.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "service/storage/xxhash64.h"

namespace kvkeep::fleet {
namespace {

std::string RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::string s(n, '\0');
  for (char& c : s) c = static_cast<char>(rng());
  return s;
}

TEST(XxHash64Stream, EmptyAndShortInputsMatchTheOneShotHash) {
  for (size_t n : {0, 1, 3, 4, 7, 8, 31, 32, 33}) {
    const std::string data = RandomBytes(n, 1);
    XxHash64Stream h;
    h.Update(data);
    EXPECT_EQ(h.Digest(), XxHash64(data)) << n << " bytes";
  }
}

TEST(XxHash64Stream, AnySplitIntoPiecesMatchesTheOneShotHash) {
  std::mt19937 rng(5);
  for (size_t n : {63, 64, 65, 1000, 70001}) {
    const std::string data = RandomBytes(n, static_cast<uint32_t>(n));
    for (int trial = 0; trial < 20; ++trial) {
      XxHash64Stream h;
      for (size_t at = 0; at < n;) {
        const size_t piece = std::min<size_t>(n - at, rng() % 97);  // empty pieces too
        h.Update(absl::string_view(data).substr(at, piece));
        at += piece;
      }
      ASSERT_EQ(h.Digest(), XxHash64(data)) << n << " bytes, trial " << trial;
    }
  }
}

TEST(XxHash64Stream, ReferenceVectorOfTheEmptyInput) {
  // XXH64("", seed 0) from the reference implementation.
  EXPECT_EQ(XxHash64Stream().Digest(), 0xEF46DB3751D8E999ULL);
}

TEST(XxHash64Stream, DigestMidStreamDoesNotDisturbIt) {
  const std::string data = RandomBytes(100, 9);
  XxHash64Stream h;
  h.Update(absl::string_view(data).substr(0, 40));
  EXPECT_EQ(h.Digest(), XxHash64(absl::string_view(data).substr(0, 40)));
  h.Update(absl::string_view(data).substr(40));
  EXPECT_EQ(h.Digest(), XxHash64(data));
}

}  // namespace
}  // namespace kvkeep::fleet
