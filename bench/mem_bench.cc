#include "bench/mem_bench.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "bench/rep_stats.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "bench/io_bench.h"
#include "client/admin_client.h"
#include "client/client.h"
#include "common/status_macros.h"

namespace kvkeep::bench {

// ---- /proc ---------------------------------------------------------------------------------------

namespace {

// "Name:   1234 kB" lines of a /proc file into bytes.
uint64_t KbField(const std::string& text, const char* name) {
  const std::string key = absl::StrCat("\n", name, ":");
  size_t at = text.find(key);
  if (at == std::string::npos) {
    if (text.rfind(absl::StrCat(name, ":"), 0) != 0) return 0;
    at = 0;
  } else {
    at += 1;
  }
  at += std::strlen(name) + 1;
  return std::strtoull(text.c_str() + at, nullptr, 10) * 1024;
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

ProcMemory ReadProcMemory(pid_t pid) {
  ProcMemory m;
  const std::string status = Slurp(absl::StrCat("/proc/", pid, "/status"));
  const std::string rollup = Slurp(absl::StrCat("/proc/", pid, "/smaps_rollup"));
  if (status.empty()) return m;
  m.ok = true;
  m.vm_rss = KbField(status, "VmRSS");
  m.vm_hwm = KbField(status, "VmHWM");
  m.rss_anon = KbField(status, "RssAnon");
  m.rss_shmem = KbField(status, "RssShmem");
  m.rss_file = KbField(status, "RssFile");
  m.anonymous = KbField(rollup, "Anonymous");
  m.private_dirty = KbField(rollup, "Private_Dirty");
  return m;
}

MemorySampler::MemorySampler(pid_t pid, int period_ms) : pid_(pid), period_ms_(period_ms) {
  thread_ = std::thread([this] {
    while (!stop_) {
      Sample();
      std::this_thread::sleep_for(std::chrono::milliseconds(period_ms_));
    }
  });
}

MemorySampler::~MemorySampler() { Stop(); }

void MemorySampler::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

void MemorySampler::Sample() {
  // status only: cheap (smaps_rollup walks every mapping).
  const std::string status = Slurp(absl::StrCat("/proc/", pid_, "/status"));
  if (status.empty()) return;
  auto raise = [](std::atomic<uint64_t>& max, uint64_t v) {
    uint64_t cur = max.load();
    while (v > cur && !max.compare_exchange_weak(cur, v)) {
    }
  };
  raise(max_anon_, KbField(status, "RssAnon"));
  raise(max_shmem_, KbField(status, "RssShmem"));
  raise(max_rss_, KbField(status, "VmRSS"));
  ++samples_;
}

// ---- The benchmark -------------------------------------------------------------------------------

namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Shape {
  const char* name;
  uint32_t layers, q_heads, kv_heads, head_dim;
  v1::DType dtype;
  uint32_t dtype_bytes;
};

const Shape kShapes[] = {
    {"small", 4, 8, 2, 64, v1::DTYPE_FP16, 2},
    {"llama3-8b", 32, 32, 8, 128, v1::DTYPE_BF16, 2},
    {"qwen3-8b", 36, 32, 8, 128, v1::DTYPE_BF16, 2},
};

struct Options {
  Shape shape = kShapes[0];
  uint32_t tpp = 16;
  uint64_t pages = 262144;       // pages held at the end of the long-sequence test
  uint32_t sequences = 16;       // long-sequence test
  uint32_t many = 4096;          // one-page-per-head sequences in the many-sequence test
  uint32_t steps = 8;
  uint32_t commit_tokens = 32768;  // 1-token commits
  uint32_t batch_tokens = 262144;  // tokens committed 64 at a time
  int reps = 3;
  std::string kvkeepd;
  bool json = false;
};

constexpr char kHelp[] = R"(kvkeep-bench mem - kvkeepd's own memory (metadata per page, per token, peaks)

Usage: kvkeep-bench mem [flags]

Starts a fresh kvkeepd (separate process, temporary --data_dir, Unix socket, --backend=cpu) for
each test of each rep (so heap freed by one test cannot hide the next one's growth) and reads its
memory from /proc/PID/smaps_rollup and /proc/PID/status:

  1. Metadata per page. Pages are allocated in --steps steps (AllocatePages only; nothing is
     written, so the arenas - POSIX shared memory - stay untouched and are not counted anyway)
     and after every step the daemon's anonymous memory (smaps_rollup "Anonymous": heap, gRPC
     buffers, the page tables) is read. B/page = least-squares slope of anonymous bytes over
     pages held. Two layouts:
       long: --sequences sequences growing to --pages pages in all      (goal: <= 64 B/page)
       many: --many sequences of one page per (layer, KV head) each     (B/page and B/sequence)
  2. Hot path: CommitTokens of 1 token per call (--commit_tokens
     calls) and of 64 tokens per call (--batch_tokens tokens), with AllocatePages ahead in large
     slices. B/token = slope of anonymous bytes over committed tokens. What must grow: the int32
     original position of each token in each (layer, KV head), 4 B, plus the page table's 8 B
     per page per head: (4 + 8 / tokens_per_page) B x layers x KV heads per token.
  3. Peaks over the rep: VmHWM (peak RSS, shared memory included) and the highest RssAnon of
     samples every 20 ms.

Flags:
  --shape small|llama3-8b|qwen3-8b   (default small: 4 layers x 2 KV heads = 8 page tables)
  --tpp N               tokens per page (default 16)
  --pages N             pages at the end of the long test (default 262144)
  --sequences N         sequences of the long test (default 16)
  --many N              sequences of the many test (default 4096)
  --steps N             measurement points per test (default 8)
  --commit_tokens N     1-token CommitTokens calls (default 32768)
  --batch_tokens N      tokens committed 64 per call (default 262144)
  --reps N              repetitions of the four tests (default 3)
  --kvkeepd PATH        daemon binary (default: next to this binary, or ../bin/)
  --json                JSON on stdout instead of the table
  --smoke               CI mode: 1 rep, small counts
  --help
)";

int ParseFlags(int argc, char** argv, Options* o) {
  const int first = 1;  // argv[0] is the subcommand
  for (int i = first; i < argc; ++i) {
    if (std::strcmp(argv[i], "--smoke") == 0) {
      o->reps = 1;
      o->pages = 8192;
      o->sequences = 4;
      o->many = 128;
      o->steps = 4;
      o->commit_tokens = 256;
      o->batch_tokens = 4096;
    }
  }
  for (int i = first; i < argc; ++i) {
    std::string name = argv[i], value;
    const size_t eq = name.find('=');
    const bool has_eq = eq != std::string::npos;
    if (has_eq) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (name == "--help" || name == "-h") {
      std::printf("%s", kHelp);
      return -1;
    }
    if (name == "--smoke") continue;
    if (name == "--json") {
      o->json = true;
      continue;
    }
    if (!has_eq) {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "kvkeep-bench mem: %s needs a value (see --help)\n", name.c_str());
        return 2;
      }
      value = argv[++i];
    }
    const bool numeric = !value.empty() && value.find_first_not_of("0123456789") == std::string::npos;
    const uint64_t n = numeric && value.size() < 19 ? std::stoull(value) : 0;
    bool ok = numeric && n > 0;
    if (name == "--shape") {
      ok = false;
      for (const Shape& s : kShapes) {
        if (value == s.name) {
          o->shape = s;
          ok = true;
        }
      }
    } else if (name == "--tpp") {
      ok = ok && n <= 4096;
      o->tpp = static_cast<uint32_t>(n);
    } else if (name == "--pages") {
      o->pages = n;
    } else if (name == "--sequences") {
      ok = ok && n <= 100000;
      o->sequences = static_cast<uint32_t>(n);
    } else if (name == "--many") {
      ok = ok && n <= 1000000;
      o->many = static_cast<uint32_t>(n);
    } else if (name == "--steps") {
      ok = ok && n >= 2 && n <= 1000;
      o->steps = static_cast<uint32_t>(n);
    } else if (name == "--commit_tokens") {
      ok = ok && n <= 10000000;
      o->commit_tokens = static_cast<uint32_t>(n);
    } else if (name == "--batch_tokens") {
      ok = ok && n <= 100000000;
      o->batch_tokens = static_cast<uint32_t>(n);
    } else if (name == "--reps") {
      ok = ok && n <= 100;
      o->reps = static_cast<int>(n);
    } else if (name == "--kvkeepd") {
      ok = true;
      o->kvkeepd = value;
    } else {
      std::fprintf(stderr, "kvkeep-bench mem: unknown flag %s (see --help)\n", name.c_str());
      return 2;
    }
    if (!ok) {
      std::fprintf(stderr, "kvkeep-bench mem: bad value for %s: \"%s\"\n", name.c_str(),
                   value.c_str());
      return 2;
    }
  }
  return 0;
}

