#include "bench/eval/synth.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <random>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "bench/eval/rope.h"
#include "common/status_macros.h"

namespace kvkeep::eval {
namespace {

constexpr double kTheta = 500000.0;  // Llama 3
constexpr int kSinks = 4;
constexpr double kSinkShape[kSinks] = {1.0, 0.55, 0.4, 0.3};  // token 0 strongest
constexpr double kOutlier = 10.0;  // key magnitude on the outlier channel (real K has such channels)
constexpr double kKeyNoise = 0.15;
constexpr double kQueryNoise = 0.3;
constexpr double kNeedleKey = 4.0;  // needle key magnitude along its private direction

// Logit-space recipe of one KV head; every q head of the group shares it, scaled by its sharpness.
struct HeadSpec {
  double sink = 6;          // logit boost of token 0 (tokens 1..3 get kSinkShape of it)
  double salience = 4;      // median logit boost of a heavy hitter
  double heavy_frac = 0.03; // fraction of heavy hitters among the non-sink tokens
  double local_fast = 1;    // recency peak from the high-frequency channels (decays over ~10 tokens)
  double local_slow = 1;    // recency from the mid-frequency channels (decays over ~hundreds)
  double content = 2;       // logit of a same-topic key
  bool retrieval = false;   // needles are planted in this head
};

struct LayerSpec {
  std::vector<HeadSpec> kv;    // [kv_heads]
  std::vector<double> sharp;   // [group size] multiplier of query head i within its group
};

struct ProfileInfo {
  const char* name;
  const char* description;
};

constexpr ProfileInfo kProfiles[] = {
    {"sinks", "strong attention sinks (near-zero values) take most of the mass in every layer"},
    {"heavy", "heavy hitters: ~4% of tokens hold most of the mass in every layer"},
    {"local", "local/recency heads: RoPE high- and mid-frequency alignment dominates"},
    {"lowrank", "low-rank topic-driven keys with outlier channels; queries revisit older topics"},
    {"needles", "retrieval heads in every layer with needles at 7 depths, targeted by future queries"},
    {"gqa", "GQA groups whose query heads differ strongly in sharpness (x2.2 .. x0.3)"},
    {"mixed", "realistic mix: diffuse/local early layer, sparse middle layers with heavy hitters "
              "and retrieval heads, moderate late layer"},
};

std::vector<double> Sharpness(int group, double hi, double lo) {
  std::vector<double> s(group);
  for (int i = 0; i < group; ++i) s[i] = group == 1 ? hi : hi + (lo - hi) * i / (group - 1);
  return s;
}

std::vector<LayerSpec> BuildSpecs(const std::string& profile, int layers, int kv_heads, int group) {
  std::vector<LayerSpec> out(layers);
  for (int l = 0; l < layers; ++l) {
    const bool early = l == 0 && layers > 2;
    const bool late = l == layers - 1 && layers > 2;
    LayerSpec& ls = out[l];
    ls.sharp = Sharpness(group, 1.3, 0.6);
    ls.kv.resize(kv_heads);
    for (int g = 0; g < kv_heads; ++g) {
      HeadSpec h;
      // The realistic base ("mixed"); the other profiles emphasise one property on top of it.
      if (early) {
        h = {.sink = 5.5, .salience = 1.5, .heavy_frac = 0.02, .local_fast = 2.5, .local_slow = 1.5,
             .content = 1.5};
      } else if (late) {
        h = {.sink = 9.5, .salience = 3.5, .heavy_frac = 0.03, .local_fast = 1.5, .local_slow = 1,
             .content = 2.5};
      } else if (g % 2 == 0) {  // middle, retrieval + heavy hitters
        h = {.sink = 11, .salience = 5, .heavy_frac = 0.03, .local_fast = 0.5, .local_slow = 0.5,
             .content = 2, .retrieval = true};
      } else {  // middle, local + heavy hitters
        h = {.sink = 10.5, .salience = 4, .heavy_frac = 0.03, .local_fast = 3.5, .local_slow = 2.5,
             .content = 1.5};
      }
      if (profile == "sinks") {
        h = {.sink = 10, .salience = 2, .heavy_frac = 0.01, .local_fast = 1, .local_slow = 1,
             .content = 1.5};
      } else if (profile == "heavy") {
        h = {.sink = 8, .salience = 6, .heavy_frac = 0.04, .local_fast = 0.5, .local_slow = 0.5,
             .content = 1};
      } else if (profile == "local") {
        h = {.sink = 8, .salience = 1.5, .heavy_frac = 0.01, .local_fast = 4, .local_slow = 3.5,
             .content = 1};
      } else if (profile == "lowrank") {
        h = {.sink = 8, .salience = 2, .heavy_frac = 0.02, .local_fast = 1, .local_slow = 1,
             .content = 4};
      } else if (profile == "needles") {
        h.retrieval = g % 2 == 0;
      } else if (profile == "gqa") {
        ls.sharp = Sharpness(group, 2.2, 0.3);
      }
      ls.kv[g] = h;
    }
  }
  return out;
}

// Channel layout of the pre-RoPE head vector (pairs of a "half" RoPE: channel i rotates with
// channel i + half at frequency theta^(-2i/d); low pair index = high frequency).
struct Channels {
  int d, half;
  int fast_end;     // pairs [0, fast_end): high frequency, local term
  int slow_end;     // pairs [fast_end, slow_end): mid frequency, slow recency term
  int content_end;  // pairs [slow_end, content_end): low frequency, semantic content
  // Pair half-2: channel `direction` carries the shared heavy-hitter direction.
  // Pair half-1: channel `outlier` is the outlier channel, `sink` the sink direction.
  int direction, outlier, sink;
  std::vector<int> content;  // channel indices of the content block

