#include "service/eviction/policy.h"

#include <cmath>
#include <string>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace kvkeep::eviction {
namespace {

struct ScorerEntry {
  ScorerKind kind;
  absl::string_view name;
};
constexpr ScorerEntry kScorers[] = {
    {ScorerKind::kStreaming, "streaming"}, {ScorerKind::kRandom, "random"},
    {ScorerKind::kKnorm, "knorm"},         {ScorerKind::kTova, "tova"},
    {ScorerKind::kH2o, "h2o"},             {ScorerKind::kObserved, "observed"},
    {ScorerKind::kSnapKv, "snapkv"},       {ScorerKind::kExpected, "expected"},
    {ScorerKind::kCapKv, "capkv"},         {ScorerKind::kCapKvDot, "capkv-dot"},
    {ScorerKind::kCapKvGreedy, "capkv-greedy"}, {ScorerKind::kLaProx, "laprox"},
    {ScorerKind::kQSketch, "qsketch"},     {ScorerKind::kQSketchPost, "qsketch-post"},
};

constexpr bool NamesScorer(std::string_view name, ScorerKind kind) {
  for (const ScorerEntry& e : kScorers) {
    if (e.kind == kind) return std::string_view(e.name.data(), e.name.size()) == name;
  }
  return false;
}
static_assert(NamesScorer(policy_defaults::kScorerName, kDefaultScorer),
              "kDefaultScorer must be the scorer policy_defaults::kScorerName names");

struct AllocationEntry {
  Allocation allocation;
  absl::string_view name;
};
constexpr AllocationEntry kAllocations[] = {
    {Allocation::kUniform, "uniform"},
    {Allocation::kAda, "ada"},
    {Allocation::kPyramid, "pyramid"},
    {Allocation::kGlobal, "global"},
    {Allocation::kSequence, "sequence"},
};

absl::Status ValidateSketchPolicy(const Policy& p) {
  if (p.sketch_positions < 1 || p.sketch_positions > policy_defaults::kMaxSketchPositions) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.sketch_positions must be in [1, ", policy_defaults::kMaxSketchPositions,
                     "], got ", p.sketch_positions));
  }
  if (p.sketch_horizon < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.sketch_horizon must be >= 1, got ", p.sketch_horizon));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ScorerKind> ParseScorer(absl::string_view name) {
  std::string known;
  for (const ScorerEntry& e : kScorers) {
    if (e.name == name) return e.kind;
    absl::StrAppend(&known, known.empty() ? "" : ", ", e.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown scorer \"", name, "\"; expected one of: ", known));
}

absl::string_view ScorerName(ScorerKind kind) {
  for (const ScorerEntry& e : kScorers) {
    if (e.kind == kind) return e.name;
  }
  return "unknown";
}

absl::StatusOr<Allocation> ParseAllocation(absl::string_view name) {
  std::string known;
  for (const AllocationEntry& e : kAllocations) {
    if (e.name == name) return e.allocation;
    absl::StrAppend(&known, known.empty() ? "" : ", ", e.name);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown allocation \"", name, "\"; expected one of: ", known));
}

absl::string_view AllocationName(Allocation allocation) {
  for (const AllocationEntry& e : kAllocations) {
    if (e.allocation == allocation) return e.name;
  }
  return "unknown";
}

Allocation DefaultAllocation(ScorerKind kind) {
  return kind == ScorerKind::kLaProx ? Allocation::kGlobal : Allocation::kUniform;
}

absl::Status ValidatePolicy(const Policy& p) {
  if (ScorerName(p.scorer) == "unknown") {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.scorer: unknown value ", static_cast<int>(p.scorer)));
  }
  if (AllocationName(p.allocation) == "unknown") {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.allocation: unknown value ", static_cast<int>(p.allocation)));
  }
  if (p.sinks < 0) {
    return absl::InvalidArgumentError(absl::StrCat("policy.sinks must be >= 0, got ", p.sinks));
  }
  if (p.window < 0) {
    return absl::InvalidArgumentError(absl::StrCat("policy.window must be >= 0, got ", p.window));
  }
  if (p.pool_kernel < 1 || p.pool_kernel % 2 == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.pool_kernel must be odd and >= 1, got ", p.pool_kernel));
  }
  if (!(p.ada_alpha < 0 || p.ada_alpha <= 1) || std::isnan(p.ada_alpha)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "policy.ada_alpha must be in [0, 1] (or < 0 for auto), got ", p.ada_alpha));
  }
  if (!(p.pyramid_beta >= 1) || std::isinf(p.pyramid_beta)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.pyramid_beta must be finite and >= 1, got ", p.pyramid_beta));
  }
  if (!(p.capkv_tau > 0) || std::isinf(p.capkv_tau)) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.capkv_tau must be finite and > 0, got ", p.capkv_tau));
  }
  if (p.rope_horizon < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.rope_horizon must be >= 1, got ", p.rope_horizon));
  }
  if (p.greedy_picks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("policy.greedy_picks must be >= 0, got ", p.greedy_picks));
  }
  return ValidateSketchPolicy(p);
}

Needs ScorerNeeds(ScorerKind kind) {
  Needs n;
  switch (kind) {
    case ScorerKind::kStreaming:
    case ScorerKind::kRandom:
      break;
    case ScorerKind::kKnorm:
      n.keys = true;
      break;
    case ScorerKind::kTova:
    case ScorerKind::kSnapKv:
      n.keys = true;
      n.window_queries = true;
      break;
    case ScorerKind::kH2o:
    case ScorerKind::kObserved:
      n.attention_mass = true;
      break;
    case ScorerKind::kExpected:
    case ScorerKind::kCapKv:
    case ScorerKind::kCapKvDot:
    case ScorerKind::kCapKvGreedy:
      n.keys = true;
      n.values = true;
      n.query_moments = true;
      break;
    case ScorerKind::kLaProx:
      n.keys = true;
      n.values = true;
      n.window_queries = true;
      break;
    case ScorerKind::kQSketch:
    case ScorerKind::kQSketchPost:
      n.keys = true;
      n.query_sketch = true;
      break;
  }
  return n;
}

double EffectiveAdaAlpha(const Policy& policy, int q_heads_per_kv) {
  if (policy.ada_alpha >= 0) return policy.ada_alpha;
  return q_heads_per_kv > 1 ? policy_defaults::kAdaAlphaGqa : policy_defaults::kAdaAlphaMha;
}

bool IsSketchScorer(ScorerKind kind) {
  return kind == ScorerKind::kQSketch || kind == ScorerKind::kQSketchPost;
}

bool SketchScorerWantsPostRope(ScorerKind kind) { return kind == ScorerKind::kQSketchPost; }

}  // namespace kvkeep::eviction
