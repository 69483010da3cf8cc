#include "service/engine/sequence_stats.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "service/compress/policy_convert.h"

namespace kvkeep {
namespace {

absl::Status Bad(const v1::LayerStats& s, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("LayerStats (layer ", s.layer(), "): ", what));
}

template <typename Repeated>
absl::Status CheckFinite(const v1::LayerStats& s, const Repeated& values, absl::string_view field) {
  for (int i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return Bad(s, absl::StrCat("LayerStats.", field, " holds a non-finite value (",
                                 static_cast<double>(values[i]), ") at index ", i));
    }
  }
  return absl::OkStatus();
}

uint32_t HeadCount(const Model& model, const SequenceTable& table, uint32_t layer,
                   uint32_t kv_head) {
  return table.head(layer * model.kv_heads() + kv_head).count;
}

absl::Status Missing(eviction::ScorerKind scorer, absl::string_view what, absl::string_view field,
                     uint32_t layer, absl::string_view detail) {
  return absl::FailedPreconditionError(
      absl::StrCat(eviction::ScorerName(scorer), " needs ", what, " (LayerStats.", field,
                   "); layer ", layer, " ", detail, "; send them with CommitTokens or PutStats"));
}

}  // namespace

size_t SequenceStats::HeldBytes() const {
  size_t n = layers.capacity() * sizeof(LayerStatistics);
  for (const LayerStatistics& l : layers) {
    n += l.attention_mass.capacity() * sizeof(std::vector<float>);
    n += l.sketch.bytes();
    n += l.window_queries.capacity() * sizeof(float);
    n += (l.query_sum.capacity() + l.query_sq_sum.capacity()) * sizeof(double);
    for (const auto& m : l.attention_mass) n += m.capacity() * sizeof(float);
  }
  return n;
}

void SequenceStats::ShrinkToFit() {
  for (LayerStatistics& l : layers) {
    for (std::vector<float>& m : l.attention_mass) m.shrink_to_fit();
  }
}