uint32_t Heads(const Shape& s) { return s.layers * s.kv_heads; }
uint64_t PageBytes(const Shape& s, uint32_t tpp) {
  return 2ull * tpp * s.head_dim * s.dtype_bytes;
}

// Least-squares slope of y over x.
double Slope(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  double sx = 0, sy = 0, sxx = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sx += x[i];
    sy += y[i];
    sxx += x[i] * x[i];
    sxy += x[i] * y[i];
  }
  const double d = n * sxx - sx * sx;
  return d == 0 ? 0 : (n * sxy - sx * sy) / d;
}

struct Rep {
  double page_b_long = 0;      // B per page, long sequences (slope)
  double page_b_long_delta = 0;  // (anonymous at the end - before) / pages, long sequences
  double page_b_many = 0;      // B per page, one-page sequences
  double seq_b_many = 0;       // B per sequence, one-page sequences
  double token_b_1 = 0;        // B per committed token, 1-token commits
  double token_b_64 = 0;       // B per committed token, 64-token commits
  double anon_base = 0;        // anonymous bytes after start-up and warm-up
  double anon_long_end = 0;    // anonymous bytes with every long-test page held
  double anon_after_drop = 0;  // after dropping the long test's sequences
  double hwm = 0, peak_anon = 0;
  double seconds = 0;
};

