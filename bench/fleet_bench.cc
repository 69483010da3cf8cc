#include "bench/fleet_bench.h"

#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "bench/fleet_seq_bench.h"
#include "bench/rep_stats.h"
#include "service/fleet/cluster_client.h"
#include "service/fleet/key_slot.h"
#include "service/fleet/page_value.h"
#include "service/fleet/redis_fleet_tier.h"

namespace kvkeep::bench {
namespace {

using fleet::NodeAddress;
using Clock = std::chrono::steady_clock;

constexpr char kUsage[] = R"(kvkeep-bench fleet - fleet tier put/get vs raw hiredis SET/GET

  --pages N             token pages per rep (default 64)
  --reps N              counted repetitions (default 6; fleet and raw take turns going first)
  --warmup_reps N       repetitions run first and not counted (default 1: the first GET run of
                        a process pays for fresh buffers and threads)
  --no_first_read       skip the untimed read of every value that each rep does between its
                        puts and its timed GETs (see docs/benchmarks.md: Redis serves values
                        written moments ago slower the first time, so without it whichever GET
                        goes first loses about half its speed whatever kvkeep does)
  --layout NAME         llama3-8b (2 MiB pages: 32 layers, 8 KV heads, 128 dims, bf16, 16
                        tokens/page; default) or tiny (32 KiB pages)
  --seeds H:P,...       an existing cluster (default: start a local one)
  --user NAME           its ACL user; --password_file PATH its password
  --script PATH         deploy/redis-cluster (default: ./deploy/redis-cluster)
  --base_port N         the local cluster's first port (default 36000)
  --open_threads N      threads checking/decrypting a GET window (default: the tier's, 4)
  --no_read_ahead       the tier fetches one window at a time
  --open_on_receiver    GET values are opened on the receiving thread, no helper threads
  --serial_receive      the tier reads the nodes' GET replies node by node on one thread
                        (the cluster client's parallel_receive off; the raw baseline always
                        reads node by node)
  --json                JSON on stdout instead of the table
  --smoke               tiny layout, 8 pages, 1 rep (CI)
  --sequence            also: the time to create a --tokens sequence on node B from a prefix
                        node A published to the fleet, vs writing the same bytes fresh on B
                        (WriteInPlace), vs recompute at --prefill_tok_s (ASSUMED, not
                        measured); two kvkeepd (--kvkeepd PATH, default next to this binary)
  --tokens N            sequence tokens (default 2048); --seq_reps N counted reps after one
                        warm-up rep that touches the pools (default 3)
  --prefill_tok_s R     assumed prefill rate for the recompute column (default 10000)
  --loop PHASE          for profiling (perf record): store the values once, then repeat
                        only PHASE (fleet_get or raw_get) for --loop_s seconds (default 20),
                        and print its MB/s; or `both`: fleet and raw GET alternated, and the
                        median of the pairs' ratios
)";

struct Options {
  int pages = 64, reps = 6, warmup_reps = 1, base_port = 36000, open_threads = 4;
  std::string layout = "llama3-8b", seeds, user, password_file, script = "deploy/redis-cluster";
  bool json = false, read_ahead = true, open_on_receiver = false, serial_receive = false;
  bool sequence = false, smoke = false, first_read = true;
  int tokens = 2048, seq_reps = 3;
  double prefill_tok_s = 10000;
  std::string kvkeepd;
  std::string loop;  // "", "fleet_get" or "raw_get"
  double loop_s = 20;
};

// CPU seconds (user + system) of this process, all its threads, so far.
double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return double(t.tv_sec) + t.tv_usec / 1e6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

int ParseFlags(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](std::string* out) {
      if (i + 1 >= argc) return false;
      *out = argv[++i];
      return true;
    };
    std::string v;
    if (a == "--help") {
      std::fputs(kUsage, stdout);
      return 0;
    } else if (a == "--no_read_ahead") {
      o->read_ahead = false;
    } else if (a == "--open_on_receiver") {
      o->open_on_receiver = true;
    } else if (a == "--no_first_read") {
      o->first_read = false;
    } else if (a == "--serial_receive") {
      o->serial_receive = true;
    } else if (a == "--json") {
      o->json = true;
    } else if (a == "--smoke") {
      o->layout = "tiny";
      o->pages = 8;
      o->reps = 1;
      o->smoke = true;
      o->seq_reps = 1;
      o->tokens = 64;
    } else if (a == "--sequence") {
      o->sequence = true;
    } else if (a == "--tokens" && value(&v) && absl::SimpleAtoi(v, &o->tokens) && o->tokens > 0 &&
               o->tokens % 16 == 0) {
    } else if (a == "--seq_reps" && value(&v) && absl::SimpleAtoi(v, &o->seq_reps) &&
               o->seq_reps > 0) {
    } else if (a == "--prefill_tok_s" && value(&v) && absl::SimpleAtod(v, &o->prefill_tok_s) &&
               o->prefill_tok_s > 0) {
    } else if (a == "--kvkeepd" && value(&o->kvkeepd)) {
    } else if (a == "--loop" && value(&o->loop) && (o->loop == "fleet_get" || o->loop == "raw_get" || o->loop == "both")) {
    } else if (a == "--loop_s" && value(&v) && absl::SimpleAtod(v, &o->loop_s) && o->loop_s > 0) {
    } else if (a == "--pages" && value(&v) && absl::SimpleAtoi(v, &o->pages) && o->pages > 0) {
    } else if (a == "--reps" && value(&v) && absl::SimpleAtoi(v, &o->reps) && o->reps > 0) {
    } else if (a == "--warmup_reps" && value(&v) && absl::SimpleAtoi(v, &o->warmup_reps) &&
               o->warmup_reps >= 0) {
    } else if (a == "--base_port" && value(&v) && absl::SimpleAtoi(v, &o->base_port)) {
    } else if (a == "--open_threads" && value(&v) && absl::SimpleAtoi(v, &o->open_threads) &&
               o->open_threads > 0) {
    } else if (a == "--layout" && value(&o->layout) &&
               (o->layout == "llama3-8b" || o->layout == "tiny")) {
    } else if (a == "--seeds" && value(&o->seeds)) {
    } else if (a == "--user" && value(&o->user)) {
    } else if (a == "--password_file" && value(&o->password_file)) {
    } else if (a == "--script" && value(&o->script)) {
    } else {
      std::fprintf(stderr, "kvkeep-bench fleet: bad flag %s\n%s", a.c_str(), kUsage);
      return 2;
    }
  }
  return -1;
}

