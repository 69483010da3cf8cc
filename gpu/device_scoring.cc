#include "gpu/device_scoring.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace kvkeep {
namespace {

template <typename T>
absl::Status CheckFinite(const T* x, int64_t count, absl::string_view what) {
  for (int64_t i = 0; i < count; ++i) {
    if (!std::isfinite(static_cast<double>(x[i]))) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " holds a non-finite value (", static_cast<double>(x[i]), ") at flat index ", i));
    }
  }
  return absl::OkStatus();
}

absl::Status Missing(absl::string_view what) {
  return absl::FailedPreconditionError(
      absl::StrCat("the device scorer needs ", what, ", which was not sent"));
}

}  // namespace

DeviceScorerNeeds DeviceNeeds(DeviceScorerKind kind) {
  DeviceScorerNeeds n;
  switch (kind) {
    case DeviceScorerKind::kStreaming:
    case DeviceScorerKind::kRandom:
      break;
    case DeviceScorerKind::kKnorm:
      n.keys = true;
      break;
    case DeviceScorerKind::kTova:
    case DeviceScorerKind::kSnapKv:
      n.keys = n.window_queries = true;
      break;
    case DeviceScorerKind::kH2o:
    case DeviceScorerKind::kObserved:
      n.attention_mass = true;
      break;
    case DeviceScorerKind::kExpected:
    case DeviceScorerKind::kCapKv:
    case DeviceScorerKind::kCapKvDot:
    case DeviceScorerKind::kCapKvGreedy:
      n.keys = n.values = n.query_moments = true;
      break;
    case DeviceScorerKind::kLaProx:
      n.keys = n.values = n.window_queries = true;
      break;
    case DeviceScorerKind::kQSketch:
    case DeviceScorerKind::kQSketchPost:
      n.keys = n.query_sketch = true;
      break;
  }
  return n;
}

namespace {

absl::Status CheckScorerParams(const DeviceScorerParams& p) {
  if (static_cast<int>(p.kind) < 0 ||
      static_cast<int>(p.kind) > static_cast<int>(DeviceScorerKind::kQSketchPost)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown device scorer kind ", static_cast<int>(p.kind)));
  }
  if (p.sinks < 0 || p.window < 0 || p.pool_kernel < 1 || p.pool_kernel % 2 == 0 ||
      !(p.capkv_tau > 0) || !std::isfinite(p.capkv_tau) || p.rope_horizon < 1 ||
      p.greedy_picks < 0 || p.sketch_positions < 1 ||
      p.sketch_positions > policy_defaults::kMaxSketchPositions || p.sketch_horizon < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad scorer parameters: sinks ", p.sinks, ", window ", p.window,
                     ", pool_kernel ", p.pool_kernel, " (odd, >= 1), capkv_tau ", p.capkv_tau,
                     ", rope_horizon ", p.rope_horizon, ", greedy_picks ", p.greedy_picks,
                     ", sketch_positions ", p.sketch_positions, " (<= ",
                     policy_defaults::kMaxSketchPositions, "), sketch_horizon ",
                     p.sketch_horizon));
  }
  return absl::OkStatus();
}

// Head counts, head_dim, dtype and the RoPE spec.
absl::Status CheckShapes(const DeviceLayerRequest& r) {
  if (r.q_heads <= 0 || r.kv_heads <= 0 || r.q_heads % r.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("q_heads (", r.q_heads, ") must be a positive ",
                                                   "multiple of kv_heads (", r.kv_heads, ")"));
  }
  const int d = r.head_dim;
  if (d < 1 || d > kMaxDeviceHeadDim) {
    return absl::InvalidArgumentError(absl::StrCat("head_dim ", d, " is not supported by the ",
                                                   "device kernels (1..", kMaxDeviceHeadDim, ")"));
  }
  if (static_cast<int>(r.heads.size()) != r.kv_heads) {
    return absl::InvalidArgumentError(
        absl::StrCat("heads has ", r.heads.size(), " entries, expected kv_heads = ", r.kv_heads));
  }
  if (r.dtype != DevicePageDType::kFp32 && r.dtype != DevicePageDType::kFp16 &&
      r.dtype != DevicePageDType::kBf16) {
    return absl::InvalidArgumentError("unknown page dtype");
  }
  const int rd = r.rope.rotary_dim == 0 ? d : r.rope.rotary_dim;
  if (rd < 0 || rd > d || rd % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("rope.rotary_dim (", r.rope.rotary_dim,
                                                   ") must be even and <= head_dim (", d, ")"));
  }
  if (r.rope.inv_freq != nullptr) return CheckFinite(r.rope.inv_freq, rd / 2, "rope.inv_freq");
  if (!(r.rope.theta > 0) || std::isinf(r.rope.theta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope.theta must be finite and > 0, got ", r.rope.theta));
  }
  return absl::OkStatus();
}