double Anon(pid_t pid) { return static_cast<double>(ReadProcMemory(pid).anonymous); }

enum class Phase { kCommit1, kCommit64, kLong, kMany };

// Registers the benchmark's model for o.tpp tokens per page; returns its name.
absl::StatusOr<std::string> RegisterBenchModel(Client& c, const Options& o) {
  const Shape& s = o.shape;
  v1::ModelLayout layout;
  const std::string model = absl::StrCat("bench-", s.name, "-p", o.tpp);
  layout.set_name(model);
  layout.set_layers(s.layers);
  layout.set_q_heads(s.q_heads);
  layout.set_kv_heads(s.kv_heads);
  layout.set_head_dim(s.head_dim);
  layout.set_dtype(s.dtype);
  layout.set_tokens_per_page(o.tpp);
  layout.mutable_rope()->set_theta(500000);
  RETURN_IF_ERROR(c.RegisterModel(layout).status());
  return model;
}

// One small sequence through every call the phases use (gRPC buffers, threads).
absl::Status WarmUp(Client& c, const Options& o, const std::string& model) {
  for (int i = 0; i < 4; ++i) {
    ASSIGN_OR_RETURN(std::string seq, c.CreateSequence(model));
    RETURN_IF_ERROR(c.Allocate(seq, 4 * o.tpp).status());
    for (int k = 0; k < 64; ++k) RETURN_IF_ERROR(c.Commit(seq, 1).status());
    RETURN_IF_ERROR(c.Drop(seq).status());
  }
  return absl::OkStatus();
}