absl::Status ValidateLayerStats(const Model& model, const SequenceTable& table,
                                const SequenceStats& stats, const v1::LayerStats& s,
                                uint32_t pending_tokens) {
  if (s.layer() >= model.layers()) {
    return Bad(s, absl::StrCat("LayerStats.layer = ", s.layer(), " is out of range (the model has ",
                               model.layers(), " layers)"));
  }
  const uint64_t q_heads = model.q_heads(), d = model.head_dim();
  const uint64_t qd = q_heads * d;
  const LayerStatistics* stored = stats.layers.empty() ? nullptr : &stats.layers[s.layer()];

  // Window queries.
  if (s.window() == 0) {
    if (s.window_queries_size() != 0) {
      return Bad(s, absl::StrCat("LayerStats.window is 0 but LayerStats.window_queries has ",
                                 s.window_queries_size(), " floats"));
    }
  } else {
    const uint64_t want = qd * s.window();
    if (static_cast<uint64_t>(s.window_queries_size()) != want) {
      return Bad(s, absl::StrCat("LayerStats.window_queries has ", s.window_queries_size(),
                                 " floats, expected q_heads * window * head_dim = ", q_heads, " * ",
                                 s.window(), " * ", d, " = ", want));
    }
    // Bounded by the tokens the sequence holds (not its positions, which a tenant may set
    // arbitrarily high) and by the longest window a policy can use: windows are daemon heap.
    const uint64_t committed = uint64_t{table.max_count()} + pending_tokens;
    if (s.window() > committed) {
      return Bad(s, absl::StrCat("LayerStats.window = ", s.window(), " exceeds the sequence's ",
                                 committed, " committed tokens"));
    }
    if (s.window() > kMaxPolicyWindow) {
      return Bad(s, absl::StrCat("LayerStats.window = ", s.window(),
                                 " exceeds the longest policy window, ", kMaxPolicyWindow));
    }
    if (absl::Status st = CheckFinite(s, s.window_queries(), "window_queries"); !st.ok()) return st;
  }

  // Query moments.
  if (s.query_sum_size() == 0) {
    if (s.query_count() != 0) {
      return Bad(s, absl::StrCat("LayerStats.query_count = ", s.query_count(),
                                 " without LayerStats.query_sum"));
    }
    if (s.query_sq_sum_size() != 0) {
      return Bad(s, "LayerStats.query_sq_sum was sent without LayerStats.query_sum");
    }
  } else {
    if (static_cast<uint64_t>(s.query_sum_size()) != qd) {
      return Bad(s, absl::StrCat("LayerStats.query_sum has ", s.query_sum_size(),
                                 " entries, expected q_heads * head_dim = ", qd));
    }
    if (s.query_count() == 0) {
      return Bad(s, "LayerStats.query_count must be > 0 when LayerStats.query_sum is sent");
    }
    const uint64_t stored_count = stored ? stored->query_count : 0;
    if (s.query_count() > uint64_t{std::numeric_limits<int64_t>::max()} - stored_count) {
      return Bad(s, absl::StrCat("LayerStats.query_count = ", s.query_count(),
                                 " overflows the accumulated count ", stored_count));
    }
    if (s.query_sq_sum_size() != 0 && static_cast<uint64_t>(s.query_sq_sum_size()) != qd) {
      return Bad(s, absl::StrCat("LayerStats.query_sq_sum has ", s.query_sq_sum_size(),
                                 " entries, expected q_heads * head_dim = ", qd));
    }
    if (absl::Status st = CheckFinite(s, s.query_sum(), "query_sum"); !st.ok()) return st;
    if (absl::Status st = CheckFinite(s, s.query_sq_sum(), "query_sq_sum"); !st.ok()) return st;
    for (int i = 0; i < s.query_sq_sum_size(); ++i) {
      if (s.query_sq_sum(i) < 0) {
        return Bad(s, absl::StrCat("LayerStats.query_sq_sum holds a negative value (",
                                   s.query_sq_sum(i), ") at index ", i));
      }
    }
    if (stored_count > 0) {
      const bool stored_sq = !stored->query_sq_sum.empty();
      const bool sent_sq = s.query_sq_sum_size() != 0;
      if (stored_sq != sent_sq) {
        return Bad(
            s, absl::StrCat("LayerStats.query_sq_sum must come with every LayerStats.query_sum of "
                            "a layer or with none; the ",
                            stored_count, " queries accumulated so far ",
                            stored_sq ? "carried it" : "did not", " and this update ",
                            sent_sq ? "does" : "does not"));
      }
      for (uint64_t i = 0; i < qd; ++i) {
        if (!std::isfinite(stored->query_sum[i] + s.query_sum(static_cast<int>(i))) ||
            (sent_sq &&
             !std::isfinite(stored->query_sq_sum[i] + s.query_sq_sum(static_cast<int>(i))))) {
          return Bad(s, absl::StrCat("the accumulated query moments overflow at index ", i));
        }
      }
    }
  }

  // Attention mass: [q_heads][count of the query head's KV head].
  if (s.attention_mass_size() != 0) {
    const uint32_t group = model.q_heads() / model.kv_heads();
    uint64_t want = 0;
    for (uint32_t h = 0; h < model.q_heads(); ++h) {
      want += uint64_t{HeadCount(model, table, s.layer(), h / group)} + pending_tokens;
    }
    if (static_cast<uint64_t>(s.attention_mass_size()) != want) {
      return Bad(s, absl::StrCat("LayerStats.attention_mass has ", s.attention_mass_size(),
                                 " floats, expected the sum over query heads of their KV head's "
                                 "token count = ",
                                 want));
    }
    if (absl::Status st = CheckFinite(s, s.attention_mass(), "attention_mass"); !st.ok()) return st;
  }
  return ValidateQuerySketch(model, table.next_position() + pending_tokens, s);
}

