// The on-disk format of the spill tier (service/storage/spill_store.h): how keys are built and how
// a sequence's manifest is encoded. SpillStore is its only user; the format lives here so that
// the bytes a store writes today can be read after a restart or an upgrade are defined in one place.
//
// Keys (ids are non-empty and contain neither '/' nor NUL, CheckId enforces it):
//   manifests  `<tenant>/<sequence_id>`
//   pages      `<tenant>/<sequence_id>/<head:08x>/<page:08x>` (lower-case hex)
// Guarantees: every page key of a sequence starts with PagePrefix(tenant, id) and no page key of
// another sequence does; page keys of one sequence sort in (head, page) order.
//
// Page values. Version 1 stores one page per value. Version 2 stores a run of up to
// `pages_per_value` consecutive pages of one head as ONE value (their bytes concatenated, sizes
// from the manifest), under the key of the run's first page (page index a multiple of
// pages_per_value); the last run of a head may be shorter. Fewer, larger values cut the per-value
// LSM lookups and blob-record framing of a restore (docs/benchmarks.md, spill tier). Per-page sizes
// and checksums stay in the manifest, so corruption is still reported per page.
//
// Manifest, little-endian, version 1 (version 2: the same with `varint pages_per_value` (>= 1)
// right after the version):
//   fixed32 magic, varint version, string tenant, string sequence_id, string model,
//   fixed64 next_position, fixed64 created (unix micros), varint total_bytes, varint page_count,
//   varint heads, then per head:
//     varint count, varint runs, runs x (varint zigzag(start - previous run's end), varint length)
//     varint pages, pages x (varint size, fixed64 xxh64)
//   fixed64 xxh64 of all the preceding bytes.
// Positions are stored as runs of consecutive values: an uncompressed head costs a few bytes
// instead of 4 per token, a compressed one about 2 per kept token.
// Guarantees: DecodeManifest(EncodeManifest(...)) gives back the record's header, positions and
// page table; a manifest whose checksum, magic, version, structure or totals do not check out is
// DATA_LOSS, never a partly filled Manifest, and no count read from disk allocates before it is
// bounded by the bytes left.
//
// Pure functions, no state: thread-safe.
#ifndef KVKEEP_SERVICE_STORAGE_SPILL_FORMAT_H_
#define KVKEEP_SERVICE_STORAGE_SPILL_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "service/storage/spill_store.h"

namespace kvkeep::spill_format {

inline constexpr uint32_t kManifestMagic = 0x4d53564b;  // "KVSM" little-endian
inline constexpr uint64_t kManifestVersion = 2;        // what EncodeManifest writes (ppv > 1)
inline constexpr uint64_t kManifestVersionOnePage = 1;  // one page per value (still read)

// ---- Keys ------------------------------------------------------------------------------------

// OK when `id` may be part of a key: non-empty, no '/', no NUL. `what` names it in the error.
absl::Status CheckId(absl::string_view what, absl::string_view id);

// `<tenant>/<id>`: the key of the sequence's manifest.
std::string ManifestKey(absl::string_view tenant, absl::string_view id);

// `<tenant>/<sequence_id>/`: every page key of the sequence starts with it, and (ids having no
// '/') no page key of another sequence does.
std::string PagePrefix(absl::string_view tenant, absl::string_view id);

// Appends `v` as 8 lower-case hex digits.
void AppendHex8(std::string* out, uint32_t v);

// `<prefix><head:08x>/<page:08x>`, prefix from PagePrefix.
std::string PageKey(const std::string& prefix, uint32_t head, uint32_t page);

// ---- Manifest --------------------------------------------------------------------------------

// One page as the manifest records it.
struct PageMeta {
  uint32_t size = 0;
  uint64_t checksum = 0;  // XxHash64 of the page's bytes
};

struct Manifest {
  SpillSummary summary;
  int64_t next_position = 0;
  uint32_t pages_per_value = 1;  // 1 for version-1 manifests
  // Filled by a full decode only: per head count, positions, and page metadata.
  std::vector<uint32_t> counts;
  std::vector<std::vector<int32_t>> positions;
  std::vector<std::vector<PageMeta>> pages;
};

// The manifest of `r` (counts.size() == positions.size() == pages.size()), whose pages are
// described by `pages` (one vector per head, same order),
// `total_bytes` and `page_count` being their sums. pages_per_value 1 writes version 1 (the layout
// of every earlier release), > 1 writes version 2.
std::string EncodeManifest(const SpillWrite& r, const std::vector<std::vector<PageMeta>>& pages,
                           uint64_t total_bytes, uint64_t page_count, absl::Time created,
                           uint32_t pages_per_value = 1);

// Pages [first, first + count) of a head with `pages` pages are stored in the value under
// PageKey(prefix, head, first): first = run * ppv, count = min(ppv, pages - first).
inline uint32_t RunCount(uint32_t pages, uint32_t pages_per_value) {
  return (pages + pages_per_value - 1) / pages_per_value;
}

// One stored value: pages [first, first + count) of `head`, `bytes` long in all.
struct ValueRun {
  uint32_t head = 0, first = 0, count = 0;
  uint64_t bytes = 0;
};

// Every value of a sequence whose heads have the pages `pages`, in key order (head, then page):
// what Put writes, Delete deletes and a read fetches.
std::vector<ValueRun> ValueRuns(const std::vector<std::vector<PageMeta>>& pages,
                                uint32_t pages_per_value);

// `full` = false decodes the header only (for the index); the trailing checksum is always checked.
// `key` (the manifest's key) only names the sequence in errors.
absl::StatusOr<Manifest> DecodeManifest(absl::string_view key, absl::string_view in, bool full);

}  // namespace kvkeep::spill_format

#endif  // KVKEEP_SERVICE_STORAGE_SPILL_FORMAT_H_
