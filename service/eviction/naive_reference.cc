#include "service/eviction/naive_reference.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace kvkeep::eviction::naive {
namespace {

int Pos(const HeadKV& h, int j) { return h.positions ? h.positions[j] : j; }

int64_t NextPos(const LayerInputs& in) {
  if (in.next_position != 0) return in.next_position;
  int64_t next = 0;
  for (const HeadKV& h : in.heads) {
    if (h.n > 0) next = std::max<int64_t>(next, Pos(h, h.n - 1) + 1);
  }
  return next;
}

std::vector<double> Row(const float* p, int d) { return std::vector<double>(p, p + d); }

double DotD(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

std::vector<double> MatVec(const Matrix& m, const std::vector<double>& x) {
  std::vector<double> y(m.size(), 0.0);
  for (size_t i = 0; i < m.size(); ++i) {
    for (size_t k = 0; k < x.size(); ++k) y[i] += m[i][k] * x[k];
  }
  return y;
}

// Solves a x = b by Gaussian elimination with partial pivoting.
std::vector<double> Solve(Matrix a, std::vector<double> b) {
  const int n = static_cast<int>(b.size());
  for (int c = 0; c < n; ++c) {
    int p = c;
    for (int r = c + 1; r < n; ++r) {
      if (std::fabs(a[r][c]) > std::fabs(a[p][c])) p = r;
    }
    std::swap(a[c], a[p]);
    std::swap(b[c], b[p]);
    for (int r = c + 1; r < n; ++r) {
      const double f = a[r][c] / a[c][c];
      for (int k = c; k < n; ++k) a[r][k] -= f * a[c][k];
      b[r] -= f * b[c];
    }
  }
  std::vector<double> x(n);
  for (int r = n - 1; r >= 0; --r) {
    double s = b[r];
    for (int k = r + 1; k < n; ++k) s -= a[r][k] * x[k];
    x[r] = s / a[r][r];
  }
  return x;
}

// Softmax attention of one query over the visible keys of a head (0 for masked keys).
std::vector<double> Attention(const std::vector<double>& q, const HeadKV& h, int d, int64_t qpos) {
  std::vector<double> logits(h.n, -INFINITY);
  double mx = -INFINITY;
  for (int j = 0; j < h.n; ++j) {
    if (Pos(h, j) > qpos) continue;
    logits[j] = DotD(q, Row(h.keys + static_cast<size_t>(j) * d, d)) / std::sqrt(double(d));
    mx = std::max(mx, logits[j]);
  }
  std::vector<double> p(h.n, 0.0);
  double z = 0;
  for (int j = 0; j < h.n; ++j) {
    if (Pos(h, j) > qpos) continue;
    p[j] = std::exp(logits[j] - mx);
    z += p[j];
  }
  for (double& v : p) v /= (z > 0 ? z : 1);
  return p;
}

std::vector<double> WindowQueryD(const LayerInputs& in, int qh, int i) {
  const float* q = in.window_queries.data() +
                   (static_cast<size_t>(qh) * in.window + i) * static_cast<size_t>(in.head_dim);
  return Row(q, in.head_dim);
}

void FillMax(std::vector<double>& s, int begin, int end) {
  double m = 0;
  if (end > begin) m = *std::max_element(s.begin() + begin, s.begin() + end);
  for (int j = 0; j < begin; ++j) s[j] = m;
  for (size_t j = end; j < s.size(); ++j) s[j] = m;
}

std::vector<double> Anchor(const LayerInputs& in, const Matrix& rbar, int qh) {
  std::vector<double> mu(in.head_dim);
  for (int i = 0; i < in.head_dim; ++i) {
    mu[i] = in.query_sum[static_cast<size_t>(qh) * in.head_dim + i] / double(in.query_count);
  }
  return MatVec(rbar, mu);
}

// CapKV weights over non-sink tokens [s0, n) of head g for q head qh.
std::vector<double> CapW(const Policy& p, const LayerInputs& in, const Matrix& rbar, int g, int qh,
                         bool dot_form) {
  const HeadKV& h = in.heads[g];
  const int d = in.head_dim;
  const int s0 = std::min(p.sinks, h.n);
  const std::vector<double> mu = Anchor(in, rbar, qh);
  const double mu_norm = std::sqrt(DotD(mu, mu));
  std::vector<double> logit;
  for (int j = s0; j < h.n; ++j) {
    const std::vector<double> k = Row(h.keys + static_cast<size_t>(j) * d, d);
    const double dot = DotD(mu, k);
    if (dot_form) {
      logit.push_back(dot / std::sqrt(double(d)));
    } else {
      double c = dot / (mu_norm * std::sqrt(DotD(k, k)));
      c = std::min(1.0, std::max(-1.0, c));
      logit.push_back(p.capkv_tau * c);
    }
  }
  const double mx = logit.empty() ? 0 : *std::max_element(logit.begin(), logit.end());
  for (double& v : logit) v = std::exp(v - mx);
  return logit;
}

}  // namespace

double LogDet(Matrix a) {
  const int n = static_cast<int>(a.size());
  double s = 0;
  for (int c = 0; c < n; ++c) {
    int p = c;
    for (int r = c + 1; r < n; ++r) {
      if (std::fabs(a[r][c]) > std::fabs(a[p][c])) p = r;
    }
    std::swap(a[c], a[p]);  // a row swap flips the sign of det; |det| is what we take the log of
    for (int r = c + 1; r < n; ++r) {
      const double f = a[r][c] / a[c][c];
      for (int k = c; k < n; ++k) a[r][k] -= f * a[c][k];
    }
    s += std::log(std::fabs(a[c][c]));
  }
  return s;
}

Matrix AveragedRopeMatrix(const LayerInputs& in, int horizon) {
  const int d = in.head_dim;
  const int rd = in.rope.rotary_dim == 0 ? d : in.rope.rotary_dim;
  Matrix r(d, std::vector<double>(d, 0.0));
  for (int i = rd; i < d; ++i) r[i][i] = 1.0;
  const int64_t p0 = NextPos(in);
  for (int i = 0; i < rd / 2; ++i) {
    const double f = in.rope.inv_freq.empty() ? std::pow(in.rope.theta, -2.0 * i / rd)
                                              : double(in.rope.inv_freq[i]);
    const int a = in.rope.interleaved ? 2 * i : i;
    const int b = in.rope.interleaved ? 2 * i + 1 : i + rd / 2;
    double c = 0, s = 0;
    for (int t = 0; t < horizon; ++t) {
      c += std::cos(double(p0 + t) * f);
      s += std::sin(double(p0 + t) * f);
    }
    c /= horizon;
    s /= horizon;
    // y_a = c x_a - s x_b ; y_b = s x_a + c x_b
    r[a][a] = c;
    r[a][b] = -s;
    r[b][a] = s;
    r[b][b] = c;
  }
  return r;
}

namespace {

// What every per-head step reads about the layer, resolved once by Score.
struct LayerView {
  const Policy& p;
  const LayerInputs& in;
  int d;             // head_dim
  int G;             // query heads per KV head
  int64_t next;      // next position
  const Matrix& rbar;
};

// random: splitmix64 of (seed, layer, head, position), top 24 bits as a uniform in [0, 1).
double RandomScore(const Policy& p, const LayerInputs& in, int g, int pos) {
  auto mix = [](uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  };
  uint64_t v = mix(p.seed);
  v = mix(v ^ uint64_t(in.layer_index));
  v = mix(v ^ uint64_t(g));
  v = mix(v ^ uint64_t(pos));
  return double(v >> 40) / 16777216.0;
}

// tova: the last window query's attention of every query head, averaged, keyed by position.
std::map<int, double> TovaMassByPosition(const LayerView& l) {
  std::map<int, double> tova_mass;
  for (int qh = 0; qh < l.in.q_heads; ++qh) {
    const HeadKV& h = l.in.heads[qh / l.G];
    const std::vector<double> a =
        Attention(WindowQueryD(l.in, qh, l.in.window - 1), h, l.d, l.next - 1);
    for (int j = 0; j < h.n; ++j) tova_mass[Pos(h, j)] += a[j] / l.in.q_heads;
  }
  return tova_mass;
}

void ScoreSnapKv(const LayerView& l, int g, std::vector<double>& s) {
  const Policy& p = l.p;
  const LayerInputs& in = l.in;
  const HeadKV& h = in.heads[g];
  const int n = h.n, d = l.d, G = l.G;
  const int nc = n - std::min(p.window, n);
  for (int r = 0; r < G; ++r) {
    const int qh = g * G + r;
    std::vector<double> col(n, 0.0);
    for (int i = 0; i < in.window; ++i) {
      const std::vector<double> a =
          Attention(WindowQueryD(in, qh, i), h, d, l.next - in.window + i);
      for (int j = 0; j < n; ++j) col[j] += a[j] / in.window;
    }
    const int half = p.pool_kernel / 2;
    for (int j = 0; j < nc; ++j) {
      double v = p.pool_max ? -INFINITY : 0.0;
      for (int t = j - half; t <= j + half; ++t) {
        if (t < 0 || t >= nc) continue;  // max: skipped; avg: zero padding
        v = p.pool_max ? std::max(v, col[t]) : v + col[t];
      }
      if (!p.pool_max) v /= p.pool_kernel;
      s[j] += v / G;
    }
  }
  FillMax(s, 0, nc);
}

void ScoreLaProx(const LayerView& l, int g, std::vector<double>& s) {
  const LayerInputs& in = l.in;
  const HeadKV& h = in.heads[g];
  const int n = h.n, d = l.d, G = l.G;
  for (int r = 0; r < G; ++r) {
    const int qh = g * G + r;
    std::vector<double> sq(n, 0.0);
    for (int i = 0; i < in.window; ++i) {
      const std::vector<double> a =
          Attention(WindowQueryD(in, qh, i), h, d, l.next - in.window + i);
      for (int j = 0; j < n; ++j) sq[j] += a[j] * a[j];
    }
    for (int j = 0; j < n; ++j) {
      const std::vector<double> v = Row(h.values + static_cast<size_t>(j) * d, d);
      double quad = 0;
      for (int x = 0; x < d; ++x) {
        for (int y = 0; y < d; ++y) {
          const double m = in.wo_gram.empty()
                               ? (x == y ? 1.0 : 0.0)
                               : double(in.wo_gram[(static_cast<size_t>(qh) * d + x) * d + y]);
          quad += v[x] * m * v[y];
        }
      }
      s[j] += std::sqrt(sq[j]) * std::sqrt(std::max(0.0, quad));
    }
  }
}

// C = R̄ diag(σ²) R̄ᵀ for query head qh (zero without squared sums).
Matrix ExpectedCovariance(const LayerView& l, int qh) {
  const LayerInputs& in = l.in;
  const int d = l.d;
  std::vector<double> var(d, 0.0);
  if (!in.query_sq_sum.empty()) {
    for (int i = 0; i < d; ++i) {
      const double mean = in.query_sum[size_t(qh) * d + i] / double(in.query_count);
      var[i] = std::max(0.0, in.query_sq_sum[size_t(qh) * d + i] / double(in.query_count) -
                                 mean * mean);
    }
  }
  Matrix cov(d, std::vector<double>(d, 0.0));
  for (int x = 0; x < d; ++x) {
    for (int y = 0; y < d; ++y) {
      for (int k = 0; k < d; ++k) cov[x][y] += l.rbar[x][k] * var[k] * l.rbar[y][k];
    }
  }
  return cov;
}

void ScoreExpected(const LayerView& l, int g, std::vector<double>& s) {
  const LayerInputs& in = l.in;
  const HeadKV& h = in.heads[g];
  const int n = h.n, d = l.d, G = l.G;
  const int s0 = std::min(l.p.sinks, n);
  for (int r = 0; r < G; ++r) {
    const int qh = g * G + r;
    const std::vector<double> mu = Anchor(in, l.rbar, qh);
    const Matrix cov = ExpectedCovariance(l, qh);
    std::vector<double> logit;
    for (int j = s0; j < n; ++j) {
      const std::vector<double> k = Row(h.keys + static_cast<size_t>(j) * d, d);
      const std::vector<double> ck = MatVec(cov, k);
      logit.push_back(DotD(k, mu) / std::sqrt(double(d)) + DotD(k, ck) / (2.0 * d));
    }
    double mx = -INFINITY, z = 0;
    for (double v : logit) mx = std::max(mx, v);
    for (double v : logit) z += std::exp(v - mx);
    for (int j = s0; j < n; ++j) s[j] += std::exp(logit[j - s0] - mx) / z / G;
  }
  for (int j = s0; j < n; ++j) {
    const std::vector<double> v = Row(h.values + static_cast<size_t>(j) * d, d);
    s[j] *= std::sqrt(DotD(v, v));
  }
  FillMax(s, s0, n);
}

// capkv / capkv-dot: w_j v_jᵀ A⁻¹ v_j with A = I + Σ_j (w_j + 1e-6) v_j v_jᵀ, mean over the group.
void ScoreCapKv(const LayerView& l, int g, std::vector<double>& s) {
  const Policy& p = l.p;
  const LayerInputs& in = l.in;
  const HeadKV& h = in.heads[g];
  const int n = h.n, d = l.d, G = l.G;
  const int s0 = std::min(p.sinks, n);
  for (int r = 0; r < G; ++r) {
    const int qh = g * G + r;
    const std::vector<double> w = CapW(p, in, l.rbar, g, qh, p.scorer == ScorerKind::kCapKvDot);
    Matrix a(d, std::vector<double>(d, 0.0));
    for (int x = 0; x < d; ++x) a[x][x] = 1.0;
    for (int j = s0; j < n; ++j) {
      const std::vector<double> v = Row(h.values + static_cast<size_t>(j) * d, d);
      for (int x = 0; x < d; ++x) {
        for (int y = 0; y < d; ++y) a[x][y] += (w[j - s0] + 1e-6) * v[x] * v[y];
      }
    }
    for (int j = s0; j < n; ++j) {
      const std::vector<double> v = Row(h.values + static_cast<size_t>(j) * d, d);
      s[j] += w[j - s0] * DotD(v, Solve(a, v)) / G;
    }
  }
  FillMax(s, s0, n);
}

// RoPE at one position as a full d × d matrix (y = R x), independent of gpu/math.
Matrix RopeMatrixAt(const LayerInputs& in, double position) {
  const int d = in.head_dim;
  const int rd = in.rope.rotary_dim == 0 ? d : in.rope.rotary_dim;
  Matrix r(d, std::vector<double>(d, 0.0));
  for (int i = rd; i < d; ++i) r[i][i] = 1.0;
  for (int i = 0; i < rd / 2; ++i) {
    const double f = in.rope.inv_freq.empty() ? std::pow(in.rope.theta, -2.0 * i / rd)
                                              : double(in.rope.inv_freq[i]);
    const int a = in.rope.interleaved ? 2 * i : i;
    const int b = in.rope.interleaved ? 2 * i + 1 : i + rd / 2;
    r[a][a] = std::cos(position * f);
    r[a][b] = -std::sin(position * f);
    r[b][a] = std::sin(position * f);
    r[b][b] = std::cos(position * f);
  }
  return r;
}

// qsketch / qsketch-post: every (query head, centroid, future position) as an explicit query whose
// softmax over all of the head's keys is added with weight w / (F · total weight of the group).
void ScoreQSketch(const LayerView& l, int g, std::vector<double>& s) {
  const HeadKV& h = l.in.heads[g];
  const int d = l.d;
  const int K = l.in.sketch_k;
  const bool rotate = l.p.scorer == ScorerKind::kQSketch;
  const int F = rotate ? l.p.sketch_positions : 1;
  std::vector<Matrix> rotations;
  for (int f = 0; f < F && rotate; ++f) {
    // The midpoint of stratum f of [next, next + horizon), rounded down.
    const double stratum = double(l.p.sketch_horizon) / F;
    const int64_t offset = static_cast<int64_t>(std::floor((f + 0.5) * stratum + 1e-9));
    rotations.push_back(RopeMatrixAt(l.in, double(l.next + offset)));
  }
  double total = 0;
  for (int r = 0; r < l.G; ++r) {
    for (int c = 0; c < K; ++c) total += l.in.sketch_weights[(g * l.G + r) * K + c];
  }
  for (int r = 0; r < l.G; ++r) {
    const int qh = g * l.G + r;
    for (int c = 0; c < K; ++c) {
      const double w = l.in.sketch_weights[qh * K + c];
      if (w == 0) continue;
      const std::vector<double> centroid =
          Row(l.in.sketch_centroids.data() + (static_cast<size_t>(qh) * K + c) * d, d);
      for (int f = 0; f < F; ++f) {
        const std::vector<double> q = rotate ? MatVec(rotations[f], centroid) : centroid;
        // Every cached token is visible: attend as from a position past all of them.
        const std::vector<double> a = Attention(q, h, d, int64_t{1} << 40);
        for (int j = 0; j < h.n; ++j) s[j] += w * a[j] / (F * total);
      }
    }
  }
}

// capkv-greedy: the brute-force greedy's gain at pick time; sinks and window get the max.
void ScoreCapKvGreedy(const LayerView& l, int g, std::vector<double>& s) {
  const int n = l.in.heads[g].n;
  const int s0 = std::min(l.p.sinks, n);
  std::vector<int> order;
  std::vector<double> gains;
  BruteForceGreedy(l.p, l.in, g, &order, &gains);
  for (size_t t = 0; t < order.size(); ++t) s[order[t]] = gains[t];
  const int m = n - s0;
  const int nc = std::max(0, m - std::min(l.p.window, m));
  FillMax(s, s0, s0 + nc);
}

}  // namespace

std::vector<std::vector<double>> Score(const Policy& p, const LayerInputs& in) {
  const int d = in.head_dim;
  const int G = in.q_heads / in.kv_heads;
  const int64_t next = NextPos(in);
  std::vector<std::vector<double>> out(in.kv_heads);
  const Matrix rbar = AveragedRopeMatrix(in, p.rope_horizon);
  const LayerView l{p, in, d, G, next, rbar};

  // TOVA needs every head's mass by position.
  std::map<int, double> tova_mass;
  if (p.scorer == ScorerKind::kTova) tova_mass = TovaMassByPosition(l);

  for (int g = 0; g < in.kv_heads; ++g) {
    const HeadKV& h = in.heads[g];
    const int n = h.n;
    std::vector<double>& s = out[g];
    s.assign(n, 0.0);
    switch (p.scorer) {
      case ScorerKind::kStreaming:
        for (int j = 0; j < n; ++j) s[j] = j;
        break;
      case ScorerKind::kRandom:
        for (int j = 0; j < n; ++j) s[j] = RandomScore(p, in, g, Pos(h, j));
        break;
      case ScorerKind::kKnorm:
        for (int j = 0; j < n; ++j) {
          const std::vector<double> k = Row(h.keys + static_cast<size_t>(j) * d, d);
          s[j] = -std::sqrt(DotD(k, k));
        }
        break;
      case ScorerKind::kH2o:
      case ScorerKind::kObserved:
        for (int j = 0; j < n; ++j) {
          double m = 0;
          for (int r = 0; r < G; ++r) m += in.attention_mass[g * G + r][j];
          m /= G;
          if (p.scorer == ScorerKind::kObserved) m /= double(next - Pos(h, j));
          s[j] = m;
        }
        break;
      case ScorerKind::kTova:
        for (int j = 0; j < n; ++j) s[j] = tova_mass[Pos(h, j)];
        break;
      case ScorerKind::kSnapKv:
        ScoreSnapKv(l, g, s);
        break;
      case ScorerKind::kLaProx:
        ScoreLaProx(l, g, s);
        break;
      case ScorerKind::kExpected:
        ScoreExpected(l, g, s);
        break;
      case ScorerKind::kCapKv:
      case ScorerKind::kCapKvDot:
        ScoreCapKv(l, g, s);
        break;
      case ScorerKind::kCapKvGreedy:
        ScoreCapKvGreedy(l, g, s);
        break;
      case ScorerKind::kQSketch:
      case ScorerKind::kQSketchPost:
        ScoreQSketch(l, g, s);
        break;
    }
  }
  return out;
}

void BruteForceGreedy(const Policy& p, const LayerInputs& in, int g, std::vector<int>* order,
                      std::vector<double>* gains) {
  const HeadKV& h = in.heads[g];
  const int d = in.head_dim;
  const int G = in.q_heads / in.kv_heads;
  const int n = h.n;
  const int s0 = std::min(p.sinks, n);
  const int m = n - s0;
  const int nc = std::max(0, m - std::min(p.window, m));
  const Matrix rbar = AveragedRopeMatrix(in, p.rope_horizon);
  std::vector<std::vector<double>> w(G);
  for (int r = 0; r < G; ++r) w[r] = CapW(p, in, rbar, g, g * G + r, false);
  std::vector<int> set;  // token indices
  for (int j = s0 + nc; j < n; ++j) set.push_back(j);
  auto objective = [&](const std::vector<int>& s) {
    double total = 0;
    for (int r = 0; r < G; ++r) {
      Matrix a(d, std::vector<double>(d, 0.0));
      for (int x = 0; x < d; ++x) a[x][x] = 1.0;
      for (int j : s) {
        const std::vector<double> v = Row(h.values + static_cast<size_t>(j) * d, d);
        for (int x = 0; x < d; ++x) {
          for (int y = 0; y < d; ++y) a[x][y] += w[r][j - s0] * v[x] * v[y];
        }
      }
      total += LogDet(a);
    }
    return total / G;
  };
  std::vector<bool> picked(n, false);
  const int64_t picks = p.greedy_picks > 0 ? std::min<int64_t>(p.greedy_picks, nc) : nc;
  for (int64_t step = 0; step < picks; ++step) {
    const double base = objective(set);
    int best = -1;
    double best_gain = -INFINITY;
    for (int j = s0; j < s0 + nc; ++j) {
      if (picked[j]) continue;
      std::vector<int> trial = set;
      trial.push_back(j);
      const double gain = objective(trial) - base;
      if (gain > best_gain + 1e-12) {
        best_gain = gain;
        best = j;
      }
    }
    picked[best] = true;
    set.push_back(best);
    order->push_back(best);
    gains->push_back(best_gain);
  }
}

}  // namespace kvkeep::eviction::naive
