// KvChunk on the wire without the protobuf copies (the bytes path, WriteKV and ReadKV):
//
//   ParseKvChunk: reads a received KvChunk straight from the gRPC buffer's slices. Every field but
//     `keys` and `values` lands in a header message; the two byte fields are views into the
//     received slices (no copy) when each lies in one slice, else gathered once into `scratch`.
//   SerializeKvChunk: the reverse for ReadKV: the chunk's `keys` and `values` strings are moved
//     into slices the gRPC buffer owns (no serialisation copy); the other fields are encoded in a
//     small leading slice. The bytes are a valid KvChunk encoding (fields 7 and 8 come last, which
//     every protobuf parser accepts), so the wire contract is unchanged.
//
// Thread-compatible: a parsed chunk's views live as long as the ByteBuffer (and `scratch`).
#ifndef KVKEEP_SERVICE_RPC_KV_WIRE_H_
#define KVKEEP_SERVICE_RPC_KV_WIRE_H_

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep {

struct ParsedKvChunk {
  v1::KvChunk header;  // every field but keys and values
  absl::string_view keys;
  absl::string_view values;
  std::vector<grpc::Slice> slices;  // keeps the views' memory referenced
  std::string scratch_keys;         // a field split over slices, gathered
  std::string scratch_values;
};

// INVALID_ARGUMENT for a malformed encoding (truncated, bad wire type).
absl::Status ParseKvChunk(const grpc::ByteBuffer& buffer, ParsedKvChunk* out);

// Moves `chunk`'s keys and values into `out`'s slices; `chunk` is left without them.
void SerializeKvChunk(v1::KvChunk* chunk, grpc::ByteBuffer* out);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_KV_WIRE_H_
