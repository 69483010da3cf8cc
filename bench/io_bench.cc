#include "bench/io_bench.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <latch>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "bench/rep_stats.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench/io_bench_internal.h"
#include "service/rpc/kv_wire.h"
#include "bench/mem_bench.h"
#include "bench/writev_fully.h"
#include "bench/redis_peer.h"
#include "common/process_tuning.h"
#include "client/admin_client.h"
#include "client/client.h"
#include "common/status_macros.h"

namespace kvkeep::bench {
namespace {

using io_internal::BytesRep;
using io_internal::BytesRow;
using io_internal::Heads;
using io_internal::MeasureOps;
using io_internal::ModelName;
using io_internal::Options;
using io_internal::OpsRep;
using io_internal::OpsRow;
using io_internal::RunInfo;
using io_internal::Shape;
using io_internal::TokenBytes;

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- Shared set-up -----------------------------------------------------------------------------

absl::Status RegisterModels(Client& c, const Options& o) {
  std::vector<uint32_t> sizes = o.pages;
  for (uint32_t tpp : sizes) {
    v1::ModelLayout layout;
    layout.set_name(ModelName(o.shape, tpp));
    layout.set_layers(o.shape.layers);
    layout.set_q_heads(o.shape.q_heads);
    layout.set_kv_heads(o.shape.kv_heads);
    layout.set_head_dim(o.shape.head_dim);
    layout.set_dtype(o.shape.dtype);
    layout.set_tokens_per_page(tpp);
    layout.mutable_rope()->set_theta(500000);
    ASSIGN_OR_RETURN(v1::RegisterModelReply reply, c.RegisterModel(layout));
    const uint64_t want = 2 * uint64_t{tpp} * TokenBytes(o.shape);
    if (reply.geometry().page_bytes() != want) {
      return absl::InternalError(absl::StrCat("page of ", tpp, " tokens is ",
                                              reply.geometry().page_bytes(), " bytes, expected ",
                                              want));
    }
  }
  return absl::OkStatus();
}

// ---- 2. Bytes path: WriteKV / ReadKV vs a raw Unix-socket copy ----------------------------------

// One page-size's workload: a committed sequence and the same bytes laid out per head as
// [keys of T tokens][values of T tokens].
struct BytesWorkload {
  std::string seq;
  uint32_t tokens = 0;
  uint32_t chunk_tokens = 0;
  std::string src;
  // Views of `src` (KvChunkView: the bytes stay there, WriteKvViews copies nothing); built once,
  // building them is not timed.
  std::vector<KvChunkView> chunks;
  // The same chunks as Redis values (keys then values of one chunk, contiguous), built once.
  std::string redis_src;
  std::vector<std::string> redis_keys;
  std::vector<std::string_view> redis_values;
};

uint64_t HeadBytes(const Shape& s, uint32_t tokens) { return 2 * uint64_t{tokens} * TokenBytes(s); }

// Moves the workload's bytes over a socketpair: one thread writev()s the key and value span of
// each chunk, the other read()s them into a pre-faulted buffer, one read per chunk-sized piece.
// With `batch_bytes` > 0 the sender gathers consecutive chunks into writev()s of up to that many
// bytes (at most IOV_MAX spans) and the receiver read()s up to that many bytes at a time: the
// same bytes moved as the bulk channel's frames move them. Returns GB/s.
absl::StatusOr<double> RawSocketCopy(const BytesWorkload& wl, const Options& o,
                                     std::vector<char>& dst, uint64_t batch_bytes = 0) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) {
    return absl::InternalError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  const uint64_t tb = TokenBytes(o.shape);
  const uint32_t heads = Heads(o.shape);
  const uint64_t total = HeadBytes(o.shape, wl.tokens) * heads;
  std::atomic<bool> send_failed{false};
  const auto t0 = Clock::now();
  std::thread sender([&] {
    std::vector<iovec> iov;
    uint64_t gathered = 0;
    auto flush = [&] {
      if (!iov.empty() && !WritevFully(fds[0], iov.data(), static_cast<int>(iov.size()))) {
        send_failed = true;
      }
      iov.clear();
      gathered = 0;
    };
    for (uint32_t h = 0; h < heads && !send_failed; ++h) {
      const char* keys = wl.src.data() + h * HeadBytes(o.shape, wl.tokens);
      const char* values = keys + wl.tokens * tb;
      for (uint32_t off = 0; off < wl.tokens; off += wl.chunk_tokens) {
        const uint64_t n = std::min(wl.chunk_tokens, wl.tokens - off) * tb;
        iov.push_back({const_cast<char*>(keys + off * tb), n});
        iov.push_back({const_cast<char*>(values + off * tb), n});
        gathered += 2 * n;
        if (gathered >= batch_bytes || iov.size() + 2 > IOV_MAX) flush();
      }
    }
    flush();
    shutdown(fds[0], SHUT_WR);
  });
  // Receiver: one read per message-sized piece, as a message-at-a-time consumer would (or per
  // batch_bytes).
  const uint64_t msg = batch_bytes > 0 ? batch_bytes : 2 * uint64_t{wl.chunk_tokens} * tb;
  uint64_t got = 0;
  bool eof = false;
  while (got < total && !eof) {
    ssize_t r = read(fds[1], dst.data() + got, std::min<uint64_t>(msg, total - got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) eof = true;
    else got += static_cast<uint64_t>(r);
  }
  sender.join();
  const double s = SecondsSince(t0);
  close(fds[0]);
  close(fds[1]);
  if (got != total || send_failed) {
    return absl::InternalError(absl::StrCat("raw socket copy moved ", got, " of ", total, " bytes"));
  }
  // The first message is the first head's first keys then its first values.
  const uint64_t half = uint64_t{std::min(wl.chunk_tokens, wl.tokens)} * tb;
  if (std::memcmp(dst.data(), wl.src.data(), half) != 0 ||
      std::memcmp(dst.data() + half, wl.src.data() + wl.tokens * tb, half) != 0) {
    return absl::InternalError("raw socket copy corrupted the bytes");
  }
  return static_cast<double>(total) / s / 1e9;
}

absl::StatusOr<BytesWorkload> PrepareBytes(Client& c, const Options& o, uint32_t tpp,
                                           BytesRow* row) {
  BytesWorkload wl;
  const uint64_t tb = TokenBytes(o.shape);
  const uint32_t heads = Heads(o.shape);
  const uint64_t per_token_all_heads = 2 * tb * heads;
  uint64_t tokens = (o.mib << 20) / per_token_all_heads;
  tokens = std::max<uint64_t>(tpp, tokens / tpp * tpp);  // whole pages
  wl.tokens = static_cast<uint32_t>(tokens);
  wl.chunk_tokens = std::min<uint32_t>(wl.tokens, tpp * o.chunk_pages);
  const uint64_t chunk_bytes = 2 * uint64_t{wl.chunk_tokens} * tb;
  if (chunk_bytes + (64 << 10) > (o.max_message_mib << 20)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a chunk of ", chunk_bytes, " bytes does not fit --max_message_mib=", o.max_message_mib,
        " with room for the envelope; lower --chunk_pages"));
  }
  wl.src.resize(HeadBytes(o.shape, wl.tokens) * heads);
  std::mt19937_64 rng(tpp);
  for (size_t i = 0; i + 8 <= wl.src.size(); i += 8) {
    const uint64_t x = rng();
    std::memcpy(wl.src.data() + i, &x, 8);
  }
  ASSIGN_OR_RETURN(wl.seq, c.CreateSequence(ModelName(o.shape, tpp)));
  RETURN_IF_ERROR(c.Allocate(wl.seq, wl.tokens).status());
  for (uint32_t h = 0; h < heads; ++h) {
    const char* keys = wl.src.data() + h * HeadBytes(o.shape, wl.tokens);
    const char* values = keys + wl.tokens * tb;
    for (uint32_t off = 0; off < wl.tokens; off += wl.chunk_tokens) {
      const uint32_t n = std::min(wl.chunk_tokens, wl.tokens - off);
      KvChunkView& chunk = wl.chunks.emplace_back();
      if (wl.chunks.size() == 1) chunk.header.set_session_id(c.session_id());
      chunk.header.set_sequence_id(wl.seq);
      chunk.header.set_layer(h / o.shape.kv_heads);
      chunk.header.set_kv_head(h % o.shape.kv_heads);
      chunk.header.set_token_offset(off);
      chunk.header.set_token_count(n);
      chunk.keys = absl::string_view(keys + off * tb, n * tb);
      chunk.values = absl::string_view(values + off * tb, n * tb);
    }
  }
  // The Redis blobs: chunk i of the list above, keys then values.
  wl.redis_src.resize(wl.src.size());
  uint64_t at = 0;
  for (const KvChunkView& chunk : wl.chunks) {
    std::memcpy(wl.redis_src.data() + at, chunk.keys.data(), chunk.keys.size());
    std::memcpy(wl.redis_src.data() + at + chunk.keys.size(), chunk.values.data(),
                chunk.values.size());
    wl.redis_keys.push_back(absl::StrCat("kv:", tpp, ":", chunk.header.layer(), ":",
                                         chunk.header.kv_head(), ":",
                                         chunk.header.token_offset()));
    wl.redis_values.emplace_back(wl.redis_src.data() + at,
                                 chunk.keys.size() + chunk.values.size());
    at += chunk.keys.size() + chunk.values.size();
  }
  // Warm-up write (faults the daemon's pages in) and commit, so ReadKV has tokens to read.
  RETURN_IF_ERROR(c.WriteKvViews(wl.chunks).status());
  RETURN_IF_ERROR(c.Commit(wl.seq, wl.tokens).status());
  row->tpp = tpp;
  row->tokens = wl.tokens;
  row->chunk_bytes = chunk_bytes;
  row->chunks = wl.chunks.size();
  row->bytes = wl.src.size();
  return wl;
}