v1::ModelLayout BenchLayout(const std::string& name) {
  v1::ModelLayout layout;
  layout.set_name(name);
  const bool tiny = name == "tiny";
  layout.set_layers(tiny ? 4 : 32);
  layout.set_q_heads(tiny ? 8 : 32);
  layout.set_kv_heads(tiny ? 2 : 8);
  layout.set_head_dim(tiny ? 64 : 128);
  layout.set_dtype(tiny ? v1::DTYPE_FP16 : v1::DTYPE_BF16);
  layout.set_tokens_per_page(16);
  layout.mutable_rope()->set_theta(500000);
  return layout;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return std::string(absl::StripTrailingAsciiWhitespace(ss.str()));
}

// A local cluster started with deploy/redis-cluster, stopped when destroyed.
class LocalCluster {
 public:
  static absl::StatusOr<std::unique_ptr<LocalCluster>> Start(const Options& o) {
    char pattern[] = "/tmp/kvkeep-bench-fleet-XXXXXX";
    if (mkdtemp(pattern) == nullptr) return absl::InternalError("mkdtemp failed");
    auto cluster = std::unique_ptr<LocalCluster>(new LocalCluster(o.script, pattern));
    std::string output;
    const std::string command =
        absl::StrCat(o.script, " start ", pattern, " --base-port ", o.base_port, " 2>&1");
    FILE* pipe = popen(command.c_str(), "r");
    if (pipe == nullptr) return absl::InternalError("popen failed");
    char buffer[4096];
    for (size_t n; (n = fread(buffer, 1, sizeof(buffer), pipe)) > 0;) output.append(buffer, n);
    const int status = pclose(pipe);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      return absl::UnavailableError(absl::StrCat(o.script, " start failed:\n", output));
    }
    for (absl::string_view line : absl::StrSplit(output, '\n')) {
      if (absl::ConsumePrefix(&line, "seeds=")) cluster->seeds = std::string(line);
    }
    cluster->password = ReadFile(absl::StrCat(pattern, "/kvkeep.password"));
    return cluster;
  }
  ~LocalCluster() {
    const std::string command = absl::StrCat(script_, " stop ", dir_, " >/dev/null 2>&1");
    if (std::system(command.c_str()) != 0)
      std::fprintf(stderr, "fleet: stopping the cluster failed\n");
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  std::string seeds, password;

 private:
  LocalCluster(std::string script, std::string dir)
      : script_(std::move(script)), dir_(std::move(dir)) {}
  std::string script_, dir_;
};

