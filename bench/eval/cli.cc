#include "bench/eval/cli.h"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/eval/pool_scenario.h"
#include "bench/eval/prefix_stats.h"
#include "bench/eval/report.h"
#include "bench/eval/runner.h"
#include "bench/eval/synth.h"
#include "common/status_macros.h"

namespace kvkeep::eval {
namespace {

constexpr char kAllPolicies[] =
    "streaming,random,knorm,tova,h2o,observed,snapkv,expected,capkv,capkv-dot,capkv-greedy,"
    "laprox,qsketch,qsketch-post,oracle,oracle-out";
constexpr char kDefaultKeep[] = "0.02,0.05,0.1,0.2,0.5";

std::string Usage() {
  return absl::StrCat(R"usage(kvkeep-eval: how much does evicting KV-cache tokens hurt attention?

Usage:
  kvkeep-eval synth  --profile NAME|all --out DIR [--seed N] [sizes...]
  kvkeep-eval run    --data DIR [--policy P,...] [--allocation A,...] [--keep R,...] [--json]
  kvkeep-eval scores --data DIR --layer L --policy P --out FILE.npy
  kvkeep-eval pool   [--sequences N] [--budget F] [--seeds S,...] [--layers L] [--tokens-per-page T]
                     [--loss-power P]
                     [--quiet]
  kvkeep-eval help   (also --help or -h, anywhere on the line)

synth: writes a synthetic trace (meta.json + L{l}.{q,qpre,k,v,wo}.npy) carrying the attention
  properties of real models, and what a worker would send for qsketch (L{l}.sketch.npy and
  L{l}.sketch_weights.npy: k-means of the prefix's pre-RoPE queries, K = 32; `run` uses it): sinks with near-zero values, sparse middle layers, local heads,
  retrieval heads with needles, neighbour-correlated values, RoPE theta 5e5. Profiles:
)usage",
                      [] {
                        std::string s;
                        for (const std::string& p : SynthProfileNames()) {
                          absl::StrAppend(&s, "    ", p, std::string(10 - p.size(), ' '),
                                          SynthProfileDescription(p), "\n");
                        }
                        return s;
                      }(),
                      R"usage(  --profile all writes every profile to DIR/<profile>/.
  Sizes (defaults): --layers 4 --q-heads 8 --kv-heads 2 --head-dim 64 --prefix 2048 --future 128
  --seed 1, --dtype f32|f16 (default f32), --no-wo (skip the W_O files).

run: the first `prefix` positions are the cache, the rest are held-out future queries. For every
  policy x allocation x keep ratio: the online statistics (observation window of 32 queries,
  pre-RoPE query moments without the 4 sinks, causal attention mass of every prefix query, the
  k-means query sketch of every prefix query, pre- and post-RoPE, common/query_sketch) come
  from the prefix only; the kept set is scored against the full-cache attention of the future
  queries: relative output error (rel_err; rel_err_decode: each future query also attends the
  generated positions before it exactly, as during decoding; also after W_O when given), retained attention mass, needle
  recall (needles from meta.json that a future query targets), oracle recall (overlap with the
  true top-k by future attention). The `oracle` policy keeps what the future queries actually
  attend to (not available online): the most attention mass any policy could keep with that
  budget. `oracle-out` keeps the tokens whose eviction alone would move the future outputs most
  (values decide rel_err, not just mass). Neither oracle is a lower bound on rel_err.
  --policy      scorers (default: all) )usage",
                      kAllPolicies, R"usage(
  --allocation  uniform, ada, pyramid, global, sequence (default: uniform)
  --sketch-k    centroids per query head of the query sketch (qsketch*; default 32)
  --sketch-window-share S  variant: the 32 window queries join the sketch as their own
                centroids carrying share S of its weight (default 0 = off)
  --keep        keep ratios in (0, 1], sinks and window included (default: )usage",
                      kDefaultKeep, R"usage()
  --json        one JSON object {"results": [...], ...} on stdout instead of the table
  --json-out F  also write that JSON object to file F (keeps the table on stdout)
  --quiet       no progress lines on stderr

scores: per-token scores of one layer's prefix, float32 [kv_heads, prefix] (policy `oracle`:
  the attention mass the future queries pay; `oracle-out`: the output change of evicting each token alone).

pool: several synthetic sequences (profiles and lengths cycle) share one pool holding --budget
  (default 0.4) of their cached tokens; compares capacity-aware global page eviction (the daemon's
  --pressure_policy=capacity), its per-token variant, per-sequence uniform budgets (pages, and
  capkv tokens), and LRU whole-sequence spilling (spilled = lost, or restored with the bytes read
  back), and the daemon's --pressure_policy=compress (a pool-wide plan of pages per sequence by
  marginal loss, then each sequence's own capkv selection; --loss-power P, default 4, is its p).
  Relative output error on every sequence's held-out future queries; defaults --sequences 8
  --seeds 1,2,3 --layers 2 --tokens-per-page 16 (docs/quality.md, "Capacity across sequences");
  --quiet: no progress lines on stderr.

Examples:
  kvkeep-eval synth --profile mixed --out /tmp/kv/mixed
  kvkeep-eval run --data /tmp/kv/mixed --policy snapkv,capkv,laprox,oracle --keep 0.05,0.2
  kvkeep-eval run --data /tmp/kv/mixed --policy h2o,snapkv --allocation uniform,ada --json
  kvkeep-eval scores --data /tmp/kv/mixed --layer 1 --policy capkv --out /tmp/capkv_l1.npy
  python3 -c "import numpy as np; print(np.load('/tmp/capkv_l1.npy').shape)"

Your own tensors: a folder with meta.json {"layers", "q_heads", "kv_heads", "head_dim",
"prefix", "rope_theta", "rope_style": "half"|"interleaved", optional "needles": [{"layer",
"kv_head", "position"}]} and per layer L{l}.q.npy [q_heads, T, d] (post-RoPE), L{l}.k.npy and
L{l}.v.npy [kv_heads, T, d] (keys post-RoPE), optional L{l}.qpre.npy (pre-RoPE queries) and
L{l}.wo.npy [hidden, q_heads*d]. float16 or float32, little-endian, C order.

Exit status: 0 ok, 2 bad arguments or input files, 1 other errors.
)usage");
}

