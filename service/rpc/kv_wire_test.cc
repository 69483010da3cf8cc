// KvChunk straight from / into gRPC buffers (kv_wire.h) against protobuf's own encoding.
#include "service/rpc/kv_wire.h"

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kvkeep/v1/kv_batch.pb.h"

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

std::string Flatten(const grpc::ByteBuffer& buffer) {
  std::vector<grpc::Slice> slices;
  EXPECT_TRUE(buffer.Dump(&slices).ok());
  std::string wire;
  for (const grpc::Slice& s : slices) wire.append(reinterpret_cast<const char*>(s.begin()), s.size());
  return wire;
}

std::string Join(const std::vector<absl::string_view>& pieces) {
  std::string out;
  for (absl::string_view p : pieces) out.append(p.data(), p.size());
  return out;
}

// What the daemon's ReadKV replies and the client's WriteKV messages are: a header and the bytes
// referenced in place, in several pieces (one per page segment).
TEST(KvWireTest, ReferencedChunkIsProtobufsEncodingAndHoldsItsOwnerUntilReleased) {
  v1::KvChunk sample = Sample(4000);
  sample.set_page(0x0102030405060708ull);
  for (int32_t p : {0, 1, -1, 1 << 30, -(1 << 30), 127, 128}) sample.add_positions(p);
  const std::string keys = sample.keys(), values = sample.values();
  // Pieces of uneven sizes, as page segments are.
  const std::vector<absl::string_view> key_pieces = {
      absl::string_view(keys).substr(0, 1), absl::string_view(keys).substr(1, 2047),
      absl::string_view(keys).substr(2048)};
  const std::vector<absl::string_view> value_pieces = {absl::string_view(values)};
  auto owner = std::make_shared<int>(7);
  std::weak_ptr<int> watch = owner;
  {
    grpc::ByteBuffer buffer;
    SerializeKvChunkRefs(sample, key_pieces, value_pieces, owner, &buffer);
    owner.reset();
    EXPECT_FALSE(watch.expired());  // the slices hold it
    v1::KvChunk back;
    ASSERT_TRUE(back.ParseFromString(Flatten(buffer)));
    EXPECT_EQ(back.SerializeAsString(), sample.SerializeAsString());
    // The referenced slices point at the caller's bytes: no copy was made.
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(buffer.Dump(&slices).ok());
    bool found = false;
    for (const grpc::Slice& s : slices) {
      found |= reinterpret_cast<const char*>(s.begin()) == keys.data() + 1;
    }
    EXPECT_TRUE(found);
    KvChunkPieces parsed;
    ASSERT_TRUE(ParseKvChunkPieces(buffer, &parsed).ok());
    EXPECT_EQ(Join(parsed.keys), keys);
    EXPECT_EQ(Join(parsed.values), values);
    EXPECT_EQ(parsed.key_bytes, keys.size());
    v1::KvChunk header = sample;
    header.clear_keys();
    header.clear_values();
    EXPECT_EQ(parsed.header.SerializeAsString(), header.SerializeAsString());
  }
  EXPECT_TRUE(watch.expired());  // released with the last slice
}

// The client parses ReadKV replies in place: every split of every field, at every byte.
TEST(KvWireTest, PiecesParseWhereverTheSlicesSplitTheFields) {
  v1::KvChunk sample = Sample(300);
  for (int32_t p = -5; p < 40; ++p) sample.add_positions(p * 1000);
  sample.set_page(77);
  const std::string encoded = sample.SerializeAsString();
  for (size_t piece = 1; piece <= encoded.size(); piece += (piece < 40 ? 1 : 37)) {
    KvChunkPieces parsed;
    ASSERT_TRUE(ParseKvChunkPieces(Sliced(encoded, piece), &parsed).ok()) << piece;
    ASSERT_EQ(Join(parsed.keys), sample.keys()) << piece;
    ASSERT_EQ(Join(parsed.values), sample.values()) << piece;
    ASSERT_EQ(parsed.header.positions_size(), sample.positions_size()) << piece;
    for (int i = 0; i < sample.positions_size(); ++i) {
      ASSERT_EQ(parsed.header.positions(i), sample.positions(i)) << piece;
    }
    ASSERT_EQ(parsed.header.page(), 77u);
    ASSERT_EQ(parsed.header.sequence_id(), "seq-abc");
    // One view per slice a field crosses, never a copy. (gRPC merges tiny slices, up to its
    // inline size of 23 bytes, into one when they are added to a buffer: counted above that.)
    if (piece > 32) {
      ASSERT_GE(parsed.keys.size(), (sample.keys().size() + piece - 1) / piece) << piece;
    }
  }
}

