// KvCacheService: the bytes path (WriteKV, ReadKV) on raw gRPC buffers. WriteKV reads each
// chunk's keys and values straight from the received slices into the pages, piece by piece (one
// copy, the backend's); ReadKV's reply slices reference the pages themselves, pinned until gRPC has sent
// them (no copy on the CPU backend; one, out of device memory, on CUDA; service/engine/
// reply_pins.h). The messages on the wire are the kvkeep.v1 KvChunk encoding; KvBatch's
// WriteKVBatch / ReadKVBatch (kv_batch_service.h) carry the same chunks several per message.
#include <algorithm>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvkeep/v1/kv_batch.pb.h"
#include "service/rpc/request_auth.h"
#include "service/rpc/kv_wire.h"
#include "service/rpc/kvcache_service.h"

namespace kvkeep {
namespace {

// WriteKV: chunks applied as they arrive; the summary goes out, encoded, after the last one
// landed. The first failing (or unparseable) chunk ends the stream with its status, prefixed
// "chunk <n>: " and followed by what the chunks before it applied.
class WriteKvReactor final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  using Apply = std::function<absl::Status(const std::string& tenant, const KvChunkPieces&,
                                           v1::WriteSummary*)>;

  // `batched`: each message is a KvChunkBatch (KvBatch.WriteKVBatch), else one KvChunk.
  WriteKvReactor(std::string method, absl::StatusOr<std::string> caller, grpc::ByteBuffer* reply,
                 bool batched, Apply apply)
      : method_(std::move(method)), caller_(std::move(caller)), reply_(reply), batched_(batched),
        apply_(std::move(apply)) {
    if (!caller_.ok()) {
      Finish(CallStatus(method_, "", caller_.status()));
      return;
    }
    StartRead(&received_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      bool own_buffer = false;
      grpc::Status encoded = grpc::SerializationTraits<v1::WriteSummary>::Serialize(
          summary_, reply_, &own_buffer);
      Finish(encoded);
      return;
    }
    if (batched_) {
      OnBatch();
      return;
    }
    absl::Status status = ParseKvChunkPieces(received_, &chunk_);
    if (!status.ok()) {
      status = absl::InvalidArgumentError(
          absl::StrCat("not a parseable kvkeep.v1.KvChunk message (", status.message(), ")"));
    } else {
      status = apply_(*caller_, chunk_, &summary_);
    }
    chunk_.slices.clear();  // release the received buffers before the next read
    received_.Clear();
    if (!status.ok()) {
      // As every chunk stream (reactors.h, ChunkStreamReader): say what landed before it.
      Finish(CallStatus(
          method_, *caller_,
          absl::Status(status.code(),
                       absl::StrCat("chunk ", chunks_, ": ", status.message(),
                                    "; applied before it: ",
                                    chunks_ == 0 ? "nothing" : summary_.ShortDebugString(),
                                    "; nothing after it"))));
      return;
    }
    ++chunks_;
    StartRead(&received_);
  }

  void OnDone() override { delete this; }

 private:
  // A KvChunkBatch: parsed whole first (nothing of an unparseable message applies), then its
  // items applied in order, as WriteKV applies its messages.
  void OnBatch() {
    absl::Status status = ParseKvChunkBatch(received_, &batch_);
    std::string where = absl::StrCat(" (message ", messages_, ")");
    if (!status.ok()) {
      status = absl::InvalidArgumentError(absl::StrCat(
          "not a parseable kvkeep.v1.KvChunkBatch message (", status.message(), ")"));
    } else if (batch_.count == 0) {
      status = absl::InvalidArgumentError("a KvChunkBatch message without chunks");
    }
    for (size_t i = 0; status.ok() && i < batch_.count; ++i) {
      status = apply_(*caller_, batch_.chunks[i], &summary_);
      if (!status.ok()) {
        where = absl::StrCat(" (message ", messages_, ", item ", i, ")");
      } else {
        ++chunks_;
      }
    }
    batch_.slices.clear();  // release the received buffers before the next read
    received_.Clear();
    if (!status.ok()) {
      Finish(CallStatus(
          method_, *caller_,
          absl::Status(status.code(),
                       absl::StrCat("chunk ", chunks_, where, ": ", status.message(),
                                    "; applied before it: ",
                                    chunks_ == 0 ? "nothing" : summary_.ShortDebugString(),
                                    "; nothing after it"))));
      return;
    }
    ++messages_;
    StartRead(&received_);
  }