// Checks what ReadKV placed in `dst` (the workload's layout) against the source bytes.
absl::Status VerifyRead(const BytesWorkload& wl, const std::vector<char>& dst) {
  if (dst.size() < wl.src.size() || std::memcmp(dst.data(), wl.src.data(), wl.src.size()) != 0) {
    return absl::DataLossError("what ReadKV returned differs from what WriteKV wrote");
  }
  return absl::OkStatus();
}

// Zero-copy write of the workload's bytes into a fresh sequence: per page-row (`per_page`:
// AllocatePages(chunk tokens), WriteInPlace of that chunk for every head, CommitTokens) or once
// (AllocatePages(all), every WriteInPlace, CommitTokens(all)). Returns GB/s; the sequence is
// dropped (untimed). `verify` reads the first and last head back over gRPC (untimed).
absl::StatusOr<double> MeasureInPlace(Client& c, const BytesWorkload& wl, const Options& o,
                                      uint32_t tpp, bool per_page, bool verify) {
  const uint64_t tb = TokenBytes(o.shape);
  const uint32_t heads = Heads(o.shape);
  ASSIGN_OR_RETURN(std::string seq, c.CreateSequence(ModelName(o.shape, tpp)));
  auto drop = [&] { (void)c.Drop(seq); };
  auto write = [&](uint32_t h, uint32_t off, uint32_t n) {
    const char* keys = wl.src.data() + h * HeadBytes(o.shape, wl.tokens);
    const char* values = keys + wl.tokens * tb;
    return c.WriteInPlace(seq, h / o.shape.kv_heads, h % o.shape.kv_heads, off, n,
                          keys + off * tb, values + off * tb);
  };
  absl::Status st;
  const auto t0 = Clock::now();
  if (per_page) {
    for (uint32_t off = 0; off < wl.tokens && st.ok(); off += wl.chunk_tokens) {
      const uint32_t n = std::min(wl.chunk_tokens, wl.tokens - off);
      st = c.Allocate(seq, n).status();
      for (uint32_t h = 0; h < heads && st.ok(); ++h) st = write(h, off, n);
      if (st.ok()) st = c.Commit(seq, n).status();
    }
  } else {
    st = c.Allocate(seq, wl.tokens).status();
    for (uint32_t h = 0; h < heads && st.ok(); ++h) {
      for (uint32_t off = 0; off < wl.tokens && st.ok(); off += wl.chunk_tokens) {
        st = write(h, off, std::min(wl.chunk_tokens, wl.tokens - off));
      }
    }
    if (st.ok()) st = c.Commit(seq, wl.tokens).status();
  }
  const double s = SecondsSince(t0);
  if (!st.ok()) {
    drop();
    return st;
  }
  if (verify) {
    for (uint32_t h : {0u, heads - 1}) {
      auto back = c.ReadHead(seq, h / o.shape.kv_heads, h % o.shape.kv_heads);
      if (!back.ok()) {
        drop();
        return back.status();
      }
      const char* keys = wl.src.data() + h * HeadBytes(o.shape, wl.tokens);
      if (back->keys != std::string_view(keys, wl.tokens * tb) ||
          back->values != std::string_view(keys + wl.tokens * tb, wl.tokens * tb)) {
        drop();
        return absl::DataLossError(absl::StrCat("in-place write of head ", h,
                                                " reads back different bytes"));
      }
    }
  }
  RETURN_IF_ERROR(c.Drop(seq).status());
  return static_cast<double>(wl.src.size()) / s / 1e9;
}

