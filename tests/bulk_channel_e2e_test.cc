// The bulk channel (docs/api.md §5.2) against the real daemon: bytes written and read over it are
// the bytes gRPC reads back, chunk errors are reported like WriteKV's and leave the connection
// usable, tickets work once, tenants stay apart, ended sessions and stalled peers are cut off,
// and session limits apply as on gRPC.
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/bulk_channel_client.h"
#include "client/client.h"
#include "common/bulk_frame.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/raw_session.h"
#include "tests/local_http.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::DaemonProcess;
using ::kvkeep::testing::OpenSession;
using ::kvkeep::testing::RawSession;
using ::kvkeep::testing::PatternBytes;
using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

constexpr uint32_t kTokenBytes = 16;  // TestLayout: head_dim 8, fp16

OwnedFd ConnectRaw(const std::string& path) {
  OwnedFd fd(socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) return OwnedFd();
  timeval tv{20, 0};
  setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// A raw connection attached with `ticket`: the daemon's reply code (0: attached) and the socket.
std::pair<int, OwnedFd> AttachRaw(const std::string& path, const std::string& ticket) {
  OwnedFd fd = ConnectRaw(path);
  v1::BulkRequest attach;
  attach.set_attach(ticket);
  v1::BulkReply reply;
  if (!fd.valid() || !SendFrame(fd.get(), attach).ok()) return {-1, std::move(fd)};
  absl::StatusOr<bool> got = RecvFrame(fd.get(), &reply);
  if (!got.ok() || !*got) return {-1, std::move(fd)};
  return {reply.code(), std::move(fd)};
}

// Seconds until the daemon closes `fd` (reads return 0), or -1 after `limit` seconds.
double SecondsUntilClosed(int fd, double limit) {
  const auto t0 = std::chrono::steady_clock::now();
  char byte;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const double spent =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (spent > limit) return -1;
    if (poll(&p, 1, 100) > 0) {
      const ssize_t n = recv(fd, &byte, 1, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN)) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      }
    }
  }
}

// The value of one series (name with its labels, as written) in a /metrics exposition; -1 if absent.
double SeriesValue(const std::string& text, const std::string& series) {
  const size_t at = text.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::strtod(text.c_str() + at + series.size() + 2, nullptr);
}

class BulkChannelTest : public ::testing::Test {
 protected:
  void SetUp() override { StartDaemon({}); }

  // A fresh daemon (the previous one, if any, is killed and its data dir removed).
  void StartDaemon(std::vector<std::string> flags) {
    daemon_holder_ = std::make_unique<DaemonProcess>();
    ASSERT_OK(daemon().Start(std::move(flags)));
    ASSERT_OK_AND_ASSIGN(token_a_, daemon().CreateTenant("alpha"));
    ASSERT_OK_AND_ASSIGN(token_b_, daemon().CreateTenant("beta"));
    bulk_socket_ = daemon().dir() + "/kvkeepd.sock.bulk";
  }

  // A client of `token` with a sequence of `tokens` allocated tokens.
  std::unique_ptr<Client> WithSequence(const std::string& token, uint32_t tokens,
                                       std::string* sequence) {
    auto client = Client::Attach(daemon().channel(), token, "w" + std::to_string(next_worker_++));
    if (!client.ok()) return nullptr;
    if (!(*client)->RegisterModel(testing::TestLayout()).ok()) return nullptr;
    auto seq = (*client)->CreateSequence("test-model");
    if (!seq.ok() || !(*client)->Allocate(*seq, tokens).ok()) return nullptr;
    *sequence = *seq;
    return *std::move(client);
  }

  DaemonProcess& daemon() { return *daemon_holder_; }

  std::unique_ptr<DaemonProcess> daemon_holder_;
  std::string token_a_, token_b_, bulk_socket_;
  int next_worker_ = 0;
};

