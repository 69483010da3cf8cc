// kvkeep::Client: the bytes path (WriteKV, ReadKV) on raw gRPC buffers, with the KvChunk encoding
// of service/rpc/kv_wire.h: WriteKV messages reference the caller's bytes (no serialisation
// copy); ReadKV replies are parsed in place and copied once, straight to where the caller wants
// them. The wire encoding is protobuf's KvChunk, so either side may be an older build. By default
// the chunks travel several per message (kvkeep.v1.KvBatch, KvChunkBatch up to
// batch_message_bytes_ of chunk bytes); a daemon without KvBatch answers UNIMPLEMENTED and the
// call is redone one chunk per message (WriteKV / ReadKV).
#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "client/client.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"
#include "grpcpp/impl/rpc_method.h"
#include "grpcpp/support/sync_stream.h"
#include "kvkeep/v1/kv_batch.pb.h"
#include "service/rpc/kv_wire.h"

namespace kvkeep {
namespace {

constexpr char kWriteKvMethod[] = "/kvkeep.v1.KvCache/WriteKV";
constexpr char kReadKvMethod[] = "/kvkeep.v1.KvCache/ReadKV";
constexpr char kWriteKvBatchMethod[] = "/kvkeep.v1.KvBatch/WriteKVBatch";
constexpr char kReadKvBatchMethod[] = "/kvkeep.v1.KvBatch/ReadKVBatch";

// How long WriteKV waits, after the call ended, for gRPC to let go of the caller's bytes (it
// does so when the call is destroyed; the wait is a guard, not an expected delay).
constexpr absl::Duration kReleaseWait = absl::Seconds(30);

uint64_t SumSizes(absl::Span<const absl::string_view> pieces) {
  uint64_t n = 0;
  for (absl::string_view p : pieces) n += p.size();
  return n;
}

}  // namespace

uint64_t Client::BatchBytesToTry() const {
  return has_kv_batch_.load(std::memory_order_relaxed) == 0 ? 0 : batch_message_bytes_;
}

grpc::Status Client::WriteCall(absl::Span<const RefChunk> chunks, uint64_t batch_bytes,
                               grpc::ByteBuffer* reply) {
  // Below this channel's own message limit, with WriteHead's framing room.
  if (batch_bytes > 0) {
    batch_bytes = std::min<uint64_t>(
        batch_bytes, std::max<int64_t>(1, int64_t{max_message_bytes_} - 4096));
  }
  // Every slice referencing the caller's bytes holds a copy of `hold`; the last one to go tells.
  absl::Notification released;
  grpc::Status status;
  {
    std::shared_ptr<const void> hold(&released, [](const void* n) {
      static_cast<absl::Notification*>(const_cast<void*>(n))->Notify();
    });
    std::unique_ptr<grpc::ClientContext> context = MakeCallContext(token_);
    const grpc::internal::RpcMethod method(batch_bytes > 0 ? kWriteKvBatchMethod : kWriteKvMethod,
                                           grpc::internal::RpcMethod::CLIENT_STREAMING);
    std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
        grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel_.get(), method,
                                                                      context.get(), reply));
    // Buffer hints let the transport coalesce chunks into fewer, larger writes; WritesDone
    // flushes.
    const grpc::WriteOptions buffered = grpc::WriteOptions().set_buffer_hint();
    std::vector<KvChunkRef> batch;
    uint64_t batch_total = 0;
    bool open = true;
    auto send_batch = [&] {
      grpc::ByteBuffer message;
      SerializeKvChunkBatchRefs(batch, &message);
      batch.clear();
      batch_total = 0;
      open = writer->Write(message, buffered);  // false: the daemon finished early
    };
    for (size_t i = 0; open && i < chunks.size(); ++i) {
      const RefChunk& chunk = chunks[i];
      const absl::string_view keys[] = {chunk.keys};
      const absl::string_view values[] = {chunk.values};
      if (batch_bytes == 0) {
        grpc::ByteBuffer message;
        SerializeKvChunkRefs(*chunk.header, keys, values, hold, &message);
        open = writer->Write(message, buffered);
        continue;
      }
      // A chunk is never split: one that would take the message past the budget starts the next.
      // Counted: keys, values, the other fields (ids, positions; `header` may also hold keys
      // and values, which are not sent from it) and the item's tag and length.
      const uint64_t bytes = chunk.keys.size() + chunk.values.size() +
                             chunk.header->session_id().size() +
                             chunk.header->sequence_id().size() +
                             5 * uint64_t(chunk.header->positions_size()) + 64;
      if (!batch.empty() && batch_total + bytes > batch_bytes) send_batch();
      if (!open) break;
      // The spans point into `chunk` (alive until the call ends) through RefChunk's fields.
      batch.push_back({chunk.header, absl::MakeConstSpan(&chunk.keys, 1),
                       absl::MakeConstSpan(&chunk.values, 1), hold});
      batch_total += bytes;
    }
    if (open && !batch.empty()) send_batch();
    batch.clear();
    writer->WritesDone();
    status = writer->Finish();
  }  // the call is destroyed here: gRPC drops its references to the caller's bytes
  if (!released.WaitForNotificationWithTimeout(kReleaseWait)) {
    return grpc::Status(grpc::StatusCode::INTERNAL,
                        "WriteKV: gRPC still references the written bytes after the call");
  }
  return status;
}

