#include "gpu/cuda/scoring/layer_plan.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "gpu/cuda/scoring/sketch_plan.h"
#include "gpu/math/rope_math.h"
#include "gpu/math/scoring_math.h"

namespace kvkeep::cuda_scoring {

namespace gm = ::kvkeep::gpu_math;
using Kind = DeviceScorerKind;

bool IsWindowScorer(Kind k) { return k == Kind::kTova || k == Kind::kSnapKv || k == Kind::kLaProx; }
bool IsCapScorer(Kind k) {
  return k == Kind::kCapKv || k == Kind::kCapKvDot || k == Kind::kCapKvGreedy;
}

namespace {

// Head g's span: where its scores are defined for the scorer (the rest get the head's max), its
// sinks, non-sink tokens and capkv-greedy candidates and picks.
HeadSpan PlanSpan(const DeviceScorerParams& p, int n, int64_t offset) {
  HeadSpan s;
  s.n = n;
  s.offset = offset;
  s.s0 = std::min(p.sinks, n);
  s.m = n - s.s0;
  s.nc = std::max(0, s.m - std::min(p.window, s.m));
  s.picks = p.greedy_picks > 0 ? std::min<int64_t>(p.greedy_picks, s.nc) : s.nc;
  switch (p.kind) {  // defined scores (scorers.h)
    case Kind::kSnapKv:
      s.begin = 0;
      s.end = n - std::min(p.window, n);
      break;
    case Kind::kExpected:
    case Kind::kCapKv:
    case Kind::kCapKvDot:
      s.begin = s.s0;
      s.end = n;
      break;
    case Kind::kCapKvGreedy:
      s.begin = s.s0;
      s.end = s.s0 + s.nc;
      break;
    default:
      s.begin = 0;
      s.end = n;
      break;
  }
  return s;
}

// Shapes, spans, flat offsets, positions and the effective next position.
void PlanHeads(const DeviceLayerRequest& r, LayerPlan& plan) {
  const int Hk = r.kv_heads, G = r.q_heads / r.kv_heads;
  plan.q_heads = r.q_heads;
  plan.kv_heads = Hk;
  plan.group = G;
  plan.d = r.head_dim;
  plan.rotary_dim = r.rope.rotary_dim == 0 ? r.head_dim : r.rope.rotary_dim;
  plan.inv_sqrt_d = static_cast<float>(1.0 / std::sqrt(static_cast<double>(r.head_dim)));
  plan.spans.resize(Hk);
  plan.starts.assign(Hk + 1, 0);
  int64_t max_position = -1;
  for (int g = 0; g < Hk; ++g) {
    const DeviceHeadRequest& h = r.heads[g];
    const HeadSpan& s = plan.spans[g] = PlanSpan(r.scorer, h.n, plan.starts[g]);
    plan.starts[g + 1] = plan.starts[g] + h.n;
    if (h.n > 0) {
      max_position = std::max<int64_t>(max_position, h.positions ? h.positions[h.n - 1] : h.n - 1);
    }
    plan.max_n = std::max(plan.max_n, h.n);
    plan.max_m = std::max(plan.max_m, s.m);
    plan.max_window_adds = std::max(plan.max_window_adds, s.m - s.nc);
    plan.max_picks = std::max(plan.max_picks, s.picks);
    if (s.m > 0) plan.chol_batch += G;
  }
  plan.total = plan.starts[Hk];
  plan.next = r.next_position != 0 ? r.next_position : max_position + 1;
  plan.positions.resize(plan.total);
  for (int g = 0; g < Hk; ++g) {
    const DeviceHeadRequest& h = r.heads[g];
    for (int j = 0; j < h.n; ++j)
      plan.positions[plan.starts[g] + j] = h.positions ? h.positions[j] : j;
  }
}

// The softmax rows and, for window scorers, where each head's probabilities lie.
void PlanSoftmax(const DeviceLayerRequest& r, LayerPlan& plan) {
  const Kind kind = r.scorer.kind;
  const int Hk = plan.kv_heads, G = plan.group;
  plan.rows = kind == Kind::kTova ? 1 : r.window;
  plan.p_offset.assign(Hk, 0);
  if (IsWindowScorer(kind)) {
    for (int g = 0; g < Hk; ++g) {
      const DeviceHeadRequest& h = r.heads[g];
      plan.p_offset[g] = plan.p_floats;
      for (int q = 0; q < G; ++q) {
        for (int i = 0; i < plan.rows; ++i) {
          // Query i of the window is at next - window + i; tova's single row is the last query.
          const int64_t qpos = kind == Kind::kTova ? plan.next - 1 : plan.next - r.window + i;
          plan.softmax_rows.push_back(
              SoftmaxRow{plan.p_floats + (static_cast<int64_t>(q) * plan.rows + i) * h.n, h.n,
                         gm::VisibleCount(h.positions, h.n, qpos), 1.0f});
        }
      }
      plan.p_floats += static_cast<int64_t>(G) * plan.rows * h.n;
    }
  } else if (kind == Kind::kExpected || IsCapScorer(kind)) {
    const float scale = kind == Kind::kExpected ? 1.0f / static_cast<float>(G) : 1.0f;
    for (int g = 0; g < Hk; ++g) {
      const HeadSpan& s = plan.spans[g];
      if (s.m == 0) continue;
      for (int q = 0; q < G; ++q) {
        plan.softmax_rows.push_back(
            SoftmaxRow{q * plan.total + plan.starts[g] + s.s0, s.m, s.m, scale});
      }
    }
  }
}

// The gather runs (device addresses from the request) and R̄ (query-moment scorers, as
// eviction::AveragedRotation).
void PlanInputs(const DeviceLayerRequest& r, LayerPlan& plan) {
  const DeviceScorerNeeds needs = DeviceNeeds(r.scorer.kind);
  if (needs.keys || needs.values) {
    for (int g = 0; g < plan.kv_heads; ++g) {
      int64_t dst = plan.starts[g];
      for (const DeviceTokenRun& run : r.heads[g].runs) {
        if (run.tokens == 0) continue;
        plan.runs.push_back(GatherRun{run.keys, run.values, run.tokens, dst});
        dst += run.tokens;
      }
    }
  }
  if (needs.query_moments) {
    const int pairs = plan.rotary_dim / 2;
    plan.cos_mean.resize(pairs);
    plan.sin_mean.resize(pairs);
    for (int i = 0; i < pairs; ++i) {
      const double f = r.rope.inv_freq == nullptr
                           ? gm::RopeInvFreq(r.rope.theta, i, plan.rotary_dim)
                           : static_cast<double>(r.rope.inv_freq[i]);
      gm::AveragedCosSin(static_cast<double>(plan.next), r.scorer.rope_horizon, f,
                         &plan.cos_mean[i], &plan.sin_mean[i]);
    }
  }
}

}  // namespace

LayerPlan PlanLayer(const DeviceLayerRequest& r) {
  LayerPlan plan;
  PlanHeads(r, plan);
  PlanSoftmax(r, plan);
  PlanInputs(r, plan);
  if (IsSketchScorer(r.scorer.kind)) PlanSketch(r, &plan);
  return plan;
}

void ExpectedTerms(const DeviceLayerRequest& r, const LayerPlan& plan, float* mu, float* var,
                   float* cos_f, float* minus_sin_f) {
  const int d = plan.d;
  const double inv_count = 1.0 / static_cast<double>(r.query_count);
  std::vector<float> discard(d);
  for (int h = 0; h < plan.q_heads; ++h) {
    const int64_t at = static_cast<int64_t>(h) * d;
    gm::ExpectedQueryTerms(r.query_sum + at, r.query_sq_sum ? r.query_sq_sum + at : nullptr,
                           inv_count, d, mu + at, var ? var + at : discard.data());
  }
  for (int i = 0; i < plan.rotary_dim / 2; ++i) {
    cos_f[i] = static_cast<float>(plan.cos_mean[i]);
    minus_sin_f[i] = static_cast<float>(-plan.sin_mean[i]);
  }
}

void CapAnchors(const DeviceLayerRequest& r, const LayerPlan& plan, float* anchor,
                float* anchor_norm) {
  const int d = plan.d;
  std::vector<double> a(d);
  for (int h = 0; h < plan.q_heads; ++h) {
    gm::AnchorQuery(r.query_sum + static_cast<int64_t>(h) * d,
                    1.0 / static_cast<double>(r.query_count), plan.cos_mean.data(),
                    plan.sin_mean.data(), d, plan.rotary_dim, r.rope.interleaved, a.data());
    float* af = anchor + static_cast<int64_t>(h) * d;
    for (int i = 0; i < d; ++i) af[i] = static_cast<float>(a[i]);
    anchor_norm[h] = std::sqrt(gm::SquaredNorm(af, d));
  }
}

void PackMass(const DeviceLayerRequest& r, const LayerPlan& plan, float* mass) {
  for (int h = 0; h < plan.q_heads; ++h) {
    const int g = h / plan.group, q = h % plan.group;
    const int n = r.heads[g].n;
    if (n > 0) {
      std::memcpy(mass + q * plan.total + plan.starts[g], r.attention_mass[h], sizeof(float) * n);
    }
  }
}

}  // namespace kvkeep::cuda_scoring