absl::Status ApplyLayerStats(const Model& model, const SequenceTable& table,
                             const v1::LayerStats& s, SequenceStats* stats) {
  if (absl::Status st = ValidateLayerStats(model, table, *stats, s); !st.ok()) return st;
  if (stats->layers.empty()) stats->layers.resize(model.layers());
  LayerStatistics& l = stats->layers[s.layer()];
  if (s.window() != 0) {
    l.window = s.window();
    l.window_queries.assign(s.window_queries().begin(), s.window_queries().end());
    l.window_next_position = table.next_position();
  }
  if (s.query_sum_size() != 0) {
    const size_t qd = static_cast<size_t>(s.query_sum_size());
    if (l.query_count == 0) {
      l.query_sum.assign(qd, 0.0);
      l.query_sq_sum.assign(s.query_sq_sum_size() != 0 ? qd : 0, 0.0);
    }
    for (size_t i = 0; i < qd; ++i) l.query_sum[i] += s.query_sum(static_cast<int>(i));
    for (size_t i = 0; i < l.query_sq_sum.size(); ++i) {
      l.query_sq_sum[i] += s.query_sq_sum(static_cast<int>(i));
    }
    l.query_count += s.query_count();
  }
  if (s.attention_mass_size() != 0) {
    const uint32_t group = model.q_heads() / model.kv_heads();
    l.attention_mass.resize(model.q_heads());
    const float* src = s.attention_mass().data();
    for (uint32_t h = 0; h < model.q_heads(); ++h) {
      const uint32_t n = HeadCount(model, table, s.layer(), h / group);
      l.attention_mass[h].assign(src, src + n);
      src += n;
    }
  }
  if (s.has_sketch()) l.sketch = SketchFromProto(s.sketch());
  FoldWindowIntoSketch(model, l.window, l.window_queries, l.window_next_position, &l.sketch);
  return absl::OkStatus();
}

absl::Status CheckStatsFor(const Model& model, const SequenceTable& table,
                           const SequenceStats& stats, eviction::ScorerKind scorer) {
  const eviction::Needs needs = eviction::ScorerNeeds(scorer);
  const uint32_t group = model.q_heads() / model.kv_heads();
  for (uint32_t layer = 0; layer < model.layers(); ++layer) {
    const LayerStatistics* l = stats.layers.empty() ? nullptr : &stats.layers[layer];
    if (needs.window_queries) {
      if (l == nullptr || l->window == 0) {
        return Missing(scorer, "window queries", "window_queries", layer, "has none");
      }
      if (l->window_next_position != table.next_position()) {
        return Missing(scorer, "window queries of the latest positions", "window_queries", layer,
                       absl::StrCat("has them from next_position ", l->window_next_position,
                                    " but the sequence is at ", table.next_position()));
      }
    }
    if (needs.query_sketch) {
      if (l == nullptr || l->sketch.empty()) {
        return Missing(scorer, "a query sketch", "sketch", layer, "has none");
      }
      const bool want_post = eviction::SketchScorerWantsPostRope(scorer);
      if (l->sketch.post_rope != want_post) {
        return Missing(scorer, absl::StrCat("a sketch of ", want_post ? "post" : "pre",
                                            "-RoPE queries"),
                       "sketch.post_rope", layer,
                       absl::StrCat("has one of ", l->sketch.post_rope ? "post" : "pre",
                                    "-RoPE queries"));
      }
    }
    if (needs.query_moments && (l == nullptr || l->query_count == 0)) {
      return Missing(scorer, "query moments", "query_sum", layer, "has none");
    }
    if (needs.attention_mass) {
      if (l == nullptr || l->attention_mass.empty()) {
        return Missing(scorer, "attention mass", "attention_mass", layer, "has none");
      }
      for (uint32_t h = 0; h < model.q_heads(); ++h) {
        const uint32_t n = HeadCount(model, table, layer, h / group);
        if (l->attention_mass[h].size() != n) {
          return Missing(scorer, "attention mass of every cached token", "attention_mass", layer,
                         absl::StrCat("has it for ", l->attention_mass[h].size(),
                                      " tokens of query head ", h, " whose KV head holds ", n));
        }
      }
    }
  }
  return absl::OkStatus();
}

void CompactStats(const Model& model, uint32_t layer, uint32_t kv_head, uint32_t old_count,
                  absl::Span<const int32_t> kept, SequenceStats* stats) {
  if (stats->layers.empty()) return;
  LayerStatistics& l = stats->layers[layer];
  if (l.attention_mass.empty()) return;
  const uint32_t group = model.q_heads() / model.kv_heads();
  for (uint32_t h = kv_head * group; h < (kv_head + 1) * group; ++h) {
    std::vector<float>& m = l.attention_mass[h];
    if (m.size() != old_count) {
      m.clear();  // stale: it cannot be aligned with the kept tokens
      continue;
    }
    for (size_t k = 0; k < kept.size(); ++k) m[k] = m[static_cast<size_t>(kept[k])];
    m.resize(kept.size());
  }
}