// Plain hiredis, one blocking connection per master, routed by `map`: the baseline.
class RawCluster {
 public:
  RawCluster(fleet::SlotMap map, fleet::ConnectionOptions connection)
      : map_(std::move(map)), connection_(std::move(connection)) {}
  ~RawCluster() {
    for (auto& [node, ctx] : contexts_) redisFree(ctx);
  }

  // `command` ("SET" with values, or "GET") for keys, pipelined per node `window` at a time;
  // `on_reply(i, reply)` sees each reply. False on any failure.
  template <typename OnReply>
  bool Run(const char* command, const std::vector<std::string>& keys,
           const std::vector<std::string>* values, size_t window, OnReply on_reply) {
    for (size_t start = 0; start < keys.size(); start += window) {
      const size_t end = std::min(keys.size(), start + window);
      std::map<NodeAddress, std::vector<size_t>> by_node;
      for (size_t i = start; i < end; ++i)
        by_node[*map_.MasterOf(fleet::KeySlot(keys[i]))].push_back(i);
      for (auto& [node, items] : by_node) {
        redisContext* ctx = Context(node);
        if (ctx == nullptr) return false;
        for (size_t i : items) {
          const char* argv[3] = {command, keys[i].data(), values ? (*values)[i].data() : nullptr};
          const size_t len[3] = {strlen(command), keys[i].size(), values ? (*values)[i].size() : 0};
          redisAppendCommandArgv(ctx, values ? 3 : 2, argv, len);
        }
        int done = 0;
        while (!done) {
          if (redisBufferWrite(ctx, &done) != REDIS_OK) return false;
        }
      }
      for (auto& [node, items] : by_node) {
        for (size_t i : items) {
          void* reply = nullptr;
          if (redisGetReply(contexts_[node], &reply) != REDIS_OK) return false;
          const bool ok = on_reply(i, *static_cast<redisReply*>(reply));
          freeReplyObject(reply);
          if (!ok) return false;
        }
      }
    }
    return true;
  }

  // GET of `keys`, `window` at a time, each window's replies read on one thread per node (as the
  // tier reads them, ClusterOptions::parallel_receive): the baseline with the tier's schedule.
  template <typename OnReply>
  bool GetParallel(const std::vector<std::string>& keys, size_t window, OnReply on_reply) {
    for (size_t start = 0; start < keys.size(); start += window) {
      const size_t end = std::min(keys.size(), start + window);
      std::map<NodeAddress, std::vector<size_t>> by_node;
      for (size_t i = start; i < end; ++i)
        by_node[*map_.MasterOf(fleet::KeySlot(keys[i]))].push_back(i);
      std::vector<std::pair<redisContext*, const std::vector<size_t>*>> sent;
      for (auto& [node, items] : by_node) {
        redisContext* ctx = Context(node);
        if (ctx == nullptr) return false;
        for (size_t i : items) {
          const char* argv[2] = {"GET", keys[i].data()};
          const size_t len[2] = {3, keys[i].size()};
          redisAppendCommandArgv(ctx, 2, argv, len);
        }
        int done = 0;
        while (!done) {
          if (redisBufferWrite(ctx, &done) != REDIS_OK) return false;
        }
        sent.emplace_back(ctx, &items);
      }
      std::vector<char> ok(sent.size(), 0);
      auto read_node = [&](size_t k) {
        for (size_t i : *sent[k].second) {
          void* reply = nullptr;
          if (redisGetReply(sent[k].first, &reply) != REDIS_OK) return;
          const bool good = on_reply(i, *static_cast<redisReply*>(reply));
          freeReplyObject(reply);
          if (!good) return;
        }
        ok[k] = 1;
      };
      std::vector<std::thread> readers;
      for (size_t k = 1; k < sent.size(); ++k) readers.emplace_back(read_node, k);
      if (!sent.empty()) read_node(0);
      for (std::thread& reader : readers) reader.join();
      if (std::count(ok.begin(), ok.end(), 1) != static_cast<long>(sent.size())) return false;
    }
    return true;
  }