TEST(KvWireTest, BadEncodingsAreRefusedWithTheFieldNamed) {
  const std::string good = Sample(64).SerializeAsString();
  struct Bad {
    std::string bytes;
    const char* field;
  };
  const Bad bad[] = {
      {good.substr(0, good.size() - 1), "field 8"},     // values cut short
      {std::string("\x3a\x80", 2), "field 7"},           // length varint cut off
      {std::string("\x3a\x05" "ab", 4), "field 7"},      // length past the end
      {std::string("\x1b", 1), "field 3"},               // group wire type
      {std::string("\x4a\x02\x80\x80", 4), "field 9"},   // packed varint cut off
      {std::string("\x00\x01", 2), "field 0"},           // field 0
      {std::string(11, '\xff'), "field 0"},              // tag varint over 10 bytes
  };
  for (const Bad& b : bad) {
    for (size_t piece : {size_t{1}, size_t{3}, b.bytes.size()}) {
      KvChunkPieces parsed;
      absl::Status s = ParseKvChunkPieces(Sliced(b.bytes, piece), &parsed);
      EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << b.field;
      EXPECT_NE(s.message().find(b.field), std::string::npos) << s.message();
    }
  }
}

// ---- KvChunkBatch (several chunks per message) ----

v1::KvChunkBatch SampleBatch() {
  v1::KvChunkBatch batch;
  *batch.add_chunks() = Sample(300);
  v1::KvChunk second = Sample(17);
  second.set_kv_head(0);
  second.add_positions(-3);
  second.add_positions(1 << 20);
  second.set_page(99);
  *batch.add_chunks() = second;
  v1::KvChunk third = Sample(0);  // no bytes at all
  third.set_layer(0);
  *batch.add_chunks() = third;
  *batch.add_chunks() = Sample(4096);
  return batch;
}

void ExpectItemsAre(const KvChunkBatchPieces& parsed, const v1::KvChunkBatch& batch) {
  ASSERT_EQ(parsed.count, static_cast<size_t>(batch.chunks_size()));
  for (int i = 0; i < batch.chunks_size(); ++i) {
    const KvChunkPieces& item = parsed.chunks[i];
    EXPECT_EQ(Join(item.keys), batch.chunks(i).keys()) << i;
    EXPECT_EQ(Join(item.values), batch.chunks(i).values()) << i;
    EXPECT_EQ(item.key_bytes, batch.chunks(i).keys().size()) << i;
    v1::KvChunk header = batch.chunks(i);
    header.clear_keys();
    header.clear_values();
    EXPECT_EQ(item.header.SerializeAsString(), header.SerializeAsString()) << i;
  }
}

TEST(KvWireTest, BatchParsesProtobufEncodingWhateverTheSlicing) {
  const v1::KvChunkBatch batch = SampleBatch();
  const std::string encoded = batch.SerializeAsString();
  KvChunkBatchPieces parsed;  // reused: entries from the previous message must not leak
  for (size_t piece : {encoded.size(), size_t{1}, size_t{7}, size_t{300}, size_t{4096}}) {
    ASSERT_TRUE(ParseKvChunkBatch(Sliced(encoded, piece), &parsed).ok()) << piece;
    ExpectItemsAre(parsed, batch);
  }
  v1::KvChunkBatch one;
  *one.add_chunks() = Sample(5);
  ASSERT_TRUE(ParseKvChunkBatch(Sliced(one.SerializeAsString(), 3), &parsed).ok());
  ExpectItemsAre(parsed, one);
}