  explicit Channels(int head_dim) : d(head_dim), half(head_dim / 2) {
    fast_end = static_cast<int>(0.375 * half);
    slow_end = static_cast<int>(0.625 * half);
    content_end = half - 2;
    direction = half - 2;
    outlier = half - 1;
    sink = d - 1;
    for (int p = slow_end; p < content_end; ++p) {
      content.push_back(p);
      content.push_back(p + half);
    }
  }
};

class Generator {
 public:
  Generator(const SynthOptions& o, uint64_t stream) : rng_(o.seed * 0x9e3779b97f4a7c15ULL + stream) {}

  double Normal() { return normal_(rng_); }
  double Uniform() { return uniform_(rng_); }
  int64_t Below(int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(rng_); }

  // Orthonormal columns (Gram-Schmidt on Gaussian vectors) of a rows x cols matrix, column-major
  // in a vector of vectors.
  std::vector<std::vector<double>> Orthonormal(int rows, int cols) {
    std::vector<std::vector<double>> out;
    while (static_cast<int>(out.size()) < cols) {
      std::vector<double> v(rows);
      for (double& x : v) x = Normal();
      for (const auto& u : out) {
        const double dot = std::inner_product(v.begin(), v.end(), u.begin(), 0.0);
        for (int i = 0; i < rows; ++i) v[i] -= dot * u[i];
      }
      const double norm = std::sqrt(std::inner_product(v.begin(), v.end(), v.begin(), 0.0));
      if (norm < 1e-6) continue;
      for (double& x : v) x /= norm;
      out.push_back(std::move(v));
    }
    return out;
  }