 private:
  redisContext* Context(const NodeAddress& node) {
    auto it = contexts_.find(node);
    if (it != contexts_.end()) return it->second;
    redisContext* ctx = redisConnect(node.host.c_str(), node.port);
    if (ctx == nullptr || ctx->err) return nullptr;
    if (!connection_.password.empty()) {
      auto* r = static_cast<redisReply*>(
          redisCommand(ctx, "AUTH %s %s", connection_.user.c_str(), connection_.password.c_str()));
      const bool ok = r != nullptr && r->type != REDIS_REPLY_ERROR;
      if (r != nullptr) freeReplyObject(r);
      if (!ok) return nullptr;
    }
    contexts_[node] = ctx;
    return ctx;
  }

  fleet::SlotMap map_;
  fleet::ConnectionOptions connection_;
  std::map<NodeAddress, redisContext*> contexts_;
};

// GetInto's destination: page i's payload into (*out)[i], allocated and touched beforehand.
class BufferWriter final : public fleet::PayloadWriter {
 public:
  explicit BufferWriter(std::vector<std::string>* out) : out_(out) {}
  absl::Status Write(size_t page, uint64_t offset, absl::string_view bytes) override {
    std::string& to = (*out_)[page];
    if (offset + bytes.size() > to.size()) return absl::OutOfRangeError("past the buffer");
    std::memcpy(to.data() + offset, bytes.data(), bytes.size());
    return absl::OkStatus();
  }
  // The tier decrypts straight into the buffers (as the daemon's writer could into host pool
  // pages); nullptr past the end makes it fall back to Write, which refuses.
  char* Destination(size_t page, uint64_t offset, size_t size) override {
    std::string& to = (*out_)[page];
    return offset + size <= to.size() ? to.data() + offset : nullptr;
  }

 private:
  std::vector<std::string>* out_;
};

struct Samples {
  std::vector<double> fleet_put, raw_put, fleet_get, raw_get;  // MB/s of payload
  std::vector<double> raw_get_parallel;  // raw GET with the tier's per-node reading threads
  // Each rep's fleet/raw ratio (its own pair, side by side in the same minute).
  std::vector<double> put_pair_ratio, get_pair_ratio;
  // CPU seconds this (client) process spent in each phase, all reps; and the payload GB moved
  // per phase, all reps. Independent of how loaded the machine is, unlike the MB/s.
  double cpu_fleet_put = 0, cpu_raw_put = 0, cpu_fleet_get = 0, cpu_raw_get = 0;
  double gb_per_phase = 0;
};

std::vector<uint32_t> Tokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> tokens(n);
  for (uint32_t& t : tokens) t = rng() % 128000;
  return tokens;
}

// A field of INFO replication: "master_repl_offset:N", or a replica's "slave0:...,offset=N,...".
int64_t ReplicationOffset(absl::string_view info, absl::string_view field) {
  for (absl::string_view line : absl::StrSplit(info, "\r\n")) {
    if (!absl::ConsumePrefix(&line, field)) continue;
    const size_t at = line.find(field == "slave0" ? "offset=" : ":");
    if (at == absl::string_view::npos) return -1;
    absl::string_view number = line.substr(at + (field == "slave0" ? 7 : 1));
    number = number.substr(0, number.find(','));
    int64_t value = -1;
    return absl::SimpleAtoi(number, &value) ? value : -1;
  }
  return -1;
}

// Waits (up to 30 s) until every master's replica has caught up, so no phase is measured while
// the masters still stream the previous phase's writes to their replicas.
void Settle(fleet::RedisClusterClient& probe) {
  const absl::Time give_up = absl::Now() + absl::Seconds(30);
  while (absl::Now() < give_up) {
    bool settled = true;
    for (const NodeAddress& master : probe.slot_map().Masters()) {
      auto info = probe.ExecuteOn(master, {"INFO", "replication"}, absl::Now() + absl::Seconds(2));
      if (!info.ok()) return;
      const absl::string_view text = fleet::ReplyText(**info);
      const int64_t offset = ReplicationOffset(text, "master_repl_offset");
      if (offset >= 0 && ReplicationOffset(text, "slave0") != offset) settled = false;
    }
    if (settled) return;
    absl::SleepFor(absl::Milliseconds(20));
  }
}