// SET then GET of the workload's blobs; GB/s into rep. `verify` GETs once more, untimed, and
// compares every value.
absl::Status MeasureRedis(RedisPeer& redis, const BytesWorkload& wl, const Options& o,
                          bool verify, BytesRep* rep) {
  const double gb = static_cast<double>(wl.src.size()) / 1e9;
  auto t0 = Clock::now();
  RETURN_IF_ERROR(redis.SetMany(wl.redis_keys, wl.redis_values, o.redis_pipeline));
  rep->set_gbps = gb / SecondsSince(t0);
  uint64_t got = 0;
  t0 = Clock::now();
  RETURN_IF_ERROR(redis.GetMany(wl.redis_keys, o.redis_pipeline,
                                [&](size_t, std::string_view v) { got += v.size(); }));
  rep->get_gbps = gb / SecondsSince(t0);
  if (got != wl.src.size()) {
    return absl::DataLossError(absl::StrCat("GET returned ", got, " bytes of ", wl.src.size()));
  }
  if (verify) {
    size_t bad = 0;
    RETURN_IF_ERROR(redis.GetMany(wl.redis_keys, o.redis_pipeline,
                                  [&](size_t i, std::string_view v) {
                                    bad += v != wl.redis_values[i];
                                  }));
    if (bad != 0) return absl::DataLossError(absl::StrCat(bad, " Redis values differ"));
  }
  return absl::OkStatus();
}

