// The keys a sharing group's fleet pages are made with, derived from the group secret the
// operator gives every node (`kvkeepctl group set-secret`, docs/fleet.md).
//
//   ASSIGN_OR_RETURN(GroupKeys keys, DeriveGroupKeys(secret));
//   // keys.value_key: AES-256-GCM key of the group's values
//   // keys.chain_salt: salt of the group's hash chain (so equal prompts give equal keys on every
//   //                  node of the group, and different keys in any other group)
//   // keys.fingerprint: shown by kvkeepctl, so operators can see that two nodes hold the same
//   //                   secret without seeing it
//
// Each is HKDF-SHA256 (RFC 5869) of the secret with salt "kvkeep-fleet-v1" and its own info
// string, so knowing one reveals nothing about the others or the secret.
//
// Pure functions, thread-safe.
#ifndef KVKEEP_SERVICE_FLEET_GROUP_KEYS_H_
#define KVKEEP_SERVICE_FLEET_GROUP_KEYS_H_

#include <cstddef>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvkeep::fleet {

// A group secret shorter than this is refused: it must be at least 128 bits of entropy.
inline constexpr size_t kMinGroupSecretBytes = 16;

struct GroupKeys {
  std::string value_key;    // 32 raw bytes
  std::string chain_salt;   // 32 raw bytes
  std::string fingerprint;  // 16 lower-case hex characters
};

// HKDF-SHA256 (extract then expand) of `ikm`: `length` bytes (1..8160). INTERNAL when OpenSSL
// fails.
absl::StatusOr<std::string> HkdfSha256(absl::string_view ikm, absl::string_view salt,
                                       absl::string_view info, size_t length);

// INVALID_ARGUMENT for a secret shorter than kMinGroupSecretBytes.
absl::StatusOr<GroupKeys> DeriveGroupKeys(absl::string_view group_secret);

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_GROUP_KEYS_H_
