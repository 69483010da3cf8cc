// Bearer tokens: generation, hashing, and reading them from gRPC metadata.
//
// Tokens are 256-bit random values written as 64 hex digits. The daemon keeps only their SHA-256
// (hex), so a leaked database or core dump does not leak credentials.
#ifndef KVKEEP_SERVICE_TOKEN_AUTH_H_
#define KVKEEP_SERVICE_TOKEN_AUTH_H_

#include <string>

#include "absl/strings/string_view.h"

namespace kvkeep {

// 64 hex digits from the system CSPRNG.
std::string GenerateToken();
// Lower-case hex of `bytes` random bytes from the system CSPRNG (ids, shm names).
std::string RandomHex(int bytes);
// SHA-256 of `token`, lower-case hex.
std::string HashToken(absl::string_view token);
// The token of an "authorization: Bearer <token>" header value; empty when malformed.
std::string BearerToken(absl::string_view header_value);
// Constant-time comparison of two equal-length strings (hash lookups use maps; this is for the
// admin token).
bool ConstantTimeEquals(absl::string_view a, absl::string_view b);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_TOKEN_AUTH_H_
