#include "client/bulk_channel_client.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/bulk_frame.h"
#include "common/status_macros.h"
#include "common/unix_socket.h"

namespace kvkeep {
namespace {

absl::Status FromReply(const v1::BulkReply& reply) {
  if (reply.code() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(reply.code()), reply.message());
}

}  // namespace

absl::StatusOr<std::unique_ptr<BulkChannelClient>> BulkChannelClient::Connect(
    const std::string& path, const std::string& ticket) {
  ASSIGN_OR_RETURN(OwnedFd fd, ConnectUnixSocket(path, SOCK_STREAM, "bulk channel"));
  // Room for a write frame's bytes in the socket (up to net.core.wmem_max): the daemon receives
  // while this worker sends the rest (reads 16 KiB chunks: 0.51-0.56 -> 0.73-0.77 of a batched raw
  // copy with the daemon's side set alike, docs/benchmarks.md).
  const int send_buffer = 4 << 20;
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof(send_buffer));
  timeval stall{kStallSeconds, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &stall, sizeof(stall));
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &stall, sizeof(stall));
  v1::BulkRequest attach;
  attach.set_attach(ticket);
  RETURN_IF_ERROR(SendFrame(fd.get(), attach));
  v1::BulkReply reply;
  ASSIGN_OR_RETURN(bool got, RecvFrame(fd.get(), &reply));
  if (!got) return absl::UnavailableError("the bulk channel closed before answering the attach");
  RETURN_IF_ERROR(FromReply(reply));
  auto client = std::unique_ptr<BulkChannelClient>(new BulkChannelClient(std::move(fd)));
  client->session_id_ = reply.session_id();
  return client;
}

absl::Status BulkChannelClient::Broken(absl::Status status) {
  broken_ = true;
  return status;
}

absl::StatusOr<v1::WriteSummary> BulkChannelClient::Write(absl::Span<const WriteChunkRef> chunks) {
  if (broken_) return absl::UnavailableError("the bulk channel connection is broken");
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (chunks[i].keys.size() + chunks[i].values.size() > kBulkMaxPayloadBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "chunk ", i, " holds ", chunks[i].keys.size() + chunks[i].values.size(),
          " bytes; a bulk frame carries at most ", kBulkMaxPayloadBytes));
    }
  }
  // Frames of whole chunks up to the payload limit, each sent with one sendmsg of its header and
  // every chunk's keys and values where they are.
  size_t next = 0;
  v1::BulkRequest frame;
  std::vector<iovec> iov;
  while (next < chunks.size()) {
    frame.Clear();
    iov.clear();
    uint64_t payload = 0;
    size_t header_bytes = 0;
    while (next < chunks.size()) {
      const WriteChunkRef& c = chunks[next];
      const uint64_t bytes = c.keys.size() + c.values.size();
      if (frame.write().chunks_size() > 0 &&
          (payload + bytes > kBulkMaxPayloadBytes || header_bytes > kBulkMaxRequestMessageBytes / 2)) {
        break;
      }
      v1::BulkChunk* out = frame.mutable_write()->add_chunks();
      *out->mutable_header() = *c.header;
      out->mutable_header()->clear_keys();
      out->mutable_header()->clear_values();
      out->set_key_bytes(c.keys.size());
      out->set_value_bytes(c.values.size());
      header_bytes += out->ByteSizeLong() + 8;
      iov.push_back(Iov(c.keys.data(), c.keys.size()));
      iov.push_back(Iov(c.values.data(), c.values.size()));
      payload += bytes;
      ++next;
    }
    if (absl::Status s = SendFrame(fd_.get(), frame, iov); !s.ok()) return Broken(s);
  }
  frame.Clear();
  frame.set_end_writes(true);
  if (absl::Status s = SendFrame(fd_.get(), frame); !s.ok()) return Broken(s);
  v1::BulkReply reply;
  absl::StatusOr<bool> got = RecvFrame(fd_.get(), &reply);
  if (!got.ok()) return Broken(got.status());
  if (!*got) return Broken(absl::UnavailableError("the bulk channel closed during a write"));
  RETURN_IF_ERROR(FromReply(reply));
  return reply.written();
}

absl::Status BulkChannelClient::Read(const v1::ReadRequest& request, const KvChunkPlacer* place,
                                     const KvChunkSink* sink) {
  if (broken_) return absl::UnavailableError("the bulk channel connection is broken");
  v1::BulkRequest frame;
  *frame.mutable_read() = request;
  if (absl::Status s = SendFrame(fd_.get(), frame); !s.ok()) return Broken(s);
  absl::Status failure;  // the caller's placer or sink refused: the rest is dropped
  v1::BulkReply reply;
  std::vector<iovec> iov;
  for (;;) {
    reply.Clear();
    absl::StatusOr<bool> got = RecvFrame(fd_.get(), &reply);
    if (!got.ok()) return Broken(got.status());
    if (!*got) return Broken(absl::UnavailableError("the bulk channel closed during a read"));
    if (reply.end()) {
      RETURN_IF_ERROR(failure);
      return FromReply(reply);
    }
    uint64_t total = 0;
    for (const v1::BulkChunk& c : reply.chunks()) {
      if (c.key_bytes() > kBulkMaxPayloadBytes || c.value_bytes() > kBulkMaxPayloadBytes ||
          (total += c.key_bytes() + c.value_bytes()) > 4 * kBulkMaxPayloadBytes) {
        return Broken(absl::DataLossError("a bulk read reply announces more bytes than allowed"));
      }
    }
    const bool buffered = sink != nullptr || !failure.ok();
    if (buffered && buffer_.size() < total) buffer_.resize(total);
    iov.clear();
    uint64_t at = 0;
    for (const v1::BulkChunk& c : reply.chunks()) {
      if (!buffered && failure.ok()) {
        absl::StatusOr<KvChunkPlace> where = (*place)(c.header(), c.key_bytes(), c.value_bytes());
        if (where.ok()) {
          iov.push_back(Iov(where->keys, c.key_bytes()));
          iov.push_back(Iov(where->values, c.value_bytes()));
          continue;
        }
        failure = where.status();
        if (buffer_.size() < total) buffer_.resize(total);
      }
      iov.push_back(Iov(buffer_.data() + at, c.key_bytes() + c.value_bytes()));
      at += c.key_bytes() + c.value_bytes();
    }
    if (absl::Status s = RecvBytes(fd_.get(), iov); !s.ok()) return Broken(s);
    if (sink == nullptr || !failure.ok()) continue;
    at = 0;
    for (const v1::BulkChunk& c : reply.chunks()) {
      const absl::string_view keys(buffer_.data() + at, c.key_bytes());
      const absl::string_view values(buffer_.data() + at + c.key_bytes(), c.value_bytes());
      at += c.key_bytes() + c.value_bytes();
      failure = (*sink)(c.header(), absl::MakeConstSpan(&keys, 1), absl::MakeConstSpan(&values, 1));
      if (!failure.ok()) break;
    }
  }
}

}  // namespace kvkeep