TEST_F(BulkChannelTest, BytesWrittenOverItAreWhatGrpcReadsAndItReadsWhatGrpcWrote) {
  std::string seq;
  auto client = WithSequence(token_a_, 64, &seq);
  ASSERT_NE(client, nullptr);
  ASSERT_OK(client->bulk_channel_status());
  const v1::ModelLayout layout = testing::TestLayout();
  // Every head over the bulk channel in uneven chunks (WriteHead splits; 7-token chunks below
  // cross the 4-token pages), then everything read back over gRPC.
  for (uint32_t layer = 0; layer < layout.layers(); ++layer) {
    for (uint32_t head = 0; head < layout.kv_heads(); ++head) {
      const std::string keys = PatternBytes(layer * 10 + head, 64 * kTokenBytes);
      const std::string values = PatternBytes(100 + layer * 10 + head, 64 * kTokenBytes);
      std::vector<v1::KvChunk> headers;
      std::vector<KvChunkView> views;
      for (uint32_t at = 0; at < 64; at += 7) {
        const uint32_t n = std::min(7u, 64 - at);
        KvChunkView& v = views.emplace_back();
        v.header.set_sequence_id(seq);
        v.header.set_layer(layer);
        v.header.set_kv_head(head);
        v.header.set_token_offset(at);
        v.header.set_token_count(n);
        v.keys = absl::string_view(keys).substr(at * kTokenBytes, n * kTokenBytes);
        v.values = absl::string_view(values).substr(at * kTokenBytes, n * kTokenBytes);
      }
      ASSERT_OK_AND_ASSIGN(v1::WriteSummary written, client->WriteKvViews(views));
      EXPECT_EQ(written.chunks(), views.size());
      EXPECT_EQ(written.tokens(), 64u);
      EXPECT_EQ(written.bytes(), 2u * 64 * kTokenBytes);
    }
  }
  ASSERT_OK(client->Commit(seq, 64).status());
  ASSERT_OK_AND_ASSIGN(auto grpc_reader, Client::Attach(daemon().channel(), token_a_, "grpc"));
  grpc_reader->set_use_bulk_channel(false);
  for (uint32_t layer = 0; layer < layout.layers(); ++layer) {
    for (uint32_t head = 0; head < layout.kv_heads(); ++head) {
      ASSERT_OK_AND_ASSIGN(HeadData over_grpc, grpc_reader->ReadHead(seq, layer, head));
      EXPECT_EQ(over_grpc.keys, PatternBytes(layer * 10 + head, 64 * kTokenBytes));
      EXPECT_EQ(over_grpc.values, PatternBytes(100 + layer * 10 + head, 64 * kTokenBytes));
      // Over the bulk channel: placed straight into buffers, and through a sink.
      std::string keys(64 * kTokenBytes, '\0'), values(64 * kTokenBytes, '\0');
      std::vector<int32_t> positions;
      ASSERT_OK_AND_ASSIGN(uint32_t tokens,
                           client->ReadHeadInto(seq, layer, head, keys.data(), values.data(),
                                                keys.size(), &positions));
      EXPECT_EQ(tokens, 64u);
      EXPECT_EQ(keys, over_grpc.keys);
      EXPECT_EQ(values, over_grpc.values);
      EXPECT_EQ(positions, over_grpc.positions);
      ASSERT_OK_AND_ASSIGN(HeadData over_bulk, client->ReadHead(seq, layer, head));
      EXPECT_EQ(over_bulk.keys, over_grpc.keys);
      EXPECT_EQ(over_bulk.positions, over_grpc.positions);
    }
  }
  // A whole-sequence read in small chunks: the same chunk headers on both paths.
  v1::ReadRequest all;
  all.set_sequence_id(seq);
  all.set_max_chunk_bytes(5 * 2 * kTokenBytes);
  ASSERT_OK_AND_ASSIGN(std::vector<v1::KvChunk> bulk_chunks, client->ReadKV(all));
  ASSERT_OK_AND_ASSIGN(std::vector<v1::KvChunk> grpc_chunks, grpc_reader->ReadKV(all));
  ASSERT_EQ(bulk_chunks.size(), grpc_chunks.size());
  for (size_t i = 0; i < bulk_chunks.size(); ++i) {
    EXPECT_EQ(bulk_chunks[i].SerializeAsString(), grpc_chunks[i].SerializeAsString()) << i;
  }
  ASSERT_OK(client->bulk_channel_status());
}

