// The Redis keys of a prompt's pages in the fleet.
//
//   std::vector<std::string> names = FleetKeyNames(keys, layout_hash, tokens, tokens_per_page);
//   // names[i] = "kvkeep:" + hex(layout_hash[0..8)) + ":" + hex(k_i)
//
// k_i is the hash chain of service/pool/prefix_index.h (PrefixChain): SHA-256 over the previous
// key and the token ids of page i, salted with the group's chain salt (group_keys.h) and bound to
// the canonical layout hash (layout_hash.h). Equal prompts in one group and layout give equal
// names on every node; another group (another secret) or another layout gives unrelated names.
// Only full pages have a name. The short layout prefix lets an operator see and SCAN one layout's
// keys; the chain key alone already identifies the layout.
//
// Pure functions, thread-safe.
#ifndef KVKEEP_SERVICE_FLEET_FLEET_KEYS_H_
#define KVKEEP_SERVICE_FLEET_FLEET_KEYS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "service/fleet/group_keys.h"

namespace kvkeep::fleet {

// Every key kvkeep writes to the cluster starts with this (the ACL allows nothing else).
inline constexpr absl::string_view kFleetKeyPrefix = "kvkeep:";

// The name of the page whose chain key (32 raw bytes) is `chain_key`.
std::string FleetKeyName(absl::string_view layout_hash, absl::string_view chain_key);

// The names of the floor(tokens.size() / tokens_per_page) full pages of `tokens`.
std::vector<std::string> FleetKeyNames(const GroupKeys& keys, absl::string_view layout_hash,
                                       absl::Span<const uint32_t> tokens, uint32_t tokens_per_page);

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_FLEET_KEYS_H_
