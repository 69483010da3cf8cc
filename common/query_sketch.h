// A query sketch: the queries one (layer, query head) has seen, summarised as K
// weighted centroids (k-means), K x head_dim floats however long the prompt.
// Workers build one from a block of queries and fold later queries in as they
// decode; the daemon folds in the window queries it receives. The `qsketch`
// scorers (service/eviction) ask the cached keys what these centroids would
// attend to.
//
//   HeadSketch s = BuildHeadSketch(queries, n, /*head_dim=*/128, {.k = 32,
//   .seed = 7}); FoldQuery(next_query, /*max_k=*/32, &s);   // nearest
//   centroid: running mean, weight + 1
//
// Deterministic: the same queries, options and seed give the same sketch on
// every machine (the seeding uses its own 64-bit generator, not the C++
// library's distributions).
#ifndef KVKEEP_COMMON_QUERY_SKETCH_H_
#define KVKEEP_COMMON_QUERY_SKETCH_H_

#include <cstdint>
#include <vector>

namespace kvkeep::sketch {

struct HeadSketch {
  int head_dim = 0;
  std::vector<float> centroids; // [size()][head_dim]
  std::vector<float>
      weights; // [size()] number of queries each centroid stands for (> 0)

  int size() const { return static_cast<int>(weights.size()); }
  double total_weight() const;
};

struct SketchOptions {
  int k = 32; // Default: 32 centroids (fewer when there are fewer distinct
              // queries).
  int iterations = 6; // Default: 6 Lloyd iterations after k-means++ seeding.
  uint64_t seed = 0;  // Default: 0. Seeds the k-means++ draws.
};

// k-means++ seeding, then `iterations` Lloyd steps over the n queries
// ([n][head_dim], row-major). n <= k: every query is its own centroid of
// weight 1. A centroid that loses all its queries in a Lloyd step is dropped,
// so every weight is > 0 and the weights sum to n. n == 0 gives an empty
// sketch. Requires head_dim > 0, k > 0, iterations >= 0 and finite queries
// (callers validate).
HeadSketch BuildHeadSketch(const float *queries, int n, int head_dim,
                           const SketchOptions &options);

// Folds one query ([head_dim]) into the sketch: while it has fewer than max_k
// centroids the query becomes a new centroid of weight 1; otherwise the nearest
// centroid (squared L2) moves to the running mean and its weight grows by 1.
void FoldQuery(const float *query, int max_k, HeadSketch *sketch);

// Index of the centroid nearest to `query` (squared L2); -1 for an empty
// sketch.
int NearestCentroid(const HeadSketch &sketch, const float *query);

} // namespace kvkeep::sketch

#endif // KVKEEP_COMMON_QUERY_SKETCH_H_
