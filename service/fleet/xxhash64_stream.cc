#include "service/fleet/xxhash64_stream.h"

#include <cstring>

namespace kvkeep::fleet {
namespace {

// Yann Collet's XXH64 constants and rounds, as in service/storage/xxhash64.cc.
constexpr uint64_t kP1 = 0x9E3779B185EBCA87ULL;
constexpr uint64_t kP2 = 0xC2B2AE3D27D4EB4FULL;
constexpr uint64_t kP3 = 0x165667B19E3779F9ULL;
constexpr uint64_t kP4 = 0x85EBCA77C2B2AE63ULL;
constexpr uint64_t kP5 = 0x27D4EB2F165667C5ULL;

inline uint64_t Rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t Load64(const char* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}
inline uint32_t Load32(const char* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t Round(uint64_t acc, uint64_t input) {
  acc += input * kP2;
  acc = Rotl(acc, 31);
  return acc * kP1;
}
inline uint64_t MergeRound(uint64_t acc, uint64_t val) {
  acc ^= Round(0, val);
  return acc * kP1 + kP4;
}
inline void Stripe(uint64_t* lanes, const char* p) {
  lanes[0] = Round(lanes[0], Load64(p));
  lanes[1] = Round(lanes[1], Load64(p + 8));
  lanes[2] = Round(lanes[2], Load64(p + 16));
  lanes[3] = Round(lanes[3], Load64(p + 24));
}

}  // namespace

XxHash64Stream::XxHash64Stream(uint64_t seed)
    : seed_(seed), lanes_{seed + kP1 + kP2, seed + kP2, seed, seed - kP1} {}

void XxHash64Stream::Update(absl::string_view piece) {
  const char* p = piece.data();
  const char* const end = p + piece.size();
  total_ += piece.size();
  if (pending_size_ + piece.size() < 32) {
    if (!piece.empty()) std::memcpy(pending_ + pending_size_, p, piece.size());
    pending_size_ += piece.size();
    return;
  }
  if (pending_size_ > 0) {
    const size_t fill = 32 - pending_size_;
    std::memcpy(pending_ + pending_size_, p, fill);
    Stripe(lanes_, pending_);
    p += fill;
    pending_size_ = 0;
  }
  for (; p + 32 <= end; p += 32) Stripe(lanes_, p);
  pending_size_ = static_cast<size_t>(end - p);
  if (pending_size_ > 0) std::memcpy(pending_, p, pending_size_);
}

uint64_t XxHash64Stream::Digest() const {
  uint64_t h;
  if (total_ >= 32) {
    h = Rotl(lanes_[0], 1) + Rotl(lanes_[1], 7) + Rotl(lanes_[2], 12) + Rotl(lanes_[3], 18);
    for (uint64_t lane : lanes_) h = MergeRound(h, lane);
  } else {
    h = seed_ + kP5;
  }
  h += total_;
  const char* p = pending_;
  const char* const end = pending_ + pending_size_;
  while (p + 8 <= end) {
    h ^= Round(0, Load64(p));
    h = Rotl(h, 27) * kP1 + kP4;
    p += 8;
  }
  if (p + 4 <= end) {
    h ^= static_cast<uint64_t>(Load32(p)) * kP1;
    h = Rotl(h, 23) * kP2 + kP3;
    p += 4;
  }
  while (p < end) {
    h ^= static_cast<uint64_t>(static_cast<unsigned char>(*p)) * kP5;
    h = Rotl(h, 11) * kP1;
    ++p;
  }
  h ^= h >> 33;
  h *= kP2;
  h ^= h >> 29;
  h *= kP3;
  h ^= h >> 32;
  return h;
}

}  // namespace kvkeep::fleet
