#include "client/client.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "client/stream_call.h"
#include "client/unary_call.h"
#include "common/table_chunks.h"
#include "common/grpc_status.h"
#include "common/status_macros.h"

namespace kvkeep {

Client::Client(std::shared_ptr<grpc::Channel> channel, std::string token, int max_message_bytes)
    : channel_(std::move(channel)), stub_(v1::KvCache::NewStub(channel_)),
      token_(std::move(token)), max_message_bytes_(max_message_bytes) {}

absl::StatusOr<std::unique_ptr<Client>> Client::Attach(const ChannelOptions& options,
                                                       std::string token, std::string worker_name,
                                                       absl::Duration timeout) {
  auto client = std::unique_ptr<Client>(
      new Client(MakeChannel(options), std::move(token), options.max_message_bytes));
  // The arena channel listens next to the gRPC socket (service/arena_channel/arena_channel_wire.h).
  absl::string_view target = options.target;
  if (absl::ConsumePrefix(&target, "unix:")) {
    while (absl::StartsWith(target, "//")) target.remove_prefix(1);
    client->arena_socket_hint_ = absl::StrCat(target, ".arenas");
    client->bulk_socket_hint_ = absl::StrCat(target, ".bulk");
  } else if (absl::StartsWith(target, "/") || absl::StartsWith(target, ".")) {
    client->arena_socket_hint_ = absl::StrCat(target, ".arenas");
    client->bulk_socket_hint_ = absl::StrCat(target, ".bulk");
  }
  if (!client->channel_->WaitForConnected(std::chrono::system_clock::now() +
                                          absl::ToChronoMilliseconds(timeout))) {
    return absl::UnavailableError(absl::StrCat("cannot reach kvkeepd at ", options.target));
  }
  RETURN_IF_ERROR(client->Start(worker_name, timeout));
  return client;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Attach(std::shared_ptr<grpc::Channel> channel,
                                                       std::string token, std::string worker_name,
                                                       absl::Duration timeout,
                                                       int max_message_bytes) {
  auto client =
      std::unique_ptr<Client>(new Client(std::move(channel), std::move(token), max_message_bytes));
  RETURN_IF_ERROR(client->Start(worker_name, timeout));
  return client;
}

absl::Status Client::Start(const std::string& worker_name, absl::Duration timeout) {
  session_context_ = MakeCallContext(token_);
  v1::AttachRequest request;
  request.set_worker_name(worker_name);
  session_reader_ = stub_->Session(session_context_.get(), request);
  event_thread_ = std::thread([this] { EventLoop(); });
  // On failure the destructor cancels the stream and joins the thread.
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return started_ || ended_; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (started_) return absl::OkStatus();
  return ended_ ? session_status_ : absl::DeadlineExceededError("no answer to Session");
}

void Client::EventLoop() {
  v1::SessionEvent event;
  while (session_reader_->Read(&event)) {
    absl::MutexLock lock(&mu_);
    if (event.has_started()) {
      session_id_ = event.started().session_id();
      tenant_ = event.started().tenant();
      AttachArenaChannelLocked(event.started());
      AttachBulkChannel(event.started());
      for (const auto& arena : event.started().arenas()) MapArenaLocked(arena).IgnoreError();
      started_ = true;
    } else if (event.has_arena_added()) {
      MapArenaLocked(event.arena_added()).IgnoreError();
    }
  }
  grpc::Status status = session_reader_->Finish();
  absl::MutexLock lock(&mu_);
  ended_ = true;
  session_status_ = status.ok() ? absl::CancelledError("session ended")
                                : FromGrpcStatus(status);
}

absl::Status Client::session_status() const {
  absl::MutexLock lock(&mu_);
  return ended_ ? session_status_ : absl::OkStatus();
}

void Client::Close() {
  if (session_context_ != nullptr) session_context_->TryCancel();
  if (event_thread_.joinable()) event_thread_.join();
}

Client::~Client() { Close(); }

namespace {

// Connects a side channel with the session's one-time ticket: at the socket next to the target's
// (`hint`), then where the daemon says it listens (`announced`), as `connect` does. The channel,
// or the last failure; only an unreachable socket leaves the ticket unused for the next path.
template <typename Channel>
absl::StatusOr<std::unique_ptr<Channel>> ConnectSideChannel(const std::string& hint,
                                                            const std::string& announced,
                                                            const std::string& ticket) {
  std::vector<std::string> paths;
  if (!hint.empty()) paths.push_back(hint);
  if (!announced.empty() && announced != hint) paths.push_back(announced);
  absl::StatusOr<std::unique_ptr<Channel>> channel =
      absl::UnavailableError("no socket path for the channel");
  for (const std::string& path : paths) {
    channel = Channel::Connect(path, ticket);
    if (channel.ok() || !absl::IsUnavailable(channel.status())) break;
  }
  return channel;
}

}  // namespace

void Client::AttachArenaChannelLocked(const v1::SessionStarted& started) {
  if (started.attach_ticket().empty()) return;
  absl::StatusOr<std::unique_ptr<ArenaChannelClient>> channel =
      ConnectSideChannel<ArenaChannelClient>(arena_socket_hint_, started.arena_socket(),
                                             started.attach_ticket());
  arena_channel_status_ = channel.status();
  if (channel.ok()) arena_channel_ = *std::move(channel);
}

void Client::AttachBulkChannel(const v1::SessionStarted& started) {
  if (started.bulk_ticket().empty()) return;
  absl::StatusOr<std::unique_ptr<BulkChannelClient>> bulk =
      ConnectSideChannel<BulkChannelClient>(bulk_socket_hint_, started.bulk_socket(),
                                            started.bulk_ticket());
  absl::MutexLock lock(&bulk_mu_);
  bulk_status_ = bulk.status();
  if (bulk.ok()) bulk_ = *std::move(bulk);
}

absl::Status Client::bulk_channel_status() const {
  absl::MutexLock lock(&bulk_mu_);
  if (bulk_ != nullptr && bulk_->broken()) {
    return absl::UnavailableError("the bulk channel connection broke; the bytes path uses gRPC");
  }
  return bulk_status_;
}

absl::Status Client::arena_channel_status() const {
  absl::MutexLock lock(&mu_);
  return arena_channel_status_;
}

absl::Status Client::MapArenaLocked(const v1::ArenaExport& arena) {
  if (arenas_.count(arena.arena_id())) return absl::OkStatus();
  if (arena.kind() == v1::HOST_MEMFD || arena.kind() == v1::CUDA_VMM_FD) {
    if (arena_channel_ == nullptr) {
      return absl::FailedPreconditionError(absl::StrCat("arena ", arena.arena_id(),
                                                        " needs the arena channel: ",
                                                        arena_channel_status_.message()));
    }
    ASSIGN_OR_RETURN(ReceivedArena received, arena_channel_->Fetch(arena.arena_id()));
    ASSIGN_OR_RETURN(auto mapping,
                     ArenaMapping::MapFd(received.arena, std::move(received.fd)));
    arenas_[arena.arena_id()] = std::move(mapping);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(auto mapping, ArenaMapping::Map(arena));
  arenas_[arena.arena_id()] = std::move(mapping);
  return absl::OkStatus();
}

absl::Status Client::MapArenasOf(
    const google::protobuf::RepeatedPtrField<v1::HeadTable>& heads,
    const google::protobuf::RepeatedPtrField<v1::ArenaExport>& known) {
  // New arenas come with the reply and on the Session stream, but a page may sit in an arena
  // another worker of the tenant caused to be created whose announcement has not arrived yet:
  // ask for those.
  std::vector<uint32_t> missing;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& arena : known) RETURN_IF_ERROR(MapArenaLocked(arena));
    for (const auto& head : heads) {
      for (uint64_t page : head.pages()) {
        uint32_t id = static_cast<uint32_t>(page >> 32);
        if (!arenas_.count(id) && std::find(missing.begin(), missing.end(), id) == missing.end()) {
          missing.push_back(id);
        }
      }
    }
  }
  for (uint32_t id : missing) {
    ASSIGN_OR_RETURN(v1::ArenaExport arena, GetArena(id));
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(MapArenaLocked(arena));
  }
  return absl::OkStatus();
}

std::vector<uint32_t> Client::MappedArenas() const {
  absl::MutexLock lock(&mu_);
  std::vector<uint32_t> out;
  for (const auto& [id, m] : arenas_) out.push_back(id);
  return out;
}

template <typename Request, typename Reply>
absl::StatusOr<Reply> Client::Call(
    grpc::Status (v1::KvCache::Stub::*method)(grpc::ClientContext*, const Request&, Reply*),
    const Request& request) {
  return UnaryCall(token_, *stub_, method, request);
}

absl::StatusOr<v1::RegisterModelReply> Client::RegisterModel(const v1::ModelLayout& layout,
                                                             const std::vector<v1::WoGram>& grams) {
  auto context = MakeCallContext(token_);
  v1::RegisterModelReply reply;
  auto writer = stub_->RegisterModel(context.get(), &reply);
  v1::ModelChunk chunk;
  *chunk.mutable_layout() = layout;
  bool ok = writer->Write(chunk);
  for (size_t i = 0; ok && i < grams.size(); ++i) {
    *chunk.mutable_wo_gram() = grams[i];
    ok = writer->Write(chunk);
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  return reply;
}

absl::StatusOr<std::string> Client::CreateSequence(const std::string& model, bool retain) {
  v1::CreateSequenceRequest request;
  request.set_session_id(session_id_);
  request.set_model(model);
  request.set_retain(retain);
  ASSIGN_OR_RETURN(v1::PageTable table, Call(&v1::KvCache::Stub::CreateSequence, request));
  absl::MutexLock lock(&mu_);
  sequences_[table.sequence_id()];
  return table.sequence_id();
}

bool Client::AllocateFitsOneMessage(const std::string& sequence, uint32_t tokens) const {
  absl::MutexLock lock(&mu_);
  auto it = sequences_.find(sequence);
  // Heads not known yet (the first allocation): take the chunked reply, which always fits.
  if (it == sequences_.end() || it->second.empty()) return false;
  // At worst one page per token plus one, 8 bytes each, and the head's own fields.
  const uint64_t worst = it->second.size() * ((uint64_t{tokens} + 1) * 8 + 32);
  return worst <= ReplyBudget(max_message_bytes_) / 2;
}

void Client::RememberPages(const std::string& sequence, const v1::HeadTable& head, bool replace) {
  auto& pages = sequences_[sequence][{head.layer(), head.kv_head()}];
  if (replace) pages.clear();
  pages.insert(pages.end(), head.pages().begin(), head.pages().end());
}

absl::StatusOr<v1::PageTableDelta> Client::Allocate(const std::string& sequence, uint32_t tokens) {
  v1::AllocateRequest request;
  request.set_session_id(session_id_);
  request.set_sequence_id(sequence);
  request.set_tokens(tokens);
  v1::PageTableDelta delta;
  if (AllocateFitsOneMessage(sequence, tokens)) {
    ASSIGN_OR_RETURN(delta, Call(&v1::KvCache::Stub::AllocatePages, request));
  } else {
    ASSIGN_OR_RETURN(auto chunks,
                     StreamCall(token_, *stub_, &v1::KvCache::Stub::AllocatePagesStream, request));
    ASSIGN_OR_RETURN(delta, MergePageTableDelta(std::move(chunks)));
  }
  RETURN_IF_ERROR(MapArenasOf(delta.heads(), delta.new_arenas()));
  absl::MutexLock lock(&mu_);
  for (const auto& head : delta.heads()) RememberPages(sequence, head, /*replace=*/false);
  return delta;
}

absl::StatusOr<v1::CommitReply> Client::Commit(const std::string& sequence, uint32_t tokens,
                                               const std::vector<int32_t>& positions,
                                               const std::vector<v1::LayerStats>& stats) {
  v1::CommitRequest request;
  request.set_session_id(session_id_);
  request.set_sequence_id(sequence);
  request.set_tokens(tokens);
  request.mutable_positions()->Add(positions.begin(), positions.end());
  request.mutable_stats()->Add(stats.begin(), stats.end());
  ASSIGN_OR_RETURN(v1::CommitReply reply, Call(&v1::KvCache::Stub::CommitTokens, request));
  if (reply.compressed_table_omitted()) {
    // The compressed table did not fit the reply: read it in chunks.
    ASSIGN_OR_RETURN(v1::PageTable table, GetSequence(sequence, /*with_positions=*/true));
    *reply.mutable_compressed()->mutable_table() = std::move(table);
  }
  if (reply.has_compressed()) {
    absl::MutexLock lock(&mu_);
    for (const auto& head : reply.compressed().table().heads()) {
      RememberPages(sequence, head, /*replace=*/true);
    }
  }
  return reply;
}

absl::StatusOr<v1::StatsAck> Client::PutStats(const std::string& sequence,
                                              const std::vector<v1::LayerStats>& stats) {
  auto context = MakeCallContext(token_);
  v1::StatsAck ack;
  auto writer = stub_->PutStats(context.get(), &ack);
  v1::StatsChunk chunk;
  chunk.set_sequence_id(sequence);
  for (const auto& layer : stats) {
    *chunk.mutable_stats() = layer;
    if (!writer->Write(chunk)) break;  // the daemon finished early: Finish() says why
  }
  writer->WritesDone();
  grpc::Status status = writer->Finish();
  if (!status.ok()) return FromGrpcStatus(status);
  return ack;
}

absl::StatusOr<v1::CompressReply> Client::Compress(const std::string& sequence,
                                                   const v1::Policy& policy) {
  v1::CompressRequest request;
  request.set_session_id(session_id_);
  request.set_sequence_id(sequence);
  *request.mutable_policy() = policy;
  ASSIGN_OR_RETURN(auto chunks,
                   StreamCall(token_, *stub_, &v1::KvCache::Stub::CompressStream, request));
  ASSIGN_OR_RETURN(v1::CompressReply reply, MergeCompressReply(std::move(chunks)));
  absl::MutexLock lock(&mu_);
  for (const auto& head : reply.table().heads()) RememberPages(sequence, head, /*replace=*/true);
  return reply;
}

absl::StatusOr<std::vector<Client::InPlaceSegment>> Client::InPlaceSegments(
    const std::string& sequence, uint32_t layer, uint32_t kv_head, uint32_t offset,
    uint32_t count) {
  absl::MutexLock lock(&mu_);
  auto seq = sequences_.find(sequence);
  if (seq == sequences_.end()) {
    return absl::NotFoundError(absl::StrCat("sequence ", sequence, " is unknown to this client"));
  }
  auto head = seq->second.find({layer, kv_head});
  if (head == seq->second.end() || head->second.empty()) {
    return absl::FailedPreconditionError("no pages allocated for this head; call Allocate first");
  }
  const std::vector<uint64_t>& pages = head->second;
  auto first_arena = arenas_.find(static_cast<uint32_t>(pages[0] >> 32));
  if (first_arena == arenas_.end()) return absl::FailedPreconditionError("arena not mapped");
  const v1::PageGeometry& g = first_arena->second->arena().geometry();
  const uint64_t token_bytes = g.value_offset() / g.tokens_per_page();
  const uint64_t tpp = g.tokens_per_page();
  if (uint64_t{offset} + count > pages.size() * tpp) {
    return absl::OutOfRangeError(absl::StrCat("slots [", offset, ", ", uint64_t{offset} + count,
                                              ") pass the ", pages.size() * tpp,
                                              " allocated for this head"));
  }
  std::vector<InPlaceSegment> segments;
  for (uint32_t done = 0; done < count;) {
    const uint64_t slot = offset + done;
    const uint64_t page = pages[slot / tpp];
    const uint32_t in_page = static_cast<uint32_t>(slot % tpp);
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(tpp - in_page, count - done));
    auto arena = arenas_.find(static_cast<uint32_t>(page >> 32));
    if (arena == arenas_.end()) return absl::FailedPreconditionError("arena not mapped");
    const uint64_t base = (page & 0xffffffffu) * g.page_bytes();
    segments.push_back({arena->second, base + in_page * token_bytes,
                        base + g.value_offset() + in_page * token_bytes,
                        uint64_t{done} * token_bytes, n * token_bytes});
    done += n;
  }
  return segments;
}

namespace {

// Waits for the copies enqueued on each distinct mapping (CUDA: this thread's stream per device).
absl::Status FinishAll(const std::vector<std::shared_ptr<const ArenaMapping>>& used) {
  absl::Status first;
  for (const auto& m : used) {
    absl::Status s = m->Finish();
    if (first.ok()) first = s;
  }
  return first;
}

void NoteUsed(const std::shared_ptr<const ArenaMapping>& m,
              std::vector<std::shared_ptr<const ArenaMapping>>* used) {
  for (const auto& u : *used) {
    if (u == m) return;
  }
  used->push_back(m);
}

}  // namespace

absl::Status Client::WriteInPlace(const std::string& sequence, uint32_t layer, uint32_t kv_head,
                                  uint32_t offset, uint32_t count, const void* keys,
                                  const void* values) {
  // The segments pin their mappings; the copies run without mu_.
  ASSIGN_OR_RETURN(std::vector<InPlaceSegment> segments,
                   InPlaceSegments(sequence, layer, kv_head, offset, count));
  // Shared prefix pages (read-only arenas) are never written; checked before any byte moves.
  for (const InPlaceSegment& s : segments) {
    if (s.mapping->arena().read_only()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "slots [", offset, ", ", uint64_t{offset} + count, ") include a shared prefix page (arena ",
          s.mapping->arena().arena_id(), ", read-only)"));
    }
  }
  const auto* k = static_cast<const uint8_t*>(keys);
  const auto* v = static_cast<const uint8_t*>(values);
  std::vector<std::shared_ptr<const ArenaMapping>> used;
  absl::Status status;
  for (const InPlaceSegment& s : segments) {
    NoteUsed(s.mapping, &used);
    status = s.mapping->Write(s.key_offset, k + s.done_bytes, s.bytes);
    if (status.ok()) status = s.mapping->Write(s.value_offset, v + s.done_bytes, s.bytes);
    if (!status.ok()) break;
  }
  absl::Status finished = FinishAll(used);
  return status.ok() ? finished : status;
}