TEST_F(BulkChannelTest, AFailingChunkIsReportedAndTheConnectionStaysUsable) {
  std::string seq;
  auto client = WithSequence(token_a_, 16, &seq);
  ASSERT_NE(client, nullptr);
  const std::string bytes = PatternBytes(7, 4 * kTokenBytes);
  std::vector<KvChunkView> views(3);
  for (uint32_t i = 0; i < 3; ++i) {
    views[i].header.set_sequence_id(seq);
    views[i].header.set_token_offset(4 * i);
    views[i].header.set_token_count(4);
    views[i].keys = bytes;
    views[i].values = bytes;
  }
  views[1].header.set_layer(9);  // outside the model
  EXPECT_THAT(client->WriteKvViews(views),
              StatusIs(StatusCode::kInvalidArgument, "chunk 1: layer 9"));
  // Chunk 0 stayed written, chunk 2 did not; the channel still serves this client.
  ASSERT_OK(client->bulk_channel_status());
  ASSERT_OK(client->Commit(seq, 12).status());
  std::string keys(12 * kTokenBytes, '\0'), values(12 * kTokenBytes, '\0');
  ASSERT_OK(client->ReadHeadInto(seq, 0, 0, keys.data(), values.data(), keys.size()).status());
  EXPECT_EQ(keys.substr(0, bytes.size()), bytes);
  EXPECT_EQ(keys.substr(2 * bytes.size()), std::string(bytes.size(), '\0'));
  // A chunk past the allocated room, a wrong byte count, an unknown sequence: each is the
  // daemon's status for that chunk, nothing is written, and the next write works.
  KvChunkView bad = views[0];
  bad.header.set_token_offset(16);
  EXPECT_THAT(client->WriteKvViews({bad}), StatusIs(StatusCode::kOutOfRange));
  bad = views[0];
  bad.values = absl::string_view(bytes).substr(1);
  EXPECT_THAT(client->WriteKvViews({bad}), StatusIs(StatusCode::kInvalidArgument,
                                                    "bytes of keys"));
  bad = views[0];
  bad.header.set_sequence_id("no-such-sequence");
  EXPECT_THAT(client->WriteKvViews({bad}), StatusIs(StatusCode::kNotFound));
  views[1].header.set_layer(1);
  ASSERT_OK(client->WriteKvViews(views).status());
  ASSERT_OK(client->bulk_channel_status());
  // A sink that refuses ends the read with its status; the channel stays usable.
  v1::ReadRequest read;
  read.set_sequence_id(seq);
  read.set_max_chunk_bytes(2 * 4 * kTokenBytes);
  int calls = 0;
  EXPECT_THAT(client->ReadKvInto(read,
                                 [&](const v1::KvChunk&, absl::Span<const absl::string_view>,
                                     absl::Span<const absl::string_view>) {
                                   ++calls;
                                   return absl::AbortedError("enough");
                                 }),
              StatusIs(StatusCode::kAborted));
  EXPECT_EQ(calls, 1);
  ASSERT_OK(client->bulk_channel_status());
  ASSERT_OK(client->ReadHeadInto(seq, 1, 1, keys.data(), values.data(), keys.size()).status());
}

