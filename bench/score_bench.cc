#include "bench/score_bench.h"

#include <cblas.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/rep_stats.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"
#include "service/eviction/scorers.h"
#include "service/eviction/selection.h"

namespace kvkeep::bench {
namespace {

using namespace ::kvkeep::eviction;  // NOLINT: a benchmark driver over this one library
using Clock = std::chrono::steady_clock;

struct Shape {
  std::string name;
  int layers, q_heads, kv_heads, head_dim;
  double rope_theta;
};

const Shape kShapes[] = {
    {"small", 4, 8, 2, 64, 10000.0},
    {"llama3-8b", 32, 32, 8, 128, 500000.0},
    {"qwen3-8b", 36, 32, 8, 128, 1000000.0},
};

struct Options {
  Shape shape = kShapes[0];
  std::vector<int> ctx = {1024, 4096};
  int reps = 3;
  double keep = 0.1;
  int layers = 0;  // 0 = shape's
  bool json = false;
  std::vector<ScorerKind> scorers;
};

template <typename Fn>
double Seconds(Fn fn) {
  const auto t0 = Clock::now();
  fn();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const size_t comma = s.find(',', start);
    const size_t end = comma == std::string::npos ? s.size() : comma;
    if (end > start) out.push_back(s.substr(start, end - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

constexpr char kUsage[] = R"(kvkeep-bench score - scorer throughput vs the bounds of this machine

Usage: kvkeep-bench score [flags]

Scores one layer of random keys, values and statistics with every scorer and compares the time
with the copy-bandwidth and sgemm bounds measured in the same run; then a whole-sequence
Compress-equivalent (every layer scored, one SelectTokens).

Flags:
  --shape small|llama3-8b|qwen3-8b  model shape (default small: 4 layers, 8/2 heads, d 64)
  --ctx N[,N...]        cached tokens per KV head, each in [8, 2^24] (default 1024,4096)
  --reps N              repetitions, >= 1 (default 3)
  --keep R              kept fraction for the compress timing, (0, 1] (default 0.1)
  --scorers a[,b...]    scorers to time (default: all)
  --layers N            layers of the compress timing, >= 1 (default: the shape's)
  --json                JSON on stdout instead of the table
  --help, -h            this help

Exit status: 0 done, 1 a scorer failed, 2 usage error.
)";

// Parses argv[1...] (argv[0] is the subcommand) into `o`: -1 to go on, else the exit code (0
// after --help, 2 after a usage error, with the reason on stderr).
int Parse(int argc, char** argv, Options* o) {
  auto bad = [](const std::string& why) {
    std::fprintf(stderr, "kvkeep-bench score: %s (see kvkeep-bench score --help)\n", why.c_str());
    return 2;
  };
  auto positive = [](const std::string& v, int* out) {
    char* end = nullptr;
    const long n = std::strtol(v.c_str(), &end, 10);
    if (v.empty() || *end != '\0' || n < 1 || n > (1 << 20)) return false;
    *out = static_cast<int>(n);
    return true;
  };
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    const std::string name = flag.substr(0, flag.find('='));
    if (name == "--help" || name == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    if (name == "--json") {
      o->json = true;
      continue;
    }
    static const char* const kValued[] = {"--shape", "--ctx",     "--reps",
                                          "--keep",  "--scorers", "--layers"};
    if (std::none_of(std::begin(kValued), std::end(kValued),
                     [&](const char* k) { return name == k; })) {
      return bad("unknown flag " + flag);
    }
    std::string v;
    if (const size_t eq = flag.find('='); eq != std::string::npos) {
      v = flag.substr(eq + 1);
    } else if (i + 1 < argc) {
      v = argv[++i];
    } else {
      return bad("flag " + name + " needs a value");
    }
    if (name == "--shape") {
      bool found = false;
      for (const Shape& s : kShapes) {
        if (s.name == v) {
          o->shape = s;
          found = true;
        }
      }
      if (!found) return bad("unknown shape " + v + " (small, llama3-8b, qwen3-8b)");
    } else if (name == "--ctx") {
      o->ctx.clear();
      for (const std::string& c : Split(v)) {
        const long n = std::strtol(c.c_str(), nullptr, 10);
        if (n < 8 || n > (1 << 24)) return bad("bad --ctx entry " + c);
        o->ctx.push_back(static_cast<int>(n));
      }
      if (o->ctx.empty()) return bad("--ctx needs at least one length");
    } else if (name == "--reps") {
      if (!positive(v, &o->reps)) return bad("bad value for --reps: \"" + v + "\"");
    } else if (name == "--keep") {
      o->keep = std::atof(v.c_str());
      if (!(o->keep > 0 && o->keep <= 1)) return bad("--keep must be in (0, 1]");
    } else if (name == "--layers") {
      if (!positive(v, &o->layers)) return bad("bad value for --layers: \"" + v + "\"");
    } else {  // --scorers
      for (const std::string& sc : Split(v)) {
        absl::StatusOr<ScorerKind> k = ParseScorer(sc);
        if (!k.ok()) return bad(std::string(k.status().message()));
        o->scorers.push_back(*k);
      }
    }
  }
  if (o->scorers.empty()) {
    for (int k = 0; k <= static_cast<int>(ScorerKind::kQSketchPost); ++k) {
      o->scorers.push_back(static_cast<ScorerKind>(k));
    }
  }
  if (o->layers == 0) o->layers = o->shape.layers;
  return -1;
}

// Query-sketch centroids per q head in the synthetic layers (qsketch*: the default K).
constexpr int kBenchSketchK = 32;

// A pre-RoPE query sketch of kBenchSketchK centroids per q head, weights in [1, 64] (qsketch*;
// the run loop flips sketch_post_rope for qsketch-post).
void AddSketch(const Shape& s, std::mt19937& rng, LayerInputs& in) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  in.sketch_k = kBenchSketchK;
  in.sketch_centroids.resize(static_cast<size_t>(s.q_heads) * kBenchSketchK * s.head_dim);
  for (float& x : in.sketch_centroids) x = normal(rng);
  in.sketch_weights.resize(static_cast<size_t>(s.q_heads) * kBenchSketchK);
  for (float& w : in.sketch_weights) w = static_cast<float>(1 + rng() % 64);
}

// One layer of synthetic inputs; the tensors are owned here and borrowed by `in`.
struct LayerData {
  std::vector<float> keys, values;  // [kv_heads][n][d]
  LayerInputs in;
};

LayerData MakeLayer(const Shape& s, int n, int window, uint32_t seed) {
  LayerData L;
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t per_head = static_cast<size_t>(n) * s.head_dim;
  L.keys.resize(per_head * s.kv_heads);
  L.values.resize(per_head * s.kv_heads);
  for (float& x : L.keys) x = normal(rng);
  for (float& x : L.values) x = normal(rng);
  LayerInputs& in = L.in;
  in.q_heads = s.q_heads;
  in.kv_heads = s.kv_heads;
  in.head_dim = s.head_dim;
  in.rope.theta = s.rope_theta;
  in.next_position = n;
  for (int g = 0; g < s.kv_heads; ++g) {
    in.heads.push_back(HeadKV{n, L.keys.data() + g * per_head, L.values.data() + g * per_head,
                              nullptr});
  }
  in.window = window;
  in.window_queries.resize(static_cast<size_t>(s.q_heads) * window * s.head_dim);
  for (float& x : in.window_queries) x = normal(rng);
  in.query_sum.resize(static_cast<size_t>(s.q_heads) * s.head_dim);
  in.query_sq_sum.resize(in.query_sum.size());
  in.query_count = 100;
  for (size_t i = 0; i < in.query_sum.size(); ++i) {
    const double m = normal(rng);
    in.query_sum[i] = m * 100;
    in.query_sq_sum[i] = (m * m + 1.0) * 100;
  }
  in.attention_mass.assign(s.q_heads, std::vector<float>(n));
  for (auto& row : in.attention_mass) {
    for (float& x : row) x = std::fabs(normal(rng));
  }
  AddSketch(s, rng, in);
  return L;
}

// Bytes a scorer must read at least once per layer (keys and/or values and statistics).
double BytesRead(ScorerKind k, const Shape& s, int n, int window) {
  const double kv = static_cast<double>(n) * s.head_dim * sizeof(float) * s.kv_heads;
  const double mass = static_cast<double>(n) * sizeof(float) * s.q_heads;
  const double queries = static_cast<double>(window) * s.head_dim * sizeof(float) * s.q_heads;
  switch (k) {
    case ScorerKind::kKnorm:
      return kv;
    case ScorerKind::kTova:
    case ScorerKind::kSnapKv:
      return kv + queries;
    case ScorerKind::kH2o:
    case ScorerKind::kObserved:
      return mass;
    case ScorerKind::kExpected:
    case ScorerKind::kCapKv:
    case ScorerKind::kCapKvDot:
    case ScorerKind::kCapKvGreedy:
    case ScorerKind::kLaProx:
      return 2 * kv + queries;
    case ScorerKind::kQSketch:
    case ScorerKind::kQSketchPost:
      return kv + static_cast<double>(kBenchSketchK) * s.head_dim * sizeof(float) * s.q_heads;
    default:
      return 0;
  }
}

// GEMM-shaped flops a scorer cannot avoid per layer, and which measured GEMM rate applies.
enum class GemmShape { kNone, kGram, kAttention };
double GemmFlops(ScorerKind k, const Shape& s, int n, int window, GemmShape* shape) {
  const double d = s.head_dim;
  switch (k) {
    case ScorerKind::kCapKv:
    case ScorerKind::kCapKvDot:
      // Per query head: Gram Σ w v vᵀ (n d² multiply-adds, half by symmetry = n d² flops) and
      // the triangular solve for every v (n d² flops).
      *shape = GemmShape::kGram;
      return 2.0 * n * d * d * s.q_heads;
    case ScorerKind::kSnapKv:
    case ScorerKind::kLaProx:
      *shape = GemmShape::kAttention;
      return 2.0 * window * n * d * s.q_heads;
    case ScorerKind::kTova:
      *shape = GemmShape::kAttention;
      return 2.0 * n * d * s.q_heads;
    case ScorerKind::kQSketch:
    case ScorerKind::kQSketchPost: {
      // Every (centroid, future position) row against the keys (the softmax's exps and the
      // weighted column sums, n per row, come on top and are not in the bound).
      const double positions = k == ScorerKind::kQSketch ? policy_defaults::kSketchPositions : 1;
      *shape = GemmShape::kAttention;
      return 2.0 * kBenchSketchK * positions * n * d * s.q_heads;
    }
    default:
      *shape = GemmShape::kNone;
      return 0;
  }
}

// Runs fn(t) on `threads` threads at once (t = 0 on the caller) and returns the wall time.
template <typename Fn>
double ConcurrentSeconds(int threads, Fn fn) {
  return Seconds([&] {
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back([&fn, t] { fn(t); });
    fn(0);
    for (std::thread& th : pool) th.join();
  });
}

// STREAM-style copy bandwidth over `bytes`, counting read + write: the best of a few passes of one
// memcpy and of `threads` memcpys of a slice each at once (the scorers use that many workers).
double CopyBandwidth(size_t bytes, int threads) {
  bytes = std::max<size_t>(bytes, 1 << 20);
  std::vector<char> a(bytes, 1), b(bytes, 0);
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    best = std::min(best, Seconds([&] { std::memcpy(b.data(), a.data(), bytes); }));
    a[r] = b[bytes - 1 - r];  // keep the copies observable
    if (threads > 1) {
      const size_t slice = bytes / threads;
      best = std::min(best, ConcurrentSeconds(threads, [&](int t) {
                        std::memcpy(b.data() + t * slice, a.data() + t * slice, slice);
                      }) * static_cast<double>(bytes) / static_cast<double>(slice * threads));
      a[r] = b[r * 7];
    }
  }
  return 2.0 * static_cast<double>(bytes) / best;
}

// OpenBLAS's thread count, when the BLAS is OpenBLAS (looked up at run time; 0 otherwise).
struct BlasThreads {
  void (*set)(int) = nullptr;
  int (*get)() = nullptr;
  BlasThreads() {
    set = reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    get = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  }
  int Get() const { return get ? get() : 0; }
};

// sgemm rate (flop/s) on (m × k) · (k × n): the best of a few single calls (the BLAS's own threads)
// and of `threads` concurrent calls on private operands with the BLAS held at one thread (how
// ScoreLayer uses it). Either way it is the most this BLAS does with this shape on these cores.
double GemmRate(int m, int n, int k, bool a_trans, int threads) {
  struct Operands {
    std::vector<float> a, b, c;
  };
  std::vector<Operands> ops(std::max(1, threads));
  for (Operands& o : ops) {
    o.a.assign(static_cast<size_t>(m) * k, 0.5f);
    o.b.assign(static_cast<size_t>(k) * n, 0.25f);
    o.c.assign(static_cast<size_t>(m) * n, 0.0f);
  }
  auto gemm = [&](Operands& o) {
    if (a_trans) {  // C = Aᵀ B, A stored k × m (the Gram shape Vᵀ V)
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, m, n, k, 1.0f, o.a.data(), m,
                  o.b.data(), n, 0.0f, o.c.data(), n);
    } else {  // C = A Bᵀ, B stored n × k (the attention shape Q Kᵀ)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, o.a.data(), k,
                  o.b.data(), k, 0.0f, o.c.data(), n);
    }
  };
  const double flops = 2.0 * m * n * k;
  double best = 0;
  for (int r = 0; r < 3; ++r) best = std::max(best, flops / Seconds([&] { gemm(ops[0]); }));
  if (threads > 1) {
    static const BlasThreads blas;
    const int saved = blas.Get();
    if (blas.set) blas.set(1);
    for (int r = 0; r < 3; ++r) {
      best = std::max(best, threads * flops / ConcurrentSeconds(threads, [&](int t) {
                              gemm(ops[t]);
                            }));
    }
    if (blas.set && saved > 0) blas.set(saved);
  }
  return best;
}

struct Row {
  std::string scorer;
  int ctx = 0;
  Stats layer_s, compress_s, validate_s;
  Stats prepass_s;  // ValidateLayerInputsDeferringScans: what ScoreLayer now runs before scoring
  double token_heads_per_s = 0;
  double bytes = 0, bw = 0, flops = 0, gemm_rate = 0;
  double pct_bw = -1, pct_gemm = -1;
  double bound_s = 0, pct_bound = -1;  // roofline: max(bytes / bw, flops / gemm_rate)
  const char* binding = "-";
  bool compress_measured = false;
  std::string note;
};

// The bounds measured for one context length: copy bandwidth and the two sgemm rates.
struct CtxBounds {
  int ctx;
  double bw, gram_rate, attn_rate;
};

CtxBounds MeasureBounds(const Shape& s, int n, int window, int threads) {
  const double kv_bytes = static_cast<double>(n) * s.head_dim * sizeof(float) * s.kv_heads;
  const double bw = CopyBandwidth(static_cast<size_t>(2 * kv_bytes), threads);
  // The shapes the scorers multiply: the weighted Gram Vᵀ V of one head (d × d over n), and one
  // GQA group's window queries against the keys ((G·w) × n over d).
  const double gram_rate = GemmRate(s.head_dim, s.head_dim, n, /*a_trans=*/true, threads);
  const int group = s.q_heads / s.kv_heads;
  const double attn_rate = GemmRate(group * window, n, s.head_dim, /*a_trans=*/false, threads);
  std::fprintf(stderr, "[score]   copy %.2f GB/s, sgemm gram %.1f GFLOP/s, attention %.1f GFLOP/s\n",
               bw / 1e9, gram_rate / 1e9, attn_rate / 1e9);
  return {n, bw, gram_rate, attn_rate};
}

// One layer scored o.reps times; ValidateLayerInputs alone (finite checks over the keys and values
// the scorer reads, on one thread: what ScoreLayer ran first before the checks were fused into
// the scoring pass); and ValidateLayerInputsDeferringScans alone (what it runs first now). False,
// with the reason on stderr, when scoring fails.
bool TimeLayer(const Options& o, const Policy& p, LayerData& layer, ScoringWorkspace& ws,
               Row& row) {
  std::fprintf(stderr, "[score]   %-12s one layer x%d", row.scorer.c_str(), o.reps);
  std::vector<double> t_layer;
  HeadScores scores;
  for (int r = 0; r < o.reps; ++r) {
    absl::Status st;
    t_layer.push_back(Seconds([&] { st = ScoreLayerInto(p, layer.in, ws, &scores); }));
    if (!st.ok()) {
      std::fprintf(stderr, "\n%s failed: %s\n", row.scorer.c_str(), st.ToString().c_str());
      return false;
    }
  }
  row.layer_s = Summarise(t_layer);
  std::vector<double> t_valid;
  for (int r = 0; r < o.reps; ++r) {
    t_valid.push_back(Seconds([&] { (void)ValidateLayerInputs(layer.in, p); }));
  }
  row.validate_s = Summarise(t_valid);
  std::vector<double> t_prepass;
  for (int r = 0; r < o.reps; ++r) {
    t_prepass.push_back(Seconds([&] { (void)ValidateLayerInputsDeferringScans(layer.in, p); }));
  }
  row.prepass_s = Summarise(t_prepass);
  row.token_heads_per_s = static_cast<double>(row.ctx) * o.shape.kv_heads / row.layer_s.median;
  return true;
}

// Whole-sequence Compress-equivalent: every layer scored (the same tensors stand in for each
// layer, far larger than any cache), then one SelectTokens over all of them. Skipped when one rep
// would take more than ~20 s. False, with the reason on stderr, when a step fails.
bool TimeCompress(const Options& o, const Policy& p, int64_t budget, LayerData& layer,
                  ScoringWorkspace& ws, Row& row) {
  if (!(row.layer_s.median * o.layers < 20.0)) return true;
  const Shape& s = o.shape;
  std::fprintf(stderr, ", compress %d layers x%d", o.layers, o.reps);
  std::vector<HeadScores> all(o.layers);
  std::vector<double> t_comp;
  for (int r = 0; r < o.reps; ++r) {
    absl::Status st;
    t_comp.push_back(Seconds([&] {
      for (int l = 0; l < o.layers && st.ok(); ++l) {
        layer.in.layer_index = l;
        st = ScoreLayerInto(p, layer.in, ws, &all[l]);
      }
      if (st.ok()) {
        absl::StatusOr<Selection> sel =
            SelectTokens(p, Budget{.tokens = budget}, all, s.q_heads / s.kv_heads);
        st = sel.status();
      }
    }));
    if (!st.ok()) {
      std::fprintf(stderr, "\n%s compress failed: %s\n", row.scorer.c_str(),
                   st.ToString().c_str());
      return false;
    }
  }
  layer.in.layer_index = 0;
  row.compress_s = Summarise(t_comp);
  row.compress_measured = true;
  return true;
}

// The row's figures against the bounds: bytes and flops the scorer must move, % of each bound,
// and which one binds.
void CompareWithBounds(ScorerKind kind, const Shape& s, int window, const CtxBounds& b, Row& row) {
  const int n = row.ctx;
  row.bytes = BytesRead(kind, s, n, window);
  row.bw = b.bw;
  GemmShape gs;
  row.flops = GemmFlops(kind, s, n, window, &gs);
  row.gemm_rate =
      gs == GemmShape::kGram ? b.gram_rate : gs == GemmShape::kAttention ? b.attn_rate : 0;
  if (row.bytes > 0) row.pct_bw = 100.0 * (row.bytes / b.bw) / row.layer_s.median;
  if (row.flops > 0) row.pct_gemm = 100.0 * (row.flops / row.gemm_rate) / row.layer_s.median;
  const double t_bw = row.bytes > 0 ? row.bytes / b.bw : 0;
  const double t_gemm = row.flops > 0 ? row.flops / row.gemm_rate : 0;
  row.bound_s = std::max(t_bw, t_gemm);
  if (row.bound_s > 0) {
    row.pct_bound = 100.0 * row.bound_s / row.layer_s.median;
    row.binding = t_gemm > t_bw ? "gemm" : "bw";
  }
}

void PrintScoreJson(const Options& o, int threads, const std::vector<CtxBounds>& bounds,
                    const std::vector<Row>& rows) {
  const Shape& s = o.shape;
  std::printf("{\"bench\":\"score\",\"shape\":\"%s\",\"layers\":%d,\"q_heads\":%d,\"kv_heads\":%d,"
              "\"head_dim\":%d,\"keep_ratio\":%g,\"reps\":%d,\"threads\":%d,\"bounds\":[",
              s.name.c_str(), o.layers, s.q_heads, s.kv_heads, s.head_dim, o.keep, o.reps,
              threads);
  for (size_t i = 0; i < bounds.size(); ++i) {
    std::printf("%s{\"ctx\":%d,\"copy_bw_Bps\":%.6g,\"gram_sgemm_flops\":%.6g,"
                "\"attention_sgemm_flops\":%.6g}",
                i ? "," : "", bounds[i].ctx, bounds[i].bw, bounds[i].gram_rate,
                bounds[i].attn_rate);
  }
  std::printf("],\"results\":[");
  for (size_t i = 0; i < rows.size(); ++i) {
    const Row& r = rows[i];
    std::printf("%s{\"scorer\":\"%s\",\"ctx\":%d", i ? "," : "", r.scorer.c_str(), r.ctx);
    if (!r.note.empty()) {
      std::printf(",\"note\":\"%s\"}", r.note.c_str());
      continue;
    }
    std::printf(",\"layer_s\":{\"median\":%.6g,\"min\":%.6g,\"max\":%.6g}", r.layer_s.median,
                r.layer_s.min, r.layer_s.max);
    std::printf(",\"token_heads_per_s\":%.6g", r.token_heads_per_s);
    std::printf(",\"validate_s\":{\"median\":%.6g,\"min\":%.6g,\"max\":%.6g}",
                r.validate_s.median, r.validate_s.min, r.validate_s.max);
    std::printf(",\"prepass_s\":{\"median\":%.6g,\"min\":%.6g,\"max\":%.6g}",
                r.prepass_s.median, r.prepass_s.min, r.prepass_s.max);
    if (r.compress_measured) {
      std::printf(",\"compress_s\":{\"median\":%.6g,\"min\":%.6g,\"max\":%.6g}",
                  r.compress_s.median, r.compress_s.min, r.compress_s.max);
    }
    std::printf(",\"bytes_read\":%.6g,\"copy_bw_Bps\":%.6g", r.bytes, r.bw);
    if (r.pct_bw >= 0) std::printf(",\"pct_of_bandwidth_bound\":%.3g", r.pct_bw);
    if (r.flops > 0) {
      std::printf(",\"gemm_flops\":%.6g,\"gemm_rate_flops\":%.6g,\"pct_of_gemm_bound\":%.3g",
                  r.flops, r.gemm_rate, r.pct_gemm);
    }
    if (r.pct_bound >= 0) {
      std::printf(",\"bound_s\":%.6g,\"binding\":\"%s\",\"pct_of_bound\":%.3g", r.bound_s,
                  r.binding, r.pct_bound);
    }
    std::printf("}");
  }
  std::printf("]}\n");
}

void PrintScoreTable(const Options& o, int threads, const std::vector<CtxBounds>& bounds,
                     const std::vector<Row>& rows) {
  const Shape& s = o.shape;
  std::printf("kvkeep-bench score: shape %s (%d layers, %d/%d heads, d=%d), keep %.3g, %d reps\n",
              s.name.c_str(), o.layers, s.q_heads, s.kv_heads, s.head_dim, o.keep, o.reps);
  std::printf("one layer: median [min, max]; tok*heads/s over KV heads; bounds measured in this run\n");
  std::printf("%%bound = max(bytes/copy bw, flops/sgemm rate) over the median; scorer threads %d\n",
              threads);
  for (const CtxBounds& b : bounds) {
    std::printf("  ctx %7d: copy %.2f GB/s, sgemm gram %.1f GFLOP/s, attention %.1f GFLOP/s\n",
                b.ctx, b.bw / 1e9, b.gram_rate / 1e9, b.attn_rate / 1e9);
  }
  std::printf("%-13s %7s %24s %9s %12s %9s %8s %9s %12s %24s\n", "scorer", "ctx",
              "layer ms med [min,max]", "valid ms", "tok*head/s", "ns/tok*hd", "%bw", "%gemm",
              "%bound", "compress ms med [min,max]");
  for (const Row& r : rows) {
    if (!r.note.empty()) {
      std::printf("%-13s %7d   %s\n", r.scorer.c_str(), r.ctx, r.note.c_str());
      continue;
    }
    char layer[64], comp[64], bwp[16] = "-", gp[16] = "-", bp[24] = "-";
    std::snprintf(layer, sizeof layer, "%.3f [%.3f,%.3f]", 1e3 * r.layer_s.median,
                  1e3 * r.layer_s.min, 1e3 * r.layer_s.max);
    if (r.compress_measured) {
      std::snprintf(comp, sizeof comp, "%.1f [%.1f,%.1f]", 1e3 * r.compress_s.median,
                    1e3 * r.compress_s.min, 1e3 * r.compress_s.max);
    } else {
      std::snprintf(comp, sizeof comp, "- (too slow)");
    }
    if (r.pct_bw >= 0) std::snprintf(bwp, sizeof bwp, "%.1f", r.pct_bw);
    if (r.pct_gemm >= 0) std::snprintf(gp, sizeof gp, "%.1f", r.pct_gemm);
    if (r.pct_bound >= 0) std::snprintf(bp, sizeof bp, "%.1f %s", r.pct_bound, r.binding);
    std::printf("%-13s %7d %24s %9.3f %12.3g %9.2f %8s %9s %12s %24s\n", r.scorer.c_str(), r.ctx,
                layer, 1e3 * r.validate_s.median, r.token_heads_per_s, 1e9 / r.token_heads_per_s,
                bwp, gp, bp, comp);
  }
}

}  // namespace

