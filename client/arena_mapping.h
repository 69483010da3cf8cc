// A worker's mapping of one exported arena (host shared memory). Unmapped on destruction.
//
//   ASSIGN_OR_RETURN(auto mapping, ArenaMapping::Map(arena_export));
//   std::memcpy(mapping->data() + offset, keys, n);
#ifndef KVKEEP_CLIENT_ARENA_MAPPING_H_
#define KVKEEP_CLIENT_ARENA_MAPPING_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "kvkeep/v1/common.pb.h"

namespace kvkeep {

class ArenaMapping {
 public:
  // Maps a HOST_SHM export read-write, or read-only (PROT_READ) when `arena.read_only()` (a
  // sharing group's arena: writing through data() then faults). UNIMPLEMENTED for kinds this build cannot map;
  // NOT_FOUND when the object is gone; DATA_LOSS when its size differs from the export.
  static absl::StatusOr<std::unique_ptr<ArenaMapping>> Map(const v1::ArenaExport& arena);
  ~ArenaMapping();
  ArenaMapping(const ArenaMapping&) = delete;
  ArenaMapping& operator=(const ArenaMapping&) = delete;

  uint8_t* data() const { return data_; }
  uint64_t size() const { return size_; }
  const v1::ArenaExport& arena() const { return arena_; }

 private:
  ArenaMapping(v1::ArenaExport arena, uint8_t* data, uint64_t size)
      : arena_(std::move(arena)), data_(data), size_(size) {}
  const v1::ArenaExport arena_;
  uint8_t* const data_;
  const uint64_t size_;
};

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_ARENA_MAPPING_H_
