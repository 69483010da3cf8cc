#include "common/query_sketch.h"

#include <algorithm>
#include <cstddef>
#include <limits>

namespace kvkeep::sketch {
namespace {

// splitmix64: a small, portable generator, so sketches are identical
// everywhere.
class SplitMix64 {
public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1).
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

private:
  uint64_t state_;
};

double SquaredDistance(const float *a, const float *b, int d) {
  double s = 0;
  for (int i = 0; i < d; ++i) {
    const double diff = static_cast<double>(a[i]) - b[i];
    s += diff * diff;
  }
  return s;
}

// k-means++: the first seed uniformly, each next one with probability
// proportional to its squared distance from the nearest seed so far. Returns
// the seeds' query indices (fewer than k when the remaining queries all
// coincide with seeds).
std::vector<int> SeedIndices(const float *q, int n, int d, int k,
                             SplitMix64 &rng) {
  std::vector<int> seeds;
  seeds.push_back(static_cast<int>(rng.Next() % static_cast<uint64_t>(n)));
  std::vector<double> nearest(n);
  for (int i = 0; i < n; ++i)
    nearest[i] =
        SquaredDistance(q + size_t{1} * i * d, q + size_t{1} * seeds[0] * d, d);
  while (static_cast<int>(seeds.size()) < k) {
    double total = 0;
    for (double v : nearest)
      total += v;
    if (!(total > 0))
      break;
    double target = rng.Uniform() * total;
    int pick = n - 1;
    for (int i = 0; i < n; ++i) {
      target -= nearest[i];
      if (target < 0 && nearest[i] > 0) {
        pick = i;
        break;
      }
    }
    if (nearest[pick] <= 0)
      break; // rounding left only coincident queries
    seeds.push_back(pick);
    const float *c = q + size_t{1} * pick * d;
    for (int i = 0; i < n; ++i) {
      nearest[i] =
          std::min(nearest[i], SquaredDistance(q + size_t{1} * i * d, c, d));
    }
  }
  return seeds;
}

// Assigns every query to its nearest centroid; returns the per-centroid counts.
std::vector<int> Assign(const float *q, int n, const HeadSketch &s,
                        std::vector<int> *owner) {
  std::vector<int> counts(s.size(), 0);
  owner->resize(n);
  for (int i = 0; i < n; ++i) {
    (*owner)[i] = NearestCentroid(s, q + size_t{1} * i * s.head_dim);
    ++counts[(*owner)[i]];
  }
  return counts;
}

// Moves each centroid to the mean of its queries; drops centroids without
// queries.
void UpdateMeans(const float *q, int n, const std::vector<int> &owner,
                 const std::vector<int> &counts, HeadSketch *s) {
  const int d = s->head_dim;
  std::vector<double> sums(static_cast<size_t>(s->size()) * d, 0.0);
  for (int i = 0; i < n; ++i) {
    double *sum = &sums[static_cast<size_t>(owner[i]) * d];
    const float *x = q + size_t{1} * i * d;
    for (int c = 0; c < d; ++c)
      sum[c] += x[c];
  }
  HeadSketch next{.head_dim = d};
  for (int j = 0; j < s->size(); ++j) {
    if (counts[j] == 0)
      continue;
    for (int c = 0; c < d; ++c) {
      next.centroids.push_back(
          static_cast<float>(sums[static_cast<size_t>(j) * d + c] / counts[j]));
    }
    next.weights.push_back(static_cast<float>(counts[j]));
  }
  *s = std::move(next);
}

} // namespace

double HeadSketch::total_weight() const {
  double t = 0;
  for (float w : weights)
    t += w;
  return t;
}

int NearestCentroid(const HeadSketch &sketch, const float *query) {
  int best = -1;
  double best_d = std::numeric_limits<double>::infinity();
  for (int j = 0; j < sketch.size(); ++j) {
    const double dist = SquaredDistance(
        query,
        sketch.centroids.data() + static_cast<size_t>(j) * sketch.head_dim,
        sketch.head_dim);
    if (dist < best_d) {
      best_d = dist;
      best = j;
    }
  }
  return best;
}

HeadSketch BuildHeadSketch(const float *queries, int n, int head_dim,
                           const SketchOptions &options) {
  HeadSketch s{.head_dim = head_dim};
  if (n <= 0)
    return s;
  if (n <= options.k) {
    s.centroids.assign(queries, queries + static_cast<size_t>(n) * head_dim);
    s.weights.assign(n, 1.0f);
    return s;
  }
  SplitMix64 rng(options.seed);
  for (int idx : SeedIndices(queries, n, head_dim, options.k, rng)) {
    const float *x = queries + static_cast<size_t>(idx) * head_dim;
    s.centroids.insert(s.centroids.end(), x, x + head_dim);
    s.weights.push_back(0.0f);
  }
  std::vector<int> owner;
  for (int it = 0; it < options.iterations; ++it) {
    std::vector<int> counts = Assign(queries, n, s, &owner);
    UpdateMeans(queries, n, owner, counts, &s);
  }
  // Weights from the final assignment (the means are not moved again).
  std::vector<int> counts = Assign(queries, n, s, &owner);
  HeadSketch out{.head_dim = head_dim};
  for (int j = 0; j < s.size(); ++j) {
    if (counts[j] == 0)
      continue;
    const float *c = s.centroids.data() + static_cast<size_t>(j) * head_dim;
    out.centroids.insert(out.centroids.end(), c, c + head_dim);
    out.weights.push_back(static_cast<float>(counts[j]));
  }
  return out;
}

void FoldQuery(const float *query, int max_k, HeadSketch *sketch) {
  const int d = sketch->head_dim;
  if (sketch->size() < max_k) {
    sketch->centroids.insert(sketch->centroids.end(), query, query + d);
    sketch->weights.push_back(1.0f);
    return;
  }
  const int j = NearestCentroid(*sketch, query);
  if (j < 0)
    return;
  const float w = sketch->weights[j] + 1.0f;
  float *c = sketch->centroids.data() + static_cast<size_t>(j) * d;
  for (int i = 0; i < d; ++i)
    c[i] += (query[i] - c[i]) / w;
  sketch->weights[j] = w;
}

} // namespace kvkeep::sketch