// Head g's runs: device addresses present where the scorer reads, element-aligned, and adding up
// to n tokens.
absl::Status CheckRuns(const DeviceLayerRequest& r, int g, const DeviceScorerNeeds& needs) {
  const DeviceHeadRequest& h = r.heads[g];
  const uintptr_t element_bytes = r.dtype == DevicePageDType::kFp32 ? 4 : 2;
  int64_t tokens = 0;
  for (size_t i = 0; i < h.runs.size(); ++i) {
    const DeviceTokenRun& run = h.runs[i];
    if ((needs.keys && run.keys == nullptr) || (needs.values && run.values == nullptr)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "heads[", g, "].runs[", i, "] has a null device address for data the scorer reads"));
    }
    // The gather kernel loads whole elements: an address off the element size would fault
    // (cudaErrorMisalignedAddress, which also poisons the context).
    const auto misaligned = [&](const void* at) {
      return at != nullptr && reinterpret_cast<uintptr_t>(at) % element_bytes != 0;
    };
    if ((needs.keys && misaligned(run.keys)) || (needs.values && misaligned(run.values))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "heads[", g, "].runs[", i, "] has a device address that is not a multiple of the ",
          element_bytes, "-byte element size"));
    }
    tokens += run.tokens;
  }
  if ((needs.keys || needs.values) && tokens != h.n) {
    return absl::InvalidArgumentError(
        absl::StrCat("heads[", g, "].runs hold ", tokens, " tokens, expected n = ", h.n));
  }
  return absl::OkStatus();
}

// Every head's token count, runs and positions; *max_position gets the largest cached position
// (-1 when no head holds a token).
absl::Status CheckHeads(const DeviceLayerRequest& r, int64_t* max_position) {
  const DeviceScorerNeeds needs = DeviceNeeds(r.scorer.kind);
  *max_position = -1;
  for (int g = 0; g < r.kv_heads; ++g) {
    const DeviceHeadRequest& h = r.heads[g];
    if (h.n < 0) {
      return absl::InvalidArgumentError(absl::StrCat("heads[", g, "].n is negative (", h.n, ")"));
    }
    if (absl::Status s = CheckRuns(r, g, needs); !s.ok()) return s;
    if (h.n == 0) continue;
    if (h.positions != nullptr) {
      if (h.positions[0] < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("heads[", g, "].positions[0] is negative (", h.positions[0], ")"));
      }
      for (int j = 1; j < h.n; ++j) {
        if (h.positions[j] <= h.positions[j - 1]) {
          return absl::InvalidArgumentError(
              absl::StrCat("heads[", g, "].positions are not strictly ascending at index ", j));
        }
      }
    }
    *max_position =
        std::max<int64_t>(*max_position, h.positions ? h.positions[h.n - 1] : h.n - 1);
  }
  return absl::OkStatus();
}

// The query sketch, as eviction's CheckQuerySketch: K bound, finite, weights >= 0 with one > 0
// per q head, and the side of RoPE the scorer reads.
absl::Status CheckSketch(const DeviceLayerRequest& r, const DeviceScorerNeeds& needs) {
  if (r.sketch_k == 0 && r.sketch_centroids == nullptr && r.sketch_weights == nullptr) {
    return needs.query_sketch ? Missing("a query sketch") : absl::OkStatus();
  }
  if (r.sketch_k < 1 || r.sketch_k > policy_defaults::kMaxSketchCentroids ||
      r.sketch_centroids == nullptr || r.sketch_weights == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("sketch_k (", r.sketch_k, ") must be in [1, ",
                     policy_defaults::kMaxSketchCentroids,
                     "] with sketch_centroids and sketch_weights sent"));
  }
  const int64_t slots = static_cast<int64_t>(r.q_heads) * r.sketch_k;
  if (absl::Status s = CheckFinite(r.sketch_centroids, slots * r.head_dim, "sketch_centroids");
      !s.ok()) {
    return s;
  }
  for (int h = 0; h < r.q_heads; ++h) {
    bool any = false;
    for (int c = 0; c < r.sketch_k; ++c) {
      const float w = r.sketch_weights[static_cast<int64_t>(h) * r.sketch_k + c];
      if (!std::isfinite(w) || w < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("sketch_weights[", h, "][", c, "] must be finite and >= 0, got ", w));
      }
      any = any || w > 0;
    }
    if (!any) {
      return absl::InvalidArgumentError(
          absl::StrCat("sketch_weights of query head ", h, " are all 0 (no centroid)"));
    }
  }
  const bool wants_post = r.scorer.kind == DeviceScorerKind::kQSketchPost;
  if (needs.query_sketch && r.sketch_post_rope != wants_post) {
    return absl::FailedPreconditionError(
        absl::StrCat("the device scorer needs a sketch of ", wants_post ? "post" : "pre",
                     "-RoPE queries, got one of ", r.sketch_post_rope ? "post" : "pre",
                     "-RoPE queries"));
  }
  return absl::OkStatus();
}

