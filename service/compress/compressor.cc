#include "service/compress/compressor.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/math/dtype.h"
#include "service/compress/device_scoring_request.h"
#include "service/compress/head_reader.h"

namespace kvkeep {
namespace {

absl::Status CheckBudget(const eviction::Budget& b) {
  const bool ratio = b.keep_ratio != 0, tokens = b.tokens != 0;
  if (ratio == tokens) {
    return absl::InvalidArgumentError(
        "budget must set exactly one of keep_ratio and tokens (max_tokens)");
  }
  if (ratio && !(b.keep_ratio > 0 && b.keep_ratio <= 1)) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget keep_ratio = ", b.keep_ratio, " must be in (0, 1]"));
  }
  if (tokens && b.tokens < 0) {
    return absl::InvalidArgumentError(absl::StrCat("budget tokens = ", b.tokens, " must be > 0"));
  }
  return absl::OkStatus();
}

// The table must be the one the model describes; anything else is a bug of the caller.
absl::Status CheckTable(const Model& model, const SequenceTable& table) {
  if (table.heads() != model.head_tables() ||
      table.tokens_per_page() != model.geometry().tokens_per_page) {
    return absl::InternalError(absl::StrCat("sequence table has ", table.heads(), " heads of ",
                                            table.tokens_per_page(),
                                            " tokens per page; the model has ", model.head_tables(),
                                            " of ", model.geometry().tokens_per_page));
  }
  for (uint32_t h = 0; h < table.heads(); ++h) {
    const SequenceTable::Head& head = table.head(h);
    if (head.count > table.capacity(h) || head.positions.size() != head.count) {
      return absl::InternalError(absl::StrCat("head table ", h, " is inconsistent: ", head.count,
                                              " tokens, ", head.positions.size(),
                                              " positions, room for ", table.capacity(h)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

size_t CompressScratch::bytes() const {
  size_t n = workspace_.bytes() + staging_.capacity() * sizeof(uint16_t);
  for (const auto& v : keys_) n += v.capacity() * sizeof(float);
  for (const auto& v : values_) n += v.capacity() * sizeof(float);
  for (const auto& s : scores_) {
    for (const auto& v : s.per_head) n += v.capacity() * sizeof(float);
  }
  n += inputs_.window_queries.capacity() * sizeof(float) +
       inputs_.wo_gram.capacity() * sizeof(float);
  n += (inputs_.query_sum.capacity() + inputs_.query_sq_sum.capacity()) * sizeof(double);
  for (const auto& m : inputs_.attention_mass) n += m.capacity() * sizeof(float);
  return n;
}

absl::StatusOr<CompressOutcome> CompressSequence(const Model& model, SequenceTable& table,
                                                 SequenceStats& stats,
                                                 const eviction::Policy& policy,
                                                 const eviction::Budget& budget, Backend& backend,
                                                 const PagePool& pool, CompressScratch& scratch) {
  const auto start = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(eviction::ValidatePolicy(policy));
  RETURN_IF_ERROR(CheckBudget(budget));
  RETURN_IF_ERROR(CheckTable(model, table));
  RETURN_IF_ERROR(CheckStatsFor(model, table, stats, policy.scorer));

  const PageGeometry& geo = model.geometry();
  const uint32_t layers = model.layers(), kv_heads = model.kv_heads();
  const uint32_t tpp = geo.tokens_per_page;
  const uint32_t heads = table.heads();

  CompressOutcome out;
  out.kept_per_head.resize(heads);
  uint32_t max_count = 0;
  for (uint32_t h = 0; h < heads; ++h) {
    out.kept_per_head[h] = table.head(h).count;
    out.tokens_before += table.head(h).count;
    max_count = std::max(max_count, table.head(h).count);
  }
  out.tokens_after = out.tokens_before;
  auto finish = [&]() {
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return out;
  };
  // Every head fits its budget: nothing to evict.
  if (budget.keep_ratio >= 1 || (budget.tokens > 0 && budget.tokens >= int64_t{max_count})) {
    return finish();
  }

  // Where every page lives, once (ArenaOf takes the pool's lock).
  auto arena_of = [&](uint64_t page) -> absl::StatusOr<Arena*> {
    Arena* arena = pool.ArenaOf(page);
    if (arena == nullptr) {
      return absl::InternalError(absl::StrCat("page ", PageRef::Unpack(page).arena, ":",
                                              PageRef::Unpack(page).index,
                                              " of the sequence is not in the pool"));
    }
    return arena;
  };
  auto page_offset = [&](uint64_t page) {
    return static_cast<size_t>(PageRef::Unpack(page).index) * geo.page_bytes;
  };

  // capkv-greedy need not rank past what a uniform share can keep (scorers.h: greedy_picks).
  eviction::Policy effective = policy;
  if (policy.scorer == eviction::ScorerKind::kCapKvGreedy && policy.greedy_picks == 0 &&
      policy.allocation == eviction::Allocation::kUniform) {
    effective.greedy_picks =
        budget.tokens > 0 ? budget.tokens
                          : static_cast<int64_t>(std::ceil(budget.keep_ratio * max_count)) + 2;
  }

  // Score every layer.
  const eviction::Needs needs = eviction::ScorerNeeds(policy.scorer);
  scratch.keys_.resize(kv_heads);
  scratch.values_.resize(kv_heads);
  scratch.key_ptrs_.assign(kv_heads, nullptr);
  scratch.value_ptrs_.assign(kv_heads, nullptr);
  scratch.scores_.resize(layers);
  // Scoring on the device that holds the pages, when the backend offers it: nothing is read back.
  DeviceLayerScorer* const device_scorer = backend.layer_scorer();
  const PageAddressFn page_address = [&](uint64_t page) -> absl::StatusOr<const char*> {
    ASSIGN_OR_RETURN(Arena * arena, arena_of(page));
    const char* base = static_cast<const char*>(backend.DeviceAddress(*arena));
    if (base == nullptr) {
      return absl::InternalError(absl::StrCat("the ", backend.name(), " backend offers a device ",
                                              "scorer but its arena has no device address"));
    }
    return base + page_offset(page);
  };
  for (uint32_t layer = 0; layer < layers && device_scorer != nullptr; ++layer) {
    scratch.key_ptrs_.assign(kv_heads, nullptr);
    scratch.value_ptrs_.assign(kv_heads, nullptr);
    BuildLayerInputs(model, table, stats, effective, layer, scratch.key_ptrs_, scratch.value_ptrs_,
                     &scratch.inputs_);
    absl::Status scored =
        eviction::ValidateLayerInputs(scratch.inputs_, effective, /*check_tensors=*/false);
    if (scored.ok()) {
      scored = BuildDeviceLayerRequest(model, table, scratch.inputs_, effective, layer,
                                       page_address, &scratch.device_request_);
    }
    if (scored.ok()) {
      scored = device_scorer->ScoreLayer(scratch.device_request_, &scratch.scores_[layer].per_head);
    }
    if (!scored.ok()) {
      return absl::Status(scored.code(), absl::StrCat("scoring layer ", layer, " on the device: ",
                                                      scored.message()));
    }
  }
  for (uint32_t layer = 0; layer < layers && device_scorer == nullptr; ++layer) {
    for (uint32_t g = 0; g < kv_heads; ++g) {
      const uint32_t h = layer * kv_heads + g;
      for (int part = 0; part < 2; ++part) {
        const bool values = part == 1;
        if (!(values ? needs.values : needs.keys)) continue;
        std::vector<float>& dst = values ? scratch.values_[g] : scratch.keys_[g];
        const absl::Status status =
            ReadHeadAsFloat(geo, table, h, values, pool, backend, &scratch.staging_, &dst);
        (values ? scratch.value_ptrs_ : scratch.key_ptrs_)[g] = dst.data();
        if (!status.ok()) {
          return absl::InternalError(
              absl::StrCat("reading layer ", layer, " KV head ", g, ": ", status.message()));
        }
      }
    }
    BuildLayerInputs(model, table, stats, effective, layer, scratch.key_ptrs_, scratch.value_ptrs_,
                     &scratch.inputs_);
    absl::Status scored = eviction::ScoreLayerInto(effective, scratch.inputs_, scratch.workspace_,
                                                   &scratch.scores_[layer]);
    if (!scored.ok()) {
      return absl::Status(scored.code(),
                          absl::StrCat("scoring layer ", layer, ": ", scored.message()));
    }
  }

  // Allocate and select.
  absl::StatusOr<eviction::Selection> selection = eviction::SelectTokens(
      effective, budget, scratch.scores_, static_cast<int>(model.q_heads() / kv_heads));
  if (!selection.ok()) {
    return absl::Status(selection.status().code(),
                        absl::StrCat("selecting tokens: ", selection.status().message()));
  }
  const auto& kept = selection->kept;
  bool changed = false;
  for (uint32_t layer = 0; layer < layers; ++layer) {
    for (uint32_t g = 0; g < kv_heads; ++g) {
      const uint32_t h = layer * kv_heads + g;
      if (kept[layer][g].size() != table.head(h).count) changed = true;
    }
  }
  if (!changed) return finish();

  // Score bounds over the candidates (neither sinks nor window).
  for (uint32_t layer = 0; layer < layers; ++layer) {
    for (uint32_t g = 0; g < kv_heads; ++g) {
      const int64_t n = table.head(layer * kv_heads + g).count;
      const std::vector<float>& score = scratch.scores_[layer].per_head[g];
      const std::vector<int32_t>& k = kept[layer][g];
      size_t next_kept = 0;
      for (int64_t j = 0; j < n; ++j) {
        const bool is_kept = next_kept < k.size() && k[next_kept] == j;
        if (is_kept) ++next_kept;
        if (j < policy.sinks || j >= n - policy.window) continue;
        if (is_kept) {
          out.kept_score_min =
              out.has_kept_score ? std::min(out.kept_score_min, score[j]) : score[j];
          out.has_kept_score = true;
        } else {
          out.evicted_score_max =
              out.has_evicted_score ? std::max(out.evicted_score_max, score[j]) : score[j];
          out.has_evicted_score = true;
        }
      }
    }
  }

  // Compact the bytes: kept token k moves from slot kept[k] to slot k, run by run (a run never
  // crosses a page boundary on either side). On a device backend each head is one CopyBatch (one
  // or two kernel launches; the batch acts as one parallel assignment, so sources may overlap
  // destinations). On the host, runs are copied in ascending order, which is safe since
  // k <= kept[k] never overwrites a later source, each at most `shift` tokens long so that its
  // source and destination never overlap (Backend::Copy need not be a memmove) and no staging
  // buffer is needed.
  const bool batched = backend.device_ordinal() >= 0;
  std::vector<CopyOp>& ops = scratch.copy_ops_;
  for (uint32_t layer = 0; layer < layers; ++layer) {
    for (uint32_t g = 0; g < kv_heads; ++g) {
      const uint32_t h = layer * kv_heads + g;
      const std::vector<uint64_t>& pages = table.head(h).pages;
      const std::vector<int32_t>& k = kept[layer][g];
      ops.clear();
      absl::Status status;
      size_t i = 0;
      while (i < k.size() && status.ok()) {
        const uint32_t src = static_cast<uint32_t>(k[i]);
        const uint32_t dst = static_cast<uint32_t>(i);
        if (src == dst) {
          ++i;
          continue;
        }
        const uint32_t shift = src - dst;
        uint32_t len = 1;
        while (i + len < k.size() && static_cast<uint32_t>(k[i + len]) == src + len &&
               (batched || len < shift) && (src + len) % tpp != 0 && (dst + len) % tpp != 0) {
          ++len;
        }
        const uint64_t src_page = pages[src / tpp], dst_page = pages[dst / tpp];
        absl::StatusOr<Arena*> src_arena = arena_of(src_page);
        absl::StatusOr<Arena*> dst_arena = arena_of(dst_page);
        status = src_arena.ok() ? dst_arena.status() : src_arena.status();
        const size_t bytes = size_t{len} * geo.token_bytes;
        for (size_t part = 0; part < 2 && status.ok(); ++part) {
          const size_t base = part == 0 ? 0 : geo.value_offset;
          const CopyOp op{.src = *src_arena,
                          .src_offset = page_offset(src_page) + base +
                                        size_t{src % tpp} * geo.token_bytes,
                          .dst = *dst_arena,
                          .dst_offset = page_offset(dst_page) + base +
                                        size_t{dst % tpp} * geo.token_bytes,
                          .n = bytes};
          if (batched) {
            ops.push_back(op);
          } else {
            status = backend.Copy(*op.src, op.src_offset, *op.dst, op.dst_offset, op.n);
          }
        }
        i += len;
      }
      if (status.ok() && batched && !ops.empty()) status = backend.CopyBatch(ops);
      if (!status.ok()) {
        return absl::InternalError(absl::StrCat(
            "compacting layer ", layer, " KV head ", g, ": ", status.message(),
            "; the sequence's table is unchanged but its contents are undefined: drop it"));
      }
    }
  }

  // The table and the statistics follow.
  out.tokens_after = 0;
  for (uint32_t layer = 0; layer < layers; ++layer) {
    for (uint32_t g = 0; g < kv_heads; ++g) {
      const uint32_t h = layer * kv_heads + g;
      const uint32_t old_count = table.head(h).count;
      CompactStats(model, layer, g, old_count, kept[layer][g], &stats);
      absl::Status status = table.Compact(h, kept[layer][g], &out.freed_pages);
      if (!status.ok()) return absl::InternalError(status.message());  // selection is valid
      out.kept_per_head[h] = table.head(h).count;
      out.tokens_after += table.head(h).count;
    }
  }
  out.changed = true;
  return finish();
}

void ToProto(const CompressOutcome& outcome, const eviction::Policy& policy,
             const PageGeometry& geometry, v1::EvictionSummary* out) {
  out->set_scorer(std::string(eviction::ScorerName(policy.scorer)));
  out->set_allocation(std::string(eviction::AllocationName(policy.allocation)));
  out->set_tokens_before(outcome.tokens_before);
  out->set_tokens_after(outcome.tokens_after);
  out->set_pages_freed(static_cast<uint32_t>(outcome.freed_pages.size()));
  out->set_bytes_freed(outcome.freed_pages.size() * geometry.page_bytes);
  out->set_kept_score_min(outcome.has_kept_score ? outcome.kept_score_min : 0.0f);
  out->set_evicted_score_max(outcome.has_evicted_score ? outcome.evicted_score_max : 0.0f);
  out->set_seconds(outcome.seconds);
}

}  // namespace kvkeep
