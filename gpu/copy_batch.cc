// CopyBatch semantics shared by every backend (gpu/backend.h): the checks, and the default
// schedule the CPU backend runs.
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/backend.h"

namespace kvkeep {
namespace {

// One byte range of one arena; `op` indexes the batch.
struct Range {
  const Arena* arena;
  std::size_t begin;
  std::size_t end;
  std::size_t op;
};

bool ByArenaThenBegin(const Range& a, const Range& b) {
  if (a.arena != b.arena) return std::less<const Arena*>()(a.arena, b.arena);
  return a.begin < b.begin;
}

}  // namespace

absl::Status CheckCopyBatch(absl::Span<const CopyOp> ops, bool* sources_overlap_destinations) {
  if (sources_overlap_destinations != nullptr) *sources_overlap_destinations = false;
  std::vector<Range> sources;
  std::vector<Range> destinations;
  sources.reserve(ops.size());
  destinations.reserve(ops.size());
  for (std::size_t i = 0; i < ops.size(); ++i) {
    const CopyOp& op = ops[i];
    if (op.src == nullptr || op.dst == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("copy op ", i, " has a null arena"));
    }
    if (op.n == 0) continue;
    if (!RangeInside(op.src->size(), op.src_offset, op.n)) {
      return absl::OutOfRangeError(absl::StrCat("copy op ", i, ": source [", op.src_offset, ", +",
                                                op.n, ") outside arena of ", op.src->size(),
                                                " bytes"));
    }
    if (!RangeInside(op.dst->size(), op.dst_offset, op.n)) {
      return absl::OutOfRangeError(absl::StrCat("copy op ", i, ": destination [", op.dst_offset,
                                                ", +", op.n, ") outside arena of ",
                                                op.dst->size(), " bytes"));
    }
    sources.push_back({op.src, op.src_offset, op.src_offset + op.n, i});
    destinations.push_back({op.dst, op.dst_offset, op.dst_offset + op.n, i});
  }
  std::sort(destinations.begin(), destinations.end(), ByArenaThenBegin);
  for (std::size_t i = 1; i < destinations.size(); ++i) {
    const Range& a = destinations[i - 1];
    const Range& b = destinations[i];
    if (a.arena == b.arena && b.begin < a.end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "copy ops ", std::min(a.op, b.op), " and ", std::max(a.op, b.op),
          " write overlapping bytes [", b.begin, ", ", std::min(a.end, b.end),
          ") of one arena; destinations of a batch must be disjoint"));
    }
  }
  if (sources_overlap_destinations == nullptr) return absl::OkStatus();
  // Destinations are disjoint and sorted, so their ends are sorted too: the first destination of
  // the same arena ending after a source's begin is the only one that can overlap it first.
  for (const Range& s : sources) {
    auto it = std::lower_bound(destinations.begin(), destinations.end(), s,
                               [](const Range& d, const Range& key) {
                                 if (d.arena != key.arena) {
                                   return std::less<const Arena*>()(d.arena, key.arena);
                                 }
                                 return d.end <= key.begin;
                               });
    if (it != destinations.end() && it->arena == s.arena && it->begin < s.end) {
      *sources_overlap_destinations = true;
      return absl::OkStatus();
    }
  }
  return absl::OkStatus();
}

absl::Status Backend::CopyBatch(absl::Span<const CopyOp> ops) {
  bool overlap = false;
  RETURN_IF_ERROR(CheckCopyBatch(ops, &overlap));
  if (!overlap) {
    // No source is any op's destination: any order gives the parallel-assignment result.
    for (const CopyOp& op : ops) {
      if (op.n == 0) continue;
      RETURN_IF_ERROR(Copy(*op.src, op.src_offset, *op.dst, op.dst_offset, op.n));
    }
    return absl::OkStatus();
  }
  // Read every source before the first write, then write. Sources are staged whole; a batch is
  // one sequence's compaction, bounded by the sequence's bytes.
  std::size_t total = 0;
  for (const CopyOp& op : ops) {
    if (op.n > SIZE_MAX - total) return absl::ResourceExhaustedError("copy batch too large");
    total += op.n;
  }
  std::string staged(total, '\0');
  std::size_t at = 0;
  for (const CopyOp& op : ops) {
    if (op.n == 0) continue;
    RETURN_IF_ERROR(Read(*op.src, op.src_offset, staged.data() + at, op.n));
    at += op.n;
  }
  at = 0;
  for (const CopyOp& op : ops) {
    if (op.n == 0) continue;
    RETURN_IF_ERROR(Write(*op.dst, op.dst_offset, staged.data() + at, op.n));
    at += op.n;
  }
  return absl::OkStatus();
}

}  // namespace kvkeep
