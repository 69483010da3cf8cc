// Query statistics (service/sequence_stats.h) as PutStats and CommitTokens apply them, against a
// fixed small GQA model and a sequence table the input grows and compacts.
//
// Input: [u8 initial tokens][u8 compacted head][u8 compaction pattern], then commands
// [u8 op][u8 argument][u16 length][bytes] (fuzz_input.h records):
//   op % 4 == 0  PutStats: the bytes are a v1::LayerStats;
//   op % 4 == 1  CommitTokens with statistics: validate with `argument` pending tokens, commit
//                them, apply (the engine's contract: "validated above ... cannot fail");
//   op % 4 == 2  commit `argument` tokens without statistics;
//   op % 4 == 3  compact head `argument` as the compressor does (CompactStats + Compact).
// Invariants: ApplyLayerStats succeeds iff ValidateLayerStats does; on error nothing in the
// SequenceStats changed (compared as a serialized snapshot); stored shapes follow the model and the
// table; a scorer whose CheckStatsFor passes gets layer inputs it can score without crashing.
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "kvkeep/v1/common.pb.h"
#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"
#include "service/eviction/scorers.h"
#include "service/engine/model_layout.h"
#include "service/engine/sequence_stats.h"
#include "service/engine/sequence_table.h"
#include "tests/fuzz/fuzz_input.h"

namespace kvkeep::fuzz {
namespace {

constexpr uint32_t kMaxTokens = 256;  // keeps one input fast

const Model& TheModel() {
  static const Model* model = [] {
    v1::ModelLayout l;
    l.set_name("fuzz");
    l.set_layers(2);
    l.set_q_heads(4);
    l.set_kv_heads(2);
    l.set_head_dim(4);
    l.set_dtype(v1::DTYPE_FP16);
    l.set_tokens_per_page(4);
    l.mutable_rope()->set_theta(10000);
    absl::StatusOr<Model> m = Model::FromLayout(l);
    if (!m.ok()) Fail(__FILE__, __LINE__, m.status().ToString());
    return new Model(std::move(*m));
  }();
  return *model;
}

template <typename T>
void Put(const std::vector<T>& v, std::string* out) {
  const uint64_t n = v.size();
  out->append(reinterpret_cast<const char*>(&n), sizeof(n));
  out->append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

std::string Snapshot(const SequenceStats& stats) {
  std::string out;
  for (const LayerStatistics& l : stats.layers) {
    out.append(reinterpret_cast<const char*>(&l.window), sizeof(l.window));
    out.append(reinterpret_cast<const char*>(&l.window_next_position),
               sizeof(l.window_next_position));
    out.append(reinterpret_cast<const char*>(&l.query_count), sizeof(l.query_count));
    Put(l.window_queries, &out);
    Put(l.query_sum, &out);
    Put(l.query_sq_sum, &out);
    for (const auto& m : l.attention_mass) Put(m, &out);
    out.push_back('|');
  }
  return out;
}

// Room for `tokens` more tokens (dummy page references: nothing reads the pages here).
void Reserve(SequenceTable* table, uint32_t tokens, uint64_t* next_page) {
  uint64_t total = 0;
  std::vector<uint32_t> need = table->PagesNeeded(tokens, &total);
  for (uint32_t h = 0; h < need.size(); ++h) {
    std::vector<uint64_t> pages(need[h]);
    for (uint64_t& p : pages) p = (*next_page)++;
    table->AppendPages(h, pages);
  }
}

void CheckShapes(const Model& model, const SequenceTable& table, const SequenceStats& stats) {
  if (stats.layers.empty()) return;
  FUZZ_CHECK(stats.layers.size() == model.layers(), "stats layers");
  const size_t qd = size_t{model.q_heads()} * model.head_dim();
  for (const LayerStatistics& l : stats.layers) {
    FUZZ_CHECK(l.window_queries.size() == qd * l.window, "window_queries shape");
    FUZZ_CHECK(l.window_next_position <= table.next_position(), "window from the future");
    if (l.query_count != 0) {
      FUZZ_CHECK(l.query_sum.size() == qd, "query_sum shape");
      FUZZ_CHECK(l.query_sq_sum.empty() || l.query_sq_sum.size() == qd, "query_sq_sum shape");
      for (double v : l.query_sum) FUZZ_CHECK(std::isfinite(v), "non-finite query_sum stored");
      for (double v : l.query_sq_sum) FUZZ_CHECK(std::isfinite(v) && v >= 0, "bad query_sq_sum");
    } else {
      FUZZ_CHECK(l.query_sum.empty() && l.query_sq_sum.empty(), "moments without a count");
    }
    FUZZ_CHECK(l.attention_mass.empty() || l.attention_mass.size() == model.q_heads(),
               "attention_mass heads");
  }
}

// Every scorer whose statistics are complete must get inputs it can score (or refuse) safely.
void ScoreAll(const Model& model, const SequenceTable& table, const SequenceStats& stats) {
  static eviction::ScoringWorkspace* workspace = new eviction::ScoringWorkspace(1);
  static const char* kScorers[] = {"streaming", "random", "knorm",     "tova",
                                   "h2o",       "observed", "snapkv",  "expected",
                                   "capkv",     "capkv-dot", "capkv-greedy", "laprox"};
  const uint32_t d = model.head_dim(), kv_heads = model.kv_heads();
  for (const char* name : kScorers) {
    eviction::Policy policy;
    policy.scorer = *eviction::ParseScorer(name);
    policy.allocation = eviction::DefaultAllocation(policy.scorer);
    policy.sinks = 1;
    policy.window = 2;
    if (!CheckStatsFor(model, table, stats, policy.scorer).ok()) continue;
    for (uint32_t layer = 0; layer < model.layers(); ++layer) {
      std::vector<std::vector<float>> kv(kv_heads);
      std::vector<const float*> ptrs(kv_heads);
      for (uint32_t g = 0; g < kv_heads; ++g) {
        const uint32_t n = table.head(layer * kv_heads + g).count;
        kv[g].resize(size_t{n} * d);
        for (size_t i = 0; i < kv[g].size(); ++i) kv[g][i] = static_cast<float>((i * 37 % 11)) - 5;
        ptrs[g] = kv[g].data();
      }
      eviction::LayerInputs in;
      BuildLayerInputs(model, table, stats, policy, layer, ptrs, ptrs, &in);
      eviction::HeadScores scores;
      absl::Status scored = eviction::ScoreLayerInto(policy, in, *workspace, &scores);
      FUZZ_CHECK_STATUS_MESSAGE(scored);
      if (scored.ok()) {
        FUZZ_CHECK(scores.per_head.size() == kv_heads, "scores per head");
        for (uint32_t g = 0; g < kv_heads; ++g) {
          FUZZ_CHECK(scores.per_head[g].size() == table.head(layer * kv_heads + g).count,
                     "score count");
        }
      }
    }
  }
}

}  // namespace
}  // namespace kvkeep::fuzz

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvkeep::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvkeep;
  using namespace kvkeep::fuzz;
  const Model& model = TheModel();
  FuzzInput in(data, size);
  SequenceTable table(model.head_tables(), model.geometry().tokens_per_page);
  SequenceStats stats;
  uint64_t next_page = 1;

