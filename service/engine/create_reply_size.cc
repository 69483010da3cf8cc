#include "service/engine/create_reply_size.h"

#include "absl/strings/str_cat.h"

namespace kvkeep {
namespace {

// Encoded sizes (protobuf wire format), at their largest.
constexpr uint64_t kVarint32 = 5;
constexpr uint64_t kVarint64 = 10;
constexpr uint64_t kTag = 2;
// One HeadTable's fixed fields (layer, kv_head, token_count, capacity, shared_pages) and its
// length-delimited framing in the PageTable, plus the packed pages' framing.
constexpr uint64_t kHeadFixed = 5 * (kTag + kVarint32) + (kTag + kVarint32) + (kTag + kVarint32);
// The PageTable's own fields (sequence id, model name, next position, tier, shared tokens) and the
// arenas a shared prefix adds (at most one per shared page; an ArenaExport is a few short fields
// and a name).
constexpr uint64_t kTableFixed = 512;
constexpr uint64_t kArenaExport = 256;

}  // namespace

uint64_t CreateReplyBytes(const Model& model, uint32_t shared_pages) {
  const uint64_t per_head = kHeadFixed + uint64_t{shared_pages} * kVarint64;
  return kTableFixed + uint64_t{model.head_tables()} * per_head +
         uint64_t{shared_pages} * kArenaExport;
}

absl::Status CheckCreateReplyFits(const Model& model, uint32_t shared_pages,
                                  uint64_t max_message_bytes) {
  const uint64_t bytes = CreateReplyBytes(model, shared_pages);
  if (bytes <= max_message_bytes) return absl::OkStatus();
  return absl::ResourceExhaustedError(absl::StrCat(
      "a sequence of model \"", model.name(), "\" (", model.head_tables(),
      " head tables", shared_pages == 0 ? "" : absl::StrCat(", ", shared_pages, " shared pages"),
      ") would need a CreateSequence reply of up to ", bytes, " bytes, more than the daemon's ",
      max_message_bytes, "-byte message limit (kvkeepd --max_message_bytes); nothing was created. "
      "Register a layout with fewer layers or KV heads"));
}

}  // namespace kvkeep