// Flags of one subcommand: --name value, --name=value, or a bare --switch.
struct Flags {
  std::map<std::string, std::string> values;
  std::set<std::string> switches;
};

absl::StatusOr<Flags> ParseFlags(const std::vector<std::string>& args, size_t first,
                                 const std::set<std::string>& with_value,
                                 const std::set<std::string>& bare) {
  Flags f;
  for (size_t i = first; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a.rfind("--", 0) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument \"", a, "\""));
    }
    std::string name = a.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    if (bare.count(name)) {
      if (inline_value) return absl::InvalidArgumentError(absl::StrCat("--", name, " takes no value"));
      f.switches.insert(name);
    } else if (with_value.count(name)) {
      if (!inline_value) {
        if (i + 1 >= args.size()) {
          return absl::InvalidArgumentError(absl::StrCat("--", name, " needs a value"));
        }
        value = args[++i];
      }
      f.values[name] = value;
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    }
  }
  return f;
}

absl::StatusOr<std::string> Required(const Flags& f, const std::string& name) {
  auto it = f.values.find(name);
  if (it == f.values.end() || it->second.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " is required"));
  }
  return it->second;
}

template <typename T>
absl::Status IntFlag(const Flags& f, const std::string& name, T* out) {
  auto it = f.values.find(name);
  if (it == f.values.end()) return absl::OkStatus();
  int64_t v;
  if (!absl::SimpleAtoi(it->second, &v)) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, ": \"", it->second,
                                                   "\" is not an integer"));
  }
  *out = static_cast<T>(v);
  return absl::OkStatus();
}

std::vector<std::string> List(const std::string& s) {
  return absl::StrSplit(s, ',', absl::SkipWhitespace());
}