int RunScoreBench(int argc, char** argv) {
  Options o;
  if (const int code = Parse(argc, argv, &o); code >= 0) return code;
  const Shape& s = o.shape;
  Policy base;
  std::vector<Row> rows;
  ScoringWorkspace ws;
  const int threads = ws.threads();
  std::vector<CtxBounds> bounds;
  for (int n : o.ctx) {
    const int window = std::min(base.window, n);
    std::fprintf(stderr, "[score] %s ctx=%d: generating inputs\n", s.name.c_str(), n);
    LayerData layer = MakeLayer(s, n, window, 1234u + n);
    bounds.push_back(MeasureBounds(s, n, window, threads));
    for (ScorerKind kind : o.scorers) {
      Policy p = base;
      p.scorer = kind;
      p.window = window;
      p.allocation = DefaultAllocation(kind);
      layer.in.sketch_post_rope = SketchScorerWantsPostRope(kind);
      const int64_t budget = std::max<int64_t>(1, std::llround(o.keep * n));
      Row row;
      row.scorer = std::string(ScorerName(kind));
      row.ctx = n;
      if (kind == ScorerKind::kCapKvGreedy) {
        p.greedy_picks = budget;
        // O(n·k·d·G) per head in double: keep the run bounded.
        const double work = static_cast<double>(n) * budget * s.head_dim * s.q_heads;
        if (work > 2e10) {
          row.note = "skipped (n*k*d*H > 2e10)";
          rows.push_back(row);
          std::fprintf(stderr, "[score]   %-12s %s\n", row.scorer.c_str(), row.note.c_str());
          continue;
        }
      }
      if (!TimeLayer(o, p, layer, ws, row)) return 1;
      if (!TimeCompress(o, p, budget, layer, ws, row)) return 1;
      std::fprintf(stderr, "\n");
      CompareWithBounds(kind, s, window, bounds.back(), row);
      rows.push_back(row);
    }
  }
  if (o.json) {
    PrintScoreJson(o, threads, bounds, rows);
  } else {
    PrintScoreTable(o, threads, bounds, rows);
  }
  return 0;
}

}  // namespace kvkeep::bench