// One repetition: fleet put, raw SET, fleet get, raw GET (fleet and raw swap places on odd reps),
// each after the replicas settled. False when a step fails.
bool RunRep(int rep, const Options& o, fleet::RedisFleetTier& tier, RawCluster& raw,
            fleet::RedisClusterClient& probe, const fleet::FleetScope& scope,
            const std::vector<std::string>& payloads, std::vector<std::string>* received,
            Samples* samples) {
  const std::vector<std::string> names =
      scope.KeyNames(Tokens(size_t(o.pages) * scope.shape.tokens_per_page, 1000 + rep));
  const double mb = double(o.pages) * scope.shape.payload_bytes() / 1e6;
  std::vector<fleet::FleetPage> pages;
  for (size_t i = 0; i < names.size(); ++i) pages.push_back({names[i], payloads[i]});

  // The baseline stores values of the sealed size under its own keys.
  std::vector<std::string> raw_keys, raw_values;
  for (size_t i = 0; i < names.size(); ++i) {
    raw_keys.push_back(absl::StrCat("kvkeep:raw:", names[i].substr(7)));
    raw_values.push_back(payloads[i] + std::string(fleet::kPageValueOverheadBytes, 'x'));
  }
  const fleet::RedisFleetOptions defaults;
  auto fleet_put = [&] {
    Settle(probe);
    const double cpu0 = ProcessCpuSeconds();
    const auto t0 = Clock::now();
    if (!tier.PutAsync(scope, std::move(pages)).ok()) return false;
    if (!tier.Flush(absl::Now() + absl::Seconds(120)).ok()) return false;
    samples->fleet_put.push_back(mb / SecondsSince(t0));
    samples->cpu_fleet_put += ProcessCpuSeconds() - cpu0;
    return tier.Counters().write_errors == 0;
  };
  auto raw_set = [&] {
    Settle(probe);
    const double cpu0 = ProcessCpuSeconds();
    const auto t0 = Clock::now();
    if (!raw.Run("SET", raw_keys, &raw_values, defaults.write_batch_pages,
                 [](size_t, const redisReply& r) { return r.type != REDIS_REPLY_ERROR; })) {
      return false;
    }
    samples->raw_put.push_back(mb / SecondsSince(t0));
    samples->cpu_raw_put += ProcessCpuSeconds() - cpu0;
    return true;
  };
  auto fleet_get = [&] {
    Settle(probe);
    for (std::string& r : *received) std::memset(r.data(), 0, r.size());  // no stale pass
    BufferWriter writer(received);
    const double cpu0 = ProcessCpuSeconds();
    const auto t0 = Clock::now();
    const size_t got = tier.GetInto(scope, names, absl::Now() + absl::Seconds(120), writer);
    samples->fleet_get.push_back(mb / SecondsSince(t0));
    samples->cpu_fleet_get += ProcessCpuSeconds() - cpu0;
    if (got != names.size()) return false;
    for (size_t i = 0; i < got; ++i) {
      if ((*received)[i] != payloads[i]) return false;
    }
    return true;
  };
  auto raw_get = [&] {
    Settle(probe);
    const double cpu0 = ProcessCpuSeconds();
    const auto t0 = Clock::now();
    if (!raw.Run("GET", raw_keys, nullptr, defaults.get_window, [&](size_t i, const redisReply& r) {
          return r.type == REDIS_REPLY_STRING && r.len == raw_values[i].size();
        })) {
      return false;
    }
    samples->raw_get.push_back(mb / SecondsSince(t0));
    samples->cpu_raw_get += ProcessCpuSeconds() - cpu0;
    return true;
  };
  if (!o.loop.empty()) {  // --loop: store once, then only the phase to profile
    if (!fleet_put() || !raw_set()) return false;
    Settle(probe);
    std::fprintf(stderr, "fleet: --loop %s starts\n", o.loop.c_str());
    const auto t0 = Clock::now();
    const double cpu0 = ProcessCpuSeconds();
    int loops = 0;
    if (o.loop == "both") {  // fleet and raw GET alternated: the median of the pairs' ratios
      std::vector<double> ratios;
      for (; SecondsSince(t0) < o.loop_s; ++loops) {
        if (!fleet_get() || !raw_get()) return false;
        ratios.push_back(samples->fleet_get.back() / samples->raw_get.back());
      }
      const Stats r = Summarise(ratios), f = Summarise(samples->fleet_get),
                  g = Summarise(samples->raw_get);
      std::printf("--loop both: %d pairs, get ratio median %.3f [%.3f, %.3f]; fleet %.1f MB/s, "
                  "raw %.1f MB/s (medians); ratio of medians %.3f\n",
                  loops, r.median, r.min, r.max, f.median, g.median, f.median / g.median);
      return true;
    }
    for (; SecondsSince(t0) < o.loop_s; ++loops) {
      if (!(o.loop == "fleet_get" ? fleet_get() : raw_get())) return false;
    }
    const std::vector<double>& mbps = o.loop == "fleet_get" ? samples->fleet_get : samples->raw_get;
    const Stats s = Summarise(mbps);
    std::printf("--loop %s: %d gets of %d pages, MB/s median %.1f [%.1f, %.1f], CPU s/GB %.2f\n",
                o.loop.c_str(), loops, o.pages, s.median, s.min, s.max,
                (ProcessCpuSeconds() - cpu0) / (loops * mb / 1e3));
    return true;
  }
  auto raw_get_parallel = [&] {
    Settle(probe);
    const auto t0 = Clock::now();
    if (!raw.GetParallel(raw_keys, defaults.get_window, [&](size_t i, const redisReply& r) {
          return r.type == REDIS_REPLY_STRING && r.len == raw_values[i].size();
        })) {
      return false;
    }
    samples->raw_get_parallel.push_back(mb / SecondsSince(t0));
    return true;
  };
  // Untimed: one GET of every value just stored, fleet's and raw's alike, before the timed GETs.
  // Redis serves a value written moments ago slower the first time it is read (measured: the
  // first timed GET of a rep ran at 0.4-0.7 of the second, whether fleet or raw went first), so
  // without this pass the ratio measures the order, not kvkeep.
  auto first_read = [&] {
    if (!o.first_read) return true;
    Settle(probe);
    auto any_string = [](size_t, const redisReply& r) { return r.type == REDIS_REPLY_STRING; };
    return raw.Run("GET", raw_keys, nullptr, defaults.get_window, any_string) &&
           raw.Run("GET", names, nullptr, defaults.get_window, any_string);
  };
  samples->gb_per_phase += mb / 1e3;
  // The parallel raw GET comes last, so the four phases run as they always did.
  const bool done =
      rep % 2 == 0
          ? fleet_put() && raw_set() && first_read() && fleet_get() && raw_get() &&
                raw_get_parallel()
          : raw_set() && fleet_put() && first_read() && raw_get() && fleet_get() &&
                raw_get_parallel();
  if (!done) return false;
  samples->put_pair_ratio.push_back(samples->fleet_put.back() / samples->raw_put.back());
  samples->get_pair_ratio.push_back(samples->fleet_get.back() / samples->raw_get.back());
  return true;
}

