#include "bench/eval/measures.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <cblas.h>

#include "absl/strings/str_cat.h"

namespace kvkeep::eval {
namespace {

// argmax_j cos(o, v_j) over the cached tokens of one KV head (ties: lower index).
int64_t RetrievedToken(const LayerReference& ref, int g, const double* o) {
  const int d = ref.head_dim;
  const float* V = ref.values.data() + static_cast<size_t>(g) * ref.prefix * d;
  double o_norm = 0;
  for (int c = 0; c < d; ++c) o_norm += o[c] * o[c];
  o_norm = std::sqrt(o_norm);
  int64_t best = -1;
  double best_cos = -2;
  for (int64_t j = 0; j < ref.prefix; ++j) {
    double dot = 0, vv = 0;
    for (int c = 0; c < d; ++c) {
      dot += o[c] * V[j * d + c];
      vv += static_cast<double>(V[j * d + c]) * V[j * d + c];
    }
    const double denom = o_norm * std::sqrt(vv);
    const double cos = denom > 0 ? dot / denom : 0.0;
    if (cos > best_cos) {
      best_cos = cos;
      best = j;
    }
  }
  return best;
}

// o_S for one (q head, future query): the full attention renormalised over `kept`.
// Returns the retained mass; o_S = 0 when nothing of the mass is kept.
double CompressedOutput(const LayerReference& ref, int h, int64_t t, const std::vector<int32_t>& kept,
                        double* out) {
  const int d = ref.head_dim;
  const int G = ref.q_heads / ref.kv_heads;
  const float* p = ref.probs.data() + (static_cast<size_t>(h) * ref.future + t) * ref.prefix;
  const float* V = ref.values.data() + static_cast<size_t>(h / G) * ref.prefix * d;
  std::fill(out, out + d, 0.0);
  double mass = 0;
  for (int32_t j : kept) {
    const double a = p[j];
    mass += a;
    const float* v = V + static_cast<size_t>(j) * d;
    for (int c = 0; c < d; ++c) out[c] += a * v[c];
  }
  if (mass > 0) {
    for (int c = 0; c < d; ++c) out[c] /= mass;
  }
  return mass;
}

// The generated-position parts of the decode-time measure (LayerReference::gen_*), from the raw
// keys: query t sees the prefix (whose softmax over the prefix is ref.probs) and the generated
// positions P..min(P + t, kv_len − 1).
void BuildDecodeReference(const LayerData& layer, LayerReference* ref) {
  const int H = ref->q_heads, d = ref->head_dim, G = H / ref->kv_heads;
  const int64_t P = ref->prefix, F = ref->future, T = layer.total;
  ref->gen_mass.assign(static_cast<size_t>(H) * F, 0.0);
  ref->gen_out.assign(static_cast<size_t>(H) * F * d, 0.0);
  ref->full_out_decode = ref->full_out;
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> logit_prefix(P), logit_gen;
  for (int h = 0; h < H; ++h) {
    const int g = h / G;
    const float* K = layer.k.data() + static_cast<size_t>(g) * layer.kv_len * d;
    const float* V = layer.v.data() + static_cast<size_t>(g) * layer.kv_len * d;
    for (int64_t t = 0; t < F; ++t) {
      const int64_t last = std::min<int64_t>(P + t, layer.kv_len - 1);
      if (last < P) continue;  // no generated key: decode measure = prefix measure
      const float* q = layer.q.data() + (static_cast<size_t>(h) * T + P + t) * d;
      auto logit = [&](int64_t j) {
        double dot = 0;
        for (int c = 0; c < d; ++c) dot += static_cast<double>(q[c]) * K[j * d + c];
        return dot * scale;
      };
      double mx = -INFINITY;
      for (int64_t j = 0; j < P; ++j) mx = std::max(mx, logit_prefix[j] = logit(j));
      logit_gen.resize(last - P + 1);
      for (int64_t j = P; j <= last; ++j) mx = std::max(mx, logit_gen[j - P] = logit(j));
      double zp = 0, zg = 0;
      for (int64_t j = 0; j < P; ++j) zp += std::exp(logit_prefix[j] - mx);
      for (double& x : logit_gen) zg += (x = std::exp(x - mx));
      const double z = zp + zg;
      const size_t at = static_cast<size_t>(h) * F + t;
      ref->gen_mass[at] = zg / z;
      double* u = ref->gen_out.data() + at * d;
      for (int64_t j = P; j <= last; ++j) {
        const double a = logit_gen[j - P] / z;
        for (int c = 0; c < d; ++c) u[c] += a * V[j * d + c];
      }
      double* o = ref->full_out_decode.data() + at * d;
      for (int c = 0; c < d; ++c) o[c] = (1.0 - ref->gen_mass[at]) * o[c] + u[c];
    }
  }
}

// ‖o_dec(S) − o_dec‖ / ‖o_dec‖ for one (q head, future query), given o_S and the retained prefix
// mass M_S from CompressedOutput: o_dec(S) = ((1 − m)·M_S·o_S + u) / ((1 − m)·M_S + m).
double DecodeRelError(const LayerReference& ref, int h, int64_t t, const double* o_s,
                      double mass_s) {
  const int d = ref.head_dim;
  const size_t at = static_cast<size_t>(h) * ref.future + t;
  const double m = ref.gen_mass[at];
  const double* u = ref.gen_out.data() + at * d;
  const double* full = ref.full_out_decode.data() + at * d;
  const double den_w = (1.0 - m) * mass_s + m;
  double num = 0, den = 0;
  for (int c = 0; c < d; ++c) {
    const double o = den_w > 0 ? ((1.0 - m) * mass_s * o_s[c] + u[c]) / den_w : 0.0;
    num += (o - full[c]) * (o - full[c]);
    den += full[c] * full[c];
  }
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

}  // namespace

LayerReference BuildReference(const DatasetMeta& meta, const LayerData& layer) {
  LayerReference ref;
  const int H = meta.q_heads, Hk = meta.kv_heads, d = meta.head_dim, G = H / Hk;
  const int64_t P = meta.prefix, F = layer.total - meta.prefix, T = layer.total;
  ref.q_heads = H;
  ref.kv_heads = Hk;
  ref.head_dim = d;
  ref.prefix = P;
  ref.future = F;
  ref.probs.assign(static_cast<size_t>(H) * F * P, 0.f);
  ref.values.assign(static_cast<size_t>(Hk) * P * d, 0.f);
  ref.full_out.assign(static_cast<size_t>(H) * F * d, 0.0);
  ref.future_mass.assign(static_cast<size_t>(Hk) * P, 0.0);
  for (int g = 0; g < Hk; ++g) {
    std::copy_n(layer.v.data() + static_cast<size_t>(g) * layer.kv_len * d, P * d,
                ref.values.data() + static_cast<size_t>(g) * P * d);
  }

  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> logits(P);
  for (int h = 0; h < H; ++h) {
    const int g = h / G;
    const float* K = layer.k.data() + static_cast<size_t>(g) * layer.kv_len * d;
    const float* V = ref.values.data() + static_cast<size_t>(g) * P * d;
    for (int64_t t = 0; t < F; ++t) {
      const float* q = layer.q.data() + (static_cast<size_t>(h) * T + P + t) * d;
      double mx = -INFINITY;
      for (int64_t j = 0; j < P; ++j) {
        float dot = 0;  // float accumulation over d, vectorisable; error ~1e-6 relative
        for (int c = 0; c < d; ++c) dot += q[c] * K[j * d + c];
        logits[j] = dot * scale;
        mx = std::max(mx, logits[j]);
      }
      double sum = 0;
      for (int64_t j = 0; j < P; ++j) {
        logits[j] = std::exp(logits[j] - mx);
        sum += logits[j];
      }
      float* p = ref.probs.data() + (static_cast<size_t>(h) * F + t) * P;
      double* o = ref.full_out.data() + (static_cast<size_t>(h) * F + t) * d;
      double* fm = ref.future_mass.data() + static_cast<size_t>(g) * P;
      for (int64_t j = 0; j < P; ++j) {
        const double a = logits[j] / sum;
        p[j] = static_cast<float>(a);
        fm[j] += a;
        for (int c = 0; c < d; ++c) o[c] += a * V[j * d + c];
      }
    }
  }

  BuildDecodeReference(layer, &ref);

  // Evicting j alone moves o by exactly a_j (o − v_j) / (1 − a_j) (= a_j (o_{-j} − v_j), finite
  // as a_j → 1; the floor only guards float rounding).
  ref.future_output.assign(static_cast<size_t>(Hk) * P, 0.0);
  for (int h = 0; h < H; ++h) {
    const int g = h / G;
    const float* V = ref.values.data() + static_cast<size_t>(g) * P * d;
    double* fo = ref.future_output.data() + static_cast<size_t>(g) * P;
    for (int64_t t = 0; t < F; ++t) {
      const float* p = ref.probs.data() + (static_cast<size_t>(h) * F + t) * P;
      const double* o = ref.full_out.data() + (static_cast<size_t>(h) * F + t) * d;
      double o_norm = 0;
      for (int c = 0; c < d; ++c) o_norm += o[c] * o[c];
      o_norm = std::sqrt(o_norm);
      if (o_norm == 0) continue;
      for (int64_t j = 0; j < P; ++j) {
        double dist = 0;
        for (int c = 0; c < d; ++c) dist += (V[j * d + c] - o[c]) * (V[j * d + c] - o[c]);
        fo[j] += p[j] * std::sqrt(dist) / std::max(1.0 - p[j], 1e-6) / o_norm;
      }
    }
  }

  auto rank = [&](const std::vector<double>& score, std::vector<int32_t>& order_out) {
    order_out.resize(static_cast<size_t>(Hk) * P);
    for (int g = 0; g < Hk; ++g) {
      int32_t* order = order_out.data() + static_cast<size_t>(g) * P;
      const double* s = score.data() + static_cast<size_t>(g) * P;
      std::iota(order, order + P, 0);
      std::stable_sort(order, order + P, [s](int32_t a, int32_t b) { return s[a] > s[b]; });
    }
  };
  rank(ref.future_mass, ref.oracle_order);
  rank(ref.future_output, ref.output_order);

  if (layer.wo_hidden > 0) {
    const int64_t hidden = layer.wo_hidden, width = int64_t{H} * d;
    ref.wo_hidden = hidden;
    ref.wo.assign(layer.wo.begin(), layer.wo.end());
    // full_y[t] = Σ_h o_h W_O^h = W · concat_h(o_h): gather [F][H*d] then one GEMM with Wᵀ.
    std::vector<double> x(static_cast<size_t>(F) * width);
    for (int h = 0; h < H; ++h) {
      for (int64_t t = 0; t < F; ++t) {
        std::copy_n(ref.full_out.data() + (static_cast<size_t>(h) * F + t) * d, d,
                    x.data() + t * width + h * d);
      }
    }
    ref.full_y.assign(static_cast<size_t>(F) * hidden, 0.0);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, F, hidden, width, 1.0, x.data(), width,
                ref.wo.data(), width, 0.0, ref.full_y.data(), hidden);
  }
  return ref;
}

std::vector<NeedleTarget> FindNeedleTargets(const std::vector<Needle>& needles,
                                            const std::vector<LayerReference>& refs) {
  std::vector<NeedleTarget> out;
  for (const Needle& n : needles) {
    if (n.layer < 0 || n.layer >= static_cast<int>(refs.size())) continue;
    const LayerReference& ref = refs[n.layer];
    if (n.kv_head < 0 || n.kv_head >= ref.kv_heads || n.position >= ref.prefix) continue;
    const int G = ref.q_heads / ref.kv_heads;
    NeedleTarget target{n.layer, n.kv_head, n.position, {}, {}};
    for (int h = n.kv_head * G; h < (n.kv_head + 1) * G; ++h) {
      for (int64_t t = 0; t < ref.future; ++t) {
        const float* p = ref.probs.data() + (static_cast<size_t>(h) * ref.future + t) * ref.prefix;
        const int64_t arg = std::max_element(p, p + ref.prefix) - p;
        if (arg != n.position) continue;
        target.queries.emplace_back(h, t);
        target.full_answer.push_back(RetrievedToken(
            ref, n.kv_head, ref.full_out.data() + (static_cast<size_t>(h) * ref.future + t) * ref.head_dim));
      }
    }
    if (!target.queries.empty()) out.push_back(std::move(target));
  }
  return out;
}

absl::StatusOr<Metrics> Measure(const std::vector<LayerReference>& refs, const KeptSets& kept,
                                const std::vector<NeedleTarget>& needles) {
  if (kept.size() != refs.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("kept sets cover ", kept.size(), " layers, the data has ", refs.size()));
  }
  Metrics m;
  double err_sum = 0, mass_sum = 0, wo_err_sum = 0, dec_err_sum = 0;
  int64_t err_count = 0, wo_count = 0;
  int64_t overlap = 0, kept_total = 0, capacity = 0;
  bool any_wo = false;

