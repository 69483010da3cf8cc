// kvkeep::Client: the worker side of the daemon.
//
// One Client is one worker session: Attach() opens the Session stream, maps the tenant's arenas
// (and every arena announced later), and the session lives until Close() or destruction.
//
//   ASSIGN_OR_RETURN(auto client, Client::Attach({.target = "unix:/run/kvkeep/kvkeepd.sock"},
//                                                tenant_token, "worker-0"));
//   RETURN_IF_ERROR(client->RegisterModel(layout).status());
//   ASSIGN_OR_RETURN(std::string seq, client->CreateSequence("llama3-8b"));
//   RETURN_IF_ERROR(client->Allocate(seq, 512).status());
//   RETURN_IF_ERROR(client->WriteInPlace(seq, layer, head, 0, 512, keys, values));  // zero-copy
//   RETURN_IF_ERROR(client->Commit(seq, 512).status());
//   ASSIGN_OR_RETURN(HeadData back, client->ReadHead(seq, layer, head));        // over gRPC
//
// A worker that moves bytes over gRPC (ReadKV, ReadHead, WriteKV) should call
// kvkeep::TuneWorkerProcess() (common/process_tuning.h) once, early in main. Reads back to back
// ran 2.6-6x faster with it on a VM (docs/api.md "Worker process settings"). The client never
// makes that process-wide setting itself.
//
// Thread-safe: calls may come from many threads (each RPC is independent).
#ifndef KVKEEP_CLIENT_CLIENT_H_
#define KVKEEP_CLIENT_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <type_traits>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "client/arena_channel_client.h"
#include "client/arena_mapping.h"
#include "client/bulk_channel_client.h"
#include "client/call_context.h"
#include "kvkeep/v1/kvcache.grpc.pb.h"

namespace kvkeep {

// Keys, values and positions of one (layer, KV head), as read back.
struct HeadData {
  std::string keys;    // token_count * head_dim * sizeof(dtype)
  std::string values;
  std::vector<int32_t> positions;
};

// One WriteKV chunk sent from the caller's own buffers (WriteKvViews): every field of `header`
// but keys and values (ignored when set), and the bytes, which must stay valid and unchanged
// until WriteKvViews returns. Nothing is copied on the way to the socket.
struct KvChunkView {
  v1::KvChunk header;
  absl::string_view keys;
  absl::string_view values;
};

// Receives ReadKvInto's chunks, in order: the header (every field but keys and values) and the
// bytes as pieces, views into the received message valid during the call only (concatenated in
// order they are the field; CopyPieces in service/rpc/kv_wire.h copies them out). A non-OK
// status cancels the read and is ReadKvInto's answer.
// (KvChunkSink and KvChunkPlacer are declared in client/bulk_channel_client.h.)

class Client {
 public:
  // Connects, opens the Session stream and waits for the daemon's first event (up to `timeout`).
  // UNAUTHENTICATED for a bad token; UNAVAILABLE when the daemon cannot be reached.
  static absl::StatusOr<std::unique_ptr<Client>> Attach(const ChannelOptions& options,
                                                        std::string token,
                                                        std::string worker_name,
                                                        absl::Duration timeout = absl::Seconds(10));
  // As above, over an existing channel (e.g. grpc::Server::InProcessChannel in tests). No
  // connection wait first (in-process channels have no connectivity state): an unreachable
  // daemon fails the Session call itself, with UNAVAILABLE. `max_message_bytes`: the largest
  // message the channel sends (WriteHead's chunk size).
  static absl::StatusOr<std::unique_ptr<Client>> Attach(std::shared_ptr<grpc::Channel> channel,
                                                        std::string token,
                                                        std::string worker_name,
                                                        absl::Duration timeout = absl::Seconds(10),
                                                        int max_message_bytes = 4 << 20);
  ~Client();  // Close()s

  // Ends the session (the daemon releases what it held) and waits for the event thread.
  void Close();

  const std::string& session_id() const { return session_id_; }
  const std::string& tenant() const { return tenant_; }
  // OK while the Session stream is open; its final status after (e.g. ABORTED when superseded).
  absl::Status session_status() const;