void Report(const Options& o, const fleet::FleetScope& scope, const Samples& s) {
  const Stats fp = Summarise(s.fleet_put), rp = Summarise(s.raw_put);
  const Stats fg = Summarise(s.fleet_get), rg = Summarise(s.raw_get);
  const double put_ratio = rp.median > 0 ? fp.median / rp.median : 0;
  const double get_ratio = rg.median > 0 ? fg.median / rg.median : 0;
  const Stats rgp = Summarise(s.raw_get_parallel);
  const double get_ratio_parallel = rgp.median > 0 ? fg.median / rgp.median : 0;
  const Stats put_paired = Summarise(s.put_pair_ratio), get_paired = Summarise(s.get_pair_ratio);
  if (o.json) {
    auto j = [](const Stats& x) {
      return absl::StrCat("{\"median\":", x.median, ",\"min\":", x.min, ",\"max\":", x.max, "}");
    };
    std::printf(
        "{\"bench\":\"fleet\",\"layout\":\"%s\",\"page_bytes\":%llu,\"pages\":%d,\"reps\":%d,"
        "\"fleet_put_mbps\":%s,\"raw_set_mbps\":%s,\"fleet_get_mbps\":%s,\"raw_get_mbps\":%s,"
        "\"put_ratio\":%.3f,\"get_ratio\":%.3f,\"raw_get_parallel_mbps\":%s,"
        "\"get_ratio_vs_parallel_raw\":%.3f,\"put_ratio_paired\":%s,\"get_ratio_paired\":%s,"
        "\"warmup_reps\":%d,\"first_read\":%s}\n",
        o.layout.c_str(), static_cast<unsigned long long>(scope.shape.payload_bytes()), o.pages,
        o.reps, j(fp).c_str(), j(rp).c_str(), j(fg).c_str(), j(rg).c_str(), put_ratio, get_ratio,
        j(rgp).c_str(), get_ratio_parallel, j(put_paired).c_str(), j(get_paired).c_str(),
        o.warmup_reps, o.first_read ? "true" : "false");
    return;
  }
  std::printf("kvkeep-bench fleet: %d pages x %.2f MiB (%s), %d reps (+%d warm-up), MB/s of "
              "payload%s\n",
              o.pages, scope.shape.payload_bytes() / 1048576.0, o.layout.c_str(), o.reps,
              o.warmup_reps, o.first_read ? "" : ", no first read");
  std::printf("%-28s %10s %10s %10s\n", "", "median", "min", "max");
  auto row = [](const char* name, const Stats& x) {
    std::printf("%-28s %10.1f %10.1f %10.1f\n", name, x.median, x.min, x.max);
  };
  row("fleet put (seal + SET)", fp);
  row("raw hiredis SET", rp);
  row("fleet get (GET + verify)", fg);
  row("raw hiredis GET", rg);
  row("raw GET, nodes in parallel", rgp);
  std::printf("put ratio fleet/raw: %.2f   get ratio fleet/raw: %.2f   (goal >= 0.8)\n", put_ratio,
              get_ratio);
  std::printf("per-rep ratios fleet/raw, median [min, max]: put %.2f [%.2f, %.2f]   get %.2f "
              "[%.2f, %.2f]\n",
              put_paired.median, put_paired.min, put_paired.max, get_paired.median, get_paired.min,
              get_paired.max);
  std::printf("get ratio fleet/raw with nodes read in parallel (the tier's schedule): %.2f\n",
              get_ratio_parallel);
  if (s.gb_per_phase > 0) {
    const double gb = s.gb_per_phase;
    std::printf(
        "bench process CPU s per GB of payload (all its threads; redis not counted): fleet put "
        "%.2f, raw SET %.2f, fleet get %.2f, raw GET %.2f\n",
        s.cpu_fleet_put / gb, s.cpu_raw_put / gb, s.cpu_fleet_get / gb, s.cpu_raw_get / gb);
  }
}