// The batch of the raw copy that moves bytes as the bulk channel's frames do (its 8 MiB read
// frames; a write frame carries up to 16 MiB).
constexpr uint64_t kRawBatchBytes = 8ull << 20;

// One WriteKV of the workload over the client's transport now: GB/s.
absl::StatusOr<double> TimeWrite(Client& c, const BytesWorkload& wl) {
  const double gb = static_cast<double>(wl.src.size()) / 1e9;
  const auto t0 = Clock::now();
  ASSIGN_OR_RETURN(v1::WriteSummary summary, c.WriteKvViews(wl.chunks));
  const double gbps = gb / SecondsSince(t0);
  if (summary.bytes() != wl.src.size()) {
    return absl::DataLossError(absl::StrCat("WriteKV stored ", summary.bytes(), " bytes of ",
                                            wl.src.size()));
  }
  return gbps;
}

// One ReadKV of the workload over the client's transport now, each chunk's keys and values put
// straight at their place in `dst` (the workload's layout), as the raw copy's receiver read()s
// into it: received there over the bulk channel, copied there from the message over gRPC.
absl::StatusOr<double> TimeRead(Client& c, const BytesWorkload& wl, const Options& o,
                                std::vector<char>& dst, bool verify) {
  v1::ReadRequest request;
  request.set_sequence_id(wl.seq);
  request.set_max_chunk_bytes(static_cast<uint32_t>(2 * uint64_t{wl.chunk_tokens} *
                                                    TokenBytes(o.shape)));
  const uint64_t tb = TokenBytes(o.shape);
  uint64_t chunks = 0;
  std::fill(dst.begin(), dst.end(), 0);  // untimed: a stale copy cannot pass the check
  const double gb = static_cast<double>(wl.src.size()) / 1e9;
  const auto t0 = Clock::now();
  RETURN_IF_ERROR(c.ReadKvPlaced(
      request, [&](const v1::KvChunk& header, uint64_t key_bytes,
                   uint64_t value_bytes) -> absl::StatusOr<KvChunkPlace> {
        const uint32_t h = header.layer() * o.shape.kv_heads + header.kv_head();
        const uint64_t n = uint64_t{header.token_count()} * tb;
        if (h >= Heads(o.shape) || header.token_offset() + header.token_count() > wl.tokens ||
            key_bytes != n || value_bytes != n) {
          return absl::DataLossError(absl::StrCat(
              "ReadKV chunk (layer ", header.layer(), ", head ", header.kv_head(), ", offset ",
              header.token_offset(), ") does not match what WriteKV wrote"));
        }
        char* head = dst.data() + h * HeadBytes(o.shape, wl.tokens);
        ++chunks;
        return KvChunkPlace{head + header.token_offset() * tb,
                            head + wl.tokens * tb + header.token_offset() * tb};
      }));
  const double gbps = gb / SecondsSince(t0);
  if (chunks != wl.chunks.size()) {
    return absl::InternalError(absl::StrCat("ReadKV sent ", chunks, " chunks, expected ",
                                            wl.chunks.size(), " (same sizes as the writes)"));
  }
  if (verify) RETURN_IF_ERROR(VerifyRead(wl, dst));
  return gbps;
}

