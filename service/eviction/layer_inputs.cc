#include "service/eviction/layer_inputs.h"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "service/eviction/finite_scan.h"
#include "service/eviction/layer_inputs_sketch.h"

namespace kvkeep::eviction {
namespace {

inline int32_t PositionOf(const HeadKV& h, int j) { return h.positions ? h.positions[j] : j; }

template <typename T>
absl::Status CheckFinite(const T* x, int64_t count, absl::string_view what) {
  const int64_t bad = FirstNonFinite(x, count);
  if (bad >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " holds a non-finite value (", static_cast<double>(x[bad]),
                     ") at flat index ", bad));
  }
  return absl::OkStatus();
}

absl::Status Missing(const Policy& policy, absl::string_view what) {
  return absl::FailedPreconditionError(absl::StrCat(
      "scorer \"", ScorerName(policy.scorer), "\" needs ", what, ", which was not sent"));
}

// Head counts, head_dim and the RoPE description.
absl::Status CheckShapeAndRope(const LayerInputs& in) {
  if (in.q_heads <= 0 || in.kv_heads <= 0 || in.head_dim <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "q_heads (", in.q_heads, "), kv_heads (", in.kv_heads, ") and head_dim (", in.head_dim,
        ") must be > 0"));
  }
  if (in.q_heads % in.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("q_heads (", in.q_heads,
                                                   ") is not a multiple of kv_heads (",
                                                   in.kv_heads, ")"));
  }
  if (static_cast<int>(in.heads.size()) != in.kv_heads) {
    return absl::InvalidArgumentError(absl::StrCat("heads has ", in.heads.size(),
                                                   " entries, expected kv_heads = ", in.kv_heads));
  }
  const int d = in.head_dim;
  const int rd = EffectiveRotaryDim(in);
  if (rd < 0 || rd > d || rd % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "rope.rotary_dim (", in.rope.rotary_dim, ") must be even and <= head_dim (", d, ")"));
  }
  if (!in.rope.inv_freq.empty()) {
    if (static_cast<int>(in.rope.inv_freq.size()) != rd / 2) {
      return absl::InvalidArgumentError(absl::StrCat("rope.inv_freq has ", in.rope.inv_freq.size(),
                                                     " entries, expected rotary_dim / 2 = ", rd / 2));
    }
    return CheckFinite(in.rope.inv_freq.data(), static_cast<int64_t>(in.rope.inv_freq.size()),
                       "rope.inv_freq");
  }
  if (!(in.rope.theta > 0) || std::isinf(in.rope.theta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rope.theta must be finite and > 0, got ", in.rope.theta));
  }
  return absl::OkStatus();
}

// The NaN/Inf scan of head g's keys and values that the scorer reads.
absl::Status ScanHead(const LayerInputs& in, int g, const Needs& needs) {
  const HeadKV& h = in.heads[g];
  if (h.n <= 0) return absl::OkStatus();
  const int64_t count = static_cast<int64_t>(h.n) * in.head_dim;
  if (needs.keys) {
    RETURN_IF_ERROR(CheckFinite(h.keys, count, absl::StrCat("heads[", g, "].keys")));
  }
  if (needs.values) {
    RETURN_IF_ERROR(CheckFinite(h.values, count, absl::StrCat("heads[", g, "].values")));
  }
  return absl::OkStatus();
}

absl::Status ScanAttentionMass(const LayerInputs& in) {
  for (size_t h = 0; h < in.attention_mass.size(); ++h) {
    const std::vector<float>& m = in.attention_mass[h];
    RETURN_IF_ERROR(CheckFinite(m.data(), static_cast<int64_t>(m.size()),
                                absl::StrCat("attention_mass[", h, "]")));
  }
  return absl::OkStatus();
}