// Bytes per committed token, commits of `per_call` tokens (1 or 64).
absl::Status MeasureCommits(Client& c, const Options& o, const std::string& model, pid_t pid,
                            uint32_t per_call, Rep* rep) {
  const uint32_t heads = Heads(o.shape);
  // Pages are allocated ahead in slices of ~256k page references per reply (AllocatePages(n)
  // = room for n tokens past the committed ones), so the slope also holds the page table's
  // 8 B per page per head, i.e. 8 / tokens_per_page B per token per head.
  const uint32_t tokens = per_call == 1 ? o.commit_tokens : o.batch_tokens;
  const uint32_t slice = std::max<uint32_t>(
      64, static_cast<uint32_t>(std::min<uint64_t>(tokens, (262144ull / heads) * o.tpp)));
  ASSIGN_OR_RETURN(std::string seq, c.CreateSequence(model));
  uint64_t room = 0;
  std::vector<double> x = {0}, y = {Anon(pid)};
  const uint32_t calls = tokens / per_call;
  for (uint32_t k = 1; k <= calls; ++k) {
    const uint64_t committed = uint64_t{k - 1} * per_call;
    if (committed + per_call > room) {
      RETURN_IF_ERROR(c.Allocate(seq, slice).status());
      room = committed + slice;
    }
    RETURN_IF_ERROR(c.Commit(seq, per_call).status());
    if (k % std::max<uint32_t>(1, calls / (4 * o.steps)) == 0 || k == calls) {
      x.push_back(static_cast<double>(uint64_t{k} * per_call));
      y.push_back(Anon(pid));
    }
  }
  (per_call == 1 ? rep->token_b_1 : rep->token_b_64) = Slope(x, y);
  std::fprintf(stderr, "[mem] commits of %u token(s): %u tokens: %.1f B/token\n", per_call,
               calls * per_call, Slope(x, y));
  return c.Drop(seq).status();
}

// Bytes per page of a few long sequences, each growing by the same number of tokens per step.
absl::Status MeasureLongSequences(Client& c, const Options& o, const std::string& model,
                                  pid_t pid, double base, Rep* rep) {
  const uint32_t heads = Heads(o.shape);
  rep->anon_base = base;
  const uint64_t pages_per_seq_head = std::max<uint64_t>(1, o.pages / o.sequences / heads);
  const uint64_t tokens_total = pages_per_seq_head * o.tpp;
  std::vector<std::string> seqs;
  for (uint32_t i = 0; i < o.sequences; ++i) {
    ASSIGN_OR_RETURN(std::string seq, c.CreateSequence(model));
    seqs.push_back(seq);
  }
  std::vector<double> x = {0}, y = {Anon(pid)};
  uint64_t done = 0;
  for (uint32_t step = 1; step <= o.steps; ++step) {
    const uint64_t target = tokens_total * step / o.steps / o.tpp * o.tpp;
    if (target <= done) continue;
    // AllocatePages(n) makes room for n tokens past the committed ones (none here), so each
    // call asks for the sequence's whole target; the reply carries only the new pages.
    for (const std::string& seq : seqs) {
      RETURN_IF_ERROR(c.Allocate(seq, static_cast<uint32_t>(target)).status());
    }
    done = target;
    x.push_back(static_cast<double>(done / o.tpp * heads * o.sequences));
    y.push_back(Anon(pid));
  }
  rep->page_b_long = Slope(x, y);
  rep->page_b_long_delta = (y.back() - base) / x.back();
  rep->anon_long_end = y.back();
  std::fprintf(stderr, "[mem] long: %.0f pages in %u sequences: %.1f B/page (slope), %.1f "
               "(end - start)\n", x.back(), o.sequences, rep->page_b_long,
               rep->page_b_long_delta);
  for (const std::string& seq : seqs) RETURN_IF_ERROR(c.Drop(seq).status());
  rep->anon_after_drop = Anon(pid);
  return absl::OkStatus();
}

