// Flags of `kvkeep-bench io` and their help (bench/io_bench_internal.h).
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "bench/io_bench_internal.h"

namespace kvkeep::bench::io_internal {
namespace {

constexpr char kHelp[] = R"(kvkeep-bench io - kvkeepd's data path, as ratios to bounds measured in the same run

Usage: kvkeep-bench io [flags]

Starts its own kvkeepd (separate process, temporary --data_dir, Unix socket), creates a tenant
through the Admin API, measures, and stops the daemon with SIGTERM (also on failure / Ctrl-C).

What is measured (each rep does every measurement side by side; the table shows the median and
[min, max] over --reps of each figure, ratios computed within a rep):

  1. Control path of the zero-copy write (workers write K/V straight into mapped shared memory,
     so the daemon only sees AllocatePages + CommitTokens). One op = AllocatePages(P tokens)
     then CommitTokens(P tokens) on the worker's own sequence, P = the first --pages value, so
     every op takes one fresh page per (layer, KV head). Bound: an empty unary RPC (Ping, which
     is authenticated like every call) on the same server, same workers, same rep.
       rpc rate ratio = (2 x ops/s) / (Ping calls/s)   1.0 = the daemon's work is free
       p50/p99 ratio  = AllocatePages (or CommitTokens) latency / Ping latency
     Each worker is a thread with its own Client session. A worker's sequence is dropped and
     recreated every few ops to bound memory; those two calls are not in the latency samples
     but are in the wall time.
  2. Bytes path: WriteKV (client -> daemon -> pages) and ReadKV (pages -> daemon -> client) of
     --mib MiB of K+V per page size, one message per --chunk_pages pages of one head. Bound: a
     raw AF_UNIX stream copy (writev of the same key and value spans, read into a pre-faulted
     buffer, two threads) of the same bytes in the same chunk sizes.
       ratio = kvkeep GB/s / raw socket GB/s           1.0 = as fast as the socket itself
     ReadKV contents are checked against what was written.
  3. Peer: a private redis-server (Debian's, on a Unix socket in a temp dir, persistence off,
     hiredis client) storing the same blobs - one value per chunk (keys then values of one
     head's page) - with SET and fetching them with GET, pipelined --redis_pipeline commands
     per batch, same total bytes, same rep. Also kvkeep's zero-copy write of the same bytes:
     AllocatePages + WriteInPlace (memcpy into the mapped shared memory) of every head +
     CommitTokens, per page-row of tokens ("in-place/page") and once for the whole sequence
     ("in-place/seq"), from a fresh sequence each rep.
       WriteKV / SET, ReadKV / GET, in-place / SET     > 1.0 = kvkeep faster than Redis
     GET values and in-place pages are checked against the source (first rep, untimed).
     Without redis-server (or with --no_redis) only the in-place columns are shown.
     kvkeepd's memory is sampled every 20 ms over the whole run (peak RSS, peak anonymous).

Flags:
  --shape small|llama3-8b|qwen3-8b  model shape (default small: 4 layers, 2 KV heads,
                        head_dim 64, fp16; llama3-8b: 32 layers, 8 KV heads, 128, bf16)
  --pages N[,N...]      tokens per page (default 16,64,256)
  --mib N               MiB of K+V per rep and page size on the bytes path (default 64)
  --chunk_pages N       pages of one head per chunk (default 1: page-sized blobs)
  --batch_kib N         chunk bytes per message, several chunks per message (KvBatch;
                        default 3072, the client's default; was 1024); 0: one chunk per
                        WriteKV/ReadKV message
  --workers N[,N...]    worker threads for the control path (default 1,8,64)
  --seconds S           length of each timed control-path phase (default 0.5)
  --reps N              repetitions (default 15: one raw copy lasts 10-150 ms, and on a
                        shared or virtual machine it is fast or slow by the scheduler's
                        draw, so a median needs many)
  --ops_only / --bytes_only   run one half
  --kvkeepd PATH        daemon binary (default: kvkeepd next to this binary, or ../bin/)
  --pool_mib N          daemon pool (default: sized from the workload, >= 1024)
  --max_message_mib N   daemon and client gRPC message limit (default 4)
  --no_redis            skip the Redis peer (also --no-redis)
  --redis PATH          redis-server binary (default: redis-server on $PATH)
  --redis_pipeline N    SET/GET commands per pipelined batch (default 64)
  --reads_only          bytes path only, and each rep only the raw copy and ReadKV (the
                        sequence is written once, before the reps): a worker that reads back
                        to back, with none of the other phases' allocations in between; no
                        Redis peer, no in-place rows. Compare with and without
                        --client_process_settings (docs/benchmarks.md "Reads back to back")
  --no_bulk             skip the bulk channel rows (by default each rep also writes and
                        reads the same chunks over the daemon's bulk channel <socket>.bulk,
                        alternating which transport goes first; the WriteKV / ReadKV
                        columns are always gRPC's)
  --client_process_settings  give this (client) process kvkeepd's process settings: keep
                        256 MiB of freed heap for reuse (glibc otherwise returns freed receive
                        buffers to the kernel) and Abseil's mutex deadlock detection off
                        (docs/api.md "Worker process settings"); default: glibc's and Abseil's
                        defaults, as before
  --json                JSON on stdout instead of the table
  --smoke               CI mode: 1 rep, 4 MiB, pages 16, workers 1,4, 0.05 s phases; the
                        Redis peer is skipped, with a note, when redis-server is absent
  --help

Examples:
  kvkeep-bench io
  kvkeep-bench io --shape llama3-8b --mib 256 --reps 5
  kvkeep-bench io --bytes_only --chunk_pages 8 --json
  kvkeep-bench io --smoke
)";

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string part;
  while (std::getline(in, part, ',')) {
    if (!part.empty()) out.push_back(part);
  }
  return out;
}

bool ParseU64(const std::string& s, uint64_t* out) {
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) return false;
  *out = std::stoull(s);
  return true;
}

bool ParseList(const std::string& s, std::vector<uint32_t>* out) {
  out->clear();
  for (const std::string& p : Split(s)) {
    uint64_t v = 0;
    if (!ParseU64(p, &v) || v == 0 || v > (1u << 20)) return false;
    out->push_back(static_cast<uint32_t>(v));
  }
  return !out->empty();
}

}  // namespace

// 0 ok, 2 bad flags, -1 help printed.
int ParseFlags(int argc, char** argv, Options* o) {
  const int first = 1;  // argv[0] is the subcommand
  bool smoke = false;
  for (int i = first; i < argc; ++i) smoke |= std::strcmp(argv[i], "--smoke") == 0;
  if (smoke) {
    // Defaults first so explicit flags still override them.
    o->smoke = true;
    o->reps = 1;
    o->mib = 4;
    o->pages = {16};
    o->workers = {1, 4};
    o->seconds = 0.05;
  }
  for (int i = first; i < argc; ++i) {
    std::string name = argv[i];
    std::string value;
    const size_t eq = name.find('=');
    const bool has_eq = eq != std::string::npos;
    if (has_eq) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto boolean = [&](bool* field) {
      *field = true;
      return !has_eq;
    };
    if (name == "--help" || name == "-h") {
      std::printf("%s", kHelp);
      return -1;
    }
    bool ok = true;
    if (name == "--json") {
      ok = boolean(&o->json);
    } else if (name == "--smoke") {
      ok = boolean(&o->smoke);
    } else if (name == "--ops_only") {
      ok = boolean(&o->skip_bytes);
    } else if (name == "--bytes_only") {
      ok = boolean(&o->skip_ops);
    } else if (name == "--no_redis" || name == "--no-redis") {
      ok = boolean(&o->no_redis);
    } else if (name == "--client_process_settings") {
      ok = boolean(&o->client_process_settings);
    } else if (name == "--reads_only") {
      ok = boolean(&o->reads_only);
    } else if (name == "--no_bulk") {
      ok = boolean(&o->no_bulk);
    } else {
      static const char* const kValued[] = {"--shape", "--pages", "--workers", "--mib",
                                            "--chunk_pages", "--batch_kib", "--reps",
                                            "--seconds", "--pool_mib", "--max_message_mib",
                                            "--kvkeepd", "--redis", "--redis_pipeline"};
      if (std::none_of(std::begin(kValued), std::end(kValued),
                       [&](const char* k) { return name == k; })) {
        std::fprintf(stderr, "kvkeep-bench io: unknown flag %s (see --help)\n", name.c_str());
        return 2;
      }
      if (!has_eq) {
        if (i + 1 >= argc) {
          std::fprintf(stderr, "kvkeep-bench io: %s needs a value (see --help)\n", name.c_str());
          return 2;
        }
        value = argv[++i];
      }
      uint64_t n = 0;
      if (name == "--shape") {
        ok = false;
        for (const Shape& s : kShapes) {
          if (s.name == value) {
            o->shape = s;
            ok = true;
          }
        }
      } else if (name == "--pages") {
        ok = ParseList(value, &o->pages);
      } else if (name == "--workers") {
        ok = ParseList(value, &o->workers) &&
             *std::max_element(o->workers.begin(), o->workers.end()) <= 1024;
      } else if (name == "--mib") {
        ok = ParseU64(value, &o->mib) && o->mib > 0;
      } else if (name == "--chunk_pages") {
        ok = ParseU64(value, &n) && n > 0 && n <= 4096;
        o->chunk_pages = static_cast<uint32_t>(n);
      } else if (name == "--batch_kib") {
        ok = ParseU64(value, &o->batch_kib) && o->batch_kib <= (1 << 20);
      } else if (name == "--reps") {
        ok = ParseU64(value, &n) && n > 0 && n <= 1000;
        o->reps = static_cast<int>(n);
      } else if (name == "--seconds") {
        char* end = nullptr;
        o->seconds = std::strtod(value.c_str(), &end);
        ok = end != value.c_str() && *end == '\0' && o->seconds > 0 && o->seconds <= 600;
      } else if (name == "--pool_mib") {
        ok = ParseU64(value, &o->pool_mib) && o->pool_mib > 0;
      } else if (name == "--max_message_mib") {
        ok = ParseU64(value, &o->max_message_mib) && o->max_message_mib > 0 &&
             o->max_message_mib <= 1024;
      } else if (name == "--kvkeepd") {
        o->kvkeepd = value;
      } else if (name == "--redis") {
        o->redis = value;
      } else if (name == "--redis_pipeline") {
        ok = ParseU64(value, &n) && n > 0 && n <= 65536;
        o->redis_pipeline = static_cast<uint32_t>(n);
      } else {
        std::fprintf(stderr, "kvkeep-bench io: unknown flag %s (see --help)\n", name.c_str());
        return 2;
      }
    }
    if (!ok) {
      std::fprintf(stderr, "kvkeep-bench io: bad value for %s: \"%s\" (see --help)\n",
                   name.c_str(), value.c_str());
      return 2;
    }
  }
  if (o->reads_only) {
    if (o->skip_bytes) {
      std::fprintf(stderr, "kvkeep-bench io: --reads_only and --ops_only exclude each other\n");
      return 2;
    }
    o->skip_ops = true;  // --reads_only measures the bytes path only
    o->no_redis = true;
  }
  if (o->skip_ops && o->skip_bytes) {
    std::fprintf(stderr, "kvkeep-bench io: --ops_only and --bytes_only exclude each other\n");
    return 2;
  }
  return 0;
}

}  // namespace kvkeep::bench::io_internal
