// The data of the qsketch end-to-end test, made identically by the worker process
// (kvkeep-test-worker ... sketch SEED) and by the test that checks the daemon's selection: an fp32
// model with RoPE, random keys/values, and pre-RoPE queries drawn around a few directions per
// query head (so the k-means sketch has clusters to find).
//
//   SketchWorkload w = MakeSketchWorkload(/*n=*/160, /*seed=*/5);
//   LayerQuerySketch s = *LayerQuerySketch::Build(l, kQHeads, kDim, w.queries[l].data(), w.n, 0,
//                                                 SketchWorkload::Options(5));
#ifndef KVKEEP_TESTS_SKETCH_WORKLOAD_H_
#define KVKEEP_TESTS_SKETCH_WORKLOAD_H_

#include <cstdint>
#include <random>
#include <vector>

#include "client/layer_query_sketch.h"
#include "kvkeep/v1/common.pb.h"

namespace kvkeep::testing {

struct SketchWorkload {
  static constexpr uint32_t kLayers = 2, kQHeads = 4, kKvHeads = 2, kDim = 16, kTpp = 8;
  static constexpr const char* kModel = "sketch-model";

  uint32_t n = 0;
  std::vector<std::vector<std::vector<float>>> keys, values;  // [layer][kv_head][n * kDim]
  std::vector<std::vector<float>> queries;                    // [layer][kQHeads * n * kDim]

  static v1::ModelLayout Layout() {
    v1::ModelLayout l;
    l.set_name(kModel);
    l.set_layers(kLayers);
    l.set_q_heads(kQHeads);
    l.set_kv_heads(kKvHeads);
    l.set_head_dim(kDim);
    l.set_dtype(v1::DTYPE_FP32);
    l.set_tokens_per_page(kTpp);
    l.mutable_rope()->set_theta(10000);
    return l;
  }
  static LayerQuerySketch::Options Options(uint64_t seed) {
    return {.k = 8, .iterations = 4, .seed = seed, .post_rope = false};
  }
};

inline SketchWorkload MakeSketchWorkload(uint32_t n, uint64_t seed) {
  using W = SketchWorkload;
  SketchWorkload w;
  w.n = n;
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  w.keys.assign(W::kLayers, std::vector<std::vector<float>>(W::kKvHeads));
  w.values = w.keys;
  w.queries.assign(W::kLayers, {});
  for (uint32_t l = 0; l < W::kLayers; ++l) {
    for (uint32_t h = 0; h < W::kKvHeads; ++h) {
      for (uint32_t i = 0; i < n * W::kDim; ++i) w.keys[l][h].push_back(normal(rng));
      for (uint32_t i = 0; i < n * W::kDim; ++i) w.values[l][h].push_back(normal(rng));
    }
    for (uint32_t h = 0; h < W::kQHeads; ++h) {
      std::vector<float> directions(5 * W::kDim);
      for (float& x : directions) x = 3.0f * normal(rng);
      for (uint32_t i = 0; i < n; ++i) {
        const float* c = &directions[(rng() % 5) * W::kDim];
        for (uint32_t x = 0; x < W::kDim; ++x) w.queries[l].push_back(c[x] + 0.5f * normal(rng));
      }
    }
  }
  return w;
}

}  // namespace kvkeep::testing

#endif  // KVKEEP_TESTS_SKETCH_WORKLOAD_H_