// One head g: its length, the tensors the scorer reads (`needs`), and ascending positions; the
// NaN/Inf scan of those tensors when `scan`.
absl::Status CheckHead(const LayerInputs& in, int g, const Needs& needs, const Policy& policy,
                       bool scan) {
  const HeadKV& h = in.heads[g];
  if (h.n < 0) {
    return absl::InvalidArgumentError(absl::StrCat("heads[", g, "].n is negative (", h.n, ")"));
  }
  if (h.n == 0) return absl::OkStatus();
  if (needs.keys && h.keys == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("heads[", g, "].keys is null with n = ", h.n,
                                                   " (scorer \"", ScorerName(policy.scorer),
                                                   "\" reads keys)"));
  }
  if (needs.values && h.values == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat("heads[", g, "].values is null with n = ", h.n,
                                                   " (scorer \"", ScorerName(policy.scorer),
                                                   "\" reads values)"));
  }
  if (h.positions != nullptr) {
    if (h.positions[0] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("heads[", g, "].positions[0] is negative (", h.positions[0], ")"));
    }
    for (int j = 1; j < h.n; ++j) {
      if (h.positions[j] <= h.positions[j - 1]) {
        return absl::InvalidArgumentError(absl::StrCat(
            "heads[", g, "].positions are not strictly ascending at index ", j, " (",
            h.positions[j - 1], " then ", h.positions[j], ")"));
      }
    }
  }
  return scan ? ScanHead(in, g, needs) : absl::OkStatus();
}

// next_position against the largest cached position of every head.
absl::Status CheckNextPosition(const LayerInputs& in) {
  int64_t max_position = -1;
  for (const HeadKV& h : in.heads) {
    if (h.n > 0) max_position = std::max<int64_t>(max_position, PositionOf(h, h.n - 1));
  }
  if (in.next_position < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("next_position must be >= 0, got ", in.next_position));
  }
  if (in.next_position != 0 && in.next_position <= max_position) {
    return absl::InvalidArgumentError(absl::StrCat("next_position (", in.next_position,
                                                   ") must exceed the largest cached position (",
                                                   max_position, ")"));
  }
  return absl::OkStatus();
}

absl::Status CheckWindowQueries(const LayerInputs& in, const Needs& needs, const Policy& policy) {
  const int64_t qd = static_cast<int64_t>(in.q_heads) * in.head_dim;
  if (in.window_queries.empty() && in.window == 0) {
    if (needs.window_queries) return Missing(policy, "window_queries (window > 0)");
    return absl::OkStatus();
  }
  if (in.window <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("window must be > 0 when window_queries are sent, got ", in.window));
  }
  if (static_cast<int64_t>(in.window_queries.size()) != qd * in.window) {
    return absl::InvalidArgumentError(absl::StrCat(
        "window_queries has ", in.window_queries.size(), " floats, expected q_heads * window * "
        "head_dim = ", qd * in.window));
  }
  const int64_t next = EffectiveNextPosition(in);
  if (in.window > next) {
    return absl::InvalidArgumentError(absl::StrCat("window (", in.window,
                                                   ") exceeds next_position (", next, ")"));
  }
  return CheckFinite(in.window_queries.data(), static_cast<int64_t>(in.window_queries.size()),
                     "window_queries");
}

absl::Status CheckQueryMoments(const LayerInputs& in, const Needs& needs, const Policy& policy) {
  const int64_t qd = static_cast<int64_t>(in.q_heads) * in.head_dim;
  if (!in.query_sum.empty()) {
    if (static_cast<int64_t>(in.query_sum.size()) != qd) {
      return absl::InvalidArgumentError(absl::StrCat("query_sum has ", in.query_sum.size(),
                                                     " entries, expected q_heads * head_dim = ", qd));
    }
    if (in.query_count <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("query_count must be > 0 when query_sum is sent, got ", in.query_count));
    }
    RETURN_IF_ERROR(CheckFinite(in.query_sum.data(), qd, "query_sum"));
  } else if (needs.query_moments) {
    return Missing(policy, "query moments (query_sum, query_count)");
  }
  if (in.query_sq_sum.empty()) return absl::OkStatus();
  if (in.query_sum.empty()) {
    return absl::InvalidArgumentError("query_sq_sum was sent without query_sum");
  }
  if (static_cast<int64_t>(in.query_sq_sum.size()) != qd) {
    return absl::InvalidArgumentError(absl::StrCat("query_sq_sum has ", in.query_sq_sum.size(),
                                                   " entries, expected q_heads * head_dim = ", qd));
  }
  return CheckFinite(in.query_sq_sum.data(), qd, "query_sq_sum");
}