  absl::StatusOr<v1::RegisterModelReply> RegisterModel(
      const v1::ModelLayout& layout, const std::vector<v1::WoGram>& grams = {});
  absl::StatusOr<std::string> CreateSequence(const std::string& model, bool retain = false);
  // Room for `tokens` more tokens in every head; the client records the new pages.
  absl::StatusOr<v1::PageTableDelta> Allocate(const std::string& sequence, uint32_t tokens);
  // Commits `tokens` tokens, optionally with positions and query statistics. When the commit
  // triggered decode-time compression, the client's page table follows the reply.
  absl::StatusOr<v1::CommitReply> Commit(const std::string& sequence, uint32_t tokens,
                                         const std::vector<int32_t>& positions = {},
                                         const std::vector<v1::LayerStats>& stats = {});
  // Sends query statistics, one layer per chunk.
  absl::StatusOr<v1::StatsAck> PutStats(const std::string& sequence,
                                        const std::vector<v1::LayerStats>& stats);
  // Compresses the sequence in place; `policy` overrides the tenant default field by field. The
  // client's page table follows the reply.
  absl::StatusOr<v1::CompressReply> Compress(const std::string& sequence,
                                             const v1::Policy& policy = {});

  // Zero-copy: copies keys/values of `count` tokens straight into the mapped pages of
  // (layer, kv_head) from slot `offset`. Needs the pages from Allocate()/Acquire() in this client.
  // HOST_SHM arenas: `keys`/`values` are host memory. CUDA_IPC arenas: host memory (pageable or
  // pinned) or device memory of this process (cudaMemcpyDefault; synchronize the stream that
  // produced it first); the copies are done when this returns. The arenas' mappings are pinned
  // for the copy, not locked: other calls proceed meanwhile.
  absl::Status WriteInPlace(const std::string& sequence, uint32_t layer, uint32_t kv_head,
                            uint32_t offset, uint32_t count, const void* keys,
                            const void* values);
  // The reverse: copies keys/values of `count` tokens from slot `offset` of the mapped pages into
  // `keys`/`values` (host, or device memory for CUDA_IPC arenas), done when this returns. Reads
  // what the pages hold now, committed or not.
  absl::Status ReadInPlace(const std::string& sequence, uint32_t layer, uint32_t kv_head,
                           uint32_t offset, uint32_t count, void* keys, void* values);

  // Bytes path: streams the chunks (each below the message limit) in one WriteKV call.
  absl::StatusOr<v1::WriteSummary> WriteKV(const std::vector<v1::KvChunk>& chunks);
  // Splits one head's token range into chunks below the message limit and writes them.
  absl::StatusOr<v1::WriteSummary> WriteHead(const std::string& sequence, uint32_t layer,
                                             uint32_t kv_head, uint32_t offset, uint32_t count,
                                             const void* keys, const void* values);
  absl::StatusOr<std::vector<v1::KvChunk>> ReadKV(const v1::ReadRequest& request);
  absl::StatusOr<HeadData> ReadHead(const std::string& sequence, uint32_t layer, uint32_t kv_head);

  // ---- Bytes path without copies (the same calls, the same wire encoding) ----
  // WriteKV from the caller's buffers: each chunk's bytes are referenced by the outgoing message,
  // not copied; returns once gRPC has let go of every one of them.
  absl::StatusOr<v1::WriteSummary> WriteKvViews(absl::Span<const KvChunkView> chunks);
  // ReadKV with each received chunk parsed in place and handed to `sink` (no copy before the
  // sink's own). INVALID_ARGUMENT "ReadKV reply chunk <n> ..." for a reply that is not a KvChunk.
  absl::Status ReadKvInto(const v1::ReadRequest& request, const KvChunkSink& sink);
  // ReadKV with each chunk's bytes put where `place` says: received straight there over the bulk
  // channel, copied there from the received message over gRPC.
  absl::Status ReadKvPlaced(const v1::ReadRequest& request, const KvChunkPlacer& place);
  // One head's committed tokens put straight into `keys` and `values` (each `capacity_bytes`
  // long; ReadKvPlaced), and their positions into *positions when given.
  // Returns the number of tokens. OUT_OF_RANGE when the head holds more than the capacity (the
  // buffers then hold the chunks that fitted).
  absl::StatusOr<uint32_t> ReadHeadInto(const std::string& sequence, uint32_t layer,
                                        uint32_t kv_head, void* keys, void* values,
                                        uint64_t capacity_bytes,
                                        std::vector<int32_t>* positions = nullptr);

