#include "gpu/cuda/scoring/scratch_layout.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "gpu/cuda/scoring/sketch_plan.h"

namespace kvkeep::cuda_scoring {
namespace {

using Kind = DeviceScorerKind;

// Hands out 256-byte aligned offsets in order.
class Allocator {
 public:
  template <typename T>
  size_t Add(int64_t count) {
    const size_t offset = (size_ + 255) / 256 * 256;
    size_ = offset + sizeof(T) * static_cast<size_t>(std::max<int64_t>(count, 0));
    return offset;
  }
  template <typename T>
  size_t AddIf(bool used, int64_t count) {
    return used ? Add<T>(count) : kNone;
  }
  size_t size() const { return size_; }

 private:
  size_t size_ = 0;
};

bool WithMass(Kind k) { return k == Kind::kH2o || k == Kind::kObserved; }
bool WithGram(const DeviceLayerRequest& r) {
  return r.scorer.kind == Kind::kLaProx && r.wo_gram != nullptr;
}
bool ExactCapKv(Kind k) { return k == Kind::kCapKv || k == Kind::kCapKvDot; }

void LayoutUpload(const DeviceLayerRequest& r, const LayerPlan& plan, Allocator& alloc,
                  ScratchLayout& l) {
  const Kind kind = r.scorer.kind;
  const int Hk = plan.kv_heads, G = plan.group, d = plan.d;
  const int64_t N = plan.total, qd = static_cast<int64_t>(plan.q_heads) * d;
  const bool expected = kind == Kind::kExpected;
  l.spans = alloc.Add<HeadSpan>(Hk);
  l.starts = alloc.Add<int64_t>(Hk + 1);
  l.positions = alloc.Add<int32_t>(N);
  l.runs = alloc.Add<GatherRun>(static_cast<int64_t>(plan.runs.size()));
  l.softmax_rows = alloc.Add<SoftmaxRow>(static_cast<int64_t>(plan.softmax_rows.size()));
  l.p_offset = alloc.Add<int64_t>(Hk);
  l.mass = alloc.AddIf<float>(WithMass(kind), G * N);
  l.window_queries = alloc.AddIf<float>(IsWindowScorer(kind), qd * r.window);
  l.wo_gram = alloc.AddIf<float>(WithGram(r), qd * d);
  l.mu = alloc.AddIf<float>(expected, qd);
  l.var = alloc.AddIf<float>(expected && r.query_sq_sum != nullptr, qd);
  l.cos = alloc.AddIf<float>(expected, plan.rotary_dim / 2);
  l.minus_sin = alloc.AddIf<float>(expected, plan.rotary_dim / 2);
  l.anchor = alloc.AddIf<float>(IsCapScorer(kind), qd);
  l.anchor_norm = alloc.AddIf<float>(IsCapScorer(kind), plan.q_heads);
  l.chol_ptrs = alloc.AddIf<double*>(ExactCapKv(kind), plan.chol_batch);
  l.trsm_a = alloc.AddIf<double*>(ExactCapKv(kind), static_cast<int64_t>(Hk) * G);
  l.trsm_b = alloc.AddIf<double*>(ExactCapKv(kind), static_cast<int64_t>(Hk) * G);
  l.sketch_rows = alloc.AddIf<float>(IsSketchScorer(kind),
                                     static_cast<int64_t>(plan.sketch_rows.size()));
  l.sketch_coef = alloc.AddIf<float>(IsSketchScorer(kind),
                                     static_cast<int64_t>(plan.sketch_coef.size()));
  l.upload_bytes = alloc.size();
}

void LayoutDeviceScratch(const DeviceLayerRequest& r, const LayerPlan& plan, Allocator& alloc,
                         ScratchLayout& l) {
  const Kind kind = r.scorer.kind;
  const DeviceScorerNeeds needs = DeviceNeeds(kind);
  const int G = plan.group, d = plan.d;
  const int64_t N = plan.total, qd = static_cast<int64_t>(plan.q_heads) * d;
  const bool greedy = kind == Kind::kCapKvGreedy, capkv = ExactCapKv(kind);
  l.keys = alloc.AddIf<float>(needs.keys, N * d);
  l.values = alloc.AddIf<float>(needs.values, N * d);
  l.p = alloc.AddIf<float>(IsWindowScorer(kind) || IsSketchScorer(kind), plan.p_floats);
  l.col = alloc.AddIf<float>(IsWindowScorer(kind), G * N);
  l.vnorm = alloc.AddIf<float>(kind == Kind::kLaProx || kind == Kind::kExpected, G * N);
  l.vm = alloc.AddIf<float>(WithGram(r), static_cast<int64_t>(G) * plan.max_n * d);
  l.logits = alloc.AddIf<float>(kind == Kind::kExpected || IsCapScorer(kind), G * N);
  l.scaled = alloc.AddIf<float>(capkv, static_cast<int64_t>(G) * plan.max_m * d);
  l.gram = alloc.AddIf<float>(capkv, static_cast<int64_t>(G) * d * d);
  l.a = alloc.AddIf<double>(capkv, qd * d);
  l.y = alloc.AddIf<double>(capkv, static_cast<int64_t>(G) * plan.max_m * d);
  l.greedy_q = alloc.AddIf<double>(greedy, G * N);
  l.greedy_b = alloc.AddIf<double>(greedy, qd * d);
  l.greedy_z = alloc.AddIf<double>(greedy, qd);
  l.inv_denom = alloc.AddIf<double>(greedy, plan.q_heads);
  l.add = alloc.AddIf<int>(greedy, plan.kv_heads);
}

template <typename T>
T* At(char* base, size_t offset) {
  return reinterpret_cast<T*>(base + offset);
}

// capkv, capkv-dot: the batched Cholesky factors the (KV head, q head) matrices of heads with
// non-sink tokens; the triangular solves run per KV head over its G matrices.
void PackSolverPointers(const LayerPlan& plan, const ScratchLayout& l, char* scratch_base,
                        char* image) {
  const int G = plan.group, d = plan.d;
  double** chol = At<double*>(image, l.chol_ptrs);
  double** ta = At<double*>(image, l.trsm_a);
  double** tb = At<double*>(image, l.trsm_b);
  double* a_base = At<double>(scratch_base, l.a);
  double* y_base = At<double>(scratch_base, l.y);
  int b = 0;
  for (int g = 0; g < plan.kv_heads; ++g) {
    for (int q = 0; q < G; ++q) {
      double* a = a_base + (static_cast<int64_t>(g) * G + q) * d * d;
      if (plan.spans[g].m > 0) chol[b++] = a;
      ta[g * G + q] = a;
      tb[g * G + q] = y_base + static_cast<int64_t>(q) * plan.spans[g].m * d;
    }
  }
}

}  // namespace

int64_t SizeScores(const DeviceLayerRequest& request, std::vector<std::vector<float>>* scores) {
  scores->resize(request.kv_heads);
  int64_t total = 0;
  for (int g = 0; g < request.kv_heads; ++g) {
    (*scores)[g].resize(request.heads[g].n);
    total += request.heads[g].n;
  }
  return total;
}

ScratchLayout LayoutScratch(const DeviceLayerRequest& r, const LayerPlan& plan) {
  ScratchLayout l;
  Allocator alloc;
  LayoutUpload(r, plan, alloc, l);
  l.scores = alloc.Add<float>(plan.total);
  l.info = alloc.Add<int>(plan.chol_batch);
  l.download_bytes = alloc.size() - l.scores;
  LayoutDeviceScratch(r, plan, alloc, l);
  l.total_bytes = alloc.size();
  return l;
}

void PackUpload(const DeviceLayerRequest& r, const LayerPlan& plan, const ScratchLayout& l,
                char* scratch_base, char* image) {
  const int Hk = plan.kv_heads;
  const int64_t qd = static_cast<int64_t>(plan.q_heads) * plan.d;
  std::memcpy(image + l.spans, plan.spans.data(), sizeof(HeadSpan) * Hk);
  std::memcpy(image + l.starts, plan.starts.data(), sizeof(int64_t) * (Hk + 1));
  std::memcpy(image + l.positions, plan.positions.data(), sizeof(int32_t) * plan.total);
  if (!plan.runs.empty()) {
    std::memcpy(image + l.runs, plan.runs.data(), sizeof(GatherRun) * plan.runs.size());
  }
  if (!plan.softmax_rows.empty()) {
    std::memcpy(image + l.softmax_rows, plan.softmax_rows.data(),
                sizeof(SoftmaxRow) * plan.softmax_rows.size());
  }
  std::memcpy(image + l.p_offset, plan.p_offset.data(), sizeof(int64_t) * Hk);
  if (l.mass != kNone) PackMass(r, plan, At<float>(image, l.mass));
  if (l.window_queries != kNone) {
    std::memcpy(image + l.window_queries, r.window_queries, sizeof(float) * qd * r.window);
  }
  if (l.wo_gram != kNone) std::memcpy(image + l.wo_gram, r.wo_gram, sizeof(float) * qd * plan.d);
  if (l.mu != kNone) {
    ExpectedTerms(r, plan, At<float>(image, l.mu),
                  l.var != kNone ? At<float>(image, l.var) : nullptr, At<float>(image, l.cos),
                  At<float>(image, l.minus_sin));
  }
  if (l.anchor != kNone) {
    CapAnchors(r, plan, At<float>(image, l.anchor), At<float>(image, l.anchor_norm));
  }
  if (l.chol_ptrs != kNone) PackSolverPointers(plan, l, scratch_base, image);
  if (l.sketch_rows != kNone) {
    std::memcpy(image + l.sketch_rows, plan.sketch_rows.data(),
                sizeof(float) * plan.sketch_rows.size());
    std::memcpy(image + l.sketch_coef, plan.sketch_coef.data(),
                sizeof(float) * plan.sketch_coef.size());
  }
}

absl::Status ReadScores(const DeviceLayerRequest& r, const LayerPlan& plan,
                        const ScratchLayout& l, const char* downloaded,
                        std::vector<std::vector<float>>* scores) {
  const float* host_scores = reinterpret_cast<const float*>(downloaded);
  const int* info = reinterpret_cast<const int*>(downloaded + (l.info - l.scores));
  const int factored = l.chol_ptrs != kNone ? plan.chol_batch : 0;
  for (int b = 0; b < factored; ++b) {
    if (info[b] != 0) {
      return absl::InternalError(absl::StrCat("capkv: batched Cholesky failed for matrix ", b,
                                              " (info ", info[b], "): not positive definite"));
    }
  }
  for (int g = 0; g < plan.kv_heads; ++g) {
    std::vector<float>& s = (*scores)[g];
    std::memcpy(s.data(), host_scores + plan.starts[g], sizeof(float) * s.size());
    for (size_t j = 0; j < s.size(); ++j) {
      if (!std::isfinite(s[j])) {
        return absl::InvalidArgumentError(
            absl::StrCat("layer ", r.layer_index, " KV head ", g, " token ", j, " scored ", s[j],
                         " on the device: the keys or values hold a non-finite value"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace kvkeep::cuda_scoring