template <typename F>
auto Client::WithBulk(F f) -> std::optional<std::invoke_result_t<F, BulkChannelClient&>> {
  if (!use_bulk_channel_ || !bulk_mu_.TryLock()) return std::nullopt;
  std::optional<std::invoke_result_t<F, BulkChannelClient&>> result;
  if (bulk_ != nullptr && !bulk_->broken()) result = f(*bulk_);
  bulk_mu_.Unlock();
  return result;
}

absl::StatusOr<v1::WriteSummary> Client::WriteRefs(absl::Span<const RefChunk> chunks) {
  bool broke = false;
  std::optional<absl::StatusOr<v1::WriteSummary>> bulk =
      WithBulk([&](BulkChannelClient& b) {
        absl::StatusOr<v1::WriteSummary> written = b.Write(chunks);
        broke = b.broken();
        return written;
      });
  // A connection that broke mid-write: the same bytes go again to the same slots over gRPC.
  if (bulk.has_value() && !broke) return *std::move(bulk);
  grpc::ByteBuffer reply;
  const uint64_t batch_bytes = BatchBytesToTry();
  grpc::Status status = WriteCall(chunks, batch_bytes, &reply);
  if (batch_bytes > 0) {
    // UNIMPLEMENTED comes from a daemon without KvBatch, before it applied anything: the same
    // chunks go again, one per message.
    const bool missing = status.error_code() == grpc::StatusCode::UNIMPLEMENTED;
    has_kv_batch_.store(missing ? 0 : 1, std::memory_order_relaxed);
    if (missing) {
      reply.Clear();
      status = WriteCall(chunks, 0, &reply);
    }
  }
  if (!status.ok()) return FromGrpcStatus(status);
  v1::WriteSummary summary;
  if (!grpc::SerializationTraits<v1::WriteSummary>::Deserialize(&reply, &summary).ok()) {
    return absl::InternalError("WriteKV: the daemon's reply is not a WriteSummary");
  }
  return summary;
}

absl::StatusOr<v1::WriteSummary> Client::WriteKV(const std::vector<v1::KvChunk>& chunks) {
  std::vector<RefChunk> refs;
  refs.reserve(chunks.size());
  for (const v1::KvChunk& c : chunks) refs.push_back({&c, c.keys(), c.values()});
  return WriteRefs(refs);
}

absl::StatusOr<v1::WriteSummary> Client::WriteKvViews(absl::Span<const KvChunkView> chunks) {
  std::vector<RefChunk> refs;
  refs.reserve(chunks.size());
  for (const KvChunkView& c : chunks) refs.push_back({&c.header, c.keys, c.values});
  return WriteRefs(refs);
}

absl::StatusOr<v1::WriteSummary> Client::WriteHead(const std::string& sequence, uint32_t layer,
                                                   uint32_t kv_head, uint32_t offset,
                                                   uint32_t count, const void* keys,
                                                   const void* values) {
  ASSIGN_OR_RETURN(v1::PageTable table, GetSequence(sequence, false));
  if (table.arenas_size() == 0 && table.heads_size() == 0) {
    return absl::FailedPreconditionError("sequence has no heads");
  }
  // Token size from the first mapped arena of the sequence.
  uint64_t token_bytes = 0;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& head : table.heads()) {
      if (head.pages_size() == 0) continue;
      auto arena = arenas_.find(static_cast<uint32_t>(head.pages(0) >> 32));
      if (arena != arenas_.end()) {
        const auto& g = arena->second->arena().geometry();
        token_bytes = g.value_offset() / g.tokens_per_page();
      }
      break;
    }
  }
  if (token_bytes == 0) return absl::FailedPreconditionError("no pages allocated; call Allocate");
  const uint64_t per_chunk = std::max<uint64_t>(1, (max_message_bytes_ - 4096) / (2 * token_bytes));
  std::vector<KvChunkView> chunks;
  const auto* k = static_cast<const char*>(keys);
  const auto* v = static_cast<const char*>(values);
  for (uint64_t done = 0; done < count;) {
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(per_chunk, count - done));
    KvChunkView& chunk = chunks.emplace_back();
    chunk.header.set_session_id(session_id_);
    chunk.header.set_sequence_id(sequence);
    chunk.header.set_layer(layer);
    chunk.header.set_kv_head(kv_head);
    chunk.header.set_token_offset(static_cast<uint32_t>(offset + done));
    chunk.header.set_token_count(n);
    chunk.keys = absl::string_view(k + done * token_bytes, n * token_bytes);
    chunk.values = absl::string_view(v + done * token_bytes, n * token_bytes);
    done += n;
  }
  return WriteKvViews(chunks);
}