// Bytes per sequence (and page) of many sequences of one page per head.
absl::Status MeasureManySequences(Client& c, const Options& o, const std::string& model,
                                  pid_t pid, Rep* rep) {
  const uint32_t heads = Heads(o.shape);
  std::vector<std::string> seqs;
  std::vector<double> x = {0}, y = {Anon(pid)};
  for (uint32_t step = 1; step <= o.steps; ++step) {
    const uint32_t target = static_cast<uint32_t>(uint64_t{o.many} * step / o.steps);
    while (seqs.size() < target) {
      ASSIGN_OR_RETURN(std::string seq, c.CreateSequence(model));
      RETURN_IF_ERROR(c.Allocate(seq, o.tpp).status());
      seqs.push_back(seq);
    }
    x.push_back(static_cast<double>(seqs.size()));
    y.push_back(Anon(pid));
  }
  rep->seq_b_many = Slope(x, y);
  rep->page_b_many = rep->seq_b_many / heads;
  std::fprintf(stderr, "[mem] many: %zu sequences of %u pages: %.0f B/sequence = %.1f B/page\n",
               seqs.size(), heads, rep->seq_b_many, rep->page_b_many);
  for (const std::string& seq : seqs) RETURN_IF_ERROR(c.Drop(seq).status());
  return absl::OkStatus();
}

// One phase on its own fresh kvkeepd, so that heap freed by one test cannot hide the growth of
// the next (a later allocation reusing resident free heap does not move RSS). Fills its fields
// of *rep and raises the peaks.
absl::Status RunPhase(const Options& o, const std::string& binary, Phase phase, Rep* rep) {
  const Shape& s = o.shape;
  const uint32_t heads = Heads(s);
  const uint64_t page_bytes = PageBytes(s, o.tpp);
  // Room for the phase plus slack; the arenas are never touched, so this is address space and
  // /dev/shm file size, not RAM.
  const uint64_t commit_pages =
      uint64_t{heads} * ((std::max(o.commit_tokens, o.batch_tokens) + o.tpp - 1) / o.tpp) * 2;
  const uint64_t pool_mib =
      ((std::max({o.pages, uint64_t{o.many} * heads, commit_pages}) * page_bytes) >> 20) + 1024;
  ASSIGN_OR_RETURN(std::unique_ptr<Daemon> daemon, Daemon::Start(binary, pool_mib, 16));
  const pid_t pid = daemon->pid();
  MemorySampler sampler(pid, 20);
  const ChannelOptions channel{.target = daemon->target(), .max_message_bytes = 16 << 20};
  auto admin = AdminClient::Connect(channel, daemon->admin_token());
  v1::CreateTenantRequest tenant;
  tenant.set_name("bench");
  tenant.set_max_bytes(pool_mib << 20);
  ASSIGN_OR_RETURN(v1::CreateTenantReply created, admin->CreateTenant(tenant));
  ASSIGN_OR_RETURN(std::unique_ptr<Client> c,
                   Client::Attach(channel, created.token(), "bench-mem"));
  ASSIGN_OR_RETURN(const std::string model, RegisterBenchModel(*c, o));
  RETURN_IF_ERROR(WarmUp(*c, o, model));
  const double base = Anon(pid);
  switch (phase) {
    case Phase::kCommit1:
      RETURN_IF_ERROR(MeasureCommits(*c, o, model, pid, 1, rep));
      break;
    case Phase::kCommit64:
      RETURN_IF_ERROR(MeasureCommits(*c, o, model, pid, 64, rep));
      break;
    case Phase::kLong:
      RETURN_IF_ERROR(MeasureLongSequences(*c, o, model, pid, base, rep));
      break;
    case Phase::kMany:
      RETURN_IF_ERROR(MeasureManySequences(*c, o, model, pid, rep));
      break;
  }
  sampler.Stop();
  const ProcMemory end = ReadProcMemory(pid);
  rep->hwm = std::max(rep->hwm, static_cast<double>(end.vm_hwm));
  rep->peak_anon = std::max(
      rep->peak_anon, static_cast<double>(std::max(sampler.max_rss_anon(), end.rss_anon)));
  c->Close();
  c.reset();
  admin.reset();
  if (!daemon->Stop()) return absl::InternalError("kvkeepd did not stop cleanly on SIGTERM");
  return absl::OkStatus();
}

