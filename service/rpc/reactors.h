// Reactor helpers shared by the gRPC services (KvCache, Admin): how a call is admitted, where its
// work runs, and how it finishes.
//
// CallStatus() is the one place a handler's absl::Status becomes the call's gRPC status. An
// INTERNAL, DATA_LOSS or UNKNOWN status means a bug or a damaged store, not a caller's mistake: it
// is logged there, once per call (event rpc.internal_error with method, tenant and status; never
// tokens or key/value bytes).
//
// UnaryCalls runs a service's unary handlers: admit the caller (authentication, rate limits), run
// the handler on the gRPC thread or on the executor, move the reply, finish.
//
//   UnaryCalls unary("kvkeep.v1.KvCache", executor,
//                    [this](grpc::CallbackServerContext* c, const std::string& session) {
//                      return Admit(c, session);
//                    });
//   return unary.Inline(context, "GetArena", reply,
//                       [&](const std::string& tenant) { return engine_->GetArena(tenant, id); });
//   return unary.Offload(
//       context, "Compress", reply,
//       [this, request](const std::string& tenant) { return ...; }, request->session_id());
//
// ChunkStreamReader and ChunkStreamWriter are the stream reactors both directions share: a client
// stream applied chunk by chunk, and a server stream fed by a `next` function.
// ChunkedReplyWriter computes a whole reply (inline or on the executor) and writes it as several
// messages; both writers are OneAtATimeWriters. FailedStream finishes a stream at once (a refused
// caller).
//
// Thread safety: UnaryCalls is immutable after construction and may be used from any thread; it
// must outlive the executor's queued work (a service outlives its server and executor). A
// reactor is driven by gRPC, one reaction at a time, and deletes itself in OnDone.
#ifndef KVKEEP_SERVICE_RPC_REACTORS_H_
#define KVKEEP_SERVICE_RPC_REACTORS_H_

#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "grpcpp/server_context.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "grpcpp/support/server_callback.h"
#include "service/executor.h"

namespace kvkeep {

// The gRPC status of a finished call of `method` ("/kvkeep.v1.KvCache/Compress") made by
// `tenant` (empty when the caller is not known yet). Logs INTERNAL, DATA_LOSS and UNKNOWN.
grpc::Status CallStatus(absl::string_view method, absl::string_view tenant,
                        const absl::Status& status);

// The full gRPC name of `method` of `service`: "/<service>/<method>".
inline std::string FullMethodName(absl::string_view service, absl::string_view method) {
  return absl::StrCat("/", service, "/", method);
}

// Where a unary handler's work runs: the gRPC callback thread (fast, never blocking on disk or a
// device) or the executor (RocksDB, spill files, scoring, page copies).
enum class RunOn { kCallThread, kExecutor };

class UnaryCalls {
 public:
  // The caller of a call naming `session_id` (empty when it names none): its tenant, or the error
  // the call finishes with (UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED ...).
  using Admit = std::function<absl::StatusOr<std::string>(grpc::CallbackServerContext* context,
                                                          const std::string& session_id)>;

  // `service`: the proto service's full name ("kvkeep.v1.Admin"); `executor` must outlive this.
  UnaryCalls(std::string service, Executor* executor, Admit admit)
      : service_(std::move(service)), executor_(executor), admit_(std::move(admit)) {}

  // Admits the caller and runs `fn` on the gRPC thread. `fn(tenant)` (or `fn()`) returns
  // absl::StatusOr<Reply>; its value becomes *reply. `method`: a string literal ("GetArena").
  template <typename Reply, typename Fn>
  grpc::ServerUnaryReactor* Inline(grpc::CallbackServerContext* context, absl::string_view method,
                                   Reply* reply, Fn fn, const std::string& session_id = "") const {
    return Run(context, method, admit_(context, session_id), RunOn::kCallThread, reply,
               std::move(fn));
  }

  // As Inline, but `fn` runs on the executor (it must not capture the handler's locals by
  // reference; the request and reply live until the call finishes).
  template <typename Reply, typename Fn>
  grpc::ServerUnaryReactor* Offload(grpc::CallbackServerContext* context, absl::string_view method,
                                    Reply* reply, Fn fn, const std::string& session_id = "") const {
    return Run(context, method, admit_(context, session_id), RunOn::kExecutor, reply,
               std::move(fn));
  }