  // ---- Several chunks per message (kvkeep.v1.KvBatch; docs/api.md) ----
  // The bytes-path calls above (WriteKV, WriteKvViews, WriteHead, ReadKV, ReadKvInto, ReadHead,
  // ReadHeadInto) pack their chunks into messages of up to this many bytes (encoded chunks; for
  // writes at most the channel's max_message_bytes − 4096, for reads − 64 KiB; a chunk is never
  // split; default 3 MiB: against 1 MiB it took the 16 KiB chunks' ratio to a raw socket from
  // 0.69-0.90 to 0.85-0.98 for reads, docs/benchmarks.md) through KvBatch.WriteKVBatch /
  // ReadKVBatch. 0: one chunk per
  // message through KvCache.WriteKV / ReadKV, as before. A daemon without KvBatch answers
  // UNIMPLEMENTED before any chunk is applied or sent: the call is redone with WriteKV / ReadKV
  // and this client uses those from then on. Set before the bytes-path calls (not synchronised
  // with them).
  void set_batch_message_bytes(uint64_t bytes) { batch_message_bytes_ = bytes; }
  uint64_t batch_message_bytes() const { return batch_message_bytes_; }
  // ---- The bulk channel (docs/api.md §5.2) ----
  // The bytes-path calls above (WriteKV, WriteKvViews, WriteHead, ReadKV, ReadKvInto,
  // ReadKvPlaced, ReadHead, ReadHeadInto) go over the daemon's bulk channel when the session
  // attached one (same-node workers reaching the Unix socket) and no other call of this client is
  // using it at the moment; otherwise over gRPC. The results are the same. A write whose bulk
  // connection breaks is redone over gRPC; a read fails UNAVAILABLE (later calls use gRPC).
  // false: gRPC only (set before the bytes-path calls; not synchronised with them).
  void set_use_bulk_channel(bool use) { use_bulk_channel_ = use; }
  // OK when the bulk channel is attached and usable; else why not.
  absl::Status bulk_channel_status() const;
  // Whether the daemon serves KvBatch: unknown (-1) until a bytes-path call found out, then 1 or 0.
  int daemon_has_kv_batch() const { return has_kv_batch_.load(std::memory_order_relaxed); }

  absl::StatusOr<v1::PageTable> GetSequence(const std::string& sequence, bool with_positions);
  absl::StatusOr<v1::PageTable> Acquire(const std::string& sequence);
  absl::StatusOr<v1::ReleaseReply> Release(const std::string& sequence);
  absl::StatusOr<v1::DropReply> Drop(const std::string& sequence);
  absl::StatusOr<v1::ArenaExport> GetArena(uint32_t arena_id);

  // ---- Shared prefixes (the tenant's sharing group) ----
  // A new sequence that starts with the group's shared prefix pages matching `prefix_token_ids`
  // (PageTable.shared_tokens says how many tokens; 0: it starts empty). The shared pages are
  // committed and read-only: their arenas are mapped PROT_READ and WriteInPlace refuses them.
  absl::StatusOr<v1::PageTable> CreateSequenceWithPrefix(
      const std::string& model, const std::vector<uint32_t>& prefix_token_ids,
      bool retain = false);
  // Publishes the sequence's first full pages (`token_ids`: the ids of its first tokens); the
  // client's page table follows the reply (the published pages become read-only).
  absl::StatusOr<v1::PublishPrefixReply> PublishPrefix(const std::string& sequence,
                                                       const std::vector<uint32_t>& token_ids);
  absl::StatusOr<v1::LookupPrefixReply> LookupPrefix(const std::string& model,
                                                     const std::vector<uint32_t>& token_ids);
  // The mapped bytes of one page (keys, then values at the geometry's value_offset), for reading
  // in place. FAILED_PRECONDITION when its arena is not mapped here. Valid while the page is held.
  absl::StatusOr<absl::Span<const uint8_t>> MappedPage(uint64_t page) const;
  absl::Status Ping();

  // Arenas this client has mapped.
  std::vector<uint32_t> MappedArenas() const;
  // OK when the arena channel is attached (fd-passed arenas can be mapped); why not otherwise.
  absl::Status arena_channel_status() const;
  v1::KvCache::Stub& stub() { return *stub_; }
  const std::string& token() const { return token_; }