// The raw copy, then WriteKV and ReadKV over gRPC and over the bulk channel (unless --no_bulk),
// the transport that goes first alternating with `rep`.
absl::StatusOr<BytesRep> MeasureBytes(Client& c, const BytesWorkload& wl, const Options& o,
                                      std::vector<char>& dst, bool verify, int rep_index) {
  BytesRep rep;
  ASSIGN_OR_RETURN(rep.raw_gbps, RawSocketCopy(wl, o, dst));
  if (!o.no_bulk) {
    ASSIGN_OR_RETURN(rep.raw_batched_gbps, RawSocketCopy(wl, o, dst, kRawBatchBytes));
    if (absl::Status bulk = c.bulk_channel_status(); !bulk.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the client has no bulk channel (", bulk.message(), "); --no_bulk skips its rows"));
    }
  }
  std::vector<bool> order = {false};  // false: gRPC, true: the bulk channel
  if (!o.no_bulk) order = rep_index % 2 == 0 ? std::vector<bool>{false, true}
                                             : std::vector<bool>{true, false};
  for (bool bulk : order) {
    c.set_use_bulk_channel(bulk);
    // --reads_only: PrepareBytes wrote the sequence once, before the reps
    if (!o.reads_only) {
      ASSIGN_OR_RETURN(double w, TimeWrite(c, wl));
      (bulk ? rep.bulk_write_gbps : rep.write_gbps) = w;
    }
    ASSIGN_OR_RETURN(double r, TimeRead(c, wl, o, dst, verify));
    (bulk ? rep.bulk_read_gbps : rep.read_gbps) = r;
  }
  c.set_use_bulk_channel(true);
  return rep;
}

// ---- Driver ------------------------------------------------------------------------------------

// The first step of a run that failed: printed as "kvkeep-bench io: <what>: <status>".
struct Failure {
  std::string what;
  absl::Status status;
};
using StepResult = std::optional<Failure>;  // nullopt: the step succeeded

int Fail(const Failure& f) {
  std::fprintf(stderr, "\nkvkeep-bench io: %s: %s\n", f.what.c_str(), f.status.ToString().c_str());
  return 1;  // the Daemon's (and RedisPeer's) destructor stops it and removes its dir
}

// The daemon's pool: what the bytes path keeps allocated, and the pool that holds it.
struct PoolPlan {
  uint64_t bytes_need = 0;
  uint64_t pool_mib = 0;
  uint64_t pool_bytes() const { return pool_mib << 20; }
};

// The pool for `o` (--pool_mib or sized from the workload); nullopt, with the reason on stderr,
// when --pool_mib is too small.
std::optional<PoolPlan> PlanPool(const Options& o, uint32_t max_workers) {
  const Shape& s = o.shape;
  PoolPlan plan;
  // Bytes path: every page size's workload stays allocated across the reps.
  // (plus one more workload's worth at a time for the in-place writes into fresh sequences).
  plan.bytes_need = o.skip_bytes ? 0 : (o.pages.size() + 1) * ((o.mib << 20) + (16 << 20));
  // Control path: room for 16 ops per worker's sequence, twice over (arenas are host shared
  // memory, only touched pages cost RAM; the control path touches none).
  const uint64_t ops_need = o.skip_ops ? 0
                                       : 2 * 16 * uint64_t{max_workers} * Heads(s) * 2 *
                                             o.pages.front() * TokenBytes(s);
  plan.pool_mib = o.pool_mib;
  if (plan.pool_mib == 0) {
    plan.pool_mib = std::max<uint64_t>(1024, ((plan.bytes_need + ops_need) >> 20) + 512);
  }
  if (plan.bytes_need + (64ull << 20) > plan.pool_bytes()) {
    std::fprintf(stderr, "kvkeep-bench io: --pool_mib %llu is too small for --mib %llu x %zu "
                 "page sizes\n", static_cast<unsigned long long>(plan.pool_mib),
                 static_cast<unsigned long long>(o.mib), o.pages.size());
    return std::nullopt;
  }
  return plan;
}

