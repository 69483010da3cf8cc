#include "service/eviction/layer_inputs_sketch.h"

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "absl/strings/str_cat.h"
#include "gpu/math/policy_defaults.h"
#include "service/eviction/finite_scan.h"

namespace kvkeep::eviction {
namespace {

absl::Status CheckShape(const LayerInputs& in) {
  if (in.sketch_k < 1 || in.sketch_k > policy_defaults::kMaxSketchCentroids) {
    return absl::InvalidArgumentError(
        absl::StrCat("sketch_k must be in [1, ", policy_defaults::kMaxSketchCentroids,
                     "] when a query sketch is sent, got ", in.sketch_k));
  }
  const int64_t slots = static_cast<int64_t>(in.q_heads) * in.sketch_k;
  if (static_cast<int64_t>(in.sketch_weights.size()) != slots) {
    return absl::InvalidArgumentError(
        absl::StrCat("sketch_weights has ", in.sketch_weights.size(),
                     " entries, expected q_heads * sketch_k = ", slots));
  }
  if (static_cast<int64_t>(in.sketch_centroids.size()) != slots * in.head_dim) {
    return absl::InvalidArgumentError(
        absl::StrCat("sketch_centroids has ", in.sketch_centroids.size(),
                     " floats, expected q_heads * sketch_k * head_dim = ", slots * in.head_dim));
  }
  return absl::OkStatus();
}

absl::Status CheckValues(const LayerInputs& in) {
  const int64_t bad = FirstNonFinite(in.sketch_centroids.data(),
                                     static_cast<int64_t>(in.sketch_centroids.size()));
  if (bad >= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "sketch_centroids holds a non-finite value (", in.sketch_centroids[bad],
        ") at flat index ", bad));
  }
  for (int h = 0; h < in.q_heads; ++h) {
    bool any_positive = false;
    for (int c = 0; c < in.sketch_k; ++c) {
      const float w = in.sketch_weights[static_cast<size_t>(h) * in.sketch_k + c];
      if (!std::isfinite(w) || w < 0) {
        return absl::InvalidArgumentError(absl::StrCat(
            "sketch_weights[", h, "][", c, "] must be finite and >= 0, got ", w));
      }
      any_positive = any_positive || w > 0;
    }
    if (!any_positive) {
      return absl::InvalidArgumentError(
          absl::StrCat("sketch_weights of query head ", h, " are all 0 (no centroid)"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckQuerySketch(const LayerInputs& in, const Needs& needs, const Policy& policy) {
  const bool sent =
      in.sketch_k != 0 || !in.sketch_centroids.empty() || !in.sketch_weights.empty();
  if (!sent) {
    if (!needs.query_sketch) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(
        "scorer \"", ScorerName(policy.scorer), "\" needs a query sketch, which was not sent"));
  }
  if (absl::Status s = CheckShape(in); !s.ok()) return s;
  if (absl::Status s = CheckValues(in); !s.ok()) return s;
  if (IsSketchScorer(policy.scorer) &&
      in.sketch_post_rope != SketchScorerWantsPostRope(policy.scorer)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "scorer \"", ScorerName(policy.scorer), "\" needs a sketch of ",
        SketchScorerWantsPostRope(policy.scorer) ? "post" : "pre", "-RoPE queries, got one of ",
        in.sketch_post_rope ? "post" : "pre", "-RoPE queries"));
  }
  return absl::OkStatus();
}

}  // namespace kvkeep::eviction