  // The general form, for a handler that admits the caller itself (`caller`) and chooses where
  // its work runs.
  template <typename Reply, typename Fn>
  grpc::ServerUnaryReactor* Run(grpc::CallbackServerContext* context, absl::string_view method,
                                absl::StatusOr<std::string> caller, RunOn where, Reply* reply,
                                Fn fn) const {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    if (!caller.ok()) {
      reactor->Finish(Finished(method, "", caller.status()));
      return reactor;
    }
    // `this` outlives the call: the service outlives the server and its executor.
    auto work = [this, reactor, reply, fn = std::move(fn), method,
                 tenant = std::move(*caller)]() mutable {
      auto result = Call(fn, tenant);
      if (result.ok()) *reply = std::move(*result);
      reactor->Finish(Finished(method, tenant, result.status()));
    };
    if (where == RunOn::kExecutor) {
      executor_->Schedule(std::move(work));
    } else {
      work();
    }
    return reactor;
  }

  const std::string& service() const { return service_; }

 private:
  // CallStatus with the full method name, built only for a failure (OK is the hot path).
  grpc::Status Finished(absl::string_view method, absl::string_view tenant,
                        const absl::Status& status) const {
    if (status.ok()) return grpc::Status::OK;
    return CallStatus(FullMethodName(service_, method), tenant, status);
  }
  // fn(tenant) when fn takes the caller, fn() otherwise (the Admin service's handlers).
  template <typename Fn>
  static auto Call(Fn& fn, const std::string& tenant) {
    if constexpr (std::is_invocable_v<Fn&, const std::string&>) {
      return fn(tenant);
    } else {
      return fn();
    }
  }

  const std::string service_;
  Executor* const executor_;
  const Admit admit_;
};

// A stream reactor (ServerReadReactor<T> or ServerWriteReactor<T>) that only finishes, with
// `status`: the reply to a caller refused before the stream started.
template <typename Reactor>
class FailedStream final : public Reactor {
 public:
  explicit FailedStream(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

// A client stream whose chunks are applied as they arrive (WriteKV, PutStats); the reply goes out
// only after the last one landed. The first failing chunk ends the stream with its status,
// prefixed "chunk <n>: " (n counts from 0) and followed by what the chunks before it applied (the
// reply so far), so a caller knows what landed.
//
// The stream is read as raw bytes (the service registers these methods with
// WithRawCallbackMethod_*) and parsed here: gRPC reports a chunk it cannot parse exactly like the
// end of the stream, which would answer OK with the chunks before it. An unparseable chunk
// finishes the call with INVALID_ARGUMENT instead.
template <typename Chunk, typename Reply>
class ChunkStreamReader final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  using Apply = std::function<absl::Status(const std::string& tenant, const Chunk&, Reply*)>;

  // `caller`: the tenant, or the status the stream finishes with at once. `response`: where the
  // encoded reply goes.
  ChunkStreamReader(std::string method, absl::StatusOr<std::string> caller,
                    grpc::ByteBuffer* response, Apply apply)
      : method_(std::move(method)), caller_(std::move(caller)), response_(response),
        apply_(std::move(apply)) {
    if (!caller_.ok()) {
      this->Finish(CallStatus(method_, "", caller_.status()));
      return;
    }
    this->StartRead(&raw_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      FinishWithReply();
      return;
    }
    chunk_.Clear();
    const bool parsed = grpc::SerializationTraits<Chunk>::Deserialize(&raw_, &chunk_).ok();
    absl::Status status =
        parsed ? apply_(*caller_, chunk_, &reply_)
               : absl::InvalidArgumentError(absl::StrCat(
                     "not a parseable ", Chunk::descriptor()->full_name(), " message"));
    if (!status.ok()) {
      this->Finish(CallStatus(
          method_, *caller_,
          absl::Status(status.code(),
                       absl::StrCat("chunk ", chunks_, ": ", status.message(),
                                    "; applied before it: ",
                                    chunks_ == 0 ? "nothing" : reply_.ShortDebugString(),
                                    "; nothing after it"))));
      return;
    }
    ++chunks_;
    this->StartRead(&raw_);
  }

  void OnDone() override { delete this; }

 private:
  void FinishWithReply() {
    bool own_buffer = false;
    grpc::Status encoded =
        grpc::SerializationTraits<Reply>::Serialize(reply_, response_, &own_buffer);
    this->Finish(encoded.ok() ? grpc::Status::OK : encoded);
  }

  const std::string method_;
  const absl::StatusOr<std::string> caller_;
  grpc::ByteBuffer* const response_;
  const Apply apply_;
  grpc::ByteBuffer raw_;
  Chunk chunk_;
  Reply reply_;
  uint64_t chunks_ = 0;
};

// What the server-stream writers share: one message in flight at a time. Each finished write
// starts the next (WriteNext: the next StartWrite, or Finish at the end); a reader that went
// away finishes the call CANCELLED. The reactor deletes itself when gRPC is done with it.
template <typename Msg>
class OneAtATimeWriter : public grpc::ServerWriteReactor<Msg> {
 public:
  void OnWriteDone(bool ok) final {
    if (!ok) {
      this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "reader went away"));
      return;
    }
    WriteNext();
  }