TEST(KvWireTest, BatchReferencesItsPiecesAndIsProtobufsEncoding) {
  const v1::KvChunkBatch batch = SampleBatch();
  std::vector<v1::KvChunk> headers;
  std::vector<std::vector<absl::string_view>> keys, values;
  for (const v1::KvChunk& c : batch.chunks()) {
    v1::KvChunk h = c;
    h.clear_keys();
    h.clear_values();
    headers.push_back(h);
    absl::string_view k = c.keys();
    // The keys in two uneven pieces, as page segments are.
    keys.push_back(k.size() < 2 ? std::vector<absl::string_view>{k}
                                : std::vector<absl::string_view>{k.substr(0, 1), k.substr(1)});
    values.push_back({c.values()});
  }
  auto first_owner = std::make_shared<int>(1);
  auto second_owner = std::make_shared<int>(2);
  std::weak_ptr<int> watch_first = first_owner, watch_second = second_owner;
  {
    std::vector<KvChunkRef> refs;
    for (size_t i = 0; i < headers.size(); ++i) {
      refs.push_back({&headers[i], keys[i], values[i], i < 2 ? first_owner : second_owner});
    }
    grpc::ByteBuffer buffer;
    SerializeKvChunkBatchRefs(refs, &buffer);
    refs.clear();
    first_owner.reset();
    second_owner.reset();
    EXPECT_FALSE(watch_first.expired());
    EXPECT_FALSE(watch_second.expired());
    v1::KvChunkBatch back;
    ASSERT_TRUE(back.ParseFromString(Flatten(buffer)));
    EXPECT_EQ(back.SerializeAsString(), batch.SerializeAsString());
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(buffer.Dump(&slices).ok());
    bool found = false;
    for (const grpc::Slice& s : slices) {
      found |= reinterpret_cast<const char*>(s.begin()) == batch.chunks(3).keys().data() + 1;
    }
    EXPECT_TRUE(found) << "the keys are referenced, not copied";
    KvChunkBatchPieces parsed;
    ASSERT_TRUE(ParseKvChunkBatch(buffer, &parsed).ok());
    ExpectItemsAre(parsed, batch);
  }
  EXPECT_TRUE(watch_first.expired());  // released with the last slice
  EXPECT_TRUE(watch_second.expired());
}

TEST(KvWireTest, BadBatchEncodingsAreRefused) {
  const std::string encoded = SampleBatch().SerializeAsString();
  KvChunkBatchPieces parsed;
  // Cut inside the last item: its declared length runs past the message.
  absl::Status cut = ParseKvChunkBatch(Sliced(encoded.substr(0, encoded.size() - 1), 64), &parsed);
  EXPECT_EQ(cut.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(cut.message().find("item 3: malformed KvChunk encoding (field 8)"), std::string::npos)
      << cut.message();
  // Cut inside the last item's length prefix.
  v1::KvChunkBatch small;
  *small.add_chunks() = Sample(100);
  const std::string prefix = small.SerializeAsString().substr(0, 2);  // tag, 1st length byte
  absl::Status short_prefix = ParseKvChunkBatch(Sliced(prefix, 1), &parsed);
  EXPECT_NE(short_prefix.message().find("malformed KvChunkBatch encoding (field 1, after 0"),
            std::string::npos)
      << short_prefix.message();
  // An item whose own encoding is bad (a varint of 11 bytes inside it).
  std::string bad_item = "\x0a\x0b" + std::string(11, '\xff');
  v1::KvChunkBatch one;
  *one.add_chunks() = Sample(8);
  absl::Status second = ParseKvChunkBatch(Sliced(one.SerializeAsString() + bad_item, 5), &parsed);
  EXPECT_EQ(second.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(second.message().find("item 1: malformed KvChunk encoding"), std::string::npos)
      << second.message();
  // An item field with the wrong wire type.
  absl::Status wire = ParseKvChunkBatch(Sliced(std::string("\x08\x01", 2), 1), &parsed);
  EXPECT_EQ(wire.code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvkeep
