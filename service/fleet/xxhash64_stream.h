// XXH64 fed in pieces: the same value as XxHash64 (service/storage/xxhash64.h) of the
// concatenated pieces, so a value can be checksummed in the same pass that decrypts it
// (page_value.h) instead of one pass more over it.
//
//   XxHash64Stream h;           // seed 0
//   h.Update(first_piece);
//   h.Update(second_piece);
//   uint64_t sum = h.Digest();  // == XxHash64(first_piece + second_piece)
//
// Thread-compatible.
#ifndef KVKEEP_SERVICE_FLEET_XXHASH64_STREAM_H_
#define KVKEEP_SERVICE_FLEET_XXHASH64_STREAM_H_

#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"

namespace kvkeep::fleet {

class XxHash64Stream {
 public:
  explicit XxHash64Stream(uint64_t seed = 0);
  void Update(absl::string_view piece);
  // The hash of everything given so far (the stream may go on after it).
  uint64_t Digest() const;

 private:
  uint64_t seed_;
  uint64_t total_ = 0;
  uint64_t lanes_[4];
  char pending_[32];  // bytes not yet consumed as a whole 32-byte stripe
  size_t pending_size_ = 0;
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_XXHASH64_STREAM_H_
