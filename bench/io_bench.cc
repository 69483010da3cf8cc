#include "bench/io_bench.h"

#include <dirent.h>
#include <fcntl.h>
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
#include "bench/child_process.h"
#include "absl/synchronization/mutex.h"
#include "bench/mem_bench.h"
#include "bench/redis_peer.h"
#include "client/admin_client.h"
#include "client/client.h"
#include "common/status_macros.h"

namespace kvkeep::bench {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- Shapes and flags ------------------------------------------------------------------------

struct Shape {
  std::string name;
  uint32_t layers, q_heads, kv_heads, head_dim;
  v1::DType dtype;
  uint32_t dtype_bytes;
  const char* dtype_name;
};

const Shape kShapes[] = {
    {"small", 4, 8, 2, 64, v1::DTYPE_FP16, 2, "fp16"},
    {"llama3-8b", 32, 32, 8, 128, v1::DTYPE_BF16, 2, "bf16"},
    {"qwen3-8b", 36, 32, 8, 128, v1::DTYPE_BF16, 2, "bf16"},
};

struct Options {
  Shape shape = kShapes[0];
  std::vector<uint32_t> pages = {16, 64, 256};  // tokens per page, one model per size
  std::vector<uint32_t> workers = {1, 8, 64};
  uint64_t mib = 64;        // K+V bytes moved per rep and page size on the bytes path
  uint32_t chunk_pages = 1;  // pages of one head per WriteKV/ReadKV message (and raw chunk)
  int reps = 5;
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
};

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
  --chunk_pages N       pages per WriteKV/ReadKV message (default 1: page-sized blobs)
  --workers N[,N...]    worker threads for the control path (default 1,8,64)
  --seconds S           length of each timed control-path phase (default 0.5)
  --reps N              repetitions (default 5)
  --ops_only / --bytes_only   run one half
  --kvkeepd PATH        daemon binary (default: kvkeepd next to this binary, or ../bin/)
  --pool_mib N          daemon pool (default: sized from the workload, >= 1024)
  --max_message_mib N   daemon and client gRPC message limit (default 4)
  --no_redis            skip the Redis peer (also --no-redis)
  --redis PATH          redis-server binary (default: redis-server on $PATH)
  --redis_pipeline N    SET/GET commands per pipelined batch (default 64)
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

// 0 ok, 2 bad flags, -1 help printed.
int ParseFlags(int argc, char** argv, Options* o) {
  int first = 0;
  while (first < argc && std::strncmp(argv[first], "--", 2) != 0) ++first;  // "io"
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
    } else {
      static const char* const kValued[] = {"--shape", "--pages", "--workers", "--mib",
                                            "--chunk_pages", "--reps", "--seconds", "--pool_mib",
                                            "--max_message_mib", "--kvkeepd", "--redis",
                                            "--redis_pipeline"};
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
  if (o->skip_ops && o->skip_bytes) {
    std::fprintf(stderr, "kvkeep-bench io: --ops_only and --bytes_only exclude each other\n");
    return 2;
  }
  return 0;
}

// ---- Statistics ------------------------------------------------------------------------------


// Nearest-rank percentile of latencies in nanoseconds; reorders `v`.
double Percentile(std::vector<int64_t>& v, double p) {
  if (v.empty()) return 0;
  size_t k = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return static_cast<double>(v[k]);
}

// ---- The daemon --------------------------------------------------------------------------------

// The daemon's pid and data dir for the signal handler (0 / empty when none runs).
volatile sig_atomic_t g_daemon_pid = 0;
char g_daemon_dir[64];

// Removes `name` under `parent` and everything below it, with async-signal-safe calls only
// (openat, getdents64, unlinkat), for the signal handler.
void RemoveTreeFromSignal(int parent, const char* name, int depth) {
  const int fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    unlinkat(parent, name, 0);
    return;
  }
  alignas(8) char buf[4096];
  for (long n; (n = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0;) {
    for (long at = 0; at < n;) {
      // struct linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
      unsigned short reclen;
      std::memcpy(&reclen, buf + at + 16, sizeof reclen);
      const unsigned char type = static_cast<unsigned char>(buf[at + 18]);
      const char* entry = buf + at + 19;
      at += reclen;
      if (std::strcmp(entry, ".") == 0 || std::strcmp(entry, "..") == 0) continue;
      if (type == DT_DIR && depth < 4) {
        RemoveTreeFromSignal(fd, entry, depth + 1);
      } else {
        unlinkat(fd, entry, 0);
      }
    }
  }
  close(fd);
  unlinkat(parent, name, AT_REMOVEDIR);
}

// Ctrl-C or SIGTERM: stop the daemon (and the Redis peer), remove their dirs and exit.
void OnSignal(int sig) {
  RedisPeerCleanupFromSignal();  // immediate (SIGKILL); the daemon may take seconds to drain
  const pid_t daemon = g_daemon_pid;
  if (daemon > 0) {
    kill(daemon, SIGTERM);
    waitpid(daemon, nullptr, 0);
  }
  if (g_daemon_dir[0] != '\0') RemoveTreeFromSignal(AT_FDCWD, g_daemon_dir, 0);
  _exit(128 + sig);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Daemon>> Daemon::Start(const std::string& binary,
                                                     uint64_t pool_mib, uint64_t max_message_mib,
                                                     std::vector<std::string> extra_args) {
  char dir_template[] = "/tmp/kvkeep-bench-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  std::unique_ptr<Daemon> d(new Daemon(dir_template));
  static_assert(sizeof dir_template <= sizeof g_daemon_dir);
  std::memcpy(g_daemon_dir, dir_template, sizeof dir_template);
  const std::string log = d->dir_ + "/kvkeepd.log";
  std::vector<std::string> args = {binary,
                                   "--data_dir=" + d->dir_,
                                   absl::StrCat("--pool_mib=", pool_mib),
                                   absl::StrCat("--max_message_mib=", max_message_mib),
                                   "--backend=cpu"};
  for (auto& a : extra_args) args.push_back(std::move(a));
  ASSIGN_OR_RETURN(const pid_t pid, SpawnLogged(std::move(args), log));
  d->pid_ = pid;
  g_daemon_pid = pid;
  d->target_ = "unix:" + d->dir_ + "/kvkeepd.sock";
  // Ready once the token is written and the Admin API answers.
  const auto t0 = Clock::now();
  while (true) {
    int wstatus = 0;
    if (waitpid(pid, &wstatus, WNOHANG) == pid) {
      d->pid_ = 0;
      g_daemon_pid = 0;
      return absl::UnavailableError(absl::StrCat("kvkeepd exited during start-up; its log:\n",
                                                 ReadFile(log)));
    }
    std::string token(absl::StripAsciiWhitespace(ReadFile(d->dir_ + "/admin.token")));
    if (!token.empty()) {
      auto admin = AdminClient::Connect({.target = d->target_}, token);
      if (admin->GetStatus().ok()) {
        d->admin_token_ = token;
        return d;
      }
    }
    if (SecondsSince(t0) > 20) {
      return absl::DeadlineExceededError(absl::StrCat(
          "kvkeepd did not answer within 20 s; its log:\n", ReadFile(log)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

Daemon::~Daemon() { Stop(); }

bool Daemon::Stop() {
  bool clean = true;
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int wstatus = 0;
    const auto t0 = Clock::now();
    while (waitpid(pid_, &wstatus, WNOHANG) == 0) {
      if (SecondsSince(t0) > 10) {
        kill(pid_, SIGKILL);
        waitpid(pid_, &wstatus, 0);
        clean = false;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    clean = clean && WIFEXITED(wstatus) && WEXITSTATUS(wstatus) == 0;
    pid_ = 0;
    g_daemon_pid = 0;
  }
  if (!dir_.empty()) {
    std::error_code ec;
    g_daemon_dir[0] = '\0';
    std::filesystem::remove_all(dir_, ec);
    dir_.clear();
  }
  return clean;
}

std::string FindDaemon(const std::string& flag) {
  if (!flag.empty()) return flag;
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "kvkeepd";
  const std::filesystem::path dir = self.parent_path();
  for (const auto& candidate : {dir / "kvkeepd", dir / "bin" / "kvkeepd",
                                dir.parent_path() / "bin" / "kvkeepd"}) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return (dir / "kvkeepd").string();
}

namespace {

// ---- Shared set-up -----------------------------------------------------------------------------

std::string ModelName(const Shape& s, uint32_t tpp) {
  return absl::StrCat("bench-", s.name, "-p", tpp);
}

uint64_t TokenBytes(const Shape& s) { return uint64_t{s.head_dim} * s.dtype_bytes; }
uint32_t Heads(const Shape& s) { return s.layers * s.kv_heads; }

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

// ---- 1. Control path: AllocatePages + CommitTokens vs Ping --------------------------------------

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

// Runs `body(worker, deadline, samples...)` on `n` threads that start together; returns the
// wall time from the common start to the last worker's end.
template <typename Body>
double RunWorkers(uint32_t n, double seconds, Body body) {
  std::latch ready(n);
  std::latch go(1);
  std::vector<double> ends(n);
  Clock::time_point start;
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (uint32_t w = 0; w < n; ++w) {
    threads.emplace_back([&, w] {
      ready.count_down();
      go.wait();
      const Clock::time_point deadline =
          start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
      body(w, deadline);
      ends[w] = SecondsSince(start);
    });
  }
  ready.wait();
  start = Clock::now();
  go.count_down();
  for (auto& t : threads) t.join();
  return *std::max_element(ends.begin(), ends.end());
}

int64_t Nanos(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
}

absl::StatusOr<OpsRep> MeasureOps(std::vector<std::unique_ptr<Client>>& clients, const Options& o,
                                  uint32_t n, uint32_t seq_pages) {
  OpsRep rep;
  const uint32_t tpp = o.pages.front();
  const std::string model = ModelName(o.shape, tpp);
  absl::Mutex mu;
  absl::Status failure;
  auto fail = [&](const absl::Status& s) {
    absl::MutexLock lock(&mu);
    if (failure.ok()) failure = s;
  };
  auto failed = [&] {
    absl::MutexLock lock(&mu);
    return !failure.ok();
  };

  // Ping: the floor.
  {
    std::vector<std::vector<int64_t>> lat(n);
    for (auto& l : lat) l.reserve(1 << 16);
    const double wall = RunWorkers(n, o.seconds, [&](uint32_t w, Clock::time_point deadline) {
      Client& c = *clients[w];
      while (Clock::now() < deadline) {
        const auto t0 = Clock::now();
        absl::Status s = c.Ping();
        const auto t1 = Clock::now();
        if (!s.ok()) return fail(s);
        lat[w].push_back(Nanos(t0, t1));
      }
    });
    RETURN_IF_ERROR(failure);
    std::vector<int64_t> all;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    rep.ping_per_s = static_cast<double>(all.size()) / wall;
    rep.ping_p50 = Percentile(all, 0.50) / 1e3;
    rep.ping_p99 = Percentile(all, 0.99) / 1e3;
  }

  // AllocatePages + CommitTokens on each worker's own sequence, created before the start.
  std::vector<std::string> seqs(n);
  for (uint32_t w = 0; w < n; ++w) {
    ASSIGN_OR_RETURN(seqs[w], clients[w]->CreateSequence(model));
  }
  std::vector<std::vector<int64_t>> alloc(n), commit(n), pair(n);
  for (uint32_t w = 0; w < n; ++w) {
    alloc[w].reserve(1 << 15);
    commit[w].reserve(1 << 15);
    pair[w].reserve(1 << 15);
  }
  const double wall = RunWorkers(n, o.seconds, [&](uint32_t w, Clock::time_point deadline) {
    Client& c = *clients[w];
    uint32_t pages = 0;
    while (Clock::now() < deadline && !failed()) {
      if (pages == seq_pages) {
        // Bound the memory held: start a new sequence (outside the latency samples).
        auto dropped = c.Drop(seqs[w]);
        if (!dropped.ok()) return fail(dropped.status());
        auto created = c.CreateSequence(model);
        if (!created.ok()) return fail(created.status());
        seqs[w] = *created;
        pages = 0;
      }
      const auto t0 = Clock::now();
      auto a = c.Allocate(seqs[w], tpp);
      const auto t1 = Clock::now();
      if (!a.ok()) return fail(a.status());
      auto m = c.Commit(seqs[w], tpp);
      const auto t2 = Clock::now();
      if (!m.ok()) return fail(m.status());
      alloc[w].push_back(Nanos(t0, t1));
      commit[w].push_back(Nanos(t1, t2));
      pair[w].push_back(Nanos(t0, t2));
      ++pages;
    }
  });
  for (uint32_t w = 0; w < n; ++w) {
    auto dropped = clients[w]->Drop(seqs[w]);
    if (!dropped.ok() && failure.ok()) failure = dropped.status();
  }
  RETURN_IF_ERROR(failure);
  auto merge = [](std::vector<std::vector<int64_t>>& parts) {
    std::vector<int64_t> all;
    for (auto& p : parts) all.insert(all.end(), p.begin(), p.end());
    return all;
  };
  std::vector<int64_t> a = merge(alloc), m = merge(commit), p = merge(pair);
  rep.pair_per_s = static_cast<double>(p.size()) / wall;
  rep.alloc_p50 = Percentile(a, 0.50) / 1e3;
  rep.alloc_p99 = Percentile(a, 0.99) / 1e3;
  rep.commit_p50 = Percentile(m, 0.50) / 1e3;
  rep.commit_p99 = Percentile(m, 0.99) / 1e3;
  rep.pair_p50 = Percentile(p, 0.50) / 1e3;
  rep.pair_p99 = Percentile(p, 0.99) / 1e3;
  return rep;
}

// ---- 2. Bytes path: WriteKV / ReadKV vs a raw Unix-socket copy ----------------------------------

struct BytesRep {
  double raw_gbps = 0, write_gbps = 0, read_gbps = 0;
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

// One page-size's workload: a committed sequence and the same bytes laid out per head as
// [keys of T tokens][values of T tokens].
struct BytesWorkload {
  std::string seq;
  uint32_t tokens = 0;
  uint32_t chunk_tokens = 0;
  std::string src;
  std::vector<v1::KvChunk> chunks;  // built once; building them is not timed
  // The same chunks as Redis values (keys then values of one chunk, contiguous), built once.
  std::string redis_src;
  std::vector<std::string> redis_keys;
  std::vector<std::string_view> redis_values;
};

uint64_t HeadBytes(const Shape& s, uint32_t tokens) { return 2 * uint64_t{tokens} * TokenBytes(s); }

// Moves the workload's bytes over a socketpair: one thread writev()s the key and value span of
// each chunk, the other read()s them into a pre-faulted buffer. Returns GB/s.
absl::StatusOr<double> RawSocketCopy(const BytesWorkload& wl, const Options& o,
                                     std::vector<char>& dst) {
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
    for (uint32_t h = 0; h < heads && !send_failed; ++h) {
      const char* keys = wl.src.data() + h * HeadBytes(o.shape, wl.tokens);
      const char* values = keys + wl.tokens * tb;
      for (uint32_t off = 0; off < wl.tokens; off += wl.chunk_tokens) {
        const uint64_t n = std::min(wl.chunk_tokens, wl.tokens - off) * tb;
        iovec iov[2] = {{const_cast<char*>(keys + off * tb), n},
                        {const_cast<char*>(values + off * tb), n}};
        int cnt = 2;
        iovec* v = iov;
        while (cnt > 0) {
          ssize_t w = writev(fds[0], v, cnt);
          if (w < 0) {
            if (errno == EINTR) continue;
            send_failed = true;
            break;
          }
          while (cnt > 0 && static_cast<size_t>(w) >= v->iov_len) {
            w -= static_cast<ssize_t>(v->iov_len);
            ++v;
            --cnt;
          }
          if (cnt > 0) {
            v->iov_base = static_cast<char*>(v->iov_base) + w;
            v->iov_len -= static_cast<size_t>(w);
          }
        }
      }
    }
    shutdown(fds[0], SHUT_WR);
  });
  // Receiver: one read per message-sized piece, as a message-at-a-time consumer would.
  const uint64_t msg = 2 * uint64_t{wl.chunk_tokens} * tb;
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
      v1::KvChunk& chunk = wl.chunks.emplace_back();
      if (wl.chunks.size() == 1) chunk.set_session_id(c.session_id());
      chunk.set_sequence_id(wl.seq);
      chunk.set_layer(h / o.shape.kv_heads);
      chunk.set_kv_head(h % o.shape.kv_heads);
      chunk.set_token_offset(off);
      chunk.set_token_count(n);
      chunk.set_keys(keys + off * tb, n * tb);
      chunk.set_values(values + off * tb, n * tb);
    }
  }
  // The Redis blobs: chunk i of the list above, keys then values.
  wl.redis_src.resize(wl.src.size());
  uint64_t at = 0;
  for (const v1::KvChunk& chunk : wl.chunks) {
    std::memcpy(wl.redis_src.data() + at, chunk.keys().data(), chunk.keys().size());
    std::memcpy(wl.redis_src.data() + at + chunk.keys().size(), chunk.values().data(),
                chunk.values().size());
    wl.redis_keys.push_back(absl::StrCat("kv:", tpp, ":", chunk.layer(), ":", chunk.kv_head(),
                                         ":", chunk.token_offset()));
    wl.redis_values.emplace_back(wl.redis_src.data() + at,
                                 chunk.keys().size() + chunk.values().size());
    at += chunk.keys().size() + chunk.values().size();
  }
  // Warm-up write (faults the daemon's pages in) and commit, so ReadKV has tokens to read.
  RETURN_IF_ERROR(c.WriteKV(wl.chunks).status());
  RETURN_IF_ERROR(c.Commit(wl.seq, wl.tokens).status());
  row->tpp = tpp;
  row->tokens = wl.tokens;
  row->chunk_bytes = chunk_bytes;
  row->chunks = wl.chunks.size();
  row->bytes = wl.src.size();
  return wl;
}

// Checks what ReadKV returned against the source bytes.
absl::Status VerifyRead(const BytesWorkload& wl, const Options& o,
                        const std::vector<v1::KvChunk>& chunks) {
  const uint64_t tb = TokenBytes(o.shape);
  uint64_t bytes = 0;
  for (const v1::KvChunk& c : chunks) {
    const uint32_t h = c.layer() * o.shape.kv_heads + c.kv_head();
    const char* keys = wl.src.data() + h * HeadBytes(o.shape, wl.tokens);
    const char* values = keys + wl.tokens * tb;
    const uint64_t n = uint64_t{c.token_count()} * tb;
    if (c.token_offset() + c.token_count() > wl.tokens || c.keys().size() != n ||
        c.values().size() != n ||
        std::memcmp(c.keys().data(), keys + c.token_offset() * tb, n) != 0 ||
        std::memcmp(c.values().data(), values + c.token_offset() * tb, n) != 0) {
      return absl::DataLossError(absl::StrCat("ReadKV chunk (layer ", c.layer(), ", head ",
                                              c.kv_head(), ", offset ", c.token_offset(),
                                              ") differs from what WriteKV wrote"));
    }
    bytes += 2 * n;
  }
  if (bytes != wl.src.size()) {
    return absl::DataLossError(
        absl::StrCat("ReadKV returned ", bytes, " bytes of ", wl.src.size()));
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

absl::StatusOr<BytesRep> MeasureBytes(Client& c, const BytesWorkload& wl, const Options& o,
                                      std::vector<char>& dst, bool verify) {
  BytesRep rep;
  ASSIGN_OR_RETURN(rep.raw_gbps, RawSocketCopy(wl, o, dst));
  const double gb = static_cast<double>(wl.src.size()) / 1e9;
  auto t0 = Clock::now();
  ASSIGN_OR_RETURN(v1::WriteSummary summary, c.WriteKV(wl.chunks));
  rep.write_gbps = gb / SecondsSince(t0);
  if (summary.bytes() != wl.src.size()) {
    return absl::DataLossError(absl::StrCat("WriteKV stored ", summary.bytes(), " bytes of ",
                                            wl.src.size()));
  }
  v1::ReadRequest request;
  request.set_sequence_id(wl.seq);
  request.set_max_chunk_bytes(static_cast<uint32_t>(2 * uint64_t{wl.chunk_tokens} *
                                                    TokenBytes(o.shape)));
  t0 = Clock::now();
  ASSIGN_OR_RETURN(std::vector<v1::KvChunk> chunks, c.ReadKV(request));
  rep.read_gbps = gb / SecondsSince(t0);
  if (chunks.size() != wl.chunks.size()) {
    return absl::InternalError(absl::StrCat("ReadKV sent ", chunks.size(), " chunks, expected ",
                                            wl.chunks.size(), " (same sizes as the writes)"));
  }
  if (verify) RETURN_IF_ERROR(VerifyRead(wl, o, chunks));
  return rep;
}

// ---- Output ------------------------------------------------------------------------------------

template <typename Rep>
Stats Of(const std::vector<Rep>& reps, double (*f)(const Rep&)) {
  std::vector<double> v;
  for (const Rep& r : reps) v.push_back(f(r));
  return Summarise(v);
}

std::string Fmt(const Stats& s, const char* spec) {
  char buf[96];
  char fmt[48];
  std::snprintf(fmt, sizeof fmt, "%s [%s,%s]", spec, spec, spec);
  std::snprintf(buf, sizeof buf, fmt, s.median, s.min, s.max);
  return buf;
}

std::string Json(const Stats& s) {
  char buf[128];
  std::snprintf(buf, sizeof buf, "{\"median\":%.6g,\"min\":%.6g,\"max\":%.6g}", s.median, s.min,
                s.max);
  return buf;
}

// Named per-rep figures, so the table and the JSON read the same list.
template <typename Rep>
struct Field {
  const char* name;
  double (*get)(const Rep&);
};

const Field<OpsRep> kOpsFields[] = {
    {"rpc_rate_ratio", [](const OpsRep& r) { return 2 * r.pair_per_s / r.ping_per_s; }},
    {"alloc_p50_ratio", [](const OpsRep& r) { return r.alloc_p50 / r.ping_p50; }},
    {"commit_p50_ratio", [](const OpsRep& r) { return r.commit_p50 / r.ping_p50; }},
    {"alloc_p99_ratio", [](const OpsRep& r) { return r.alloc_p99 / r.ping_p99; }},
    {"commit_p99_ratio", [](const OpsRep& r) { return r.commit_p99 / r.ping_p99; }},
    {"ping_per_s", [](const OpsRep& r) { return r.ping_per_s; }},
    {"pairs_per_s", [](const OpsRep& r) { return r.pair_per_s; }},
    {"ping_p50_us", [](const OpsRep& r) { return r.ping_p50; }},
    {"ping_p99_us", [](const OpsRep& r) { return r.ping_p99; }},
    {"alloc_p50_us", [](const OpsRep& r) { return r.alloc_p50; }},
    {"alloc_p99_us", [](const OpsRep& r) { return r.alloc_p99; }},
    {"commit_p50_us", [](const OpsRep& r) { return r.commit_p50; }},
    {"commit_p99_us", [](const OpsRep& r) { return r.commit_p99; }},
    {"pair_p50_us", [](const OpsRep& r) { return r.pair_p50; }},
    {"pair_p99_us", [](const OpsRep& r) { return r.pair_p99; }},
};

const Field<BytesRep> kBytesFields[] = {
    {"write_ratio", [](const BytesRep& r) { return r.write_gbps / r.raw_gbps; }},
    {"read_ratio", [](const BytesRep& r) { return r.read_gbps / r.raw_gbps; }},
    {"raw_socket_gbps", [](const BytesRep& r) { return r.raw_gbps; }},
    {"writekv_gbps", [](const BytesRep& r) { return r.write_gbps; }},
    {"readkv_gbps", [](const BytesRep& r) { return r.read_gbps; }},
    {"inplace_page_gbps", [](const BytesRep& r) { return r.inplace_page_gbps; }},
    {"inplace_seq_gbps", [](const BytesRep& r) { return r.inplace_seq_gbps; }},
    {"inplace_page_over_raw", [](const BytesRep& r) { return r.inplace_page_gbps / r.raw_gbps; }},
    {"inplace_seq_over_raw", [](const BytesRep& r) { return r.inplace_seq_gbps / r.raw_gbps; }},
};

// Only with the Redis peer.
const Field<BytesRep> kRedisFields[] = {
    {"writekv_over_redis_set", [](const BytesRep& r) { return r.write_gbps / r.set_gbps; }},
    {"readkv_over_redis_get", [](const BytesRep& r) { return r.read_gbps / r.get_gbps; }},
    {"inplace_page_over_redis_set",
     [](const BytesRep& r) { return r.inplace_page_gbps / r.set_gbps; }},
    {"inplace_seq_over_redis_set",
     [](const BytesRep& r) { return r.inplace_seq_gbps / r.set_gbps; }},
    {"redis_set_gbps", [](const BytesRep& r) { return r.set_gbps; }},
    {"redis_get_gbps", [](const BytesRep& r) { return r.get_gbps; }},
    {"redis_set_over_raw", [](const BytesRep& r) { return r.set_gbps / r.raw_gbps; }},
    {"redis_get_over_raw", [](const BytesRep& r) { return r.get_gbps / r.raw_gbps; }},
};

// What the run learnt about the peer and the daemon's memory, for the output.
struct RunInfo {
  std::string redis;  // "redis-server 7.0.15 (hiredis, Unix socket, pipeline 64)" or a note
  bool have_redis = false;
  uint64_t redis_hwm = 0, redis_used = 0;
  ProcMemory daemon_end;  // just before SIGTERM
  uint64_t daemon_peak_anon = 0, daemon_peak_shmem = 0, daemon_peak_rss = 0, samples = 0;
};

template <typename Rep, size_t N>
Stats Get(const std::vector<Rep>& reps, const Field<Rep> (&fields)[N], const char* name) {
  static_assert(N > 0);
  for (const auto& f : fields) {
    if (std::strcmp(f.name, name) == 0) return Of(reps, f.get);
  }
  return Stats();
}

std::string JsonString(const std::string& v) {
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) c = ' ';
    out += c;
  }
  return out + "\"";
}

void PrintJson(const Options& o, const std::vector<OpsRow>& ops,
               const std::vector<BytesRow>& bytes, const RunInfo& info) {
  const Shape& s = o.shape;
  std::printf("{\"bench\":\"io\",\"shape\":{\"name\":\"%s\",\"layers\":%u,\"q_heads\":%u,"
              "\"kv_heads\":%u,\"head_dim\":%u,\"dtype\":\"%s\"},\"reps\":%d,"
              "\"seconds_per_phase\":%g,\"daemon\":\"kvkeepd, separate process, Unix socket\"",
              s.name.c_str(), s.layers, s.q_heads, s.kv_heads, s.head_dim, s.dtype_name, o.reps,
              o.seconds);
  std::printf(",\"control_path\":{\"tokens_per_page\":%u,\"tokens_per_op\":%u,\"pages_per_op\":%u,"
              "\"rows\":[",
              o.pages.front(), o.pages.front(), Heads(s));
  for (size_t i = 0; i < ops.size(); ++i) {
    std::printf("%s{\"workers\":%u,\"ops_per_sequence\":%u", i ? "," : "", ops[i].workers,
                ops[i].seq_pages);
    for (const auto& f : kOpsFields) {
      std::printf(",\"%s\":%s", f.name, Json(Of(ops[i].reps, f.get)).c_str());
    }
    std::printf("}");
  }
  std::printf("]},\"bytes_path\":{\"rows\":[");
  for (size_t i = 0; i < bytes.size(); ++i) {
    const BytesRow& r = bytes[i];
    std::printf("%s{\"tokens_per_page\":%u,\"tokens_per_head\":%u,\"chunk_bytes\":%llu,"
                "\"chunks\":%llu,\"bytes\":%llu",
                i ? "," : "", r.tpp, r.tokens, static_cast<unsigned long long>(r.chunk_bytes),
                static_cast<unsigned long long>(r.chunks),
                static_cast<unsigned long long>(r.bytes));
    for (const auto& f : kBytesFields) {
      std::printf(",\"%s\":%s", f.name, Json(Of(r.reps, f.get)).c_str());
    }
    if (info.have_redis) {
      for (const auto& f : kRedisFields) {
        std::printf(",\"%s\":%s", f.name, Json(Of(r.reps, f.get)).c_str());
      }
    }
    std::printf("}");
  }
  std::printf("]},\"redis\":{\"used\":%s,\"what\":%s,\"pipeline\":%u,\"peak_rss_bytes\":%llu,"
              "\"used_memory_bytes\":%llu}",
              info.have_redis ? "true" : "false", JsonString(info.redis).c_str(), o.redis_pipeline,
              static_cast<unsigned long long>(info.redis_hwm),
              static_cast<unsigned long long>(info.redis_used));
  std::printf(",\"daemon_memory\":{\"samples\":%llu,\"peak_rss_bytes\":%llu,"
              "\"peak_rss_sampled_bytes\":%llu,\"peak_anon_bytes\":%llu,"
              "\"peak_shmem_bytes\":%llu,\"end_rss_bytes\":%llu,\"end_anon_bytes\":%llu,"
              "\"end_shmem_bytes\":%llu}}\n",
              static_cast<unsigned long long>(info.samples),
              static_cast<unsigned long long>(info.daemon_end.vm_hwm),
              static_cast<unsigned long long>(info.daemon_peak_rss),
              static_cast<unsigned long long>(info.daemon_peak_anon),
              static_cast<unsigned long long>(info.daemon_peak_shmem),
              static_cast<unsigned long long>(info.daemon_end.vm_rss),
              static_cast<unsigned long long>(info.daemon_end.rss_anon),
              static_cast<unsigned long long>(info.daemon_end.rss_shmem));
}

void PrintTable(const Options& o, const std::vector<OpsRow>& ops,
                const std::vector<BytesRow>& bytes, const RunInfo& info) {
  const Shape& s = o.shape;
  std::printf("kvkeep-bench io: shape %s (%u layers, %u/%u heads, head_dim %u, %s), %d reps, "
              "kvkeepd as a separate process on a Unix socket\n",
              s.name.c_str(), s.layers, s.q_heads, s.kv_heads, s.head_dim, s.dtype_name, o.reps);
  std::printf("every cell: median [min,max] over the reps; ratios computed within each rep\n");
  if (!ops.empty()) {
    std::printf("\n1. Zero-copy control path: AllocatePages(%u tok) + CommitTokens(%u tok), "
                "%u pages of %u tokens per op, vs Ping (empty unary RPC), %.2g s phases\n",
                o.pages.front(), o.pages.front(), Heads(s), o.pages.front(), o.seconds);
    std::printf("   ratios (1.0 = as cheap as an empty RPC):\n");
    std::printf("%8s %22s %22s %22s %22s %22s\n", "workers", "RPC rate / Ping rate",
                "Alloc p50 / Ping p50", "Commit p50 / Ping p50", "Alloc p99 / Ping p99",
                "Commit p99 / Ping p99");
    for (const OpsRow& r : ops) {
      std::printf("%8u %22s %22s %22s %22s %22s\n", r.workers,
                  Fmt(Get(r.reps, kOpsFields, "rpc_rate_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "alloc_p50_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "commit_p50_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "alloc_p99_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "commit_p99_ratio"), "%.2f").c_str());
    }
    std::printf("   absolute (CPU host, this machine):\n");
    std::printf("%8s %20s %20s %18s %20s %18s %20s %18s %20s\n", "workers", "Ping calls/s",
                "Alloc+Commit ops/s", "Ping p50 us", "Ping p99 us", "Alloc p50 us",
                "Alloc p99 us", "Commit p50 us", "Commit p99 us");
    for (const OpsRow& r : ops) {
      std::printf("%8u %20s %20s %18s %20s %18s %20s %18s %20s\n", r.workers,
                  Fmt(Get(r.reps, kOpsFields, "ping_per_s"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "pairs_per_s"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "ping_p50_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "ping_p99_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "alloc_p50_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "alloc_p99_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "commit_p50_us"), "%.0f").c_str(),
                  Fmt(Get(r.reps, kOpsFields, "commit_p99_us"), "%.0f").c_str());
    }
  }
  if (!bytes.empty()) {
    std::printf("\n2. Bytes path: WriteKV / ReadKV vs a raw AF_UNIX stream copy of the same bytes "
                "in the same chunks\n");
    std::printf("%6s %10s %10s %18s %18s %18s %18s %18s\n", "page", "chunk KiB", "MiB/rep",
                "WriteKV / raw", "ReadKV / raw", "raw GB/s", "WriteKV GB/s", "ReadKV GB/s");
    for (const BytesRow& r : bytes) {
      std::printf("%6u %10.1f %10.1f %18s %18s %18s %18s %18s\n", r.tpp, r.chunk_bytes / 1024.0,
                  r.bytes / 1048576.0,
                  Fmt(Get(r.reps, kBytesFields, "write_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "read_ratio"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "raw_socket_gbps"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "writekv_gbps"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "readkv_gbps"), "%.2f").c_str());
    }
    std::printf("   (GB/s columns are CPU-host figures of this machine; 1 GB = 1e9 bytes of K+V)\n");

    std::printf("\n3. vs Redis: %s\n", info.redis.c_str());
    std::printf("   same blobs (one value = keys+values of one chunk), same bytes; in-place = "
                "AllocatePages + WriteInPlace (memcpy into mapped shm) + CommitTokens\n");
    if (info.have_redis) {
      std::printf("%6s %18s %18s %20s %20s %14s %14s %14s %14s\n", "page", "WriteKV / SET",
                  "ReadKV / GET", "in-place/page / SET", "in-place/seq / SET", "SET GB/s",
                  "GET GB/s", "SET / raw", "GET / raw");
      for (const BytesRow& r : bytes) {
        std::printf("%6u %18s %18s %20s %20s %14s %14s %14s %14s\n", r.tpp,
                    Fmt(Get(r.reps, kRedisFields, "writekv_over_redis_set"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "readkv_over_redis_get"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "inplace_page_over_redis_set"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "inplace_seq_over_redis_set"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "redis_set_gbps"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "redis_get_gbps"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "redis_set_over_raw"), "%.2f").c_str(),
                    Fmt(Get(r.reps, kRedisFields, "redis_get_over_raw"), "%.2f").c_str());
      }
    }
    std::printf("%6s %20s %20s %22s %22s\n", "page", "in-place/page GB/s", "in-place/seq GB/s",
                "in-place/page / raw", "in-place/seq / raw");
    for (const BytesRow& r : bytes) {
      std::printf("%6u %20s %20s %22s %22s\n", r.tpp,
                  Fmt(Get(r.reps, kBytesFields, "inplace_page_gbps"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "inplace_seq_gbps"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "inplace_page_over_raw"), "%.2f").c_str(),
                  Fmt(Get(r.reps, kBytesFields, "inplace_seq_over_raw"), "%.2f").c_str());
    }
  }
  const double mib = 1048576.0;
  std::printf("\nkvkeepd memory over the run (%llu samples, every 20 ms): peak RSS (VmHWM) %.1f MiB, "
              "peak anonymous %.1f MiB, peak shared (arenas touched) %.1f MiB; at the end RSS "
              "%.1f MiB, anonymous %.1f MiB\n",
              static_cast<unsigned long long>(info.samples), info.daemon_end.vm_hwm / mib,
              info.daemon_peak_anon / mib, info.daemon_peak_shmem / mib,
              info.daemon_end.vm_rss / mib, info.daemon_end.rss_anon / mib);
  if (info.have_redis) {
    std::printf("redis-server: peak RSS (VmHWM) %.1f MiB, used_memory at the end %.1f MiB\n",
                info.redis_hwm / mib, info.redis_used / mib);
  }
}

// ---- Driver ------------------------------------------------------------------------------------

int Run(const Options& o) {
  const Shape& s = o.shape;
  const uint32_t max_workers = o.skip_ops ? 1 : *std::max_element(o.workers.begin(),
                                                                   o.workers.end());
  const uint64_t heads = Heads(s);
  // Bytes path: every page size's workload stays allocated across the reps.
  // (plus one more workload's worth at a time for the in-place writes into fresh sequences).
  const uint64_t bytes_need =
      o.skip_bytes ? 0 : (o.pages.size() + 1) * ((o.mib << 20) + (16 << 20));
  // Control path: room for 16 ops per worker's sequence, twice over (arenas are host shared
  // memory, only touched pages cost RAM; the control path touches none).
  const uint64_t ops_need =
      o.skip_ops ? 0 : 2 * 16 * uint64_t{max_workers} * heads * 2 * o.pages.front() * TokenBytes(s);
  uint64_t pool_mib = o.pool_mib;
  if (pool_mib == 0) pool_mib = std::max<uint64_t>(1024, ((bytes_need + ops_need) >> 20) + 512);
  const uint64_t pool_bytes = pool_mib << 20;
  if (bytes_need + (64ull << 20) > pool_bytes) {
    std::fprintf(stderr, "kvkeep-bench io: --pool_mib %llu is too small for --mib %llu x %zu "
                 "page sizes\n", static_cast<unsigned long long>(pool_mib),
                 static_cast<unsigned long long>(o.mib), o.pages.size());
    return 2;
  }

  const std::string binary = FindDaemon(o.kvkeepd);
  if (access(binary.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "kvkeep-bench io: no kvkeepd at %s (build it: ninja kvkeepd, or pass "
                 "--kvkeepd PATH)\n", binary.c_str());
    return 1;
  }
  std::fprintf(stderr, "[io] starting %s (pool %llu MiB)\n", binary.c_str(),
               static_cast<unsigned long long>(pool_mib));
  auto daemon = Daemon::Start(binary, pool_mib, o.max_message_mib);
  if (!daemon.ok()) {
    std::fprintf(stderr, "kvkeep-bench io: %s\n", daemon.status().ToString().c_str());
    return 1;
  }
  auto fail = [&](const std::string& what, const absl::Status& st) {
    std::fprintf(stderr, "\nkvkeep-bench io: %s: %s\n", what.c_str(), st.ToString().c_str());
    return 1;  // the Daemon's (and RedisPeer's) destructor stops it and removes its dir
  };
  RunInfo info;
  MemorySampler sampler((*daemon)->pid(), 20);

  // The Redis peer (bytes path only).
  std::unique_ptr<RedisPeer> redis;
  if (o.skip_bytes) {
    info.redis = "not run (--ops_only)";
  } else if (o.no_redis) {
    info.redis = "not run (--no_redis)";
  } else {
    const std::string server = RedisPeer::FindServer(o.redis);
    if (server.empty() && o.smoke && o.redis.empty()) {
      info.redis = "skipped: no redis-server on $PATH (apt-get install redis-server)";
      std::fprintf(stderr, "[io] note: %s\n", info.redis.c_str());
    } else {
      std::fprintf(stderr, "[io] starting redis-server %s\n", server.c_str());
      auto peer = RedisPeer::Start(server);
      if (!peer.ok()) {
        return fail("Redis peer (use --no_redis to skip it)", peer.status());
      }
      redis = std::move(*peer);
      info.have_redis = true;
      info.redis = absl::StrCat(redis->Version(), ", private, Unix socket, no persistence; "
                                "hiredis client, SET/GET pipelined ", o.redis_pipeline,
                                " commands per batch");
    }
  }

  const ChannelOptions channel{.target = (*daemon)->target(),
                               .max_message_bytes = static_cast<int>(o.max_message_mib << 20)};
  auto admin = AdminClient::Connect(channel, (*daemon)->admin_token());
  v1::CreateTenantRequest tenant;
  tenant.set_name("bench");
  tenant.set_max_bytes(pool_bytes);
  auto created = admin->CreateTenant(tenant);
  if (!created.ok()) return fail("CreateTenant", created.status());

  int exit_code = 0;
  std::vector<OpsRow> ops;
  std::vector<BytesRow> bytes;
  {
    std::vector<std::unique_ptr<Client>> clients;
    std::fprintf(stderr, "[io] attaching %u worker session(s)\n", max_workers);
    for (uint32_t w = 0; w < max_workers; ++w) {
      auto c = Client::Attach(channel, created->token(), absl::StrCat("bench-", w));
      if (!c.ok()) return fail(absl::StrCat("Attach worker ", w), c.status());
      clients.push_back(std::move(*c));
    }
    if (absl::Status st = RegisterModels(*clients[0], o); !st.ok()) {
      return fail("RegisterModel", st);
    }

    // Control-path sequences hold at most `seq_pages` ops each; size that to the pool left.
    if (!o.skip_ops) {
      const uint64_t page_bytes = 2 * uint64_t{o.pages.front()} * TokenBytes(s);
      const uint64_t budget = (pool_bytes - bytes_need) / 2;
      for (uint32_t n : o.workers) {
        OpsRow& row = ops.emplace_back();
        row.workers = n;
        row.seq_pages = static_cast<uint32_t>(
            std::clamp<uint64_t>(budget / (uint64_t{n} * heads * page_bytes), 1, 64));
      }
    }
    std::vector<BytesWorkload> workloads;
    std::vector<char> dst;
    if (!o.skip_bytes) {
      for (uint32_t tpp : o.pages) {
        std::fprintf(stderr, "[io] preparing %llu MiB of K+V in pages of %u tokens\n",
                     static_cast<unsigned long long>(o.mib), tpp);
        BytesRow& row = bytes.emplace_back();
        auto wl = PrepareBytes(*clients[0], o, tpp, &row);
        if (!wl.ok()) return fail(absl::StrCat("preparing pages of ", tpp), wl.status());
        workloads.push_back(std::move(*wl));
        dst.resize(std::max(dst.size(), workloads.back().src.size()));
      }
      std::memset(dst.data(), 0, dst.size());  // fault the raw copy's target in
    }

    // Warm-up SET of every Redis value, not recorded, as the kvkeep pages were warmed by
    // PrepareBytes' first WriteKV: a fresh server's first SETs also fault its memory in.
    if (redis != nullptr) {
      for (const BytesWorkload& wl : workloads) {
        absl::Status st = redis->SetMany(wl.redis_keys, wl.redis_values, o.redis_pipeline);
        if (!st.ok()) return fail("Redis warm-up", st);
      }
    }
    // Warm-up of the in-place writes, not recorded: the first touch of the arena pages they
    // land on (the client's page faults).
    for (size_t i = 0; i < workloads.size(); ++i) {
      auto g = MeasureInPlace(*clients[0], workloads[i], o, bytes[i].tpp, /*per_page=*/false,
                              /*verify=*/false);
      if (!g.ok()) return fail("in-place warm-up", g.status());
    }
    // Warm-up, not recorded: connections, the daemon's threads and its allocator.
    if (!ops.empty()) {
      Options warm = o;
      warm.seconds = std::min(0.2, o.seconds);
      std::fprintf(stderr, "[io] warm-up\n");
      for (const OpsRow& row : ops) {
        auto r = MeasureOps(clients, warm, row.workers, row.seq_pages);
        if (!r.ok()) return fail("control path warm-up", r.status());
      }
    }
    for (int rep = 0; rep < o.reps; ++rep) {
      for (OpsRow& row : ops) {
        std::fprintf(stderr, "[io] rep %d/%d control path, %u workers ...", rep + 1, o.reps,
                     row.workers);
        auto r = MeasureOps(clients, o, row.workers, row.seq_pages);
        if (!r.ok()) return fail("control path", r.status());
        std::fprintf(stderr, " RPC rate ratio %.2f, Alloc p50 ratio %.2f\n",
                     2 * r->pair_per_s / r->ping_per_s, r->alloc_p50 / r->ping_p50);
        row.reps.push_back(*r);
      }
      for (size_t i = 0; i < bytes.size(); ++i) {
        std::fprintf(stderr, "[io] rep %d/%d bytes path, pages of %u tokens ...", rep + 1, o.reps,
                     bytes[i].tpp);
        auto r = MeasureBytes(*clients[0], workloads[i], o, dst, /*verify=*/rep == 0);
        if (!r.ok()) return fail("bytes path", r.status());
        if (redis != nullptr) {
          absl::Status st = MeasureRedis(*redis, workloads[i], o, /*verify=*/rep == 0, &*r);
          if (!st.ok()) return fail("Redis SET/GET", st);
        }
        for (bool per_page : {true, false}) {
          auto g = MeasureInPlace(*clients[0], workloads[i], o, bytes[i].tpp, per_page,
                                  /*verify=*/rep == 0);
          if (!g.ok()) return fail("in-place write", g.status());
          (per_page ? r->inplace_page_gbps : r->inplace_seq_gbps) = *g;
        }
        std::fprintf(stderr, " raw %.2f GB/s, WriteKV %.2f, ReadKV %.2f, SET %.2f, GET %.2f, "
                     "in-place %.2f / %.2f\n", r->raw_gbps, r->write_gbps, r->read_gbps,
                     r->set_gbps, r->get_gbps, r->inplace_page_gbps, r->inplace_seq_gbps);
        bytes[i].reps.push_back(*r);
      }
    }
    for (const BytesWorkload& wl : workloads) {
      auto dropped = clients[0]->Drop(wl.seq);
      if (!dropped.ok()) return fail("Drop", dropped.status());
    }
    auto status = admin->GetStatus();
    if (status.ok() && status->pages_in_use() != 0) {
      std::fprintf(stderr, "kvkeep-bench io: %llu pages still in use after every Drop\n",
                   static_cast<unsigned long long>(status->pages_in_use()));
      exit_code = 1;
    }
    for (auto& c : clients) c->Close();
    clients.clear();
    admin.reset();
  }
  sampler.Stop();
  info.daemon_end = ReadProcMemory((*daemon)->pid());
  info.daemon_peak_anon = std::max(sampler.max_rss_anon(), info.daemon_end.rss_anon);
  info.daemon_peak_shmem = std::max(sampler.max_rss_shmem(), info.daemon_end.rss_shmem);
  info.daemon_peak_rss = std::max(sampler.max_vm_rss(), info.daemon_end.vm_rss);
  info.samples = sampler.samples();
  if (redis != nullptr) {
    info.redis_used = redis->UsedMemory();
    info.redis_hwm = ReadProcMemory(redis->pid()).vm_hwm;
    if (!redis->Stop()) {
      std::fprintf(stderr, "kvkeep-bench io: redis-server did not stop on SHUTDOWN/SIGTERM\n");
      exit_code = 1;
    }
  }
  const auto stop_start = Clock::now();
  if (!(*daemon)->Stop()) {
    std::fprintf(stderr, "kvkeep-bench io: kvkeepd did not stop cleanly on SIGTERM\n");
    exit_code = 1;
  }
  std::fprintf(stderr, "[io] done, kvkeepd stopped in %.1f s\n", SecondsSince(stop_start));
  if (o.json) {
    PrintJson(o, ops, bytes, info);
  } else {
    PrintTable(o, ops, bytes, info);
  }
  return exit_code;
}

}  // namespace

int RunIoBench(int argc, char** argv) {
  Options o;
  const int parsed = ParseFlags(argc, argv, &o);
  if (parsed == -1) return 0;
  if (parsed != 0) return parsed;
  InstallBenchSignalHandlers();
  return Run(o);
}

void InstallBenchSignalHandlers() {
  struct sigaction action {};
  action.sa_handler = OnSignal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGINT, &action, nullptr);
  sigaction(SIGTERM, &action, nullptr);
  signal(SIGPIPE, SIG_IGN);
}

}  // namespace kvkeep::bench