absl::StatusOr<Rep> RunOnce(const Options& o, const std::string& binary) {
  Rep rep;
  const auto start = Clock::now();
  for (Phase p : {Phase::kCommit1, Phase::kCommit64, Phase::kLong, Phase::kMany}) {
    RETURN_IF_ERROR(RunPhase(o, binary, p, &rep));
  }
  rep.seconds = SecondsSince(start);
  return rep;
}

struct Field {
  const char* name;
  double (*get)(const Rep&);
};

const Field kFields[] = {
    {"bytes_per_page_long", [](const Rep& r) { return r.page_b_long; }},
    {"bytes_per_page_long_delta", [](const Rep& r) { return r.page_b_long_delta; }},
    {"bytes_per_page_many", [](const Rep& r) { return r.page_b_many; }},
    {"bytes_per_sequence_many", [](const Rep& r) { return r.seq_b_many; }},
    {"bytes_per_token_commit1", [](const Rep& r) { return r.token_b_1; }},
    {"bytes_per_token_commit64", [](const Rep& r) { return r.token_b_64; }},
    {"anon_base_bytes", [](const Rep& r) { return r.anon_base; }},
    {"anon_long_end_bytes", [](const Rep& r) { return r.anon_long_end; }},
    {"anon_after_drop_bytes", [](const Rep& r) { return r.anon_after_drop; }},
    {"peak_rss_bytes", [](const Rep& r) { return r.hwm; }},
    {"peak_anon_bytes", [](const Rep& r) { return r.peak_anon; }},
    {"seconds", [](const Rep& r) { return r.seconds; }},
};

Stats Of(const std::vector<Rep>& reps, const char* name) {
  for (const Field& f : kFields) {
    if (std::strcmp(f.name, name) == 0) {
      std::vector<double> v;
      for (const Rep& r : reps) v.push_back(f.get(r));
      return Summarise(v);
    }
  }
  return {};
}

std::string Fmt(const Stats& s, const char* spec, double scale = 1) {
  char fmt[64], buf[128];
  std::snprintf(fmt, sizeof fmt, "%s [%s, %s]", spec, spec, spec);
  std::snprintf(buf, sizeof buf, fmt, s.median / scale, s.min / scale, s.max / scale);
  return buf;
}

}  // namespace