absl::Status Client::ReadCall(const v1::ReadRequest& request, uint64_t batch_bytes,
                              const KvChunkSink& sink, uint64_t* messages) {
  *messages = 0;
  grpc::ByteBuffer encoded;
  bool own_buffer = false;
  grpc::Status serialised;
  if (batch_bytes > 0) {
    v1::ReadBatchRequest batch_request;
    *batch_request.mutable_read() = request;
    // Below this channel's own receive limit, with room for the message's framing.
    const uint64_t receivable = std::max<int64_t>(4096, int64_t{max_message_bytes_} - (64 << 10));
    batch_request.set_max_message_bytes(
        static_cast<uint32_t>(std::min<uint64_t>({batch_bytes, receivable, UINT32_MAX})));
    serialised = grpc::SerializationTraits<v1::ReadBatchRequest>::Serialize(
        batch_request, &encoded, &own_buffer);
  } else {
    serialised =
        grpc::SerializationTraits<v1::ReadRequest>::Serialize(request, &encoded, &own_buffer);
  }
  if (!serialised.ok()) return FromGrpcStatus(serialised);
  std::unique_ptr<grpc::ClientContext> context = MakeCallContext(token_);
  const grpc::internal::RpcMethod method(batch_bytes > 0 ? kReadKvBatchMethod : kReadKvMethod,
                                         grpc::internal::RpcMethod::SERVER_STREAMING);
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel_.get(), method,
                                                                    context.get(), encoded));
  grpc::ByteBuffer received;
  KvChunkPieces chunk;
  KvChunkBatchPieces batch;
  absl::Status refused;  // by the parser or the sink
  for (uint64_t n = 0; refused.ok() && reader->Read(&received); ++*messages) {
    if (batch_bytes == 0) {
      absl::Status parsed = ParseKvChunkPieces(received, &chunk);
      if (!parsed.ok()) {
        refused = absl::InvalidArgumentError(absl::StrCat(
            "ReadKV reply chunk ", n, " is not a kvkeep.v1.KvChunk (", parsed.message(), ")"));
      } else {
        refused = sink(chunk.header, chunk.keys, chunk.values);
      }
      ++n;
      chunk.slices.clear();
    } else {
      absl::Status parsed = ParseKvChunkBatch(received, &batch);
      if (!parsed.ok()) {
        refused = absl::InvalidArgumentError(
            absl::StrCat("ReadKV reply chunk ", n, " (message ", *messages,
                         ") is not in a kvkeep.v1.KvChunkBatch (", parsed.message(), ")"));
      }
      for (size_t i = 0; refused.ok() && i < batch.count; ++i, ++n) {
        const KvChunkPieces& item = batch.chunks[i];
        refused = sink(item.header, item.keys, item.values);
      }
      batch.slices.clear();
    }
    received.Clear();
  }
  if (!refused.ok()) {
    context->TryCancel();
    (void)reader->Finish();
    return refused;
  }
  grpc::Status status = reader->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  return absl::OkStatus();
}

absl::Status Client::ReadKvInto(const v1::ReadRequest& request, const KvChunkSink& sink) {
  std::optional<absl::Status> bulk =
      WithBulk([&](BulkChannelClient& b) { return b.Read(request, nullptr, &sink); });
  if (bulk.has_value()) return *bulk;
  const uint64_t batch_bytes = BatchBytesToTry();
  uint64_t messages = 0;
  absl::Status status = ReadCall(request, batch_bytes, sink, &messages);
  if (batch_bytes > 0) {
    // A daemon without KvBatch answers UNIMPLEMENTED before sending anything: read again, one
    // chunk per message.
    const bool missing = messages == 0 && absl::IsUnimplemented(status);
    has_kv_batch_.store(missing ? 0 : 1, std::memory_order_relaxed);
    if (missing) status = ReadCall(request, 0, sink, &messages);
  }
  return status;
}