absl::Status Client::ReadInPlace(const std::string& sequence, uint32_t layer, uint32_t kv_head,
                                 uint32_t offset, uint32_t count, void* keys, void* values) {
  ASSIGN_OR_RETURN(std::vector<InPlaceSegment> segments,
                   InPlaceSegments(sequence, layer, kv_head, offset, count));
  auto* k = static_cast<uint8_t*>(keys);
  auto* v = static_cast<uint8_t*>(values);
  std::vector<std::shared_ptr<const ArenaMapping>> used;
  absl::Status status;
  for (const InPlaceSegment& s : segments) {
    NoteUsed(s.mapping, &used);
    status = s.mapping->Read(s.key_offset, k + s.done_bytes, s.bytes);
    if (status.ok()) status = s.mapping->Read(s.value_offset, v + s.done_bytes, s.bytes);
    if (!status.ok()) break;
  }
  absl::Status finished = FinishAll(used);
  return status.ok() ? finished : status;
}

absl::StatusOr<v1::PageTable> Client::GetSequence(const std::string& sequence,
                                                  bool with_positions) {
  v1::GetSequenceRequest request;
  request.set_sequence_id(sequence);
  request.set_with_positions(with_positions);
  absl::StatusOr<v1::PageTable> table = Call(&v1::KvCache::Stub::GetSequence, request);
  // Over the message limit (a long sequence): the same table in chunks.
  if (table.status().code() != absl::StatusCode::kResourceExhausted) return table;
  ASSIGN_OR_RETURN(auto chunks,
                   StreamCall(token_, *stub_, &v1::KvCache::Stub::GetSequenceStream, request));
  return MergePageTable(std::move(chunks));
}

