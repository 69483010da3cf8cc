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

// One CompressSequence call, step by step. Borrows everything it is constructed with for the
// duration of the call; the steps run in the order CompressSequence calls them.
class CompressionPass {
 public:
  CompressionPass(const Model& model, SequenceTable& table, SequenceStats& stats,
                  const eviction::Policy& policy, const eviction::Budget& budget,
                  Backend& backend, const PagePool& pool, CompressScratch& scratch)
      : model_(model),
        geo_(model.geometry()),
        table_(table),
        stats_(stats),
        policy_(policy),
        budget_(budget),
        backend_(backend),
        pool_(pool),
        scratch_(scratch),
        layers_(model.layers()),
        kv_heads_(model.kv_heads()),
        effective_(policy) {}

  // Token counts before compression; false when every head already fits the budget.
  bool CountTokensAndCheckWork();
  absl::Status ScoreLayersOnDevice(DeviceLayerScorer& device_scorer);
  absl::Status ScoreLayersOnHost();
  // Allocation and selection; false when no head loses a token.
  absl::StatusOr<bool> SelectTokens();
  void RecordScoreBounds();
  absl::Status CompactBytes();
  absl::Status CompactTableAndStats();

  CompressOutcome& outcome() { return out_; }

 private:
  // Where a page lives (ArenaOf takes the pool's lock); INTERNAL when it is not in the pool.
  absl::StatusOr<Arena*> ArenaOf(uint64_t page) const;
  size_t PageOffset(uint64_t page) const {
    return static_cast<size_t>(PageRef::Unpack(page).index) * geo_.page_bytes;
  }
  absl::Status CompactHeadBytes(uint32_t layer, uint32_t g, bool batched);

  const Model& model_;
  const PageGeometry& geo_;
  SequenceTable& table_;
  SequenceStats& stats_;
  const eviction::Policy& policy_;
  const eviction::Budget& budget_;
  Backend& backend_;
  const PagePool& pool_;
  CompressScratch& scratch_;
  const uint32_t layers_, kv_heads_;
  // The policy the scorers run with (capkv-greedy's picks bounded by the budget).
  eviction::Policy effective_;
  CompressOutcome out_;
  eviction::Selection selection_;
};

absl::StatusOr<Arena*> CompressionPass::ArenaOf(uint64_t page) const {
  Arena* arena = pool_.ArenaOf(page);
  if (arena == nullptr) {
    return absl::InternalError(absl::StrCat("page ", PageRef::Unpack(page).arena, ":",
                                            PageRef::Unpack(page).index,
                                            " of the sequence is not in the pool"));
  }
  return arena;
}

bool CompressionPass::CountTokensAndCheckWork() {
  const uint32_t heads = table_.heads();
  out_.kept_per_head.resize(heads);
  uint32_t max_count = 0;
  for (uint32_t h = 0; h < heads; ++h) {
    out_.kept_per_head[h] = table_.head(h).count;
    out_.tokens_before += table_.head(h).count;
    max_count = std::max(max_count, table_.head(h).count);
  }
  out_.tokens_after = out_.tokens_before;
  // Every head fits its budget: nothing to evict.
  if (budget_.keep_ratio >= 1 || (budget_.tokens > 0 && budget_.tokens >= int64_t{max_count})) {
    return false;
  }
  // capkv-greedy need not rank past what a uniform share can keep (scorers.h: greedy_picks).
  if (policy_.scorer == eviction::ScorerKind::kCapKvGreedy && policy_.greedy_picks == 0 &&
      policy_.allocation == eviction::Allocation::kUniform) {
    effective_.greedy_picks =
        budget_.tokens > 0 ? budget_.tokens
                           : static_cast<int64_t>(std::ceil(budget_.keep_ratio * max_count)) + 2;
  }
  scratch_.keys_.resize(kv_heads_);
  scratch_.values_.resize(kv_heads_);
  scratch_.key_ptrs_.assign(kv_heads_, nullptr);
  scratch_.value_ptrs_.assign(kv_heads_, nullptr);
  scratch_.scores_.resize(layers_);
  return true;
}