void BuildLayerInputs(const Model& model, const SequenceTable& table, const SequenceStats& stats,
                      const eviction::Policy& policy, uint32_t layer,
                      absl::Span<const float* const> keys, absl::Span<const float* const> values,
                      eviction::LayerInputs* in) {
  const eviction::Needs needs = eviction::ScorerNeeds(policy.scorer);
  const uint32_t kv_heads = model.kv_heads(), q_heads = model.q_heads(), d = model.head_dim();
  in->q_heads = static_cast<int>(q_heads);
  in->kv_heads = static_cast<int>(kv_heads);
  in->head_dim = static_cast<int>(d);
  in->layer_index = static_cast<int>(layer);
  in->heads.resize(kv_heads);
  for (uint32_t g = 0; g < kv_heads; ++g) {
    const SequenceTable::Head& h = table.head(layer * kv_heads + g);
    in->heads[g] = eviction::HeadKV{
        .n = static_cast<int>(h.count),
        .keys = g < keys.size() ? keys[g] : nullptr,
        .values = g < values.size() ? values[g] : nullptr,
        .positions = h.positions.data(),
    };
  }

  const v1::RopeConfig& rope = model.layout().rope();
  const int rotary =
      rope.rotary_dim() == 0 ? static_cast<int>(d) : static_cast<int>(rope.rotary_dim());
  in->rope.theta = rope.theta() > 0 ? rope.theta() : 10000.0;
  in->rope.rotary_dim = static_cast<int>(rope.rotary_dim());
  in->rope.interleaved = rope.interleaved();
  if (rope.inv_freq_size() != 0) {
    in->rope.inv_freq.assign(rope.inv_freq().begin(), rope.inv_freq().end());
  } else if (rope.theta() == 0) {
    in->rope.inv_freq.assign(static_cast<size_t>(rotary / 2), 0.0f);  // no rotation
  } else {
    in->rope.inv_freq.clear();
  }
  in->next_position = table.next_position();

  const LayerStatistics* l = stats.layers.empty() ? nullptr : &stats.layers[layer];
  in->window = 0;
  in->window_queries.clear();
  in->query_sum.clear();
  in->query_sq_sum.clear();
  in->query_count = 0;
  in->attention_mass.resize(0);
  in->wo_gram.clear();
  if (l != nullptr && needs.window_queries && l->window != 0) {
    in->window = static_cast<int>(l->window);
    in->window_queries.assign(l->window_queries.begin(), l->window_queries.end());
  }
  if (l != nullptr && needs.query_moments && l->query_count != 0) {
    in->query_sum.assign(l->query_sum.begin(), l->query_sum.end());
    in->query_sq_sum.assign(l->query_sq_sum.begin(), l->query_sq_sum.end());
    in->query_count = static_cast<int64_t>(l->query_count);
  }
  if (l != nullptr && needs.attention_mass && !l->attention_mass.empty()) {
    in->attention_mass.resize(q_heads);
    for (uint32_t h = 0; h < q_heads; ++h) {
      in->attention_mass[h].assign(l->attention_mass[h].begin(), l->attention_mass[h].end());
    }
  }
  SketchToLayerInputs(l != nullptr && needs.query_sketch ? l->sketch : LayerSketch(), q_heads, d,
                      in);
  if (policy.scorer == eviction::ScorerKind::kLaProx && model.wo_gram_count() != 0) {
    bool any = false;
    for (uint32_t h = 0; h < q_heads && !any; ++h) any = model.Gram(layer, h) != nullptr;
    if (any) {
      const size_t dd = size_t{d} * d;
      in->wo_gram.assign(q_heads * dd, 0.0f);
      for (uint32_t h = 0; h < q_heads; ++h) {
        float* dst = in->wo_gram.data() + h * dd;
        if (const std::vector<float>* gram = model.Gram(layer, h)) {
          std::copy(gram->begin(), gram->end(), dst);
        } else {
          for (uint32_t i = 0; i < d; ++i) dst[size_t{i} * d + i] = 1.0f;
        }
      }
    }
  }
}

}  // namespace kvkeep