absl::Status Synth(const std::vector<std::string>& args, std::ostream& out) {
  ASSIGN_OR_RETURN(Flags f, ParseFlags(args, 1,
                                       {"profile", "out", "seed", "layers", "q-heads", "kv-heads",
                                        "head-dim", "prefix", "future", "dtype"},
                                       {"no-wo"}));
  ASSIGN_OR_RETURN(std::string profile, Required(f, "profile"));
  ASSIGN_OR_RETURN(std::string dir, Required(f, "out"));
  SynthOptions o;
  RETURN_IF_ERROR(IntFlag(f, "seed", &o.seed));
  RETURN_IF_ERROR(IntFlag(f, "layers", &o.layers));
  RETURN_IF_ERROR(IntFlag(f, "q-heads", &o.q_heads));
  RETURN_IF_ERROR(IntFlag(f, "kv-heads", &o.kv_heads));
  RETURN_IF_ERROR(IntFlag(f, "head-dim", &o.head_dim));
  RETURN_IF_ERROR(IntFlag(f, "prefix", &o.prefix));
  RETURN_IF_ERROR(IntFlag(f, "future", &o.future));
  o.with_wo = !f.switches.count("no-wo");
  NpyDtype dtype = NpyDtype::kFloat32;
  if (auto it = f.values.find("dtype"); it != f.values.end()) {
    if (it->second == "f16") {
      dtype = NpyDtype::kFloat16;
    } else if (it->second != "f32") {
      return absl::InvalidArgumentError("--dtype must be f16 or f32");
    }
  }
  std::vector<std::pair<std::string, std::string>> jobs;  // profile, folder
  if (profile == "all") {
    for (const std::string& p : SynthProfileNames()) {
      jobs.emplace_back(p, (std::filesystem::path(dir) / p).string());
    }
  } else {
    jobs.emplace_back(profile, dir);
  }
  for (const auto& [name, folder] : jobs) {
    o.profile = name;
    ASSIGN_OR_RETURN(SynthDataset ds, GenerateSynth(o));
    // What a worker would send with the prefix: the qsketch query sketch (default K).
    AttachWorkerSketches(ds.meta, PrefixStatsOptions{}, &ds.layers);
    RETURN_IF_ERROR(WriteSynth(ds, folder, dtype));
    out << "wrote " << folder << " (profile " << name << ": " << o.layers << " layers, "
        << o.q_heads << "/" << o.kv_heads << " heads, head_dim " << o.head_dim << ", prefix "
        << o.prefix << " + " << o.future << " future queries, " << ds.meta.needles.size()
        << " needles)\n";
  }
  return absl::OkStatus();
}

absl::Status Run(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  ASSIGN_OR_RETURN(Flags f, ParseFlags(args, 1,
                                       {"data", "policy", "allocation", "keep", "json-out",
                                        "sketch-k", "sketch-window-share"},
                                       {"json", "quiet"}));
  RunOptions o;
  RETURN_IF_ERROR(IntFlag(f, "sketch-k", &o.prefix.sketch_k));
  if (auto it = f.values.find("sketch-window-share"); it != f.values.end()) {
    if (!absl::SimpleAtod(it->second, &o.prefix.sketch_window_share) ||
        !(o.prefix.sketch_window_share >= 0 && o.prefix.sketch_window_share < 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat("--sketch-window-share: \"", it->second, "\" is not in [0, 1)"));
    }
  }
  ASSIGN_OR_RETURN(o.data, Required(f, "data"));
  o.policies = List(f.values.count("policy") ? f.values["policy"] : kAllPolicies);
  o.allocations = List(f.values.count("allocation") ? f.values["allocation"] : "uniform");
  for (const std::string& r : List(f.values.count("keep") ? f.values["keep"] : kDefaultKeep)) {
    double v;
    if (!absl::SimpleAtod(r, &v)) {
      return absl::InvalidArgumentError(absl::StrCat("--keep: \"", r, "\" is not a number"));
    }
    o.keep_ratios.push_back(v);
  }
  ASSIGN_OR_RETURN(RunReport report, RunEval(o, f.switches.count("quiet") ? nullptr : &err));
  if (f.switches.count("json")) {
    out << FormatJson(report) << "\n";
  } else {
    out << FormatTable(report);
  }
  if (auto it = f.values.find("json-out"); it != f.values.end()) {
    std::ofstream file(it->second, std::ios::trunc);
    file << FormatJson(report) << "\n";
    file.close();
    if (!file) return absl::InternalError(absl::StrCat(it->second, ": cannot write"));
  }
  return absl::OkStatus();
}