  const std::string method_;
  const absl::StatusOr<std::string> caller_;
  grpc::ByteBuffer* const reply_;
  const bool batched_;
  const Apply apply_;
  grpc::ByteBuffer received_;
  KvChunkPieces chunk_;
  KvChunkBatchPieces batch_;
  uint64_t messages_ = 0;
  v1::WriteSummary summary_;
  uint64_t chunks_ = 0;
};

}  // namespace

grpc::ServerReadReactor<grpc::ByteBuffer>* KvCacheService::WriteKV(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* reply) {
  return NewWriteKv(context, reply, /*batched=*/false);
}

grpc::ServerReadReactor<grpc::ByteBuffer>* KvCacheService::WriteKVBatch(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* reply) {
  return NewWriteKv(context, reply, /*batched=*/true);
}

grpc::ServerReadReactor<grpc::ByteBuffer>* KvCacheService::NewWriteKv(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* reply, bool batched) {
  // The stream is one call, charged with its first chunk (which may name the session).
  return new WriteKvReactor(
      batched ? "/kvkeep.v1.KvBatch/WriteKVBatch" : FullName("WriteKV"),
      AuthenticateWorker(*context, *engine_, admin_token_hash_), reply, batched,
      [this](const std::string& tenant, const KvChunkPieces& chunk, v1::WriteSummary* summary) {
        const uint64_t bytes = chunk.key_bytes + chunk.value_bytes;
        const std::string& session = chunk.header.session_id();
        if (limits_ != nullptr) {
          if (summary->chunks() == 0) RETURN_IF_ERROR(limits_->ChargeCall(tenant, session));
          RETURN_IF_ERROR(limits_->ChargeBytes(tenant, session, bytes));
        }
        RETURN_IF_ERROR(engine_->WriteChunkPieces(tenant, chunk.header, chunk.keys, chunk.values));
        summary->set_chunks(summary->chunks() + 1);
        summary->set_tokens(summary->tokens() + chunk.header.token_count());
        summary->set_bytes(summary->bytes() + bytes);
        return absl::OkStatus();
      });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* KvCacheService::ReadKV(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  absl::StatusOr<std::string> tenant = Admit(context, "");
  v1::ReadRequest read;
  if (tenant.ok()) {
    grpc::ByteBuffer copy(*request);  // Deserialize consumes its buffer; a copy is a reference
    if (!grpc::SerializationTraits<v1::ReadRequest>::Deserialize(&copy, &read).ok()) {
      tenant = absl::InvalidArgumentError("malformed ReadRequest");
    }
  }
  absl::StatusOr<std::shared_ptr<const void>> stream = OpenReadStream(tenant);
  absl::StatusOr<std::unique_ptr<CacheEngine::ReadCursor>> opened =
      stream.ok() ? engine_->OpenRead(*tenant, read) : stream.status();
  if (!opened.ok()) {
    return new FailedStream<grpc::ServerWriteReactor<grpc::ByteBuffer>>(
        CallStatus(FullName("ReadKV"), tenant.ok() ? *tenant : "", opened.status()));
  }
  // Each chunk is charged to the tenant's session-less limits before it is sent. Its bytes go out
  // referenced in place (reply_pins.h): pinned page memory, or the strings the cursor copied to.
  std::shared_ptr<CacheEngine::ReadCursor> cursor = std::move(*opened);
  return new ChunkStreamWriter<grpc::ByteBuffer>(
      FullName("ReadKV"), *tenant,
      [this, cursor, tenant = *tenant, stream = *std::move(stream),
       chunk = std::make_shared<ReadChunk>()](grpc::ByteBuffer* out) -> absl::StatusOr<bool> {
        // gRPC is done with the previous message: its pins go now, not after this chunk (a
        // Compress waiting for them would otherwise wait on this very stream).
        out->Clear();
        ASSIGN_OR_RETURN(bool more, cursor->NextReferenced(chunk.get()));
        if (!more) return false;
        if (limits_ != nullptr) {
          uint64_t bytes = 0;
          for (absl::string_view p : chunk->keys) bytes += p.size();
          for (absl::string_view p : chunk->values) bytes += p.size();
          absl::Status charged = limits_->ChargeBytes(tenant, "", bytes);
          if (!charged.ok()) {
            chunk->Clear();  // unpins now
            return charged;
          }
        }
        SerializeKvChunkRefs(chunk->header, chunk->keys, chunk->values, chunk->hold, out);
        chunk->Clear();  // the slices hold the pins from here
        return true;
      });
}

grpc::ServerWriteReactor<grpc::ByteBuffer>* KvCacheService::ReadKVBatch(
    grpc::CallbackServerContext* context, const grpc::ByteBuffer* request) {
  const std::string method = "/kvkeep.v1.KvBatch/ReadKVBatch";
  absl::StatusOr<std::string> tenant = Admit(context, "");
  v1::ReadBatchRequest read;
  if (tenant.ok()) {
    grpc::ByteBuffer copy(*request);  // Deserialize consumes its buffer; a copy is a reference
    if (!grpc::SerializationTraits<v1::ReadBatchRequest>::Deserialize(&copy, &read).ok()) {
      tenant = absl::InvalidArgumentError("malformed ReadBatchRequest");
    }
  }
  absl::StatusOr<std::shared_ptr<const void>> stream = OpenReadStream(tenant);
  absl::StatusOr<std::unique_ptr<CacheEngine::ReadCursor>> opened =
      stream.ok() ? engine_->OpenRead(*tenant, read.read()) : stream.status();
  if (!opened.ok()) {
    return new FailedStream<grpc::ServerWriteReactor<grpc::ByteBuffer>>(
        CallStatus(method, tenant.ok() ? *tenant : "", opened.status()));
  }
  // Encoded chunks per message (NextReferencedBatch's estimate): at most the reply budget less
  // room for the message's own framing.
  const uint64_t cap = ReplyBudget() > (64 << 10) ? ReplyBudget() - (64 << 10) : 4096;
  const uint64_t budget = std::min<uint64_t>(
      read.max_message_bytes() == 0 ? kDefaultBatchMessageBytes : read.max_message_bytes(), cap);
  struct State {
    std::vector<ReadChunk> chunks;
    std::vector<KvChunkRef> refs;
  };
  std::shared_ptr<CacheEngine::ReadCursor> cursor = std::move(*opened);
  return new ChunkStreamWriter<grpc::ByteBuffer>(
      method, *tenant,
      [this, cursor, budget, tenant = *tenant, stream = *std::move(stream),
       state = std::make_shared<State>()](grpc::ByteBuffer* out) -> absl::StatusOr<bool> {
        out->Clear();  // as ReadKV: the previous message's pins go before the next chunks
        auto unpin = [&] {
          for (ReadChunk& c : state->chunks) c.Clear();
          state->refs.clear();
        };
        absl::StatusOr<size_t> n = cursor->NextReferencedBatch(&state->chunks, budget);
        if (!n.ok()) {
          unpin();
          return n.status();
        }
        if (*n == 0) return false;
        state->refs.clear();
        for (size_t i = 0; i < *n; ++i) {
          const ReadChunk& c = state->chunks[i];
          state->refs.push_back({&c.header, c.keys, c.values, c.hold});
          if (limits_ != nullptr) {
            absl::Status charged =
                limits_->ChargeBytes(tenant, "", KvChunkRefBytes(state->refs.back()));
            if (!charged.ok()) {
              unpin();
              return charged;
            }
          }
        }
        SerializeKvChunkBatchRefs(state->refs, out);
        unpin();  // the slices hold the pins from here
        return true;
      });
}

}  // namespace kvkeep
