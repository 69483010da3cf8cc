#include "service/fleet/layout_hash.h"

#include <openssl/sha.h>

#include <cstdint>
#include <cstring>

namespace kvkeep::fleet {
namespace {

class CanonicalWriter {
 public:
  void U8(uint8_t v) { bytes_.push_back(static_cast<char>(v)); }
  void U32(uint32_t v) {
    for (int i = 0; i < 4; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void U64(uint64_t v) {
    for (int i = 0; i < 8; ++i) U8(static_cast<uint8_t>(v >> (8 * i)));
  }
  void F64(double v) {
    if (v == 0.0) v = 0.0;  // -0.0 and 0.0 are the same setting
    uint64_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    U64(bits);
  }
  void F32(float v) {
    if (v == 0.0f) v = 0.0f;
    uint32_t bits;
    std::memcpy(&bits, &v, sizeof(bits));
    U32(bits);
  }
  void Bytes(const std::string& s) {
    U32(static_cast<uint32_t>(s.size()));
    bytes_ += s;
  }
  const std::string& bytes() const { return bytes_; }

 private:
  std::string bytes_;
};

}  // namespace

std::string FleetLayoutHash(const v1::ModelLayout& layout) {
  CanonicalWriter w;
  w.Bytes("kvkeep-fleet-layout-v1");
  w.Bytes(layout.name());
  w.U32(layout.layers());
  w.U32(layout.q_heads());
  w.U32(layout.kv_heads());
  w.U32(layout.head_dim());
  w.U32(static_cast<uint32_t>(layout.dtype()));
  w.U32(layout.tokens_per_page());
  const v1::RopeConfig& rope = layout.rope();
  w.F64(rope.theta());
  w.U32(rope.rotary_dim() != 0 ? rope.rotary_dim() : layout.head_dim());
  w.U8(rope.interleaved() ? 1 : 0);
  w.U32(static_cast<uint32_t>(rope.inv_freq_size()));
  for (float f : rope.inv_freq()) w.F32(f);
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(w.bytes().data()), w.bytes().size(), digest);
  return std::string(reinterpret_cast<const char*>(digest), sizeof(digest));
}

}  // namespace kvkeep::fleet