 private:
  std::mt19937_64 rng_;
  std::normal_distribution<double> normal_{0.0, 1.0};
  std::uniform_real_distribution<double> uniform_{0.0, 1.0};
};

// Topic process of one KV head: segments with a centre, an AR(1) drift within the segment.
struct Topics {
  int rank;
  std::vector<std::vector<double>> z;  // [T][rank] topic state of token t
  std::vector<int> segment;            // [T] segment id of token t
  std::vector<int64_t> segment_start;  // [segments] first token
};

Topics MakeTopics(Generator& gen, int64_t total, int rank) {
  Topics t;
  t.rank = rank;
  t.z.assign(total, std::vector<double>(rank));
  t.segment.resize(total);
  std::vector<double> centre(rank), drift(rank, 0.0);
  int seg = -1;
  int64_t next_break = 0;
  for (int64_t i = 0; i < total; ++i) {
    if (i == next_break) {
      ++seg;
      t.segment_start.push_back(i);
      // A random direction of norm sqrt(rank): same-topic keys all get about the same logit.
      double norm = 0;
      for (double& c : centre) {
        c = gen.Normal();
        norm += c * c;
      }
      for (double& c : centre) c *= std::sqrt(rank / norm);
      next_break = i + 60 + gen.Below(200);  // segments of 60..259 tokens
    }
    t.segment[i] = seg;
    for (int r = 0; r < rank; ++r) {
      drift[r] = 0.95 * drift[r] + std::sqrt(1 - 0.95 * 0.95) * gen.Normal();
      t.z[i][r] = centre[r] + 0.5 * drift[r];
    }
  }
  return t;
}

// The topic a query at position t asks about: its own with probability 1 - recall, else the centre
// of a random earlier segment (a back-reference).
std::vector<double> QueryTopic(Generator& gen, const Topics& topics, int64_t t, double recall) {
  if (topics.segment[t] > 0 && gen.Uniform() < recall) {
    const int seg = static_cast<int>(gen.Below(topics.segment[t]));
    const int64_t start = topics.segment_start[seg];
    const int64_t end = topics.segment_start[seg + 1];
    return topics.z[start + gen.Below(end - start)];
  }
  return topics.z[t];
}

struct NeedlePlan {
  int64_t position;
  std::vector<int64_t> queries;  // absolute positions of the queries that target it
  std::vector<double> direction; // unit vector in the content channels, orthogonal to the topics
};

// The dimensions every step of the generation shares.
struct SynthShape {
  explicit SynthShape(const SynthOptions& o)
      : d(o.head_dim),
        H(o.q_heads),
        Hk(o.kv_heads),
        G(o.q_heads / o.kv_heads),
        P(o.prefix),
        T(o.prefix + o.future),
        sqrt_d(std::sqrt(static_cast<double>(o.head_dim))),
        ch(o.head_dim),
        content_dims(static_cast<int>(ch.content.size())),
        rank(std::max(2, std::min(6, content_dims / 3))) {}
  int d, H, Hk, G;
  int64_t P, T;
  double sqrt_d;
  Channels ch;
  int content_dims;
  int rank;  // topics per KV head
};

constexpr int kWindow = 32;  // the default observation window of the scorers

// One KV head's plan: its topics, their directions in the content channels, its needles and the
// salience of every token.
struct KvHeadPlan {
  Topics topics;
  std::vector<std::vector<double>> topic_dirs;  // [rank][content_dims]
  std::vector<NeedlePlan> needles;
  std::vector<double> via_norm, via_dir;  // [T] salience through the outlier channel / direction
};

absl::Status ValidateSynthOptions(const SynthOptions& o) {
  if (SynthProfileDescription(o.profile).empty()) {
    return absl::InvalidArgumentError(absl::StrCat("unknown profile \"", o.profile,
                                                   "\"; known: ",
                                                   absl::StrJoin(SynthProfileNames(), ", ")));
  }
  if (o.head_dim < 32 || o.head_dim % 2 != 0) {
    return absl::InvalidArgumentError("head_dim must be even and at least 32");
  }
  if (o.prefix < 256 || o.future < 1 || o.layers < 1 || o.kv_heads < 1 ||
      o.q_heads % o.kv_heads != 0) {
    return absl::InvalidArgumentError(
        "need prefix >= 256, future >= 1, layers >= 1 and q_heads a multiple of kv_heads");
  }
  return absl::OkStatus();
}

// Needles of head g of layer l at `depths` of the prefix, each along a spare direction, with
// future queries (not yet in `future_taken`) and, for every other one, a window query aimed at
// it. Listed in meta.needles.
std::vector<NeedlePlan> PlanNeedles(Generator& gen, const SynthOptions& o, const SynthShape& sh,
                                    const std::vector<double>& depths,
                                    const std::vector<std::vector<double>>& spare, int l, int g,
                                    std::vector<int64_t>& future_taken, DatasetMeta& meta) {
  std::vector<NeedlePlan> needles;
  for (size_t n = 0; n < depths.size() && n < spare.size(); ++n) {
    NeedlePlan plan;
    plan.position = std::clamp<int64_t>(static_cast<int64_t>(depths[n] * sh.P), kSinks + 2,
                                        sh.P - kWindow - 1);
    plan.direction = spare[n];
    for (int rep = 0; rep < 3 && static_cast<int64_t>(future_taken.size()) < o.future; ++rep) {
      int64_t f;
      do {
        f = gen.Below(o.future);
      } while (std::find(future_taken.begin(), future_taken.end(), f) != future_taken.end());
      future_taken.push_back(f);
      plan.queries.push_back(sh.P + f);
    }
    if (n % 2 == 0) plan.queries.push_back(sh.P - kWindow + 1 + static_cast<int64_t>(n));
    needles.push_back(std::move(plan));
    meta.needles.push_back({l, g, needles.back().position});
  }
  return needles;
}

// Salience of every token: a heavy-tailed boost for heavy hitters, a small one for the rest,
// split at random between a smaller outlier-channel magnitude and the shared direction.
void DrawSalience(Generator& gen, const HeadSpec& spec, const SynthShape& sh, KvHeadPlan& head) {
  head.via_norm.assign(sh.T, 0.0);
  head.via_dir.assign(sh.T, 0.0);
  // Heavy hitters come in short runs (a salient phrase, mean length 2), as real attention
  // peaks often do; single isolated peaks would unfairly punish pooling (snapkv).
  bool in_run = false;
  for (int64_t t = kSinks; t < sh.T; ++t) {
    in_run = in_run ? gen.Uniform() < 0.5 : gen.Uniform() < spec.heavy_frac / 2;
    bool near_needle = false;  // a needle's span is plain text apart from its key direction
    for (const NeedlePlan& n : head.needles) near_needle = near_needle || std::abs(t - n.position) <= 2;
    const bool heavy = in_run && !near_needle;
    const double boost = heavy ? spec.salience * std::clamp(1.0 + 0.2 * gen.Normal(), 0.5, 1.5)
                               : 0.4 * std::abs(gen.Normal());
    const double split = gen.Uniform();
    head.via_norm[t] = std::min(boost * split, kOutlier - 1.0);
    head.via_dir[t] = boost - head.via_norm[t];
  }
}

// Keys (pre-RoPE) and values of the head's T tokens into K and V ([T][d] each), then its needles.
void WriteKeysAndValues(Generator& gen, const SynthShape& sh, const KvHeadPlan& head, float* K,
                        float* V) {
  const int d = sh.d, rank = sh.rank;
  const Channels& ch = sh.ch;
  std::vector<double> ar(d, 0.0);
  std::vector<std::vector<double>> value_topic(rank, std::vector<double>(d));
  for (auto& row : value_topic) {
    for (double& x : row) x = gen.Normal() * 0.5 / std::sqrt(rank);
  }
  for (int64_t t = 0; t < sh.T; ++t) {
    float* k = K + t * d;
    for (int c = 0; c < d; ++c) k[c] = static_cast<float>(kKeyNoise * gen.Normal());
    // Every query is large on the sink channel; key noise there would become logit noise.
    k[ch.sink] = 0.f;
    // High- and mid-frequency pairs: the same unit pattern for every token of the head, so
    // that after RoPE q·k depends on the distance only (recency).
    for (int p = 0; p < ch.fast_end; ++p) {
      const double a = 1.0 / std::sqrt(2.0 * ch.fast_end);
      k[p] += a;
      k[p + ch.half] += a;
    }
    for (int p = ch.fast_end; p < ch.slow_end; ++p) {
      const double a = 1.0 / std::sqrt(2.0 * (ch.slow_end - ch.fast_end));
      k[p] += a;
      k[p + ch.half] += a;
    }
    for (int r = 0; r < rank; ++r) {
      for (int c = 0; c < sh.content_dims; ++c) {
        k[ch.content[c]] += static_cast<float>(head.topics.z[t][r] * head.topic_dirs[r][c]);
      }
    }
    k[ch.outlier] += static_cast<float>(kOutlier - head.via_norm[t]);
    k[ch.direction] += static_cast<float>(head.via_dir[t]);
    if (t < kSinks) k[ch.sink] += static_cast<float>(kSinkShape[t]);

    // Values: topic content + AR(1) drift shared with the neighbours.
    float* v = V + t * d;
    for (int c = 0; c < d; ++c) {
      ar[c] = 0.9 * ar[c] + std::sqrt(1 - 0.81) * gen.Normal();
      double x = 0.5 * ar[c];
      for (int r = 0; r < rank; ++r) x += head.topics.z[t][r] * value_topic[r][c];
      v[c] = static_cast<float>(x);
    }
    if (t < kSinks) {
      for (int c = 0; c < d; ++c) v[c] *= 0.03f;
    }
  }
  for (const NeedlePlan& n : head.needles) {
    // A needle is a short sentence: five tokens carry its key direction, the centre (the
    // position listed in meta.json) most strongly.
    constexpr double kSpan[5] = {0.5, 0.7, 1.0, 0.7, 0.5};
    for (int off = -2; off <= 2; ++off) {
      float* k = K + (n.position + off) * d;
      for (int c = 0; c < sh.content_dims; ++c) {
        k[ch.content[c]] += static_cast<float>(kSpan[off + 2] * kNeedleKey * n.direction[c]);
      }
    }
    // A distinctive value, not shared with the neighbours: the "answer".
    float* v = V + n.position * d;
    for (int c = 0; c < d; ++c) v[c] = static_cast<float>(0.7 * gen.Normal());
  }
}

// Queries (pre-RoPE) of query head i of the group into Q ([T][d]), with sharpness s.
void WriteQueries(Generator& gen, const SynthShape& sh, const HeadSpec& spec,
                  const KvHeadPlan& head, bool retrieval_head, double s, float* Q) {
  const int d = sh.d;
  const Channels& ch = sh.ch;
  const double sqrt_d = sh.sqrt_d;
  for (int64_t t = 0; t < sh.T; ++t) {
    float* q = Q + t * d;
    const double recall = t < sh.P ? 0.2 : 0.35;
    const std::vector<double> zq = QueryTopic(gen, head.topics, t, recall);
    std::vector<double> x(d, 0.0);
    for (int p = 0; p < ch.fast_end; ++p) {
      const double a = sqrt_d * spec.local_fast / std::sqrt(2.0 * ch.fast_end);
      x[p] += a;
      x[p + ch.half] += a;
    }
    for (int p = ch.fast_end; p < ch.slow_end; ++p) {
      const double a = sqrt_d * spec.local_slow / std::sqrt(2.0 * (ch.slow_end - ch.fast_end));
      x[p] += a;
      x[p + ch.half] += a;
    }
    // Same-topic keys get ~spec.content (z·z ~ rank for the same topic).
    for (int r = 0; r < sh.rank; ++r) {
      for (int c = 0; c < sh.content_dims; ++c) {
        x[ch.content[c]] += sqrt_d * spec.content / sh.rank * zq[r] * head.topic_dirs[r][c];
      }
    }
    x[ch.outlier] -= sqrt_d;    // logit -(kOutlier - via_norm): smaller norm, more attention
    x[ch.direction] += sqrt_d;  // logit +via_dir
    if (retrieval_head) {
      for (const NeedlePlan& n : head.needles) {
        if (std::find(n.queries.begin(), n.queries.end(), t) == n.queries.end()) continue;
        // Enough to beat the sink and the heavy hitters: the needle becomes the argmax.
        const double logit = spec.sink + spec.salience + 4.0;
        for (int c = 0; c < sh.content_dims; ++c) {
          x[ch.content[c]] += sqrt_d * logit / kNeedleKey * n.direction[c];
        }
      }
    }
    for (int c = 0; c < d; ++c) q[c] = static_cast<float>(s * x[c] + kQueryNoise * gen.Normal());
    // Every head of the group is drawn to the sink alike: not scaled by the sharpness.
    q[ch.sink] += static_cast<float>(sqrt_d * spec.sink);
  }
}

// KV head g of layer l: its plan, keys, values and the queries of its group.
void GenerateKvHead(Generator& gen, const SynthOptions& o, const SynthShape& sh,
                    const LayerSpec& layer_spec, const std::vector<double>& depths, int l, int g,
                    std::vector<int64_t>& future_taken, DatasetMeta& meta, LayerData& layer) {
  const HeadSpec& spec = layer_spec.kv[g];
  KvHeadPlan head;
  head.topics = MakeTopics(gen, sh.T, sh.rank);
  // Topic basis in the content channels, and the orthogonal complement for needles.
  const auto basis = gen.Orthonormal(sh.content_dims, sh.content_dims);
  head.topic_dirs.assign(basis.begin(), basis.begin() + sh.rank);
  const std::vector<std::vector<double>> spare(basis.begin() + sh.rank, basis.end());
  if (spec.retrieval) {
    head.needles = PlanNeedles(gen, o, sh, depths, spare, l, g, future_taken, meta);
  }
  DrawSalience(gen, spec, sh, head);
  WriteKeysAndValues(gen, sh, head, layer.k.data() + static_cast<size_t>(g) * sh.T * sh.d,
                     layer.v.data() + static_cast<size_t>(g) * sh.T * sh.d);
  for (int i = 0; i < sh.G; ++i) {
    const int h = g * sh.G + i;
    const bool retrieval_head = spec.retrieval && i < std::max(1, sh.G / 2);
    WriteQueries(gen, sh, spec, head, retrieval_head, layer_spec.sharp[i],
                 layer.q.data() + static_cast<size_t>(h) * sh.T * sh.d);
  }
}

// RoPE: keeps the pre-RoPE queries, rotates queries and keys in place.
void ApplyRope(const SynthShape& sh, LayerData& layer) {
  layer.qpre = layer.q;
  for (int h = 0; h < sh.H; ++h) {
    RotateRows(RopeStyle::kHalf, kTheta, sh.d, 0, sh.T,
               layer.q.data() + static_cast<size_t>(h) * sh.T * sh.d);
  }
  for (int g = 0; g < sh.Hk; ++g) {
    RotateRows(RopeStyle::kHalf, kTheta, sh.d, 0, sh.T,
               layer.k.data() + static_cast<size_t>(g) * sh.T * sh.d);
  }
}

// W_O [hidden, H*d] as y = x·Wᵀ stores it: per head an anisotropic block (decaying spectrum)
// with an unequal head scale, so that W_O-aware scores differ from plain value norms.
void DrawWo(Generator& gen, const SynthShape& sh, LayerData& layer) {
  const int H = sh.H, d = sh.d;
  const int64_t hidden = static_cast<int64_t>(H) * d;
  layer.wo_hidden = hidden;
  layer.wo.assign(static_cast<size_t>(hidden) * H * d, 0.f);
  for (int h = 0; h < H; ++h) {
    const double head_scale = 0.4 + 1.2 * gen.Uniform();
    for (int c = 0; c < d; ++c) {
      const double col_scale = head_scale * std::exp(-3.0 * c / d) / std::sqrt(hidden);
      for (int64_t r = 0; r < hidden; ++r) {
        layer.wo[r * H * d + h * d + c] = static_cast<float>(col_scale * gen.Normal());
      }
    }
  }
}

}  // namespace

const std::vector<std::string>& SynthProfileNames() {
  static const std::vector<std::string>* names = [] {
    auto* v = new std::vector<std::string>();
    for (const ProfileInfo& p : kProfiles) v->push_back(p.name);
    return v;
  }();
  return *names;
}

std::string SynthProfileDescription(const std::string& profile) {
  for (const ProfileInfo& p : kProfiles) {
    if (profile == p.name) return p.description;
  }
  return "";
}

absl::StatusOr<SynthDataset> GenerateSynth(const SynthOptions& o) {
  RETURN_IF_ERROR(ValidateSynthOptions(o));
  const SynthShape sh(o);
  const std::vector<LayerSpec> specs = BuildSpecs(o.profile, o.layers, sh.Hk, sh.G);

  SynthDataset ds;
  DatasetMeta& meta = ds.meta;
  meta.layers = o.layers;
  meta.q_heads = sh.H;
  meta.kv_heads = sh.Hk;
  meta.head_dim = sh.d;
  meta.prefix = sh.P;
  meta.rope_theta = kTheta;
  meta.rope_style = RopeStyle::kHalf;
  meta.profile = o.profile;
  meta.description = SynthProfileDescription(o.profile);

  // Needle depths: fractions of the prefix (more of them in the "needles" profile).
  const std::vector<double> depths =
      o.profile == "needles" ? std::vector<double>{0.05, 0.15, 0.3, 0.45, 0.6, 0.75, 0.9}
                             : std::vector<double>{0.1, 0.3, 0.5, 0.7, 0.9};
  for (int l = 0; l < o.layers; ++l) {
    Generator gen(o, 1000 + l);
    LayerData layer;
    layer.total = sh.T;
    layer.kv_len = sh.T;
    layer.q.assign(static_cast<size_t>(sh.H) * sh.T * sh.d, 0.f);
    layer.k.assign(static_cast<size_t>(sh.Hk) * sh.T * sh.d, 0.f);
    layer.v.assign(static_cast<size_t>(sh.Hk) * sh.T * sh.d, 0.f);
    std::vector<int64_t> future_taken;  // future query slots already used by needles of this layer
    for (int g = 0; g < sh.Hk; ++g) {
      GenerateKvHead(gen, o, sh, specs[l], depths, l, g, future_taken, meta, layer);
    }
    ApplyRope(sh, layer);
    if (o.with_wo) DrawWo(gen, sh, layer);
    ds.layers.push_back(std::move(layer));
  }
  return ds;
}

absl::Status WriteSynth(const SynthDataset& dataset, const std::string& dir, NpyDtype dtype) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat(dir, ": cannot create folder: ", ec.message()));
  RETURN_IF_ERROR(WriteMeta(dir, dataset.meta));
  for (int l = 0; l < dataset.meta.layers; ++l) {
    RETURN_IF_ERROR(WriteLayer(dir, dataset.meta, l, dataset.layers[l], dtype));
  }
  return absl::OkStatus();
}

}  // namespace kvkeep::eval