 private:
  Client(std::shared_ptr<grpc::Channel> channel, std::string token, int max_message_bytes);
  // Opens the Session stream and waits (up to `timeout`) for the daemon's first event.
  absl::Status Start(const std::string& worker_name, absl::Duration timeout);
  // One unary call with this client's token (client/unary_call.h).
  template <typename Request, typename Reply>
  absl::StatusOr<Reply> Call(
      grpc::Status (v1::KvCache::Stub::*method)(grpc::ClientContext*, const Request&, Reply*),
      const Request& request);
  void EventLoop();
  // Connects the arena channel with the session's ticket (the socket next to the unix: target
  // first, then the path the daemon advertised).
  void AttachArenaChannelLocked(const v1::SessionStarted& started)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MapArenaLocked(const v1::ArenaExport& arena) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MapArenasOf(const google::protobuf::RepeatedPtrField<v1::HeadTable>& heads,
                          const google::protobuf::RepeatedPtrField<v1::ArenaExport>& known);
  void RememberPages(const std::string& sequence, const v1::HeadTable& head, bool replace)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether AllocatePages' reply for `tokens` more tokens surely fits one message (then the unary
  // call is used; otherwise AllocatePagesStream).
  bool AllocateFitsOneMessage(const std::string& sequence, uint32_t tokens) const;
  // One page-contiguous run of a head's token slots, with its mapping pinned.
  struct InPlaceSegment {
    std::shared_ptr<const ArenaMapping> mapping;
    uint64_t key_offset;    // in the arena
    uint64_t value_offset;  // in the arena
    uint64_t done_bytes;    // offset into the caller's keys/values buffers
    uint64_t bytes;
  };
  // WriteKV of chunks whose bytes stay where they are (client_bytes.cc).
  using RefChunk = WriteChunkRef;
  absl::StatusOr<v1::WriteSummary> WriteRefs(absl::Span<const RefChunk> chunks);
  // Attaches the bulk channel with the session's ticket (event thread, at SessionStarted).
  void AttachBulkChannel(const v1::SessionStarted& started);
  // f(bulk channel) when it is attached, usable and free now; nullopt otherwise (client_bytes.cc).
  template <typename F>
  auto WithBulk(F f) -> std::optional<std::invoke_result_t<F, BulkChannelClient&>>;
  // One WriteKV (batch_bytes 0) or WriteKVBatch call of `chunks`; `reply` gets the summary.
  grpc::Status WriteCall(absl::Span<const RefChunk> chunks, uint64_t batch_bytes,
                         grpc::ByteBuffer* reply);
  // One ReadKV (batch_bytes 0) or ReadKVBatch call; *messages counts the messages received.
  absl::Status ReadCall(const v1::ReadRequest& request, uint64_t batch_bytes,
                        const KvChunkSink& sink, uint64_t* messages);
  // Whether to try KvBatch now (batching on, and not known to be missing).
  uint64_t BatchBytesToTry() const;
  absl::StatusOr<std::vector<InPlaceSegment>> InPlaceSegments(const std::string& sequence,
                                                              uint32_t layer, uint32_t kv_head,
                                                              uint32_t offset, uint32_t count);

  // Constant after Attach.
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::KvCache::Stub> stub_;
  const std::string token_;
  const int max_message_bytes_;
  std::string session_id_;
  std::string tenant_;
  std::string arena_socket_hint_;  // "<unix socket of the target>.arenas"; empty for TCP
  uint64_t batch_message_bytes_ = 3 << 20;
  std::atomic<int> has_kv_batch_{-1};  // -1 unknown, 1 yes, 0 no (UNIMPLEMENTED seen)
  std::string bulk_socket_hint_;       // "<unix socket of the target>.bulk"; empty for TCP
  bool use_bulk_channel_ = true;
  // The bulk channel: one call at a time uses it (TryLock; the others go over gRPC).
  mutable absl::Mutex bulk_mu_;
  std::unique_ptr<BulkChannelClient> bulk_ ABSL_GUARDED_BY(bulk_mu_);
  absl::Status bulk_status_ ABSL_GUARDED_BY(bulk_mu_) =
      absl::FailedPreconditionError("the daemon offered no bulk channel");

  std::unique_ptr<grpc::ClientContext> session_context_;
  std::unique_ptr<grpc::ClientReader<v1::SessionEvent>> session_reader_;
  std::thread event_thread_;

  mutable absl::Mutex mu_;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status session_status_ ABSL_GUARDED_BY(mu_);
  // Where fd-passed arenas (HOST_MEMFD) come from; null when it could not be attached (then
  // arena_channel_status_ says why, and such arenas are not mapped: the bytes path still works).
  std::unique_ptr<ArenaChannelClient> arena_channel_ ABSL_GUARDED_BY(mu_);
  absl::Status arena_channel_status_ ABSL_GUARDED_BY(mu_) =
      absl::FailedPreconditionError("the daemon offered no arena channel");
  // Mapped arenas. A mapping is closed when the last holder drops it: when the Client is
  // destroyed (mu_ not held), or later when an in-place copy still pins it.
  std::map<uint32_t, std::shared_ptr<const ArenaMapping>> arenas_ ABSL_GUARDED_BY(mu_);
  // Per sequence, per (layer, kv_head) key: the page references known to this client.
  using HeadKey = std::pair<uint32_t, uint32_t>;
  std::map<std::string, std::map<HeadKey, std::vector<uint64_t>>> sequences_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_CLIENT_H_