absl::StatusOr<v1::PageTable> Client::Acquire(const std::string& sequence) {
  v1::AcquireRequest request;
  request.set_session_id(session_id_);
  request.set_sequence_id(sequence);
  ASSIGN_OR_RETURN(auto chunks,
                   StreamCall(token_, *stub_, &v1::KvCache::Stub::AcquireStream, request));
  ASSIGN_OR_RETURN(v1::PageTable table, MergePageTable(std::move(chunks)));
  RETURN_IF_ERROR(MapArenasOf(table.heads(), table.arenas()));
  absl::MutexLock lock(&mu_);
  for (const auto& head : table.heads()) RememberPages(sequence, head, /*replace=*/true);
  return table;
}

absl::StatusOr<v1::ReleaseReply> Client::Release(const std::string& sequence) {
  v1::ReleaseRequest request;
  request.set_session_id(session_id_);
  request.set_sequence_id(sequence);
  return Call(&v1::KvCache::Stub::Release, request);
}

absl::StatusOr<v1::DropReply> Client::Drop(const std::string& sequence) {
  v1::DropRequest request;
  request.set_session_id(session_id_);
  request.set_sequence_id(sequence);
  ASSIGN_OR_RETURN(v1::DropReply reply, Call(&v1::KvCache::Stub::Drop, request));
  absl::MutexLock lock(&mu_);
  sequences_.erase(sequence);
  return reply;
}

