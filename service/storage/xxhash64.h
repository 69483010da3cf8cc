// XXH64 (Yann Collet's xxHash, 64-bit variant, seed-able): the checksum of spilled pages. Stable
// across processes, builds and machines (unlike absl::Hash), ~10 GB/s per core, so checksumming
// a spill costs little next to the disk. Written here because Debian 12 ships libxxhash without
// its header in the build image and RocksDB does not export its crc32c.
//
//   uint64_t sum = XxHash64(page_bytes);
//
// Checked against the reference implementation's published vectors
// (XxHash64.MatchesReferenceVectors in spill_store_test.cc).
#ifndef KVKEEP_SERVICE_STORAGE_XXHASH64_H_
#define KVKEEP_SERVICE_STORAGE_XXHASH64_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace kvkeep {

uint64_t XxHash64(absl::string_view data, uint64_t seed = 0);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_STORAGE_XXHASH64_H_