  void OnDone() final { delete this; }

 protected:
  // Starts the write of the next message, or finishes the stream.
  virtual void WriteNext() = 0;
};

// A server stream written one chunk at a time (ReadKV): `next(&chunk)` fills the next chunk and
// answers true, false at the end, or an error that finishes the stream.
template <typename Chunk>
class ChunkStreamWriter final : public OneAtATimeWriter<Chunk> {
 public:
  using Next = std::function<absl::StatusOr<bool>(Chunk* chunk)>;

  ChunkStreamWriter(std::string method, std::string tenant, Next next)
      : method_(std::move(method)), tenant_(std::move(tenant)), next_(std::move(next)) {
    WriteNext();
  }

 private:
  void WriteNext() override {
    absl::StatusOr<bool> more = next_(&chunk_);
    if (!more.ok()) {
      this->Finish(CallStatus(method_, tenant_, more.status()));
    } else if (!*more) {
      this->Finish(grpc::Status::OK);
    } else {
      this->StartWrite(&chunk_);
    }
  }

  const std::string method_;
  const std::string tenant_;
  const Next next_;
  Chunk chunk_;
};

// A server stream whose whole reply is computed first, on the gRPC thread or on the executor,
// then written message by message (the chunked table replies: CompressStream, AcquireStream ...).
// `produce(tenant)` returns the messages or the status the stream finishes with.
template <typename Msg>
class ChunkedReplyWriter final : public OneAtATimeWriter<Msg> {
 public:
  using Produce = std::function<absl::StatusOr<std::vector<Msg>>(const std::string& tenant)>;

  // `caller`: the tenant, or the status the stream finishes with at once. `executor` must outlive
  // the call (the service's executor does).
  ChunkedReplyWriter(std::string method, absl::StatusOr<std::string> caller, RunOn where,
                     Executor* executor, Produce produce)
      : method_(std::move(method)) {
    if (!caller.ok()) {
      this->Finish(CallStatus(method_, "", caller.status()));
      return;
    }
    tenant_ = std::move(*caller);
    // Reactions started before gRPC binds the reactor are queued by gRPC: safe from any thread.
    auto work = [this, produce = std::move(produce)] {
      absl::StatusOr<std::vector<Msg>> messages = produce(tenant_);
      if (!messages.ok()) {
        this->Finish(CallStatus(method_, tenant_, messages.status()));
        return;
      }
      messages_ = std::move(*messages);
      WriteNext();
    };
    if (where == RunOn::kExecutor) {
      executor->Schedule(std::move(work));
    } else {
      work();
    }
  }

 private:
  void WriteNext() override {
    if (next_ == messages_.size()) {
      this->Finish(grpc::Status::OK);
      return;
    }
    this->StartWrite(&messages_[next_++]);
  }

  const std::string method_;
  std::string tenant_;
  std::vector<Msg> messages_;
  size_t next_ = 0;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_RPC_REACTORS_H_
