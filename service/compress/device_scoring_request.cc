#include "service/compress/device_scoring_request.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvkeep {

namespace {

constexpr DeviceScorerKind DeviceKindOf(eviction::ScorerKind kind) {
  using eviction::ScorerKind;
  switch (kind) {
    case ScorerKind::kStreaming:
      return DeviceScorerKind::kStreaming;
    case ScorerKind::kRandom:
      return DeviceScorerKind::kRandom;
    case ScorerKind::kKnorm:
      return DeviceScorerKind::kKnorm;
    case ScorerKind::kTova:
      return DeviceScorerKind::kTova;
    case ScorerKind::kH2o:
      return DeviceScorerKind::kH2o;
    case ScorerKind::kObserved:
      return DeviceScorerKind::kObserved;
    case ScorerKind::kSnapKv:
      return DeviceScorerKind::kSnapKv;
    case ScorerKind::kExpected:
      return DeviceScorerKind::kExpected;
    case ScorerKind::kCapKv:
      return DeviceScorerKind::kCapKv;
    case ScorerKind::kCapKvDot:
      return DeviceScorerKind::kCapKvDot;
    case ScorerKind::kCapKvGreedy:
      return DeviceScorerKind::kCapKvGreedy;
    case ScorerKind::kLaProx:
      return DeviceScorerKind::kLaProx;
    case ScorerKind::kQSketch:
      return DeviceScorerKind::kQSketch;
    case ScorerKind::kQSketchPost:
      return DeviceScorerKind::kQSketchPost;
  }
  return DeviceScorerKind::kSnapKv;
}

// Both sides' defaults come from gpu/math/policy_defaults.h; the scorer kind is spelled in each
// enum, so check here that they agree.
static_assert(DeviceKindOf(eviction::Policy{}.scorer) == DeviceScorerParams{}.kind,
              "DeviceScorerParams' default scorer must be eviction::Policy's");

}  // namespace

DeviceScorerKind ToDeviceScorerKind(eviction::ScorerKind kind) { return DeviceKindOf(kind); }

DeviceScorerParams ToDeviceScorerParams(const eviction::Policy& policy) {
  DeviceScorerParams p;
  p.kind = ToDeviceScorerKind(policy.scorer);
  p.sinks = policy.sinks;
  p.window = policy.window;
  p.pool_kernel = policy.pool_kernel;
  p.pool_max = policy.pool_max;
  p.capkv_tau = policy.capkv_tau;
  p.rope_horizon = policy.rope_horizon;
  p.seed = policy.seed;
  p.greedy_picks = policy.greedy_picks;
  p.sketch_positions = policy.sketch_positions;
  p.sketch_horizon = policy.sketch_horizon;
  return p;
}

absl::Status BuildDeviceLayerRequest(const Model& model, const SequenceTable& table,
                                     const eviction::LayerInputs& in,
                                     const eviction::Policy& policy, uint32_t layer,
                                     const PageAddressFn& page_address, DeviceLayerRequest* out) {
  const PageGeometry& geo = model.geometry();
  switch (geo.dtype) {
    case v1::DTYPE_FP32:
      out->dtype = DevicePageDType::kFp32;
      break;
    case v1::DTYPE_FP16:
      out->dtype = DevicePageDType::kFp16;
      break;
    case v1::DTYPE_BF16:
      out->dtype = DevicePageDType::kBf16;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("page dtype ", static_cast<int>(geo.dtype),
                                                     " cannot be scored on a device"));
  }
  out->q_heads = in.q_heads;
  out->kv_heads = in.kv_heads;
  out->head_dim = in.head_dim;
  out->layer_index = in.layer_index;
  out->scorer = ToDeviceScorerParams(policy);
  out->rope.theta = in.rope.theta;
  out->rope.rotary_dim = in.rope.rotary_dim;
  out->rope.interleaved = in.rope.interleaved;
  out->rope.inv_freq = in.rope.inv_freq.empty() ? nullptr : in.rope.inv_freq.data();
  out->next_position = in.next_position;
  out->window = in.window;
  out->window_queries = in.window_queries.empty() ? nullptr : in.window_queries.data();
  out->query_sum = in.query_sum.empty() ? nullptr : in.query_sum.data();
  out->query_sq_sum = in.query_sq_sum.empty() ? nullptr : in.query_sq_sum.data();
  out->query_count = in.query_count;
  out->attention_mass.clear();
  for (const std::vector<float>& m : in.attention_mass) out->attention_mass.push_back(m.data());
  out->wo_gram = in.wo_gram.empty() ? nullptr : in.wo_gram.data();
  out->sketch_k = in.sketch_k;
  out->sketch_centroids = in.sketch_centroids.empty() ? nullptr : in.sketch_centroids.data();
  out->sketch_weights = in.sketch_weights.empty() ? nullptr : in.sketch_weights.data();
  out->sketch_post_rope = in.sketch_post_rope;

  out->heads.resize(in.kv_heads);
  for (int g = 0; g < in.kv_heads; ++g) {
    const uint32_t h = layer * model.kv_heads() + static_cast<uint32_t>(g);
    DeviceHeadRequest& head = out->heads[g];
    head.n = in.heads[g].n;
    head.positions = in.heads[g].positions;
    head.runs.clear();
    absl::Status status;
    const absl::Status walked = table.ForEachSegment(
        h, 0, table.head(h).count, [&](uint64_t page, uint32_t slot, uint32_t count, uint64_t) {
          if (!status.ok()) return;
          absl::StatusOr<const char*> base = page_address(page);
          if (!base.ok()) {
            status = base.status();
            return;
          }
          const size_t at = size_t{slot} * geo.token_bytes;
          head.runs.push_back(DeviceTokenRun{*base + at, *base + geo.value_offset + at, count});
        });
    if (!walked.ok() || !status.ok()) {
      const absl::Status& bad = walked.ok() ? status : walked;
      return absl::Status(bad.code(),
                          absl::StrCat("layer ", layer, " KV head ", g, ": ", bad.message()));
    }
  }
  return absl::OkStatus();
}

}  // namespace kvkeep