// The Redis peer (bytes path only), unless skipped; `info` says which.
StepResult StartRedisPeer(const Options& o, RunInfo* info, std::unique_ptr<RedisPeer>* redis) {
  if (o.skip_bytes) {
    info->redis = "not run (--ops_only)";
    return std::nullopt;
  }
  if (o.no_redis) {
    info->redis = "not run (--no_redis)";
    return std::nullopt;
  }
  const std::string server = RedisPeer::FindServer(o.redis);
  if (server.empty() && o.smoke && o.redis.empty()) {
    info->redis = "skipped: no redis-server on $PATH (apt-get install redis-server)";
    std::fprintf(stderr, "[io] note: %s\n", info->redis.c_str());
    return std::nullopt;
  }
  std::fprintf(stderr, "[io] starting redis-server %s\n", server.c_str());
  auto peer = RedisPeer::Start(server);
  if (!peer.ok()) return Failure{"Redis peer (use --no_redis to skip it)", peer.status()};
  *redis = std::move(*peer);
  info->have_redis = true;
  info->redis = absl::StrCat((*redis)->Version(), ", private, Unix socket, no persistence; "
                             "hiredis client, SET/GET pipelined ", o.redis_pipeline,
                             " commands per batch");
  return std::nullopt;
}

// Everything one run measures against the daemon, and the clients it measures with.
struct Measurement {
  const Options& o;
  RedisPeer* redis = nullptr;  // null without the peer
  std::vector<std::unique_ptr<Client>> clients;
  std::vector<OpsRow> ops;
  std::vector<BytesRow> bytes;
  std::vector<BytesWorkload> workloads;  // one per bytes row
  std::vector<char> dst;                 // the raw copy's target
};

StepResult AttachWorkers(Measurement& m, const ChannelOptions& channel, const std::string& token,
                         uint32_t n) {
  std::fprintf(stderr, "[io] attaching %u worker session(s)\n", n);
  for (uint32_t w = 0; w < n; ++w) {
    auto c = Client::Attach(channel, token, absl::StrCat("bench-", w));
    if (!c.ok()) return Failure{absl::StrCat("Attach worker ", w), c.status()};
    (*c)->set_batch_message_bytes(m.o.batch_kib << 10);  // 0: one chunk per message
    m.clients.push_back(std::move(*c));
  }
  if (absl::Status st = RegisterModels(*m.clients[0], m.o); !st.ok()) {
    return Failure{"RegisterModel", st};
  }
  return std::nullopt;
}

// One row per worker count; control-path sequences hold at most `seq_pages` ops each, sized to
// the pool the bytes path leaves.
void PlanOpsRows(Measurement& m, const PoolPlan& plan) {
  const Options& o = m.o;
  if (o.skip_ops) return;
  const uint64_t page_bytes = 2 * uint64_t{o.pages.front()} * TokenBytes(o.shape);
  const uint64_t budget = (plan.pool_bytes() - plan.bytes_need) / 2;
  for (uint32_t n : o.workers) {
    OpsRow& row = m.ops.emplace_back();
    row.workers = n;
    row.seq_pages = static_cast<uint32_t>(
        std::clamp<uint64_t>(budget / (uint64_t{n} * Heads(o.shape) * page_bytes), 1, 64));
  }
}

// One committed workload (and bytes row) per page size.
StepResult PrepareWorkloads(Measurement& m) {
  const Options& o = m.o;
  if (o.skip_bytes) return std::nullopt;
  for (uint32_t tpp : o.pages) {
    std::fprintf(stderr, "[io] preparing %llu MiB of K+V in pages of %u tokens\n",
                 static_cast<unsigned long long>(o.mib), tpp);
    BytesRow& row = m.bytes.emplace_back();
    auto wl = PrepareBytes(*m.clients[0], o, tpp, &row);
    if (!wl.ok()) return Failure{absl::StrCat("preparing pages of ", tpp), wl.status()};
    m.workloads.push_back(std::move(*wl));
    m.dst.resize(std::max(m.dst.size(), m.workloads.back().src.size()));
  }
  std::memset(m.dst.data(), 0, m.dst.size());  // fault the raw copy's target in
  return std::nullopt;
}

// Warm-ups, not recorded.
StepResult WarmUp(Measurement& m) {
  const Options& o = m.o;
  // A SET of every Redis value, as the kvkeep pages were warmed by PrepareBytes' first WriteKV:
  // a fresh server's first SETs also fault its memory in.
  if (m.redis != nullptr) {
    for (const BytesWorkload& wl : m.workloads) {
      absl::Status st = m.redis->SetMany(wl.redis_keys, wl.redis_values, o.redis_pipeline);
      if (!st.ok()) return Failure{"Redis warm-up", st};
    }
  }
  // The in-place writes: the first touch of the arena pages they land on (the client's page
  // faults).
  for (size_t i = 0; i < m.workloads.size(); ++i) {
    auto g = MeasureInPlace(*m.clients[0], m.workloads[i], o, m.bytes[i].tpp,
                            /*per_page=*/false, /*verify=*/false);
    if (!g.ok()) return Failure{"in-place warm-up", g.status()};
  }
  // Connections, the daemon's threads and its allocator.
  if (!m.ops.empty()) {
    Options warm = o;
    warm.seconds = std::min(0.2, o.seconds);
    std::fprintf(stderr, "[io] warm-up\n");
    for (const OpsRow& row : m.ops) {
      auto r = MeasureOps(m.clients, warm, row.workers, row.seq_pages);
      if (!r.ok()) return Failure{"control path warm-up", r.status()};
    }
  }
  return std::nullopt;
}

