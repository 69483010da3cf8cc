// Redis Cluster key routing: the slot (0..16383) a key lives in.
//
// Redis Cluster shards keys over 16384 hash slots: slot = CRC16(key) mod 16384, where CRC16 is
// the XMODEM variant (polynomial 0x1021, initial value 0, no reflection) of the Redis Cluster
// specification. When a key contains a hash tag - the bytes between the first '{' and the first
// '}' after it, if that span is non-empty - only the tag is hashed, so "{user}.a" and "{user}.b"
// share a slot.
//
//   uint16_t slot = KeySlot("kvkeep:0123abcd:ffee...");
//
// Pure functions, thread-safe. Written here because Debian 12's hiredis 0.14 has no cluster
// support (docs/fleet.md). Checked against the specification's test vector and redis-server's
// CLUSTER KEYSLOT answers (key_slot_test.cc).
#ifndef KVKEEP_SERVICE_FLEET_KEY_SLOT_H_
#define KVKEEP_SERVICE_FLEET_KEY_SLOT_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace kvkeep::fleet {

inline constexpr int kClusterSlots = 16384;

// CRC16-XMODEM of `data` (Crc16("123456789") == 0x31C3).
uint16_t Crc16(absl::string_view data);

// The part of `key` that is hashed: its hash tag when it has a non-empty one, else the whole key.
absl::string_view HashedPart(absl::string_view key);

// The cluster slot of `key`: Crc16(HashedPart(key)) mod 16384.
uint16_t KeySlot(absl::string_view key);

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_KEY_SLOT_H_