int RunMemBench(int argc, char** argv) {
  Options o;
  const int parsed = ParseFlags(argc, argv, &o);
  if (parsed == -1) return 0;
  if (parsed != 0) return parsed;
  InstallBenchSignalHandlers();
  const std::string binary = FindDaemon(o.kvkeepd);
  if (access(binary.c_str(), X_OK) != 0) {
    std::fprintf(stderr, "kvkeep-bench mem: no kvkeepd at %s (build it, or pass --kvkeepd)\n",
                 binary.c_str());
    return 1;
  }
  std::vector<Rep> reps;
  for (int r = 0; r < o.reps; ++r) {
    std::fprintf(stderr, "[mem] rep %d/%d (%s)\n", r + 1, o.reps, binary.c_str());
    auto rep = RunOnce(o, binary);
    if (!rep.ok()) {
      std::fprintf(stderr, "kvkeep-bench mem: %s\n", rep.status().ToString().c_str());
      return 1;
    }
    reps.push_back(*rep);
  }
  const Shape& s = o.shape;
  const uint32_t heads = Heads(s);
  const double expected_token = (4.0 + 8.0 / o.tpp) * heads;
  if (o.json) {
    std::printf("{\"bench\":\"mem\",\"shape\":{\"name\":\"%s\",\"layers\":%u,\"kv_heads\":%u,"
                "\"head_dim\":%u},\"tokens_per_page\":%u,\"page_bytes\":%llu,\"reps\":%d,"
                "\"pages_long\":%llu,\"sequences_long\":%u,\"sequences_many\":%u,"
                "\"commit_tokens\":%u,\"batch_tokens\":%u,"
                "\"expected_bytes_per_token\":%g,\"goal_bytes_per_page\":64",
                s.name, s.layers, s.kv_heads, s.head_dim, o.tpp,
                static_cast<unsigned long long>(PageBytes(s, o.tpp)), o.reps,
                static_cast<unsigned long long>(o.pages), o.sequences, o.many, o.commit_tokens,
                o.batch_tokens, expected_token);
    for (const Field& f : kFields) {
      const Stats st = Of(reps, f.name);
      std::printf(",\"%s\":{\"median\":%.6g,\"min\":%.6g,\"max\":%.6g}", f.name, st.median,
                  st.min, st.max);
    }
    std::printf("}\n");
    return 0;
  }
  const double mib = 1048576.0;
  std::printf("kvkeep-bench mem: shape %s (%u layers x %u KV heads = %u page tables per sequence), "
              "pages of %u tokens (%llu B of K+V, in shared memory, not counted), %d reps "
              "(a fresh kvkeepd per test)\n",
              s.name, s.layers, s.kv_heads, heads, o.tpp,
              static_cast<unsigned long long>(PageBytes(s, o.tpp)), o.reps);
  std::printf("every cell: median [min, max] over the reps; daemon anonymous memory "
              "(/proc/PID/smaps_rollup Anonymous), slopes by least squares\n\n");
  std::printf("1. metadata per page (goal <= 64 B/page)\n");
  std::printf("   long: %u sequences, %llu pages at the end      %s B/page (slope); "
              "(end - start) / pages %s B/page\n", o.sequences,
              static_cast<unsigned long long>(o.pages),
              Fmt(Of(reps, "bytes_per_page_long"), "%.1f").c_str(),
              Fmt(Of(reps, "bytes_per_page_long_delta"), "%.1f").c_str());
  std::printf("   many: %u sequences of %u pages (1 per head)   %s B/page = %s B/sequence\n",
              o.many, heads, Fmt(Of(reps, "bytes_per_page_many"), "%.1f").c_str(),
              Fmt(Of(reps, "bytes_per_sequence_many"), "%.0f").c_str());
  std::printf("   anonymous: after start-up %s MiB, long test's pages held %s MiB, after their "
              "Drop %s MiB\n",
              Fmt(Of(reps, "anon_base_bytes"), "%.1f", mib).c_str(),
              Fmt(Of(reps, "anon_long_end_bytes"), "%.1f", mib).c_str(),
              Fmt(Of(reps, "anon_after_drop_bytes"), "%.1f", mib).c_str());
  std::printf("\n2. hot path: anonymous bytes per committed token; expected (4 B position + "
              "8 B page ref / %u tokens) x %u heads = %.1f B/token\n",
              o.tpp, heads, expected_token);
  std::printf("   CommitTokens(1)  x %u      %s B/token\n", o.commit_tokens,
              Fmt(Of(reps, "bytes_per_token_commit1"), "%.1f").c_str());
  std::printf("   CommitTokens(64) x %u    %s B/token\n", o.batch_tokens / 64,
              Fmt(Of(reps, "bytes_per_token_commit64"), "%.1f").c_str());
  std::printf("\n3. peaks over a rep (highest of its daemons): VmHWM %s MiB, RssAnon %s MiB "
              "(rep wall %s s)\n",
              Fmt(Of(reps, "peak_rss_bytes"), "%.1f", mib).c_str(),
              Fmt(Of(reps, "peak_anon_bytes"), "%.1f", mib).c_str(),
              Fmt(Of(reps, "seconds"), "%.1f").c_str());
  return 0;
}

}  // namespace kvkeep::bench
