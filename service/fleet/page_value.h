// The value of one token page in the fleet: every (layer, KV head) page of it, sealed.
//
//   ASSIGN_OR_RETURN(std::string value, SealPageValue(shape, layout_hash, name, payload, key));
//   std::string payload;
//   if (OpenPageValue(value, shape, layout_hash, name, key, &payload) != PageValueVerdict::kOk)
//     ...  // a miss, never served
//
// Payload: the layers × kv_heads pages of one token page, layer-major (index = layer × kv_heads +
// kv_head), each as the pool holds it: tokens_per_page keys then tokens_per_page values of
// head_dim elements of dtype. PageShape::payload_bytes() = layers × kv_heads × 2 × tokens_per_page
// × head_dim × sizeof(dtype).
//
// Value (all integers little-endian), kPageValueOverheadBytes = 80 bytes around the payload:
//    0  4  magic "KVKF"
//    4  2  format version (kPageValueVersion)
//    6  1  dtype (v1::DType number)
//    7  1  flags (0)
//    8  4  tokens per page
//   12  4  layers
//   16  4  KV heads
//   20  4  head dim
//   24  8  layout hash (first 8 bytes of FleetLayoutHash)
//   32  8  payload bytes
//   40 12  AES-GCM nonce (random per value)
//   52  4  reserved (0)
//   56  N  payload, AES-256-GCM encrypted with the group's value key; additional authenticated
//          data: bytes [0, 56) and the value's Redis key name (so a value moved to another key
//          does not open)
//   56+N   16  GCM tag
//   72+N    8  XXH64 (seed 0) of bytes [0, 72+N)
//
// Opening checks, in order, and answers the first failure: magic and version (kOtherVersion),
// size (kShort), checksum (kChecksum: corruption in Redis or in transit), header against the
// expected shape and layout (kHeaderMismatch), then the tag (kAuthentication: another group's key,
// or bytes planted by someone without the key). Only kOk fills the payload.
//
// Pure functions, thread-safe.
#ifndef KVKEEP_SERVICE_FLEET_PAGE_VALUE_H_
#define KVKEEP_SERVICE_FLEET_PAGE_VALUE_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "kvkeep/v1/common.pb.h"

namespace kvkeep::fleet {

inline constexpr uint16_t kPageValueVersion = 1;
inline constexpr size_t kPageValueHeaderBytes = 56;
inline constexpr size_t kPageValueOverheadBytes = 80;

// The geometry of one token page, as the value header records it.
struct PageShape {
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  uint32_t tokens_per_page = 0;
  uint32_t layers = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;

  static PageShape Of(const v1::ModelLayout& layout);
  // 0 for an unknown dtype.
  uint64_t page_bytes() const;     // one (layer, KV head) page
  uint64_t payload_bytes() const;  // layers × kv_heads × page_bytes()
  bool operator==(const PageShape& o) const {
    return dtype == o.dtype && tokens_per_page == o.tokens_per_page && layers == o.layers &&
           kv_heads == o.kv_heads && head_dim == o.head_dim;
  }
};

enum class PageValueVerdict {
  kOk,
  kOtherVersion,    // not this format (another magic or version)
  kShort,           // size does not match the header's payload size
  kChecksum,        // XXH64 mismatch
  kHeaderMismatch,  // another shape or layout than expected
  kAuthentication,  // the GCM tag does not verify under this key and key name
};
// "ok", "other_version", "short", "checksum", "header_mismatch", "authentication".
absl::string_view PageValueVerdictName(PageValueVerdict verdict);

// INVALID_ARGUMENT when payload.size() != shape.payload_bytes() (or the shape is empty),
// layout_hash is shorter than 8 bytes or value_key is not 32 bytes; INTERNAL when OpenSSL fails.
absl::StatusOr<std::string> SealPageValue(const PageShape& shape, absl::string_view layout_hash,
                                          absl::string_view key_name, absl::string_view payload,
                                          absl::string_view value_key);
// SealPageValue into `*value` (resized to the value's size; a string of that size already, e.g.
// one reused from an earlier seal, is overwritten without a new allocation). Same errors; on an
// error *value is unspecified.
absl::Status SealPageValueInto(const PageShape& shape, absl::string_view layout_hash,
                               absl::string_view key_name, absl::string_view payload,
                               absl::string_view value_key, std::string* value);

// The verdict on `value`; on kOk `*payload` holds the decrypted payload (resized to
// shape.payload_bytes()), otherwise it is left unspecified.
PageValueVerdict OpenPageValue(absl::string_view value, const PageShape& shape,
                               absl::string_view layout_hash, absl::string_view key_name,
                               absl::string_view value_key, std::string* payload);

// Receives the decrypted payload of OpenPageValueInto: bytes [offset, offset + bytes.size()),
// in increasing offsets, at most kOpenChunkBytes at a time. An error stops the opening.
using PayloadChunkWriter =
    absl::FunctionRef<absl::Status(uint64_t offset, absl::string_view bytes)>;
inline constexpr size_t kOpenChunkBytes = 64 * 1024;

// OpenPageValue without a payload string: the value is checked and decrypted in ONE pass, chunk
// by chunk (XXH64 of a chunk, then AES-GCM of it while it is in cache), each decrypted chunk
// handed to `write` (e.g. straight into pool pages). Same checks and verdicts as OpenPageValue,
// but the payload is written BEFORE the checksum and the tag are known: on any verdict but kOk
// the bytes written are garbage, and the caller must discard them (never serve them). Nothing is
// written when the value fails before decryption (version, size, header). An error status is
// `write`'s own.
absl::StatusOr<PageValueVerdict> OpenPageValueInto(absl::string_view value,
                                                   const PageShape& shape,
                                                   absl::string_view layout_hash,
                                                   absl::string_view key_name,
                                                   absl::string_view value_key,
                                                   PayloadChunkWriter write);

// Where OpenPageValueInto may decrypt bytes [offset, offset + size) of the payload directly
// (host memory, writable), or nullptr: then they are decrypted into a buffer of its own and given
// to `write`. Called once per chunk, in increasing offsets.
using PayloadChunkTarget = absl::FunctionRef<char*(uint64_t offset, size_t size)>;
// OpenPageValueInto that decrypts each chunk straight into `target`'s memory where it has some
// (no copy), into `write` otherwise. Same checks, verdicts and garbage-on-failure contract.
absl::StatusOr<PageValueVerdict> OpenPageValueInto(absl::string_view value,
                                                   const PageShape& shape,
                                                   absl::string_view layout_hash,
                                                   absl::string_view key_name,
                                                   absl::string_view value_key,
                                                   PayloadChunkTarget target,
                                                   PayloadChunkWriter write);

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_PAGE_VALUE_H_
