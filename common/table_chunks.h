// Chunked page tables: how a PageTable, PageTableDelta or CompressReply larger than the gRPC
// message limit travels as a stream of messages (the *Stream calls of kvkeep.v1.KvCache), and how
// the worker puts it back together. The contract (docs/api.md "Chunked replies"):
//   - the first message carries every scalar field and the arenas; later messages carry heads only;
//   - heads keep their order; a head too large for one message is cut into pieces, each a
//     HeadTable of the same (layer, kv_head) with `continued` set on every piece but the first;
//   - every message stays at or below `budget` bytes (ByteSizeLong), budget >= 4 KiB.
// Merging the split messages gives back a message equal to the original.
//
// Pure functions on protos; thread-compatible.
#ifndef KVKEEP_COMMON_TABLE_CHUNKS_H_
#define KVKEEP_COMMON_TABLE_CHUNKS_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep {

// The budget a reply message may use under a `max_message_bytes` limit (room for gRPC framing).
uint64_t ReplyBudget(uint64_t max_message_bytes);

std::vector<v1::PageTable> SplitPageTable(v1::PageTable table, uint64_t budget);
std::vector<v1::PageTableDelta> SplitPageTableDelta(v1::PageTableDelta delta, uint64_t budget);
std::vector<v1::CompressReply> SplitCompressReply(v1::CompressReply reply, uint64_t budget);

// INVALID_ARGUMENT when the stream breaks the contract (no message, a `continued` piece whose
// head differs from the previous one, or one with nothing before it).
absl::StatusOr<v1::PageTable> MergePageTable(std::vector<v1::PageTable> chunks);
absl::StatusOr<v1::PageTableDelta> MergePageTableDelta(std::vector<v1::PageTableDelta> chunks);
absl::StatusOr<v1::CompressReply> MergeCompressReply(std::vector<v1::CompressReply> chunks);

}  // namespace kvkeep

#endif  // KVKEEP_COMMON_TABLE_CHUNKS_H_