absl::Status CheckAttentionMass(const DeviceLayerRequest& r) {
  if (static_cast<int>(r.attention_mass.size()) != r.q_heads) {
    return absl::InvalidArgumentError(absl::StrCat("attention_mass has ", r.attention_mass.size(),
                                                   " rows, expected q_heads = ", r.q_heads));
  }
  const int group = r.q_heads / r.kv_heads;
  for (int h = 0; h < r.q_heads; ++h) {
    const int n = r.heads[h / group].n;
    if (r.attention_mass[h] == nullptr && n > 0) {
      return absl::InvalidArgumentError(absl::StrCat("attention_mass[", h, "] is null"));
    }
    if (absl::Status s =
            CheckFinite(r.attention_mass[h], n, absl::StrCat("attention_mass[", h, "]"));
        !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

// The host statistics: present when the scorer needs them, consistent and finite when sent.
absl::Status CheckStatistics(const DeviceLayerRequest& r, int64_t next) {
  const DeviceScorerNeeds needs = DeviceNeeds(r.scorer.kind);
  const int64_t qd = static_cast<int64_t>(r.q_heads) * r.head_dim;
  if (r.window_queries != nullptr || r.window != 0) {
    if (r.window <= 0 || r.window_queries == nullptr || r.window > next) {
      return absl::InvalidArgumentError(absl::StrCat("window (", r.window, ") must be in [1, ",
                                                     next, "] with window_queries sent"));
    }
    if (absl::Status s = CheckFinite(r.window_queries, qd * r.window, "window_queries"); !s.ok()) {
      return s;
    }
  } else if (needs.window_queries) {
    return Missing("window_queries (window > 0)");
  }
  if (r.query_sum != nullptr) {
    if (r.query_count <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("query_count must be > 0 when query_sum is sent, got ", r.query_count));
    }
    if (absl::Status s = CheckFinite(r.query_sum, qd, "query_sum"); !s.ok()) return s;
  } else if (needs.query_moments) {
    return Missing("query moments (query_sum, query_count)");
  }
  if (r.query_sq_sum != nullptr) {
    if (r.query_sum == nullptr) {
      return absl::InvalidArgumentError("query_sq_sum was sent without query_sum");
    }
    if (absl::Status s = CheckFinite(r.query_sq_sum, qd, "query_sq_sum"); !s.ok()) return s;
  }
  if (!r.attention_mass.empty()) {
    if (absl::Status s = CheckAttentionMass(r); !s.ok()) return s;
  } else if (needs.attention_mass) {
    return Missing("attention_mass");
  }
  if (r.wo_gram != nullptr) {
    if (absl::Status s = CheckFinite(r.wo_gram, qd * r.head_dim, "wo_gram"); !s.ok()) return s;
  }
  return CheckSketch(r, needs);
}

}  // namespace

absl::Status ValidateDeviceLayerRequest(const DeviceLayerRequest& r) {
  if (absl::Status s = CheckScorerParams(r.scorer); !s.ok()) return s;
  if (absl::Status s = CheckShapes(r); !s.ok()) return s;
  int64_t max_position = -1;
  if (absl::Status s = CheckHeads(r, &max_position); !s.ok()) return s;
  if (r.next_position < 0 || (r.next_position != 0 && r.next_position <= max_position)) {
    return absl::InvalidArgumentError(absl::StrCat("next_position (", r.next_position,
                                                   ") must exceed the largest cached position (",
                                                   max_position, ")"));
  }
  return CheckStatistics(r, r.next_position != 0 ? r.next_position : max_position + 1);
}

}  // namespace kvkeep