absl::StatusOr<v1::ArenaExport> Client::GetArena(uint32_t arena_id) {
  v1::GetArenaRequest request;
  request.set_arena_id(arena_id);
  return Call(&v1::KvCache::Stub::GetArena, request);
}

absl::Status Client::Ping() {
  return Call(&v1::KvCache::Stub::Ping, v1::PingRequest())
      .status();
}

}  // namespace kvkeep

namespace kvkeep {

absl::StatusOr<v1::PageTable> Client::CreateSequenceWithPrefix(
    const std::string& model, const std::vector<uint32_t>& prefix_token_ids, bool retain) {
  v1::CreateSequenceRequest request;
  request.set_session_id(session_id_);
  request.set_model(model);
  request.set_retain(retain);
  request.mutable_prefix_token_ids()->Add(prefix_token_ids.begin(), prefix_token_ids.end());
  ASSIGN_OR_RETURN(auto chunks,
                   StreamCall(token_, *stub_, &v1::KvCache::Stub::CreateSequenceStream, request));
  ASSIGN_OR_RETURN(v1::PageTable table, MergePageTable(std::move(chunks)));
  RETURN_IF_ERROR(MapArenasOf(table.heads(), table.arenas()));
  absl::MutexLock lock(&mu_);
  sequences_[table.sequence_id()];
  for (const auto& head : table.heads()) {
    RememberPages(table.sequence_id(), head, /*replace=*/true);
  }
  return table;
}

absl::StatusOr<v1::PublishPrefixReply> Client::PublishPrefix(
    const std::string& sequence, const std::vector<uint32_t>& token_ids) {
  v1::PublishPrefixRequest request;
  request.set_session_id(session_id_);
  request.set_sequence_id(sequence);
  request.mutable_token_ids()->Add(token_ids.begin(), token_ids.end());
  ASSIGN_OR_RETURN(v1::PublishPrefixReply reply, Call(&v1::KvCache::Stub::PublishPrefix, request));
  RETURN_IF_ERROR(MapArenasOf(reply.table().heads(), reply.table().arenas()));
  absl::MutexLock lock(&mu_);
  for (const auto& head : reply.table().heads()) RememberPages(sequence, head, /*replace=*/true);
  return reply;
}

absl::StatusOr<v1::LookupPrefixReply> Client::LookupPrefix(const std::string& model,
                                                           const std::vector<uint32_t>& token_ids) {
  v1::LookupPrefixRequest request;
  request.set_model(model);
  request.mutable_token_ids()->Add(token_ids.begin(), token_ids.end());
  return Call(&v1::KvCache::Stub::LookupPrefix, request);
}

absl::StatusOr<absl::Span<const uint8_t>> Client::MappedPage(uint64_t page) const {
  absl::MutexLock lock(&mu_);
  auto arena = arenas_.find(static_cast<uint32_t>(page >> 32));
  if (arena == arenas_.end()) {
    return absl::FailedPreconditionError(absl::StrCat("arena ", page >> 32, " is not mapped"));
  }
  const uint64_t page_bytes = arena->second->arena().geometry().page_bytes();
  const uint64_t index = page & 0xffffffffu;
  if (index >= arena->second->arena().page_count()) {
    return absl::OutOfRangeError(absl::StrCat("page index ", index, " past the arena"));
  }
  return absl::Span<const uint8_t>(arena->second->data() + index * page_bytes, page_bytes);
}

}  // namespace kvkeep
