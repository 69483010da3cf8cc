// The canonical hash of a model layout: the layout part of every fleet key and value.
//
//   std::string hash = FleetLayoutHash(layout);   // 32 raw bytes (SHA-256)
//
// Two nodes agree on it whenever their layouts' fields are equal, whatever protobuf version or
// encoding they run: it hashes the fields themselves, in a fixed order and fixed-width
// little-endian form, behind the domain string "kvkeep-fleet-layout-v1":
//   name (u32 length + bytes), layers, q_heads, kv_heads, head_dim, dtype, tokens_per_page (u32
//   each), rope.theta (IEEE-754 binary64 bits, u64; -0.0 as 0.0), effective rotary_dim (u32;
//   0 means head_dim, so both spellings agree), rope.interleaved (u8), inv_freq count (u32) and
//   each inv_freq (IEEE-754 binary32 bits, u32).
// The name is part of it: KV bytes depend on the weights, and within a sharing group a model name
// must stand for one set of weights (docs/fleet.md, trust model).
//
// Pure function, thread-safe. Changing the encoding changes every key: bump the domain string.
#ifndef KVKEEP_SERVICE_FLEET_LAYOUT_HASH_H_
#define KVKEEP_SERVICE_FLEET_LAYOUT_HASH_H_

#include <string>

#include "kvkeep/v1/common.pb.h"

namespace kvkeep::fleet {

std::string FleetLayoutHash(const v1::ModelLayout& layout);

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_LAYOUT_HASH_H_