// --sequence: a sequence from the fleet vs written fresh vs recomputed (assumed rate).
int RunSequence(const Options& o, const fleet::ConnectionOptions& connection) {
  FleetSeqOptions so;
  so.kvkeepd = o.kvkeepd;
  so.seeds = o.seeds;
  so.user = connection.user;
  so.password = connection.password;
  so.tokens = static_cast<uint32_t>(o.tokens);
  so.reps = o.seq_reps;
  so.smoke = o.smoke;
  absl::StatusOr<FleetSeqSamples> s = MeasureFleetSequence(so);
  if (!s.ok()) {
    std::fprintf(stderr, "fleet --sequence: %s\n", s.status().ToString().c_str());
    return 1;
  }
  const Stats fleet = Summarise(s->from_fleet), fresh = Summarise(s->fresh_write);
  const double recompute = o.tokens / o.prefill_tok_s;
  std::printf("kvkeep-bench fleet --sequence: %d tokens (%.1f MiB of KV, %s), %d reps, seconds\n",
              o.tokens, s->bytes / 1048576.0, o.smoke ? "smoke layout" : "llama3-8b layout",
              o.seq_reps);
  std::printf("%-44s %8s %8s %8s\n", "", "median", "min", "max");
  std::printf("%-44s %8.3f %8.3f %8.3f\n", "B: CreateSequenceWithPrefix from the fleet",
              fleet.median, fleet.min, fleet.max);
  std::printf("%-44s %8.3f %8.3f %8.3f\n", "B: same bytes written fresh (WriteInPlace)",
              fresh.median, fresh.min, fresh.max);
  std::printf("%-44s %8.3f   (ASSUMED %.0f tokens/s, not measured)\n", "recompute (prefill)",
              recompute, o.prefill_tok_s);
  std::printf("%-44s %8.3f   (warm-up rep: fresh pool pages)\n", "cold: from the fleet",
              s->cold_from_fleet);
  std::printf("%-44s %8.3f   (warm-up rep: fresh pool pages)\n", "cold: written fresh",
              s->cold_fresh_write);
  std::printf("fleet/fresh: %.2f   fleet/recompute: %.2f\n",
              fresh.median > 0 ? fleet.median / fresh.median : 0, fleet.median / recompute);
  return 0;
}

}  // namespace