// Scoring on the device that holds the pages: nothing is read back.
absl::Status CompressionPass::ScoreLayersOnDevice(DeviceLayerScorer& device_scorer) {
  const PageAddressFn page_address = [&](uint64_t page) -> absl::StatusOr<const char*> {
    ASSIGN_OR_RETURN(Arena * arena, ArenaOf(page));
    const char* base = static_cast<const char*>(backend_.DeviceAddress(*arena));
    if (base == nullptr) {
      return absl::InternalError(absl::StrCat("the ", backend_.name(), " backend offers a device ",
                                              "scorer but its arena has no device address"));
    }
    return base + PageOffset(page);
  };
  for (uint32_t layer = 0; layer < layers_; ++layer) {
    scratch_.key_ptrs_.assign(kv_heads_, nullptr);
    scratch_.value_ptrs_.assign(kv_heads_, nullptr);
    BuildLayerInputs(model_, table_, stats_, effective_, layer, scratch_.key_ptrs_,
                     scratch_.value_ptrs_, &scratch_.inputs_);
    absl::Status scored =
        eviction::ValidateLayerInputs(scratch_.inputs_, effective_, /*check_tensors=*/false);
    if (scored.ok()) {
      scored = BuildDeviceLayerRequest(model_, table_, scratch_.inputs_, effective_, layer,
                                       page_address, &scratch_.device_request_);
    }
    if (scored.ok()) {
      scored =
          device_scorer.ScoreLayer(scratch_.device_request_, &scratch_.scores_[layer].per_head);
    }
    if (!scored.ok()) {
      return absl::Status(scored.code(), absl::StrCat("scoring layer ", layer, " on the device: ",
                                                      scored.message()));
    }
  }
  return absl::OkStatus();
}