// One rep of every measurement, appended to the rows.
StepResult MeasureRep(Measurement& m, int rep) {
  const Options& o = m.o;
  for (OpsRow& row : m.ops) {
    std::fprintf(stderr, "[io] rep %d/%d control path, %u workers ...", rep + 1, o.reps,
                 row.workers);
    auto r = MeasureOps(m.clients, o, row.workers, row.seq_pages);
    if (!r.ok()) return Failure{"control path", r.status()};
    std::fprintf(stderr, " RPC rate ratio %.2f, Alloc p50 ratio %.2f\n",
                 2 * r->pair_per_s / r->ping_per_s, r->alloc_p50 / r->ping_p50);
    row.reps.push_back(*r);
  }
  for (size_t i = 0; i < m.bytes.size(); ++i) {
    std::fprintf(stderr, "[io] rep %d/%d bytes path, pages of %u tokens ...", rep + 1, o.reps,
                 m.bytes[i].tpp);
    auto r = MeasureBytes(*m.clients[0], m.workloads[i], o, m.dst, /*verify=*/rep == 0, rep);
    if (!r.ok()) return Failure{"bytes path", r.status()};
    if (o.reads_only) {
      std::fprintf(stderr, " raw %.2f GB/s, ReadKV %.2f, bulk read %.2f\n", r->raw_gbps,
                   r->read_gbps, r->bulk_read_gbps);
      m.bytes[i].reps.push_back(*r);
      continue;
    }
    if (m.redis != nullptr) {
      absl::Status st = MeasureRedis(*m.redis, m.workloads[i], o, /*verify=*/rep == 0, &*r);
      if (!st.ok()) return Failure{"Redis SET/GET", st};
    }
    for (bool per_page : {true, false}) {
      auto g = MeasureInPlace(*m.clients[0], m.workloads[i], o, m.bytes[i].tpp, per_page,
                              /*verify=*/rep == 0);
      if (!g.ok()) return Failure{"in-place write", g.status()};
      (per_page ? r->inplace_page_gbps : r->inplace_seq_gbps) = *g;
    }
    std::fprintf(stderr, " raw %.2f GB/s, WriteKV %.2f, ReadKV %.2f, bulk %.2f / %.2f, SET %.2f, "
                 "GET %.2f, in-place %.2f / %.2f\n", r->raw_gbps, r->write_gbps, r->read_gbps,
                 r->bulk_write_gbps, r->bulk_read_gbps, r->set_gbps, r->get_gbps,
                 r->inplace_page_gbps, r->inplace_seq_gbps);
    m.bytes[i].reps.push_back(*r);
  }
  return std::nullopt;
}

// Drops the workloads and checks that no page is left in use (*exit_code = 1 if one is).
StepResult DropWorkloads(Measurement& m, AdminClient& admin, int* exit_code) {
  for (const BytesWorkload& wl : m.workloads) {
    auto dropped = m.clients[0]->Drop(wl.seq);
    if (!dropped.ok()) return Failure{"Drop", dropped.status()};
  }
  auto status = admin.GetStatus();
  if (status.ok() && status->pages_in_use() != 0) {
    std::fprintf(stderr, "kvkeep-bench io: %llu pages still in use after every Drop\n",
                 static_cast<unsigned long long>(status->pages_in_use()));
    *exit_code = 1;
  }
  return std::nullopt;
}

// Attach, prepare, warm up, measure every rep, drop: the whole run against a started daemon.
StepResult MeasureAll(Measurement& m, const ChannelOptions& channel, AdminClient& admin,
                      const PoolPlan& plan, uint32_t max_workers, int* exit_code) {
  v1::CreateTenantRequest tenant;
  tenant.set_name("bench");
  tenant.set_max_bytes(plan.pool_bytes());
  auto created = admin.CreateTenant(tenant);
  if (!created.ok()) return Failure{"CreateTenant", created.status()};
  if (StepResult f = AttachWorkers(m, channel, created->token(), max_workers)) return f;
  PlanOpsRows(m, plan);
  if (StepResult f = PrepareWorkloads(m)) return f;
  if (StepResult f = WarmUp(m)) return f;
  for (int rep = 0; rep < m.o.reps; ++rep) {
    if (StepResult f = MeasureRep(m, rep)) return f;
  }
  if (StepResult f = DropWorkloads(m, admin, exit_code)) return f;
  for (auto& c : m.clients) c->Close();
  m.clients.clear();
  return std::nullopt;
}

