// Internal to `kvkeep-bench io` (bench/io_bench*.cc): the shapes, the options, what one rep
// measures, and the output. Split from io_bench.cc so that each file holds one part: flags
// (io_bench_options.cc), measurement and driver (io_bench.cc), table and JSON
// (io_bench_report.cc). Not thread-safe; plain data.
#ifndef KVKEEP_BENCH_IO_BENCH_INTERNAL_H_
#define KVKEEP_BENCH_IO_BENCH_INTERNAL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "bench/mem_bench.h"
#include "client/client.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep::bench::io_internal {

struct Shape {
  std::string name;
  uint32_t layers, q_heads, kv_heads, head_dim;
  v1::DType dtype;
  uint32_t dtype_bytes;
  const char* dtype_name;
};

inline const Shape kShapes[] = {
    {"small", 4, 8, 2, 64, v1::DTYPE_FP16, 2, "fp16"},
    {"llama3-8b", 32, 32, 8, 128, v1::DTYPE_BF16, 2, "bf16"},
    {"qwen3-8b", 36, 32, 8, 128, v1::DTYPE_BF16, 2, "bf16"},
};

struct Options {
  Shape shape = kShapes[0];
  std::vector<uint32_t> pages = {16, 64, 256};  // tokens per page, one model per size
  std::vector<uint32_t> workers = {1, 8, 64};
  uint64_t mib = 64;        // K+V bytes moved per rep and page size on the bytes path
  uint32_t chunk_pages = 1;  // pages of one head per chunk (and raw chunk)
  uint64_t batch_kib = 3072;  // chunk bytes per message (KvBatch; the client default); 0 = one chunk per message
  int reps = 15;  // one raw copy lasts 10-150 ms and is bimodal on a VM: medians need many
  double seconds = 0.5;     // length of one timed phase of the control-path test
  uint64_t pool_mib = 0;    // 0 = sized from the workload
  uint64_t max_message_mib = 4;
  std::string kvkeepd;      // empty = next to this binary
  bool json = false;
  bool smoke = false;
  bool skip_ops = false;
  bool skip_bytes = false;
  bool no_redis = false;
  std::string redis;           // redis-server binary; empty = from $PATH
  uint32_t redis_pipeline = 64;  // SET/GET commands per pipelined batch
  // This (client) process gets kvkeepd's own process settings: 256 MiB of freed heap kept for
  // reuse, Abseil's mutex deadlock detection off (docs/api.md "Worker process settings").
  // Off by default: the bench's client as before.
  bool client_process_settings = false;
  // Bytes path, each rep only the raw copy and ReadKV, back to back (a worker that only reads):
  // no WriteKV, Redis or in-place phases between the reads.
  bool reads_only = false;
  // The bulk channel (docs/api.md §5.2): each rep also writes and reads over it (the WriteKV /
  // ReadKV columns stay gRPC's). --no_bulk skips it.
  bool no_bulk = false;
};

inline uint64_t TokenBytes(const Shape& s) { return uint64_t{s.head_dim} * s.dtype_bytes; }
inline uint32_t Heads(const Shape& s) { return s.layers * s.kv_heads; }
// The model registered for pages of `tpp` tokens.
inline std::string ModelName(const Shape& s, uint32_t tpp) {
  return absl::StrCat("bench-", s.name, "-p", tpp);
}

// Parses `kvkeep-bench io` flags (argv[0], the subcommand, is skipped) into `o`: 0 ok, 2 bad
// flags (reason on stderr), -1 help printed on stdout.
int ParseFlags(int argc, char** argv, Options* o);

// ---- What one rep measures ---------------------------------------------------------------------

struct OpsRep {
  double ping_per_s = 0, pair_per_s = 0;
  double ping_p50 = 0, ping_p99 = 0;  // microseconds
  double alloc_p50 = 0, alloc_p99 = 0, commit_p50 = 0, commit_p99 = 0;
  double pair_p50 = 0, pair_p99 = 0;
};

struct OpsRow {
  uint32_t workers = 0;
  uint32_t seq_pages = 0;
  std::vector<OpsRep> reps;
};

struct BytesRep {
  double raw_gbps = 0, write_gbps = 0, read_gbps = 0;  // WriteKV / ReadKV over gRPC
  double bulk_write_gbps = 0, bulk_read_gbps = 0;     // the same over the bulk channel (0: off)
  double raw_batched_gbps = 0;  // the raw copy in 8 MiB writev()s and read()s (with the bulk rows)
  double set_gbps = 0, get_gbps = 0;  // Redis peer (0 without it)
  double inplace_page_gbps = 0;       // Allocate + WriteInPlace x heads + Commit per page-row
  double inplace_seq_gbps = 0;        // Allocate, WriteInPlace of everything, Commit, once
};

struct BytesRow {
  uint32_t tpp = 0;
  uint32_t tokens = 0;       // per head
  uint64_t chunk_bytes = 0;  // keys + values of one message
  uint64_t chunks = 0;
  uint64_t bytes = 0;        // K+V moved per rep
  std::vector<BytesRep> reps;
};

// What the run learnt about the peer and the daemon's memory, for the output.
struct RunInfo {
  std::string redis;  // "redis-server 7.0.15 (hiredis, Unix socket, pipeline 64)" or a note
  bool have_redis = false;
  uint64_t redis_hwm = 0, redis_used = 0;
  ProcMemory daemon_end;  // just before SIGTERM
  uint64_t daemon_peak_anon = 0, daemon_peak_shmem = 0, daemon_peak_rss = 0, samples = 0;
};

// One rep of the control path with `n` of the `clients` as workers (io_bench_control.cc):
// AllocatePages + CommitTokens of one page per op on each worker's own sequence (recreated every
// `seq_pages` ops), against Ping, for o.seconds each.
absl::StatusOr<OpsRep> MeasureOps(std::vector<std::unique_ptr<Client>>& clients, const Options& o,
                                  uint32_t n, uint32_t seq_pages);

// The results as one JSON object, or as tables, on stdout.
void PrintJson(const Options& o, const std::vector<OpsRow>& ops,
               const std::vector<BytesRow>& bytes, const RunInfo& info);
void PrintTable(const Options& o, const std::vector<OpsRow>& ops,
                const std::vector<BytesRow>& bytes, const RunInfo& info);

}  // namespace kvkeep::bench::io_internal

#endif  // KVKEEP_BENCH_IO_BENCH_INTERNAL_H_