// Reads each layer's keys/values back as float32 (only those the scorer reads) and scores it here.
absl::Status CompressionPass::ScoreLayersOnHost() {
  const eviction::Needs needs = eviction::ScorerNeeds(policy_.scorer);
  for (uint32_t layer = 0; layer < layers_; ++layer) {
    for (uint32_t g = 0; g < kv_heads_; ++g) {
      const uint32_t h = layer * kv_heads_ + g;
      for (int part = 0; part < 2; ++part) {
        const bool values = part == 1;
        if (!(values ? needs.values : needs.keys)) continue;
        std::vector<float>& dst = values ? scratch_.values_[g] : scratch_.keys_[g];
        const absl::Status status =
            ReadHeadAsFloat(geo_, table_, h, values, pool_, backend_, &scratch_.staging_, &dst);
        (values ? scratch_.value_ptrs_ : scratch_.key_ptrs_)[g] = dst.data();
        if (!status.ok()) {
          return absl::InternalError(
              absl::StrCat("reading layer ", layer, " KV head ", g, ": ", status.message()));
        }
      }
    }
    BuildLayerInputs(model_, table_, stats_, effective_, layer, scratch_.key_ptrs_,
                     scratch_.value_ptrs_, &scratch_.inputs_);
    absl::Status scored = eviction::ScoreLayerInto(effective_, scratch_.inputs_,
                                                   scratch_.workspace_, &scratch_.scores_[layer]);
    if (!scored.ok()) {
      return absl::Status(scored.code(),
                          absl::StrCat("scoring layer ", layer, ": ", scored.message()));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> CompressionPass::SelectTokens() {
  absl::StatusOr<eviction::Selection> selection = eviction::SelectTokens(
      effective_, budget_, scratch_.scores_, static_cast<int>(model_.q_heads() / kv_heads_));
  if (!selection.ok()) {
    return absl::Status(selection.status().code(),
                        absl::StrCat("selecting tokens: ", selection.status().message()));
  }
  selection_ = *std::move(selection);
  bool changed = false;
  for (uint32_t layer = 0; layer < layers_; ++layer) {
    for (uint32_t g = 0; g < kv_heads_; ++g) {
      const uint32_t h = layer * kv_heads_ + g;
      if (selection_.kept[layer][g].size() != table_.head(h).count) changed = true;
    }
  }
  return changed;
}

// Score bounds over the candidates (neither sinks nor window).
void CompressionPass::RecordScoreBounds() {
  for (uint32_t layer = 0; layer < layers_; ++layer) {
    for (uint32_t g = 0; g < kv_heads_; ++g) {
      const int64_t n = table_.head(layer * kv_heads_ + g).count;
      const std::vector<float>& score = scratch_.scores_[layer].per_head[g];
      const std::vector<int32_t>& k = selection_.kept[layer][g];
      size_t next_kept = 0;
      for (int64_t j = 0; j < n; ++j) {
        const bool is_kept = next_kept < k.size() && k[next_kept] == j;
        if (is_kept) ++next_kept;
        if (j < policy_.sinks || j >= n - policy_.window) continue;
        if (is_kept) {
          out_.kept_score_min =
              out_.has_kept_score ? std::min(out_.kept_score_min, score[j]) : score[j];
          out_.has_kept_score = true;
        } else {
          out_.evicted_score_max =
              out_.has_evicted_score ? std::max(out_.evicted_score_max, score[j]) : score[j];
          out_.has_evicted_score = true;
        }
      }
    }
  }
}

// Compacts the bytes: kept token k moves from slot kept[k] to slot k, run by run (a run never
// crosses a page boundary on either side). On a device backend each head is one CopyBatch (one
// or two kernel launches; the batch acts as one parallel assignment, so sources may overlap
// destinations). On the host, runs are copied in ascending order, which is safe since
// k <= kept[k] never overwrites a later source, each at most `shift` tokens long so that its
// source and destination never overlap (Backend::Copy need not be a memmove) and no staging
// buffer is needed.
absl::Status CompressionPass::CompactBytes() {
  const bool batched = backend_.device_ordinal() >= 0;
  for (uint32_t layer = 0; layer < layers_; ++layer) {
    for (uint32_t g = 0; g < kv_heads_; ++g) {
      const absl::Status status = CompactHeadBytes(layer, g, batched);
      if (!status.ok()) {
        return absl::InternalError(absl::StrCat(
            "compacting layer ", layer, " KV head ", g, ": ", status.message(),
            "; the sequence's table is unchanged but its contents are undefined: drop it"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CompressionPass::CompactHeadBytes(uint32_t layer, uint32_t g, bool batched) {
  const uint32_t tpp = geo_.tokens_per_page;
  const uint32_t h = layer * kv_heads_ + g;
  const std::vector<uint64_t>& pages = table_.head(h).pages;
  const std::vector<int32_t>& k = selection_.kept[layer][g];
  std::vector<CopyOp>& ops = scratch_.copy_ops_;
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
    absl::StatusOr<Arena*> src_arena = ArenaOf(src_page);
    absl::StatusOr<Arena*> dst_arena = ArenaOf(dst_page);
    status = src_arena.ok() ? dst_arena.status() : src_arena.status();
    const size_t bytes = size_t{len} * geo_.token_bytes;
    for (size_t part = 0; part < 2 && status.ok(); ++part) {
      const size_t base = part == 0 ? 0 : geo_.value_offset;
      const CopyOp op{.src = *src_arena,
                      .src_offset = PageOffset(src_page) + base +
                                    size_t{src % tpp} * geo_.token_bytes,
                      .dst = *dst_arena,
                      .dst_offset = PageOffset(dst_page) + base +
                                    size_t{dst % tpp} * geo_.token_bytes,
                      .n = bytes};
      if (batched) {
        ops.push_back(op);
      } else {
        status = backend_.Copy(*op.src, op.src_offset, *op.dst, op.dst_offset, op.n);
      }
    }
    i += len;
  }
  if (status.ok() && batched && !ops.empty()) status = backend_.CopyBatch(ops);
  return status;
}

// The table and the statistics follow the bytes.
absl::Status CompressionPass::CompactTableAndStats() {
  out_.tokens_after = 0;
  for (uint32_t layer = 0; layer < layers_; ++layer) {
    for (uint32_t g = 0; g < kv_heads_; ++g) {
      const uint32_t h = layer * kv_heads_ + g;
      const uint32_t old_count = table_.head(h).count;
      CompactStats(model_, layer, g, old_count, selection_.kept[layer][g], &stats_);
      absl::Status status = table_.Compact(h, selection_.kept[layer][g], &out_.freed_pages);
      if (!status.ok()) return absl::InternalError(status.message());  // selection is valid
      out_.kept_per_head[h] = table_.head(h).count;
      out_.tokens_after += table_.head(h).count;
    }
  }
  out_.changed = true;
  return absl::OkStatus();
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

  CompressionPass pass(model, table, stats, policy, budget, backend, pool, scratch);
  auto finish = [&]() {
    CompressOutcome& out = pass.outcome();
    out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return std::move(out);
  };
  if (!pass.CountTokensAndCheckWork()) return finish();
  if (DeviceLayerScorer* const device_scorer = backend.layer_scorer(); device_scorer != nullptr) {
    RETURN_IF_ERROR(pass.ScoreLayersOnDevice(*device_scorer));
  } else {
    RETURN_IF_ERROR(pass.ScoreLayersOnHost());
  }
  ASSIGN_OR_RETURN(const bool changed, pass.SelectTokens());
  if (!changed) return finish();
  pass.RecordScoreBounds();
  RETURN_IF_ERROR(pass.CompactBytes());
  RETURN_IF_ERROR(pass.CompactTableAndStats());
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