  const uint32_t initial = in.U8() % 33;
  Reserve(&table, initial, &next_page);
  if (!table.Commit(initial, {}).ok()) Fail(__FILE__, __LINE__, "initial commit");
  {
    const uint32_t head = in.U8() % table.heads();
    const uint8_t pattern = in.U8();
    std::vector<int32_t> kept;
    for (uint32_t j = 0; j < table.head(head).count; ++j) {
      if ((j * 7 + pattern) % 3 != 0 || pattern == 0) kept.push_back(static_cast<int32_t>(j));
    }
    std::vector<uint64_t> freed;
    if (!table.Compact(head, kept, &freed).ok()) Fail(__FILE__, __LINE__, "initial compact");
  }

  int steps = 0;
  while (!in.empty() && ++steps <= 64) {
    const uint8_t op = in.U8();
    const uint8_t arg = in.U8();
    const std::string bytes = in.Record();
    switch (op % 4) {
      case 0:
      case 1: {
        v1::LayerStats s;
        if (!s.ParseFromString(bytes)) break;
        const std::string before = Snapshot(stats);
        const absl::Status validated = ValidateLayerStats(model, table, stats, s);
        FUZZ_CHECK_STATUS_MESSAGE(validated);
        FUZZ_CHECK(validated.ok() || validated.code() == absl::StatusCode::kInvalidArgument,
                   validated.ToString());
        FUZZ_CHECK(Snapshot(stats) == before, "ValidateLayerStats changed the stats");
        const uint32_t pending = op % 4 == 1 ? arg : 0;
        if (pending == 0 || table.max_count() + pending > kMaxTokens) {
          const absl::Status applied = ApplyLayerStats(model, table, s, &stats);
          FUZZ_CHECK(applied.ok() == validated.ok(),
                     "Apply " + applied.ToString() + " but Validate " + validated.ToString());
          if (!applied.ok()) {
            FUZZ_CHECK(applied.code() == validated.code(), applied.ToString());
            FUZZ_CHECK(Snapshot(stats) == before, "a failed ApplyLayerStats changed the stats");
          }
          break;
        }
        // CommitTokens: validated against the table as it will be, then committed, then applied.
        const absl::Status pre = ValidateLayerStats(model, table, stats, s, pending);
        FUZZ_CHECK_STATUS_MESSAGE(pre);
        if (!pre.ok()) break;
        Reserve(&table, pending, &next_page);
        const absl::Status committed = table.Commit(pending, {});
        FUZZ_CHECK(committed.ok(), committed.ToString());
        const absl::Status applied = ApplyLayerStats(model, table, s, &stats);
        FUZZ_CHECK(applied.ok(), "stats validated with " + std::to_string(pending) +
                                     " pending tokens fail after the commit: " +
                                     applied.ToString());
        break;
      }
      case 2: {
        if (arg == 0 || table.max_count() + arg > kMaxTokens) break;
        Reserve(&table, arg, &next_page);
        const absl::Status committed = table.Commit(arg, {});
        FUZZ_CHECK(committed.ok(), committed.ToString());
        break;
      }
      case 3: {
        const uint32_t head = arg % table.heads();
        const uint32_t count = table.head(head).count;
        std::vector<int32_t> kept;
        for (uint32_t j = 0; j < count; ++j) {
          const uint8_t bit = j / 8 < bytes.size() ? (bytes[j / 8] >> (j % 8)) & 1 : 1;
          if (bit) kept.push_back(static_cast<int32_t>(j));
        }
        CompactStats(model, head / model.kv_heads(), head % model.kv_heads(), count, kept,
                     &stats);
        std::vector<uint64_t> freed;
        const absl::Status compacted = table.Compact(head, kept, &freed);
        FUZZ_CHECK(compacted.ok(), compacted.ToString());
        break;
      }
    }
    CheckShapes(model, table, stats);
  }
  ScoreAll(model, table, stats);
  return 0;
}
