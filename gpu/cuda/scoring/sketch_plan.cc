#include "gpu/cuda/scoring/sketch_plan.h"

#include <algorithm>
#include <cstdint>
#include <vector>

#include "gpu/math/rope_math.h"
#include "gpu/math/sketch_math.h"

namespace kvkeep::cuda_scoring {

namespace gm = ::kvkeep::gpu_math;

bool IsSketchScorer(DeviceScorerKind kind) {
  return kind == DeviceScorerKind::kQSketch || kind == DeviceScorerKind::kQSketchPost;
}

void PlanSketch(const DeviceLayerRequest& r, LayerPlan* plan) {
  const bool rotate = r.scorer.kind == DeviceScorerKind::kQSketch;
  const int F = rotate ? r.scorer.sketch_positions : 1;
  const int K = r.sketch_k, d = plan->d, G = plan->group, rd = plan->rotary_dim, half = rd / 2;
  std::vector<float> cos_t(static_cast<size_t>(F) * half), sin_t(cos_t.size());
  for (int f = 0; f < F && rotate; ++f) {
    const int64_t p = gm::SketchFuturePosition(plan->next, f, F, r.scorer.sketch_horizon);
    for (int i = 0; i < half; ++i) {
      const double inv_freq = r.rope.inv_freq == nullptr
                                  ? gm::RopeInvFreq(r.rope.theta, i, rd)
                                  : static_cast<double>(r.rope.inv_freq[i]);
      gm::SketchCosSin(p, inv_freq, &cos_t[static_cast<size_t>(f) * half + i],
                       &sin_t[static_cast<size_t>(f) * half + i]);
    }
  }
  plan->sketch_rows.clear();
  plan->sketch_coef.clear();
  plan->sketch_row_start.assign(plan->kv_heads + 1, 0);
  plan->p_floats = 0;
  for (int g = 0; g < plan->kv_heads; ++g) {
    double total_weight = 0;
    for (int q = 0; q < G; ++q) {
      for (int c = 0; c < K; ++c) total_weight += r.sketch_weights[(int64_t{g} * G + q) * K + c];
    }
    const int64_t first = static_cast<int64_t>(plan->sketch_coef.size());
    const int n = r.heads[g].n;
    for (int q = 0; q < G; ++q) {
      const int64_t qh = int64_t{g} * G + q;
      for (int c = 0; c < K; ++c) {
        const float w = r.sketch_weights[qh * K + c];
        if (!(w > 0)) continue;
        const float* centroid = r.sketch_centroids + (qh * K + c) * d;
        const float coef = gm::SketchRowCoefficient(w, F, total_weight);
        for (int f = 0; f < F; ++f) {
          const size_t at = plan->sketch_rows.size();
          plan->sketch_rows.resize(at + d);
          gm::RotateForward(centroid, rotate ? cos_t.data() + static_cast<size_t>(f) * half : nullptr,
                            rotate ? sin_t.data() + static_cast<size_t>(f) * half : nullptr, d, rd,
                            r.rope.interleaved, plan->inv_sqrt_d, plan->sketch_rows.data() + at);
          plan->sketch_coef.push_back(coef);
          const int64_t i = static_cast<int64_t>(plan->sketch_coef.size()) - 1 - first;
          plan->softmax_rows.push_back(SoftmaxRow{i * n, n, n, 1.0f});
        }
      }
    }
    plan->sketch_row_start[g + 1] = static_cast<int64_t>(plan->sketch_coef.size());
    plan->p_floats =
        std::max(plan->p_floats, (plan->sketch_row_start[g + 1] - first) * static_cast<int64_t>(n));
  }
}

}  // namespace kvkeep::cuda_scoring