TEST_F(BulkChannelTest, TicketsWorkOnceAndBadFramesAreRefusedWithAReason) {
  auto raw = OpenSession(daemon(), token_a_, "raw");
  ASSERT_NE(raw, nullptr);
  ASSERT_EQ(raw->started.bulk_ticket().size(), kBulkTicketBytes);
  EXPECT_EQ(raw->started.bulk_socket(), bulk_socket_);
  ASSERT_OK_AND_ASSIGN(auto bulk, BulkChannelClient::Connect(bulk_socket_,
                                                             raw->started.bulk_ticket()));
  EXPECT_EQ(bulk->session_id(), raw->started.session_id());
  EXPECT_THAT(BulkChannelClient::Connect(bulk_socket_, raw->started.bulk_ticket()),
              StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(BulkChannelClient::Connect(bulk_socket_, std::string(32, 'x')),
              StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(BulkChannelClient::Connect(bulk_socket_, "short"),
              StatusIs(StatusCode::kInvalidArgument, "32 bytes"));

  // A request before attach; a frame longer than the limit; bytes that do not parse: each gets
  // a reply saying why, then the connection is closed.
  auto refused = [&](const std::string& bytes) {
    OwnedFd fd = ConnectRaw(bulk_socket_);
    EXPECT_TRUE(fd.valid());
    EXPECT_EQ(send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(bytes.size()));
    v1::BulkReply reply;
    absl::StatusOr<bool> got = RecvFrame(fd.get(), &reply);
    EXPECT_TRUE(got.ok() && *got) << got.status();
    EXPECT_GE(SecondsUntilClosed(fd.get(), 5), 0);
    return std::make_pair(reply.code(), reply.message());
  };
  v1::BulkRequest read_first;
  read_first.mutable_read()->set_sequence_id("x");
  std::string frame = read_first.SerializeAsString();
  std::string len(4, '\0');
  len[0] = static_cast<char>(frame.size());
  auto before_attach = refused(len + frame);
  EXPECT_EQ(before_attach.first, static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_NE(before_attach.second.find("first bulk request must be attach"), std::string::npos);
  auto oversized = refused(std::string("\xff\xff\xff\x7f", 4));
  EXPECT_EQ(oversized.first, static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_NE(oversized.second.find("limit"), std::string::npos);
  auto garbage = refused(std::string("\x04\0\0\0\xff\xff\xff\xff", 8));
  EXPECT_EQ(garbage.first, static_cast<int>(StatusCode::kInvalidArgument));

  // The attached connection refuses a write frame announcing more than the limit, and closes.
  v1::BulkRequest huge;
  v1::BulkChunk* c = huge.mutable_write()->add_chunks();
  c->set_key_bytes(kBulkMaxPayloadBytes);
  c->set_value_bytes(1);
  auto raw2 = OpenSession(daemon(), token_a_, "raw2");
  ASSERT_NE(raw2, nullptr);
  auto [code, fd] = AttachRaw(bulk_socket_, raw2->started.bulk_ticket());
  ASSERT_EQ(code, 0);
  v1::BulkReply reply;
  ASSERT_OK(SendFrame(fd.get(), huge));
  ASSERT_OK_AND_ASSIGN(bool got, RecvFrame(fd.get(), &reply));
  ASSERT_TRUE(got);
  EXPECT_EQ(reply.code(), static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_NE(reply.message().find("at most"), std::string::npos) << reply.message();
  EXPECT_GE(SecondsUntilClosed(fd.get(), 5), 0);

  // When the session ends, its connection is closed.
  raw->End();
  v1::ReadRequest read;
  read.set_sequence_id("anything");
  absl::Status after = absl::OkStatus();
  for (int i = 0; i < 100 && !bulk->broken(); ++i) {
    after = bulk->Read(read, nullptr, nullptr);
    if (!bulk->broken()) usleep(20000);
  }
  EXPECT_TRUE(bulk->broken()) << "the ended session's bulk connection still answers: " << after;
}

TEST_F(BulkChannelTest, MalformedWriteFramesFailTheirBatchAndTheConnectionGoesOn) {
  std::string seq;
  auto client = WithSequence(token_a_, 8, &seq);
  ASSERT_NE(client, nullptr);
  auto raw = OpenSession(daemon(), token_a_, "raw");
  ASSERT_NE(raw, nullptr);
  auto [code, fd] = AttachRaw(bulk_socket_, raw->started.bulk_ticket());
  ASSERT_EQ(code, 0);
  const std::string bytes = PatternBytes(9, 4 * kTokenBytes);
  // Sends `write` and its raw bytes, then end_writes; returns the reply.
  auto batch = [&, &fd = fd](const v1::BulkRequest& write, absl::Span<const iovec> payload) {
    v1::BulkReply reply;
    v1::BulkRequest end;
    end.set_end_writes(true);
    EXPECT_OK(SendFrame(fd.get(), write, payload));
    EXPECT_OK(SendFrame(fd.get(), end));
    absl::StatusOr<bool> got = RecvFrame(fd.get(), &reply);
    EXPECT_TRUE(got.ok() && *got) << got.status();
    return reply;
  };
  auto chunk_of = [&](v1::BulkRequest* write) {
    v1::BulkChunk* c = write->mutable_write()->add_chunks();
    c->mutable_header()->set_sequence_id(seq);
    c->mutable_header()->set_token_count(4);
    c->set_key_bytes(bytes.size());
    c->set_value_bytes(bytes.size());
    return c;
  };
  const iovec two[] = {Iov(bytes.data(), bytes.size()), Iov(bytes.data(), bytes.size())};
  // A write frame without chunks.
  v1::BulkRequest empty;
  empty.mutable_write();
  v1::BulkReply reply = batch(empty, {});
  EXPECT_EQ(reply.code(), static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_NE(reply.message().find("chunk 0: a bulk write frame needs at least one chunk"),
            std::string::npos) << reply.message();
  // Keys inside the chunk header instead of after the frame: refused, its raw bytes skipped.
  v1::BulkRequest inline_keys;
  chunk_of(&inline_keys)->mutable_header()->set_keys(bytes);
  reply = batch(inline_keys, two);
  EXPECT_EQ(reply.code(), static_cast<int>(StatusCode::kInvalidArgument));
  EXPECT_NE(reply.message().find("follow the frame as raw bytes"), std::string::npos)
      << reply.message();
  // Announced byte counts that do not make the tokens: refused, nothing written.
  v1::BulkRequest short_keys;
  chunk_of(&short_keys)->set_key_bytes(bytes.size() - 1);
  const iovec short_payload[] = {Iov(bytes.data(), bytes.size() - 1),
                                 Iov(bytes.data(), bytes.size())};
  reply = batch(short_keys, short_payload);
  EXPECT_EQ(reply.code(), static_cast<int>(StatusCode::kInvalidArgument));
  ASSERT_OK(client->Commit(seq, 4).status());
  ASSERT_OK_AND_ASSIGN(HeadData before, client->ReadHead(seq, 0, 0));
  EXPECT_EQ(before.keys, std::string(bytes.size(), '\0'));
  // The same connection then writes a good chunk and reads it back.
  v1::BulkRequest good;
  chunk_of(&good);
  reply = batch(good, two);
  EXPECT_EQ(reply.code(), 0) << reply.message();
  EXPECT_EQ(reply.written().bytes(), 2 * bytes.size());
  ASSERT_OK_AND_ASSIGN(HeadData after, client->ReadHead(seq, 0, 0));
  EXPECT_EQ(after.keys, bytes);
}

TEST_F(BulkChannelTest, ATenantHoldsAtMost256ConnectionsAndOthersStillAttach) {
  std::vector<std::unique_ptr<RawSession>> sessions;
  std::vector<OwnedFd> connections;
  for (int i = 0; i < 257; ++i) {
    auto s = OpenSession(daemon(), token_a_, absl::StrCat("w", i));
    ASSERT_NE(s, nullptr) << i;
    auto [code, fd] = AttachRaw(bulk_socket_, s->started.bulk_ticket());
    if (i < 256) {
      ASSERT_EQ(code, 0) << "connection " << i;
    } else {
      EXPECT_EQ(code, static_cast<int>(StatusCode::kResourceExhausted));
    }
    sessions.push_back(std::move(s));
    connections.push_back(std::move(fd));
  }
  // Another tenant is not affected, and alpha gets a slot back when one of its sessions ends.
  auto beta = OpenSession(daemon(), token_b_, "raw");
  ASSERT_NE(beta, nullptr);
  EXPECT_EQ(AttachRaw(bulk_socket_, beta->started.bulk_ticket()).first, 0);
  sessions[0]->End();
  EXPECT_GE(SecondsUntilClosed(connections[0].get(), 5), 0);
  int code = -1;
  for (int i = 0; i < 50 && code != 0; ++i) {  // the closed connection's thread ends meanwhile
    auto retry = OpenSession(daemon(), token_a_, absl::StrCat("again", i));
    ASSERT_NE(retry, nullptr);
    code = AttachRaw(bulk_socket_, retry->started.bulk_ticket()).first;
    sessions.push_back(std::move(retry));
    if (code != 0) usleep(20000);
  }
  EXPECT_EQ(code, 0);
}

TEST_F(BulkChannelTest, ATenantNeverReachesAnotherTenantsSequence) {
  std::string seq_a, seq_b;
  auto a = WithSequence(token_a_, 8, &seq_a);
  auto b = WithSequence(token_b_, 8, &seq_b);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const std::string mine = PatternBytes(1, 8 * kTokenBytes);
  ASSERT_OK(a->WriteHead(seq_a, 0, 0, 0, 8, mine.data(), mine.data()).status());
  ASSERT_OK(a->Commit(seq_a, 8).status());
  ASSERT_OK(b->bulk_channel_status());
  const std::string theirs = PatternBytes(2, 8 * kTokenBytes);
  EXPECT_THAT(b->WriteHead(seq_a, 0, 0, 0, 8, theirs.data(), theirs.data()),
              StatusIs(StatusCode::kNotFound));
  std::string keys(8 * kTokenBytes, '\0'), values(8 * kTokenBytes, '\0');
  EXPECT_THAT(b->ReadHeadInto(seq_a, 0, 0, keys.data(), values.data(), keys.size()),
              StatusIs(StatusCode::kNotFound));
  EXPECT_EQ(keys, std::string(keys.size(), '\0'));
  ASSERT_OK_AND_ASSIGN(HeadData back, a->ReadHead(seq_a, 0, 0));
  EXPECT_EQ(back.keys, mine);
}

TEST_F(BulkChannelTest, StalledPeersAreCutOffAndTheirPinsGo) {
  const int port = testing::FreePort();
  StartDaemon({absl::StrCat("--metrics_address=127.0.0.1:", port)});
  auto pinned = [&] {
    return SeriesValue(testing::HttpGet(port, "/metrics"), "kvkeep_pool_pinned_pages");
  };
  std::string seq;
  auto client = WithSequence(token_a_, 16, &seq);
  ASSERT_NE(client, nullptr);
  // One connection never attaches; another stops in the middle of a write frame's bytes.
  OwnedFd silent = ConnectRaw(bulk_socket_);
  auto raw = OpenSession(daemon(), token_a_, "raw");
  ASSERT_NE(raw, nullptr);
  auto [code, stalled] = AttachRaw(bulk_socket_, raw->started.bulk_ticket());
  ASSERT_EQ(code, 0);
  v1::BulkRequest write;
  v1::BulkChunk* c = write.mutable_write()->add_chunks();
  c->mutable_header()->set_sequence_id(seq);
  c->mutable_header()->set_token_count(16);
  c->set_key_bytes(16 * kTokenBytes);
  c->set_value_bytes(16 * kTokenBytes);
  const std::string half = PatternBytes(3, 16 * kTokenBytes);
  ASSERT_OK(SendFrame(stalled.get(), write, {Iov(half.data(), half.size())}));
  // The stalled write pins the sequence's pages: a Compress waits for it (2 s) and gives up, then
  // the daemon cuts the peer off (10 s) and the pages are free to move again.
  ASSERT_OK(client->Commit(seq, 16).status());
  for (int i = 0; i < 200 && pinned() <= 0; ++i) usleep(10000);  // the daemon took the frame
  ASSERT_GT(pinned(), 0) << "the stalled write frame pins no page";
  v1::Policy keep_half;
  keep_half.set_scorer("knorm");  // needs no query statistics
  keep_half.set_keep_ratio(0.5);
  EXPECT_THAT(client->Compress(seq, keep_half), StatusIs(StatusCode::kUnavailable));
  const double silent_closed = SecondsUntilClosed(silent.get(), 20);
  const double stalled_closed = SecondsUntilClosed(stalled.get(), 20);
  EXPECT_GE(silent_closed, 0) << "a connection that never attached is still open";
  EXPECT_GE(stalled_closed, 0) << "a peer stalled inside a frame is still connected";
  EXPECT_EQ(pinned(), 0);
  EXPECT_OK(client->Compress(seq, keep_half).status());
}

TEST_F(BulkChannelTest, ConcurrentClientsAndThreadsGetTheirOwnBytesBack) {
  // 3 clients x 3 threads, each thread its own (layer, head) of its client's sequence, 20 rounds
  // of write then read back; threads of one client share its one bulk connection (the others
  // go over gRPC meanwhile).
  constexpr int kClients = 3, kThreads = 3, kRounds = 20;
  constexpr uint32_t kTokens = 48;
  std::vector<std::unique_ptr<Client>> clients(kClients);
  std::vector<std::string> seqs(kClients);
  for (int c = 0; c < kClients; ++c) {
    clients[c] = WithSequence(c == 2 ? token_b_ : token_a_, kTokens, &seqs[c]);
    ASSERT_NE(clients[c], nullptr);
    ASSERT_OK(clients[c]->bulk_channel_status());
    ASSERT_OK(clients[c]->Commit(seqs[c], kTokens).status());  // reads return committed tokens
  }
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < kClients; ++c) {
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&, c, t] {
        const uint32_t layer = t / 2, head = t % 2;
        for (int round = 0; round < kRounds; ++round) {
          const std::string keys = PatternBytes(c * 1000 + t * 100 + round, kTokens * kTokenBytes);
          const std::string values = PatternBytes(7 + c * 1000 + t * 100 + round,
                                                  kTokens * kTokenBytes);
          if (!clients[c]->WriteHead(seqs[c], layer, head, 0, kTokens, keys.data(),
                                     values.data()).ok()) {
            ++bad;
            continue;
          }
          std::string k(keys.size(), '\0'), v(values.size(), '\0');
          v1::ReadRequest read;
          read.set_sequence_id(seqs[c]);
          read.set_layer_begin(layer);
          read.set_layer_end(layer + 1);
          read.set_kv_head_begin(head);
          read.set_kv_head_end(head + 1);
          absl::Status got = clients[c]->ReadKvPlaced(
              read, [&](const v1::KvChunk& h, uint64_t kb, uint64_t) -> absl::StatusOr<KvChunkPlace> {
                const uint64_t at = uint64_t{h.token_offset()} * kTokenBytes;
                if (at + kb > k.size()) return absl::OutOfRangeError("chunk past the head");
                return KvChunkPlace{k.data() + at, v.data() + at};
              });
          if (!got.ok() || k != keys || v != values) {
            if (bad++ == 0) ADD_FAILURE() << "client " << c << " thread " << t << ": " << got;
          }
        }
      });
    }
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(bad.load(), 0);
  for (int c = 0; c < kClients; ++c) EXPECT_OK(clients[c]->bulk_channel_status());
}

TEST_F(BulkChannelTest, MetricsCountTheChannelsTraffic) {
  const int port = testing::FreePort();
  StartDaemon({absl::StrCat("--metrics_address=127.0.0.1:", port)});
  std::string seq;
  auto client = WithSequence(token_a_, 32, &seq);
  ASSERT_NE(client, nullptr);
  const std::string bytes = PatternBytes(6, 32 * kTokenBytes);
  ASSERT_OK(client->WriteHead(seq, 0, 1, 0, 32, bytes.data(), bytes.data()).status());
  ASSERT_OK(client->Commit(seq, 32).status());
  ASSERT_OK(client->ReadHead(seq, 0, 1).status());
  EXPECT_THAT(BulkChannelClient::Connect(bulk_socket_, std::string(32, 'x')),
              StatusIs(StatusCode::kNotFound));
  std::string text = testing::HttpGet(port, "/metrics");
  EXPECT_EQ(SeriesValue(text, "kvkeep_bulk_bytes_total{direction=\"write\"}"), 2.0 * bytes.size());
  EXPECT_EQ(SeriesValue(text, "kvkeep_bulk_bytes_total{direction=\"read\"}"), 2.0 * bytes.size());
  EXPECT_GE(SeriesValue(text, "kvkeep_bulk_chunks_total{direction=\"write\"}"), 1);
  EXPECT_GE(SeriesValue(text, "kvkeep_bulk_connections"), 1);
  EXPECT_EQ(SeriesValue(text, "kvkeep_bulk_errors_total{op=\"write\"}"), 0);
  EXPECT_GE(SeriesValue(text, "kvkeep_bulk_refused_connections_total"), 1);
}

TEST_F(BulkChannelTest, SessionLimitsApplyAsOnGrpc) {
  StartDaemon({"--session_byte_burst=4096", "--session_bytes_per_second=1"});
  std::string seq;
  auto client = WithSequence(token_a_, 256, &seq);
  ASSERT_NE(client, nullptr);
  ASSERT_OK(client->bulk_channel_status());
  const std::string bytes = PatternBytes(4, 256 * kTokenBytes);
  EXPECT_THAT(client->WriteHead(seq, 0, 0, 0, 256, bytes.data(), bytes.data()),
              StatusIs(StatusCode::kResourceExhausted));
}

TEST_F(BulkChannelTest, WithoutTheChannelTheBytesPathIsGrpcAndWorks) {
  StartDaemon({"--bulk_channel=false"});
  auto raw = OpenSession(daemon(), token_a_, "raw");
  ASSERT_NE(raw, nullptr);
  EXPECT_TRUE(raw->started.bulk_ticket().empty());
  EXPECT_EQ(access(bulk_socket_.c_str(), F_OK), -1);
  std::string seq;
  auto client = WithSequence(token_a_, 8, &seq);
  ASSERT_NE(client, nullptr);
  EXPECT_THAT(client->bulk_channel_status(), StatusIs(StatusCode::kFailedPrecondition));
  const std::string bytes = PatternBytes(5, 8 * kTokenBytes);
  ASSERT_OK(client->WriteHead(seq, 1, 1, 0, 8, bytes.data(), bytes.data()).status());
  ASSERT_OK(client->Commit(seq, 8).status());
  ASSERT_OK_AND_ASSIGN(HeadData back, client->ReadHead(seq, 1, 1));
  EXPECT_EQ(back.keys, bytes);
}

}  // namespace
}  // namespace kvkeep