  for (size_t l = 0; l < refs.size(); ++l) {
    const LayerReference& ref = refs[l];
    const int H = ref.q_heads, Hk = ref.kv_heads, d = ref.head_dim, G = H / Hk;
    const int64_t P = ref.prefix, F = ref.future;
    if (static_cast<int>(kept[l].size()) != Hk) {
      return absl::InvalidArgumentError(absl::StrCat("layer ", l, ": kept sets for ",
                                                     kept[l].size(), " KV heads, data has ", Hk));
    }
    for (int g = 0; g < Hk; ++g) {
      const std::vector<int32_t>& S = kept[l][g];
      for (size_t i = 0; i < S.size(); ++i) {
        if (S[i] < 0 || S[i] >= P || (i > 0 && S[i] <= S[i - 1])) {
          return absl::InvalidArgumentError(absl::StrCat(
              "layer ", l, " kv head ", g, ": kept indices must be ascending and in [0, ", P, ")"));
        }
      }
      // Oracle recall: overlap with the top-|S| tokens by future attention.
      const int64_t k = static_cast<int64_t>(S.size());
      std::vector<char> top(P, 0);
      const int32_t* order = ref.oracle_order.data() + static_cast<size_t>(g) * P;
      for (int64_t i = 0; i < k; ++i) top[order[i]] = 1;
      for (int32_t j : S) overlap += top[j];
      kept_total += k;
      capacity += P;
    }

    const bool wo = ref.wo_hidden > 0;
    std::vector<double> diff(wo ? static_cast<size_t>(F) * H * d : 0);
    std::vector<double> o(d);
    for (int h = 0; h < H; ++h) {
      const std::vector<int32_t>& S = kept[l][h / G];
      for (int64_t t = 0; t < F; ++t) {
        const double mass_s = CompressedOutput(ref, h, t, S, o.data());
        mass_sum += mass_s;
        dec_err_sum += DecodeRelError(ref, h, t, o.data(), mass_s);
        const double* full = ref.full_out.data() + (static_cast<size_t>(h) * F + t) * d;
        double num = 0, den = 0;
        for (int c = 0; c < d; ++c) {
          num += (o[c] - full[c]) * (o[c] - full[c]);
          den += full[c] * full[c];
          if (wo) diff[t * H * d + h * d + c] = o[c] - full[c];
        }
        err_sum += den > 0 ? std::sqrt(num / den) : 0.0;
        ++err_count;
      }
    }
    if (wo) {
      any_wo = true;
      const int64_t hidden = ref.wo_hidden, width = int64_t{H} * d;
      std::vector<double> ydiff(static_cast<size_t>(F) * hidden);
      cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, F, hidden, width, 1.0, diff.data(),
                  width, ref.wo.data(), width, 0.0, ydiff.data(), hidden);
      for (int64_t t = 0; t < F; ++t) {
        double num = 0, den = 0;
        for (int64_t r = 0; r < hidden; ++r) {
          num += ydiff[t * hidden + r] * ydiff[t * hidden + r];
          den += ref.full_y[t * hidden + r] * ref.full_y[t * hidden + r];
        }
        wo_err_sum += den > 0 ? std::sqrt(num / den) : 0.0;
        ++wo_count;
      }
    }
  }
  m.rel_error = err_count > 0 ? err_sum / err_count : 0.0;
  m.retained_mass = err_count > 0 ? mass_sum / err_count : 0.0;
  m.rel_error_decode = err_count > 0 ? dec_err_sum / err_count : 0.0;
  m.rel_error_wo = any_wo && wo_count > 0 ? wo_err_sum / wo_count : -1.0;
  m.oracle_recall = kept_total > 0 ? static_cast<double>(overlap) / kept_total : 0.0;
  m.kept_fraction = capacity > 0 ? static_cast<double>(kept_total) / capacity : 0.0;

  if (!needles.empty()) {
    int kept_needles = 0;
    int64_t same = 0, asked = 0;
    for (const NeedleTarget& n : needles) {
      const LayerReference& ref = refs[n.layer];
      const std::vector<int32_t>& S = kept[n.layer][n.kv_head];
      kept_needles += std::binary_search(S.begin(), S.end(), static_cast<int32_t>(n.position));
      std::vector<double> o(ref.head_dim);
      for (size_t i = 0; i < n.queries.size(); ++i) {
        CompressedOutput(ref, n.queries[i].first, n.queries[i].second, S, o.data());
        same += RetrievedToken(ref, n.kv_head, o.data()) == n.full_answer[i];
        ++asked;
      }
    }
    m.needles = static_cast<int>(needles.size());
    m.needle_recall = static_cast<double>(kept_needles) / needles.size();
    m.needle_argmax = asked > 0 ? static_cast<double>(same) / asked : -1.0;
  }
  return m;
}

