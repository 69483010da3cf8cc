#include "service/bulk_channel/bulk_connection.h"

#include <poll.h>

#include <algorithm>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/bulk_frame.h"
#include "common/status_macros.h"
#include "service/bulk_channel/bulk_requests.h"

namespace kvkeep {
namespace {

void SetStatus(const absl::Status& s, v1::BulkReply* reply) {
  reply->set_code(static_cast<int>(s.code()));
  reply->set_message(std::string(s.message()));
}

// Blocks until the socket has bytes or was closed / shut down (no timeout: a connection may idle
// between frames as long as its session lives).
bool AwaitFrame(int fd) {
  pollfd p{fd, POLLIN, 0};
  for (;;) {
    const int n = poll(&p, 1, -1);
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

uint64_t Sum(const std::vector<absl::string_view>& pieces) {
  uint64_t n = 0;
  for (absl::string_view p : pieces) n += p.size();
  return n;
}

}  // namespace

BulkConnection::BulkConnection(int fd, CacheEngine* engine, SessionLimits* limits,
                               BulkChannelStats* stats, BulkPeer peer)
    : fd_(fd), engine_(engine), limits_(limits), stats_(stats), peer_(std::move(peer)) {}

absl::Status BulkConnection::Serve() {
  for (;;) {
    if (!AwaitFrame(fd_)) return absl::UnavailableError("poll failed");
    v1::BulkRequest request;
    absl::StatusOr<bool> got = RecvFrame(fd_, &request, kBulkMaxRequestMessageBytes);
    if (!got.ok()) {
      if (absl::IsInvalidArgument(got.status())) {
        v1::BulkReply reply;
        SetStatus(got.status(), &reply);
        (void)SendFrame(fd_, reply);
      }
      return got.status();
    }
    if (!*got) return absl::OkStatus();
    if (absl::Status bad = CheckBulkRequest(request, /*attached=*/true); !bad.ok()) {
      if (!BulkRequestSkippable(request)) {
        v1::BulkReply reply;
        SetStatus(bad, &reply);
        (void)SendFrame(fd_, reply);
        return bad;
      }
      // A write frame without chunks: nothing to receive; a failure of this batch.
      FailChunk(write_index_, bad);
      continue;
    }
    absl::Status served;
    switch (request.request_case()) {
      case v1::BulkRequest::kWrite:
        served = OnWrite(request.write());
        break;
      case v1::BulkRequest::kEndWrites:
        served = OnEndWrites();
        break;
      case v1::BulkRequest::kRead:
        served = OnRead(request.read());
        break;
      default:  // attach: refused by CheckBulkRequest
        break;
    }
    RETURN_IF_ERROR(served);  // only the socket's own failures end the connection
  }
}

void BulkConnection::AddDiscard(uint64_t n, std::vector<iovec>* iov) {
  if (discard_.empty()) discard_.resize(1 << 20);
  while (n > 0) {
    const uint64_t take = std::min<uint64_t>(n, discard_.size());
    iov->push_back(Iov(discard_.data(), take));
    n -= take;
  }
}

absl::Status BulkConnection::OnWrite(const v1::BulkWrite& write) {
  // Where each chunk's raw bytes go: its pinned pages, the staging buffer (backends whose pages
  // the host cannot write in place; written after they are in), or nowhere (refused, or a chunk
  // after this batch's first failure).
  enum class Place { kPages, kStaged, kDropped };
  struct Plan {
    Place place = Place::kDropped;
    uint64_t index = 0;
    WriteTargets targets;
    uint64_t staged_at = 0;
  };
  std::vector<Plan> plans(static_cast<size_t>(write.chunks_size()));
  uint64_t staging_bytes = 0;
  for (int i = 0; i < write.chunks_size(); ++i) {
    const v1::BulkChunk& c = write.chunks(i);
    Plan& plan = plans[static_cast<size_t>(i)];
    plan.index = write_index_++;
    absl::Status admitted = write_error_;
    if (admitted.ok() && (!c.header().keys().empty() || !c.header().values().empty())) {
      admitted = absl::InvalidArgumentError(
          "a bulk write's keys and values follow the frame as raw bytes (key_bytes, "
          "value_bytes), not in the chunk header");
    }
    if (admitted.ok() && limits_ != nullptr) {
      // As WriteKV: charged to the session the chunk names (none: the tenant's session-less
      // buckets), one call for the batch.
      const std::string& session = c.header().session_id();
      if (plan.index == 0) admitted = limits_->ChargeCall(peer_.tenant, session);
      if (admitted.ok()) {
        admitted = limits_->ChargeBytes(peer_.tenant, session, c.key_bytes() + c.value_bytes());
      }
    }
    absl::StatusOr<WriteTargets> targets =
        admitted.ok() ? engine_->PinWriteTargets(peer_.tenant, c.header(), c.key_bytes(),
                                                 c.value_bytes())
                      : absl::StatusOr<WriteTargets>(admitted);
    if (targets.ok()) {
      plan.place = Place::kPages;
      plan.targets = *std::move(targets);
    } else if (absl::IsUnimplemented(targets.status())) {
      plan.place = Place::kStaged;  // checked again by WriteChunkBytes
      plan.staged_at = staging_bytes;
      staging_bytes += c.key_bytes() + c.value_bytes();
    } else {
      FailChunk(plan.index, targets.status());
    }
  }
  if (staging_.size() < staging_bytes) staging_.resize(staging_bytes);
  // The frame's raw bytes, in chunk order, received in one go.
  std::vector<iovec> iov;
  for (int i = 0; i < write.chunks_size(); ++i) {
    const v1::BulkChunk& c = write.chunks(i);
    const Plan& plan = plans[static_cast<size_t>(i)];
    switch (plan.place) {
      case Place::kPages:
        for (absl::Span<char> s : plan.targets.keys) iov.push_back(Iov(s.data(), s.size()));
        for (absl::Span<char> s : plan.targets.values) iov.push_back(Iov(s.data(), s.size()));
        break;
      case Place::kStaged:
        iov.push_back(Iov(staging_.data() + plan.staged_at, c.key_bytes() + c.value_bytes()));
        break;
      case Place::kDropped:
        AddDiscard(c.key_bytes() + c.value_bytes(), &iov);
        break;
    }
  }
  RETURN_IF_ERROR(RecvBytes(fd_, iov));
  for (int i = 0; i < write.chunks_size(); ++i) {
    const v1::BulkChunk& c = write.chunks(i);
    Plan& plan = plans[static_cast<size_t>(i)];
    plan.targets.hold.reset();  // the bytes are in: the pages' pins go
    if (plan.place == Place::kDropped) continue;
    // A staged chunk is written only when no chunk before it failed (the failure may have come
    // after it was planned).
    if (plan.place == Place::kStaged) {
      if (plan.index > write_error_index_) continue;
      const char* at = staging_.data() + plan.staged_at;
      absl::Status done = engine_->WriteChunkBytes(
          peer_.tenant, c.header(), absl::string_view(at, c.key_bytes()),
          absl::string_view(at + c.key_bytes(), c.value_bytes()));
      if (!done.ok()) {
        FailChunk(plan.index, done);
        continue;
      }
    }
    written_.set_chunks(written_.chunks() + 1);
    written_.set_tokens(written_.tokens() + c.header().token_count());
    written_.set_bytes(written_.bytes() + c.key_bytes() + c.value_bytes());
  }
  if (staging_.size() > (4u << 20)) std::vector<char>().swap(staging_);
  return absl::OkStatus();
}

void BulkConnection::FailChunk(uint64_t index, const absl::Status& status) {
  if (index >= write_error_index_) return;
  write_error_index_ = index;
  write_error_ =
      absl::Status(status.code(), absl::StrCat("chunk ", index, ": ", status.message()));
}

absl::Status BulkConnection::OnEndWrites() {
  v1::BulkReply reply;
  if (write_error_.ok()) {
    *reply.mutable_written() = written_;
  } else {
    SetStatus(write_error_, &reply);
  }
  if (stats_ != nullptr) {
    stats_->write_bytes += written_.bytes();
    stats_->write_chunks += written_.chunks();
    if (!write_error_.ok()) ++stats_->write_errors;
  }
  write_index_ = 0;
  written_.Clear();
  write_error_ = absl::OkStatus();
  write_error_index_ = kNoFailure;
  return SendFrame(fd_, reply);
}

absl::Status BulkConnection::EndRead(const absl::Status& status) {
  if (stats_ != nullptr && !status.ok()) ++stats_->read_errors;
  v1::BulkReply reply;
  reply.set_end(true);
  SetStatus(status, &reply);
  return SendFrame(fd_, reply);
}

absl::Status BulkConnection::OnRead(const v1::ReadRequest& request) {
  std::shared_ptr<const void> stream;
  absl::Status admitted;
  if (limits_ != nullptr) {
    admitted = limits_->ChargeCall(peer_.tenant, "");  // as ReadKV: session-less
    if (admitted.ok()) {
      absl::StatusOr<std::shared_ptr<const void>> opened = limits_->OpenReadStream(peer_.tenant);
      if (opened.ok()) stream = *std::move(opened);
      admitted = opened.status();
    }
  }
  if (!admitted.ok()) return EndRead(admitted);
  absl::StatusOr<std::unique_ptr<CacheEngine::ReadCursor>> cursor =
      engine_->OpenRead(peer_.tenant, request);
  if (!cursor.ok()) return EndRead(cursor.status());
  std::vector<ReadChunk> chunks;
  std::vector<iovec> iov;
  for (;;) {
    absl::StatusOr<size_t> n = (*cursor)->NextReferencedBatch(&chunks, kReadFrameBytes);
    if (!n.ok()) {
      for (ReadChunk& c : chunks) c.Clear();  // no pin waits on the end frame's send
      return EndRead(n.status());
    }
    if (*n == 0) break;
    // One frame for the batch, or several where its chunk headers (positions: 5 bytes a token at
    // most) would pass half the message limit.
    v1::BulkReply reply;
    size_t message_bytes = 0;
    iov.clear();
    absl::Status charged, sent;
    for (size_t i = 0; i < *n && charged.ok() && sent.ok(); ++i) {
      ReadChunk& c = chunks[i];
      const uint64_t key_bytes = Sum(c.keys), value_bytes = Sum(c.values);
      if (limits_ != nullptr) {
        charged = limits_->ChargeBytes(peer_.tenant, "", key_bytes + value_bytes);
        if (!charged.ok()) break;
      }
      const size_t header_bytes = c.header.ByteSizeLong() + 32;
      if (reply.chunks_size() > 0 && message_bytes + header_bytes > kBulkMaxMessageBytes / 2) {
        sent = SendFrame(fd_, reply, iov);
        reply.Clear();
        iov.clear();
        message_bytes = 0;
      }
      v1::BulkChunk* out = reply.add_chunks();
      *out->mutable_header() = c.header;
      out->set_key_bytes(key_bytes);
      out->set_value_bytes(value_bytes);
      message_bytes += header_bytes;
      for (absl::string_view p : c.keys) iov.push_back(Iov(p.data(), p.size()));
      for (absl::string_view p : c.values) iov.push_back(Iov(p.data(), p.size()));
      if (stats_ != nullptr) {
        stats_->read_bytes += key_bytes + value_bytes;
        ++stats_->read_chunks;
      }
    }
    if (sent.ok() && reply.chunks_size() > 0) sent = SendFrame(fd_, reply, iov);
    for (size_t i = 0; i < *n; ++i) chunks[i].Clear();  // unpins
    RETURN_IF_ERROR(sent);
    if (!charged.ok()) return EndRead(charged);
  }
  return EndRead(absl::OkStatus());
}

}  // namespace kvkeep
