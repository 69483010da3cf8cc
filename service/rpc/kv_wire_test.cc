// KvChunk straight from / into gRPC buffers (kv_wire.h) against protobuf's own encoding.
#include "service/rpc/kv_wire.h"

#include <algorithm>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace kvkeep {
namespace {

v1::KvChunk Sample(size_t bytes) {
  v1::KvChunk c;
  c.set_session_id("sess-1");
  c.set_sequence_id("seq-abc");
  c.set_layer(3);
  c.set_kv_head(1);
  c.set_token_offset(4096);
  c.set_token_count(17);
  std::string k(bytes, '\0');
  std::string v(bytes, '\0');
  for (size_t i = 0; i < bytes; ++i) {
    k[i] = static_cast<char>(i * 7 + 1);
    v[i] = static_cast<char>(i * 13 + 5);
  }
  c.set_keys(k);
  c.set_values(v);
  return c;
}

// `encoded` cut into slices of `piece` bytes, as the transport may hand them over.
grpc::ByteBuffer Sliced(const std::string& encoded, size_t piece) {
  std::vector<grpc::Slice> slices;
  for (size_t at = 0; at < encoded.size(); at += piece) {
    slices.emplace_back(encoded.data() + at, std::min(piece, encoded.size() - at));
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

TEST(KvWireTest, ParsesProtobufEncodingWhateverTheSlicing) {
  const v1::KvChunk sample = Sample(3000);
  const std::string encoded = sample.SerializeAsString();
  for (size_t piece : {encoded.size(), size_t{1}, size_t{7}, size_t{1024}, size_t{2999}}) {
    ParsedKvChunk parsed;
    ASSERT_TRUE(ParseKvChunk(Sliced(encoded, piece), &parsed).ok()) << piece;
    EXPECT_EQ(parsed.keys, sample.keys()) << piece;
    EXPECT_EQ(parsed.values, sample.values()) << piece;
    v1::KvChunk header = sample;
    header.clear_keys();
    header.clear_values();
    EXPECT_EQ(parsed.header.SerializeAsString(), header.SerializeAsString()) << piece;
  }
}

TEST(KvWireTest, ReadKvFieldsInAWriteAreKeptSoTheEngineRefusesThem) {
  v1::KvChunk sample = Sample(8);
  sample.add_positions(5);
  sample.set_page(42);
  ParsedKvChunk parsed;
  ASSERT_TRUE(ParseKvChunk(Sliced(sample.SerializeAsString(), 5), &parsed).ok());
  EXPECT_EQ(parsed.header.positions_size(), 1);
  EXPECT_EQ(parsed.header.page(), 42u);
}

TEST(KvWireTest, TruncatedEncodingIsRefused) {
  const std::string encoded = Sample(100).SerializeAsString();
  ParsedKvChunk parsed;
  absl::Status s = ParseKvChunk(Sliced(encoded.substr(0, encoded.size() - 3), 16), &parsed);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("malformed KvChunk"), std::string::npos);
}

TEST(KvWireTest, SerialisedChunkIsAValidKvChunkEncoding) {
  v1::KvChunk chunk = Sample(5000);
  chunk.add_positions(-3);
  chunk.add_positions(9);
  const v1::KvChunk original = chunk;
  grpc::ByteBuffer buffer;
  SerializeKvChunk(&chunk, &buffer);
  EXPECT_TRUE(chunk.keys().empty());
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(buffer.Dump(&slices).ok());
  std::string wire;
  for (const grpc::Slice& s : slices) {
    wire.append(reinterpret_cast<const char*>(s.begin()), s.size());
  }
  v1::KvChunk back;
  ASSERT_TRUE(back.ParseFromString(wire));
  EXPECT_EQ(back.SerializeAsString(), original.SerializeAsString());
  // And our own parser reads it back too.
  ParsedKvChunk parsed;
  ASSERT_TRUE(ParseKvChunk(buffer, &parsed).ok());
  EXPECT_EQ(parsed.keys, original.keys());
  EXPECT_EQ(parsed.values, original.values());
}

}  // namespace
}  // namespace kvkeep