int RunFleetBench(int argc, char** argv) {
  Options o;
  if (const int rc = ParseFlags(argc, argv, &o); rc >= 0) return rc;
  std::unique_ptr<LocalCluster> local;
  fleet::ConnectionOptions connection;
  if (o.seeds.empty()) {
    std::fprintf(stderr, "fleet: starting a local 6-node Redis Cluster (%s)\n", o.script.c_str());
    absl::StatusOr<std::unique_ptr<LocalCluster>> started = LocalCluster::Start(o);
    if (!started.ok()) {
      std::fprintf(stderr, "fleet: %s\n", started.status().ToString().c_str());
      return 1;
    }
    local = *std::move(started);
    o.seeds = local->seeds;
    connection.user = "kvkeep";
    connection.password = local->password;
  } else {
    connection.user = o.user;
    if (!o.password_file.empty()) connection.password = ReadFile(o.password_file);
  }
  absl::StatusOr<std::vector<NodeAddress>> seeds = fleet::ParseSeedList(o.seeds);
  if (!seeds.ok()) {
    std::fprintf(stderr, "fleet: %s\n", seeds.status().ToString().c_str());
    return 2;
  }
  connection.command_timeout = absl::Seconds(10);
  fleet::RedisFleetOptions options;
  options.cluster.seeds = *seeds;
  options.cluster.connection = connection;
  options.max_queue_bytes = uint64_t{4} << 30;
  options.write_timeout = absl::Seconds(60);
  options.open_threads = static_cast<size_t>(o.open_threads);
  options.read_ahead = o.read_ahead;
  options.open_on_receiver = o.open_on_receiver;
  options.cluster.parallel_receive = !o.serial_receive;
  absl::StatusOr<std::unique_ptr<fleet::RedisFleetTier>> tier =
      fleet::RedisFleetTier::Create(options);
  fleet::RedisClusterClient probe(options.cluster);
  const absl::Status loaded =
      tier.ok() ? probe.Refresh(absl::Now() + absl::Seconds(5)) : tier.status();
  if (!loaded.ok()) {
    std::fprintf(stderr, "fleet: %s\n", loaded.ToString().c_str());
    return 1;
  }
  RawCluster raw(probe.slot_map(), connection);
  absl::StatusOr<fleet::FleetScope> scope =
      fleet::FleetScope::Make("bench", "kvkeep-bench fleet group secret", BenchLayout(o.layout));
  if (!scope.ok()) return 1;
  std::vector<std::string> payloads(o.pages);
  std::mt19937_64 rng(42);
  for (std::string& p : payloads) {
    p.resize(scope->shape.payload_bytes());
    for (char& c : p) c = static_cast<char>(rng());
  }
  std::vector<std::string> received(o.pages, std::string(scope->shape.payload_bytes(), '\0'));
  Samples samples, warmup;
  const int warmups = o.loop.empty() ? o.warmup_reps : 0;
  for (int rep = -warmups; rep < o.reps; ++rep) {
    if (rep < 0) {
      std::fprintf(stderr, "fleet: warm-up rep %d/%d (not counted)\n", rep + warmups + 1, warmups);
    } else {
      std::fprintf(stderr, "fleet: rep %d/%d\n", rep + 1, o.reps);
    }
    // Warm-up reps use keys of their own (negative rep numbers) and are not counted.
    if (!RunRep(rep, o, **tier, raw, probe, *scope, payloads, &received,
                rep < 0 ? &warmup : &samples)) {
      std::fprintf(stderr, "fleet: %s rep %d failed (a call failed or a value was not bit-exact)\n",
                   rep < 0 ? "warm-up" : "counted", rep < 0 ? rep + warmups + 1 : rep + 1);
      return 1;
    }
    if (!o.loop.empty()) return 0;
  }
  Report(o, *scope, samples);
  if (o.sequence) return RunSequence(o, connection);
  return 0;
}

}  // namespace kvkeep::bench
