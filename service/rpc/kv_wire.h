// KvChunk on the wire without the protobuf copies (the bytes path, WriteKV and ReadKV), used by
// the daemon and by the C++ client:
//
//   ParseKvChunkPieces: reads a received KvChunk straight from the gRPC buffer's slices. Every
//     field but `keys` and `values` lands in a header message; the two byte fields are lists of
//     views into the received slices (no copy), one view per slice the field crosses.
//   ParseKvChunk: the same, with each byte field as ONE view: into the slice when it lies in one,
//     else gathered once into a scratch string.
//   SerializeKvChunkRefs: encodes a chunk whose key and value bytes stay where they are (page
//     memory, a caller's buffers): every piece becomes a slice that references it, and `hold` is
//     kept (one reference per slice) until gRPC has released the last of them.
//   SerializeKvChunk: moves a chunk's `keys` and `values` strings into slices (no copy).
//   ParseKvChunkBatch / SerializeKvChunkBatchRefs: the same for a kvkeep.v1.KvChunkBatch (several
//     chunks per message, KvBatch.WriteKVBatch / ReadKVBatch): every chunk as KvChunkPieces, every
//     outgoing chunk's bytes referenced in place.
//
// The encodings are valid KvChunk encodings (fields 7 and 8 come last, which every protobuf parser
// accepts), so the wire contract is unchanged; kv_wire_test checks them against protobuf.
//
// Thread-compatible: a parsed chunk's views live as long as its `slices` (and scratch strings).
#ifndef KVKEEP_SERVICE_RPC_KV_WIRE_H_
#define KVKEEP_SERVICE_RPC_KV_WIRE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep {

struct KvChunkPieces {
  v1::KvChunk header;  // every field but keys and values
  std::vector<absl::string_view> keys;    // in order; concatenated they are the field's bytes
  std::vector<absl::string_view> values;
  std::vector<grpc::Slice> slices;  // keeps the views' memory referenced
  uint64_t key_bytes = 0;           // sums of the pieces
  uint64_t value_bytes = 0;
};

struct ParsedKvChunk {
  v1::KvChunk header;  // every field but keys and values
  absl::string_view keys;
  absl::string_view values;
  std::vector<grpc::Slice> slices;  // keeps the views' memory referenced
  std::string scratch_keys;         // a field split over slices, gathered
  std::string scratch_values;
};

// INVALID_ARGUMENT "malformed KvChunk encoding (field N)" for a malformed encoding (truncated,
// bad wire type, a varint over 10 bytes).
absl::Status ParseKvChunkPieces(const grpc::ByteBuffer& buffer, KvChunkPieces* out);
absl::Status ParseKvChunk(const grpc::ByteBuffer& buffer, ParsedKvChunk* out);

// Copies `pieces` one after another to `dst` (which holds their summed size).
void CopyPieces(absl::Span<const absl::string_view> pieces, char* dst);

// Encodes `header` (its keys and values, if any, are ignored) followed by fields 7 and 8 made of
// `keys` and `values`, each piece referenced in place. `hold` (may be null) stays referenced until
// gRPC releases the last slice that references a piece; the pieces must stay valid and unchanged
// until then.
void SerializeKvChunkRefs(const v1::KvChunk& header, absl::Span<const absl::string_view> keys,
                          absl::Span<const absl::string_view> values,
                          const std::shared_ptr<const void>& hold, grpc::ByteBuffer* out);

// Moves `chunk`'s keys and values into `out`'s slices; `chunk` is left without them.
void SerializeKvChunk(v1::KvChunk* chunk, grpc::ByteBuffer* out);

// A received KvChunkBatch: chunks[0, count) are its items, in order, their views into `slices`
// (the items' own `slices` stay empty). The vector keeps its entries between messages.
struct KvChunkBatchPieces {
  std::vector<KvChunkPieces> chunks;
  size_t count = 0;
  std::vector<grpc::Slice> slices;
};

// INVALID_ARGUMENT "malformed KvChunkBatch encoding (field N, after M items)", or "item M: " and
// the KvChunk's own message, for a malformed encoding (the items before it were parsed, but the
// daemon applies nothing of a message that does not parse whole).
absl::Status ParseKvChunkBatch(const grpc::ByteBuffer& buffer, KvChunkBatchPieces* out);

// One chunk of an outgoing batch: `header`'s fields but keys and values, then `keys` and
// `values` referenced in place; `hold` (may be null) stays referenced until gRPC releases the
// message's last slice.
struct KvChunkRef {
  const v1::KvChunk* header;
  absl::Span<const absl::string_view> keys;
  absl::Span<const absl::string_view> values;
  std::shared_ptr<const void> hold;
};

// The summed sizes of a chunk's keys and values.
uint64_t KvChunkRefBytes(const KvChunkRef& chunk);

// Encodes `chunks` as one KvChunkBatch (protobuf's encoding, every chunk's fields 7 and 8 last).
// The framing bytes are in one buffer shared by the message's slices; the pieces are referenced.
void SerializeKvChunkBatchRefs(absl::Span<const KvChunkRef> chunks, grpc::ByteBuffer* out);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_KV_WIRE_H_