absl::Status Scores(const std::vector<std::string>& args, std::ostream& out) {
  ASSIGN_OR_RETURN(Flags f, ParseFlags(args, 1, {"data", "layer", "policy", "out"}, {}));
  ASSIGN_OR_RETURN(std::string data, Required(f, "data"));
  ASSIGN_OR_RETURN(std::string policy, Required(f, "policy"));
  ASSIGN_OR_RETURN(std::string path, Required(f, "out"));
  RETURN_IF_ERROR(Required(f, "layer").status());
  int layer = 0;
  RETURN_IF_ERROR(IntFlag(f, "layer", &layer));
  ASSIGN_OR_RETURN(NpyArray scores, ScorePrefix(data, layer, policy, PrefixStatsOptions{}));
  RETURN_IF_ERROR(WriteNpy(path, scores, NpyDtype::kFloat32));
  out << "wrote " << path << " [" << scores.shape[0] << ", " << scores.shape[1] << "]\n";
  return absl::OkStatus();
}

absl::Status Pool(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  ASSIGN_OR_RETURN(Flags f, ParseFlags(args, 1,
                                       {"sequences", "budget", "seeds", "layers",
                                        "tokens-per-page", "loss-power"},
                                       {"quiet"}));
  PoolScenarioOptions o;
  RETURN_IF_ERROR(IntFlag(f, "sequences", &o.sequences));
  RETURN_IF_ERROR(IntFlag(f, "layers", &o.layers));
  RETURN_IF_ERROR(IntFlag(f, "tokens-per-page", &o.tokens_per_page));
  if (auto it = f.values.find("budget"); it != f.values.end()) {
    if (!absl::SimpleAtod(it->second, &o.budget)) {
      return absl::InvalidArgumentError(absl::StrCat("--budget: \"", it->second,
                                                     "\" is not a number"));
    }
  }
  if (auto it = f.values.find("loss-power"); it != f.values.end()) {
    if (!absl::SimpleAtod(it->second, &o.compress_loss_power) || !(o.compress_loss_power >= 1)) {
      return absl::InvalidArgumentError(absl::StrCat("--loss-power: \"", it->second,
                                                     "\" is not a number >= 1"));
    }
  }
  if (auto it = f.values.find("seeds"); it != f.values.end()) {
    o.seeds.clear();
    for (const std::string& s : List(it->second)) {
      uint64_t v;
      if (!absl::SimpleAtoi(s, &v)) {
        return absl::InvalidArgumentError(absl::StrCat("--seeds: \"", s, "\" is not an integer"));
      }
      o.seeds.push_back(v);
    }
  }
  ASSIGN_OR_RETURN(PoolScenarioReport report,
                   RunPoolScenario(o, f.switches.count("quiet") ? nullptr : &err));
  out << FormatPoolTable(report);
  return absl::OkStatus();
}

}  // namespace

int RunCli(const std::vector<std::string>& args, std::ostream& out, std::ostream& err) {
  if (args.empty()) {
    err << Usage();
    return 2;
  }
  const std::string& cmd = args[0];
  if (cmd == "help" || cmd == "--help" || cmd == "-h") {
    out << Usage();
    return 0;
  }
  for (const std::string& a : args) {
    if (a == "--help" || a == "-h") {
      out << Usage();
      return 0;
    }
  }
  absl::Status status;
  if (cmd == "synth") {
    status = Synth(args, out);
  } else if (cmd == "run") {
    status = Run(args, out, err);
  } else if (cmd == "scores") {
    status = Scores(args, out);
  } else if (cmd == "pool") {
    status = Pool(args, out, err);
  } else {
    status = absl::InvalidArgumentError(absl::StrCat(cmd.rfind('-', 0) == 0 ? "unknown flag \""
                                                                            : "unknown command \"",
                                                     cmd, "\" (synth, run, scores, pool, help)"));
  }
  if (status.ok()) return 0;
  err << "kvkeep-eval " << cmd << ": " << status.message() << "\n";
  const bool user_error = status.code() == absl::StatusCode::kInvalidArgument ||
                          status.code() == absl::StatusCode::kNotFound ||
                          status.code() == absl::StatusCode::kFailedPrecondition;
  if (user_error) err << "Run `kvkeep-eval --help` for usage and examples.\n";
  return user_error ? 2 : 1;
}

}  // namespace kvkeep::eval