Sparsity MeasureSparsity(const std::vector<LayerReference>& refs) {
  Sparsity s;
  double top_sum = 0, sink_sum = 0;
  int64_t count = 0;
  for (const LayerReference& ref : refs) {
    const int64_t P = ref.prefix;
    const int64_t top = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(0.05 * P)));
    double layer_sum = 0;
    int64_t layer_count = 0;
    std::vector<float> row(P);
    for (int h = 0; h < ref.q_heads; ++h) {
      for (int64_t t = 0; t < ref.future; ++t) {
        const float* p = ref.probs.data() + (static_cast<size_t>(h) * ref.future + t) * P;
        std::copy_n(p, P, row.begin());
        std::nth_element(row.begin(), row.begin() + (top - 1), row.end(), std::greater<float>());
        double mass = 0;
        for (int64_t i = 0; i < top; ++i) mass += row[i];
        double sink = 0;
        for (int64_t j = 0; j < std::min<int64_t>(4, P); ++j) sink += p[j];
        layer_sum += mass;
        sink_sum += sink;
        ++layer_count;
      }
    }
    s.layer_top5_mass.push_back(layer_count > 0 ? layer_sum / layer_count : 0.0);
    top_sum += layer_sum;
    count += layer_count;
  }
  s.top5_mass = count > 0 ? top_sum / count : 0.0;
  s.sink_mass = count > 0 ? sink_sum / count : 0.0;
  return s;
}

}  // namespace kvkeep::eval