absl::Status CheckAttentionMass(const LayerInputs& in, const Needs& needs, const Policy& policy,
                                bool scan) {
  if (in.attention_mass.empty()) {
    if (needs.attention_mass) return Missing(policy, "attention_mass");
    return absl::OkStatus();
  }
  if (static_cast<int>(in.attention_mass.size()) != in.q_heads) {
    return absl::InvalidArgumentError(absl::StrCat("attention_mass has ", in.attention_mass.size(),
                                                   " rows, expected q_heads = ", in.q_heads));
  }
  const int group = in.q_heads / in.kv_heads;
  for (int h = 0; h < in.q_heads; ++h) {
    const std::vector<float>& m = in.attention_mass[h];
    const int n = in.heads[h / group].n;
    if (static_cast<int>(m.size()) != n) {
      return absl::InvalidArgumentError(absl::StrCat("attention_mass[", h, "] has ", m.size(),
                                                     " entries, expected heads[", h / group,
                                                     "].n = ", n));
    }
  }
  return scan ? ScanAttentionMass(in) : absl::OkStatus();
}

absl::Status CheckWoGram(const LayerInputs& in) {
  if (in.wo_gram.empty()) return absl::OkStatus();
  const int64_t qdd = static_cast<int64_t>(in.q_heads) * in.head_dim * in.head_dim;
  if (static_cast<int64_t>(in.wo_gram.size()) != qdd) {
    return absl::InvalidArgumentError(absl::StrCat("wo_gram has ", in.wo_gram.size(),
                                                   " floats, expected q_heads * head_dim^2 = ",
                                                   qdd));
  }
  return CheckFinite(in.wo_gram.data(), qdd, "wo_gram");
}

}  // namespace

int64_t EffectiveNextPosition(const LayerInputs& in) {
  if (in.next_position != 0) return in.next_position;
  int64_t next = 0;
  for (const HeadKV& h : in.heads) {
    if (h.n > 0) next = std::max<int64_t>(next, int64_t{PositionOf(h, h.n - 1)} + 1);
  }
  return next;
}

int EffectiveRotaryDim(const LayerInputs& in) {
  return in.rope.rotary_dim == 0 ? in.head_dim : in.rope.rotary_dim;
}

namespace {

// scan_tensors: the NaN/Inf scans of keys and values; scan_mass: that of attention_mass.
absl::Status Validate(const LayerInputs& in, const Policy& policy, const Needs& needs,
                      bool scan_tensors, bool scan_mass) {
  RETURN_IF_ERROR(CheckShapeAndRope(in));
  for (int g = 0; g < in.kv_heads; ++g) {
    RETURN_IF_ERROR(CheckHead(in, g, needs, policy, scan_tensors));
  }
  RETURN_IF_ERROR(CheckNextPosition(in));
  RETURN_IF_ERROR(CheckWindowQueries(in, needs, policy));
  RETURN_IF_ERROR(CheckQueryMoments(in, needs, policy));
  RETURN_IF_ERROR(CheckAttentionMass(in, needs, policy, scan_mass));
  RETURN_IF_ERROR(CheckQuerySketch(in, needs, policy));
  return CheckWoGram(in);
}

}  // namespace

absl::Status ValidateLayerInputs(const LayerInputs& in, const Policy& policy, bool check_tensors) {
  Needs needs = ScorerNeeds(policy.scorer);
  if (!check_tensors) needs.keys = needs.values = false;
  return Validate(in, policy, needs, /*scan_tensors=*/true, /*scan_mass=*/true);
}

absl::Status ValidateLayerInputsDeferringScans(const LayerInputs& in, const Policy& policy) {
  const Needs needs = ScorerNeeds(policy.scorer);
  return Validate(in, policy, needs, /*scan_tensors=*/false, /*scan_mass=*/!needs.attention_mass);
}

absl::Status ScanLayerTensors(const LayerInputs& in, const Policy& policy) {
  const Needs needs = ScorerNeeds(policy.scorer);
  for (int g = 0; g < in.kv_heads; ++g) RETURN_IF_ERROR(ScanHead(in, g, needs));
  return needs.attention_mass ? ScanAttentionMass(in) : absl::OkStatus();
}

}  // namespace kvkeep::eviction