absl::Status Client::ReadKvPlaced(const v1::ReadRequest& request, const KvChunkPlacer& place) {
  std::optional<absl::Status> bulk =
      WithBulk([&](BulkChannelClient& b) { return b.Read(request, &place, nullptr); });
  if (bulk.has_value()) return *bulk;
  return ReadKvInto(request, [&](const v1::KvChunk& header,
                                 absl::Span<const absl::string_view> keys,
                                 absl::Span<const absl::string_view> values) -> absl::Status {
    ASSIGN_OR_RETURN(KvChunkPlace where, place(header, SumSizes(keys), SumSizes(values)));
    CopyPieces(keys, where.keys);
    CopyPieces(values, where.values);
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<v1::KvChunk>> Client::ReadKV(const v1::ReadRequest& request) {
  std::vector<v1::KvChunk> chunks;
  RETURN_IF_ERROR(ReadKvInto(
      request, [&](const v1::KvChunk& header, absl::Span<const absl::string_view> keys,
                   absl::Span<const absl::string_view> values) {
        v1::KvChunk& c = chunks.emplace_back(header);
        c.mutable_keys()->resize(SumSizes(keys));
        CopyPieces(keys, c.mutable_keys()->data());
        c.mutable_values()->resize(SumSizes(values));
        CopyPieces(values, c.mutable_values()->data());
        return absl::OkStatus();
      }));
  return chunks;
}

namespace {

v1::ReadRequest HeadRequest(const std::string& sequence, uint32_t layer, uint32_t kv_head) {
  v1::ReadRequest request;
  request.set_sequence_id(sequence);
  request.set_layer_begin(layer);
  request.set_layer_end(layer + 1);
  request.set_kv_head_begin(kv_head);
  request.set_kv_head_end(kv_head + 1);
  return request;
}

}  // namespace

absl::StatusOr<HeadData> Client::ReadHead(const std::string& sequence, uint32_t layer,
                                          uint32_t kv_head) {
  HeadData out;
  RETURN_IF_ERROR(ReadKvInto(
      HeadRequest(sequence, layer, kv_head),
      [&](const v1::KvChunk& header, absl::Span<const absl::string_view> keys,
          absl::Span<const absl::string_view> values) {
        for (absl::string_view p : keys) out.keys.append(p.data(), p.size());
        for (absl::string_view p : values) out.values.append(p.data(), p.size());
        out.positions.insert(out.positions.end(), header.positions().begin(),
                             header.positions().end());
        return absl::OkStatus();
      }));
  return out;
}

absl::StatusOr<uint32_t> Client::ReadHeadInto(const std::string& sequence, uint32_t layer,
                                              uint32_t kv_head, void* keys, void* values,
                                              uint64_t capacity_bytes,
                                              std::vector<int32_t>* positions) {
  if (positions != nullptr) positions->clear();
  uint32_t tokens = 0;
  RETURN_IF_ERROR(ReadKvPlaced(
      HeadRequest(sequence, layer, kv_head),
      [&](const v1::KvChunk& header, uint64_t key_bytes,
          uint64_t value_bytes) -> absl::StatusOr<KvChunkPlace> {
        if (header.token_count() == 0 || key_bytes != value_bytes ||
            key_bytes % header.token_count() != 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "ReadKV reply chunk at token ", header.token_offset(), " holds ", key_bytes,
              " bytes of keys and ", value_bytes, " of values for ", header.token_count(),
              " tokens"));
        }
        const uint64_t at = uint64_t{header.token_offset()} * (key_bytes / header.token_count());
        if (at > capacity_bytes || key_bytes > capacity_bytes - at) {
          return absl::OutOfRangeError(absl::StrCat(
              "head (layer ", layer, ", KV head ", kv_head, ") holds more than ", capacity_bytes,
              " bytes of keys; tokens from ", header.token_offset(), " do not fit"));
        }
        if (positions != nullptr) {
          positions->insert(positions->end(), header.positions().begin(),
                            header.positions().end());
        }
        tokens = std::max(tokens, header.token_offset() + header.token_count());
        return KvChunkPlace{static_cast<char*>(keys) + at, static_cast<char*>(values) + at};
      }));
  return tokens;
}

}  // namespace kvkeep