// The daemon's memory over the run and the peer's at its end; stops both. 1 when one of them did
// not stop cleanly, else 0.
int RecordMemoryAndStop(Daemon& daemon, MemorySampler& sampler, RedisPeer* redis, RunInfo* info) {
  int exit_code = 0;
  sampler.Stop();
  info->daemon_end = ReadProcMemory(daemon.pid());
  info->daemon_peak_anon = std::max(sampler.max_rss_anon(), info->daemon_end.rss_anon);
  info->daemon_peak_shmem = std::max(sampler.max_rss_shmem(), info->daemon_end.rss_shmem);
  info->daemon_peak_rss = std::max(sampler.max_vm_rss(), info->daemon_end.vm_rss);
  info->samples = sampler.samples();
  if (redis != nullptr) {
    info->redis_used = redis->UsedMemory();
    info->redis_hwm = ReadProcMemory(redis->pid()).vm_hwm;
    if (!redis->Stop()) {
      std::fprintf(stderr, "kvkeep-bench io: redis-server did not stop on SHUTDOWN/SIGTERM\n");
      exit_code = 1;
    }
  }
  const auto stop_start = Clock::now();
  if (!daemon.Stop()) {
    std::fprintf(stderr, "kvkeep-bench io: kvkeepd did not stop cleanly on SIGTERM\n");
    exit_code = 1;
  }
  std::fprintf(stderr, "[io] done, kvkeepd stopped in %.1f s\n", SecondsSince(stop_start));
  return exit_code;
}

int Run(const Options& o) {
  const uint32_t max_workers = o.skip_ops ? 1 : *std::max_element(o.workers.begin(),
                                                                   o.workers.end());
  const std::optional<PoolPlan> plan = PlanPool(o, max_workers);
  if (!plan) return 2;
  const std::string binary = FindDaemon(o.kvkeepd);
  if (access(binary.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "kvkeep-bench io: no kvkeepd at %s (build it: ninja kvkeepd, or pass "
                 "--kvkeepd PATH)\n", binary.c_str());
    return 1;
  }
  std::fprintf(stderr, "[io] starting %s (pool %llu MiB)\n", binary.c_str(),
               static_cast<unsigned long long>(plan->pool_mib));
  auto daemon = Daemon::Start(binary, plan->pool_mib, o.max_message_mib);
  if (!daemon.ok()) {
    std::fprintf(stderr, "kvkeep-bench io: %s\n", daemon.status().ToString().c_str());
    return 1;
  }
  RunInfo info;
  MemorySampler sampler((*daemon)->pid(), 20);
  std::unique_ptr<RedisPeer> redis;
  if (StepResult f = StartRedisPeer(o, &info, &redis)) return Fail(*f);

  const ChannelOptions channel{.target = (*daemon)->target(),
                               .max_message_bytes = static_cast<int>(o.max_message_mib << 20)};
  int exit_code = 0;
  Measurement m{.o = o, .redis = redis.get()};
  {
    auto admin = AdminClient::Connect(channel, (*daemon)->admin_token());
    if (StepResult f = MeasureAll(m, channel, *admin, *plan, max_workers, &exit_code)) {
      return Fail(*f);
    }
  }
  m.workloads.clear();
  if (RecordMemoryAndStop(**daemon, sampler, redis.get(), &info) != 0) exit_code = 1;
  if (o.json) {
    io_internal::PrintJson(o, m.ops, m.bytes, info);
  } else {
    io_internal::PrintTable(o, m.ops, m.bytes, info);
  }
  return exit_code;
}

}  // namespace

int RunIoBench(int argc, char** argv) {
  Options o;
  const int parsed = io_internal::ParseFlags(argc, argv, &o);
  if (parsed == -1) return 0;
  if (parsed != 0) return parsed;
  InstallBenchSignalHandlers();
  // Before any thread: the worker settings of docs/api.md "Worker process settings".
  if (o.client_process_settings) {
    if (absl::Status tuned = TuneWorkerProcess(); !tuned.ok()) {
      std::fprintf(stderr, "kvkeep-bench io: --client_process_settings: %s\n",
                   std::string(tuned.message()).c_str());
      return 1;
    }
  }
  return Run(o);
}


}  // namespace kvkeep::bench
