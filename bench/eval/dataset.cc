#include "bench/eval/dataset.h"

#include <cmath>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace kvkeep::eval {
namespace {

using nlohmann::json;

std::string LayerPath(const std::string& dir, int layer, const char* what) {
  return (std::filesystem::path(dir) / absl::StrCat("L", layer, ".", what, ".npy")).string();
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::Status CheckRank3(const std::string& path, const NpyArray& a, int64_t heads, int64_t dim) {
  if (a.shape.size() != 3 || a.shape[0] != heads || a.shape[2] != dim) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": shape ", ShapeString(a.shape),
                                                   ", expected [", heads, ", T, ", dim, "]"));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status GetRequired(const json& j, const char* key, T* out, const std::string& path) {
  if (!j.contains(key)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": missing required field \"", key, "\""));
  }
  try {
    *out = j.at(key).get<T>();
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": field \"", key, "\" has the wrong type (", e.what(), ")"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DatasetMeta> ReadMeta(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / "meta.json").string();
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat(path, ": cannot open (is --data a dataset folder?)"));
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON: ", e.what()));
  }
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));

  DatasetMeta m;
  RETURN_IF_ERROR(GetRequired(j, "layers", &m.layers, path));
  RETURN_IF_ERROR(GetRequired(j, "q_heads", &m.q_heads, path));
  RETURN_IF_ERROR(GetRequired(j, "kv_heads", &m.kv_heads, path));
  RETURN_IF_ERROR(GetRequired(j, "head_dim", &m.head_dim, path));
  RETURN_IF_ERROR(GetRequired(j, "prefix", &m.prefix, path));
  RETURN_IF_ERROR(GetRequired(j, "rope_theta", &m.rope_theta, path));
  std::string style;
  RETURN_IF_ERROR(GetRequired(j, "rope_style", &style, path));
  auto parsed_style = ParseRopeStyle(style);
  if (!parsed_style.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", parsed_style.status().message()));
  }
  m.rope_style = *parsed_style;

  if (m.layers <= 0 || m.q_heads <= 0 || m.kv_heads <= 0 || m.head_dim <= 0 || m.prefix <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": layers, q_heads, kv_heads, head_dim and prefix must be positive"));
  }
  if (m.q_heads % m.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": q_heads (", m.q_heads,
                                                   ") must be a multiple of kv_heads (",
                                                   m.kv_heads, ")"));
  }
  if (m.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": head_dim must be even for RoPE"));
  }
  if (!(m.rope_theta > 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": rope_theta must be > 1"));
  }
  if (j.contains("profile") && j["profile"].is_string()) m.profile = j["profile"];
  if (j.contains("description") && j["description"].is_string()) m.description = j["description"];
  if (j.contains("needles")) {
    if (!j["needles"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": \"needles\" must be a list"));
    }
    for (const json& n : j["needles"]) {
      Needle needle;
      RETURN_IF_ERROR(GetRequired(n, "layer", &needle.layer, path));
      RETURN_IF_ERROR(GetRequired(n, "kv_head", &needle.kv_head, path));
      RETURN_IF_ERROR(GetRequired(n, "position", &needle.position, path));
      if (needle.layer < 0 || needle.layer >= m.layers || needle.kv_head < 0 ||
          needle.kv_head >= m.kv_heads || needle.position < 0 || needle.position >= m.prefix) {
        return absl::InvalidArgumentError(absl::StrCat(
            path, ": needle {layer ", needle.layer, ", kv_head ", needle.kv_head, ", position ",
            needle.position, "} is outside the dataset (positions must be < prefix)"));
      }
      m.needles.push_back(needle);
    }
  }
  return m;
}

absl::Status WriteMeta(const std::string& dir, const DatasetMeta& meta) {
  json j;
  j["layers"] = meta.layers;
  j["q_heads"] = meta.q_heads;
  j["kv_heads"] = meta.kv_heads;
  j["head_dim"] = meta.head_dim;
  j["prefix"] = meta.prefix;
  j["rope_theta"] = meta.rope_theta;
  j["rope_style"] = std::string(RopeStyleName(meta.rope_style));
  if (!meta.profile.empty()) j["profile"] = meta.profile;
  if (!meta.description.empty()) j["description"] = meta.description;
  json needles = json::array();
  for (const Needle& n : meta.needles) {
    needles.push_back({{"layer", n.layer}, {"kv_head", n.kv_head}, {"position", n.position}});
  }
  j["needles"] = needles;
  const std::string path = (std::filesystem::path(dir) / "meta.json").string();
  std::ofstream out(path, std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat(path, ": cannot open for writing"));
  out << j.dump(2) << "\n";
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

namespace {

// The optional worker sketch: both files or neither; shapes [q_heads][K][head_dim] and
// [q_heads][K]; finite centroids, weights >= 0.
absl::Status ReadSketch(const std::string& dir, const DatasetMeta& meta, int layer,
                        LayerData* out) {
  const std::string cpath = LayerPath(dir, layer, "sketch");
  const std::string wpath = LayerPath(dir, layer, "sketch_weights");
  const bool has_c = std::filesystem::exists(cpath), has_w = std::filesystem::exists(wpath);
  if (!has_c && !has_w) return absl::OkStatus();
  if (has_c != has_w) {
    return absl::InvalidArgumentError(
        absl::StrCat(has_c ? wpath : cpath, " is missing (a sketch needs both files)"));
  }
  ASSIGN_OR_RETURN(NpyArray c, ReadNpy(cpath));
  ASSIGN_OR_RETURN(NpyArray w, ReadNpy(wpath));
  if (c.shape.size() != 3 || c.shape[0] != meta.q_heads || c.shape[1] < 1 ||
      c.shape[2] != meta.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(cpath, ": shape ", ShapeString(c.shape),
                                                   ", expected [", meta.q_heads, ", K, ",
                                                   meta.head_dim, "]"));
  }
  if (w.shape != std::vector<int64_t>{meta.q_heads, c.shape[1]}) {
    return absl::InvalidArgumentError(absl::StrCat(wpath, ": shape ", ShapeString(w.shape),
                                                   ", expected [", meta.q_heads, ", ",
                                                   c.shape[1], "]"));
  }
  for (float x : c.data) {
    if (!std::isfinite(x)) return absl::InvalidArgumentError(cpath + ": a non-finite centroid");
  }
  for (float x : w.data) {
    if (!(x >= 0) || !std::isfinite(x)) {
      return absl::InvalidArgumentError(wpath + ": weights must be finite and >= 0");
    }
  }
  out->sketch_k = static_cast<int>(c.shape[1]);
  out->sketch_centroids = std::move(c.data);
  out->sketch_weights = std::move(w.data);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<LayerData> ReadLayer(const std::string& dir, const DatasetMeta& meta, int layer) {
  if (layer < 0 || layer >= meta.layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer ", layer, " out of range [0, ", meta.layers, ")"));
  }
  LayerData out;
  const std::string qpath = LayerPath(dir, layer, "q");
  auto q = ReadNpy(qpath);
  if (!q.ok()) return q.status();
  RETURN_IF_ERROR(CheckRank3(qpath, *q, meta.q_heads, meta.head_dim));
  out.total = q->shape[1];
  if (out.total <= meta.prefix) {
    return absl::InvalidArgumentError(absl::StrCat(
        qpath, ": has ", out.total, " positions but prefix is ", meta.prefix,
        "; positions after the prefix are the future queries, so at least one is needed"));
  }
  out.q = std::move(q->data);

  const std::string kpath = LayerPath(dir, layer, "k");
  const std::string vpath = LayerPath(dir, layer, "v");
  auto k = ReadNpy(kpath);
  if (!k.ok()) return k.status();
  RETURN_IF_ERROR(CheckRank3(kpath, *k, meta.kv_heads, meta.head_dim));
  auto v = ReadNpy(vpath);
  if (!v.ok()) return v.status();
  RETURN_IF_ERROR(CheckRank3(vpath, *v, meta.kv_heads, meta.head_dim));
  if (k->shape[1] != v->shape[1]) {
    return absl::InvalidArgumentError(absl::StrCat(kpath, " and ", vpath,
                                                   " disagree on the number of positions"));
  }
  if (k->shape[1] < meta.prefix) {
    return absl::InvalidArgumentError(absl::StrCat(kpath, ": has ", k->shape[1],
                                                   " positions, fewer than prefix ", meta.prefix));
  }
  out.kv_len = k->shape[1];
  out.k = std::move(k->data);
  out.v = std::move(v->data);

  const std::string qprepath = LayerPath(dir, layer, "qpre");
  if (std::filesystem::exists(qprepath)) {
    auto qpre = ReadNpy(qprepath);
    if (!qpre.ok()) return qpre.status();
    if (qpre->shape != std::vector<int64_t>{meta.q_heads, out.total, meta.head_dim}) {
      return absl::InvalidArgumentError(absl::StrCat(qprepath, ": shape ",
                                                     ShapeString(qpre->shape),
                                                     " differs from the q file's"));
    }
    out.qpre = std::move(qpre->data);
  } else {
    out.qpre = out.q;
    for (int h = 0; h < meta.q_heads; ++h) {
      RotateRows(meta.rope_style, meta.rope_theta, meta.head_dim, 0, out.total,
                 out.qpre.data() + static_cast<int64_t>(h) * out.total * meta.head_dim,
                 /*inverse=*/true);
    }
  }

  const std::string wopath = LayerPath(dir, layer, "wo");
  if (std::filesystem::exists(wopath)) {
    auto wo = ReadNpy(wopath);
    if (!wo.ok()) return wo.status();
    if (wo->shape.size() != 2 || wo->shape[1] != int64_t{meta.q_heads} * meta.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat(wopath, ": shape ", ShapeString(wo->shape),
                                                     ", expected [hidden, ",
                                                     meta.q_heads * meta.head_dim, "]"));
    }
    out.wo_hidden = wo->shape[0];
    out.wo = std::move(wo->data);
  }
  RETURN_IF_ERROR(ReadSketch(dir, meta, layer, &out));
  return out;
}

absl::Status WriteLayer(const std::string& dir, const DatasetMeta& meta, int layer,
                        const LayerData& data, NpyDtype dtype) {
  auto write = [&](const char* what, int64_t heads, int64_t len,
                   const std::vector<float>& values) -> absl::Status {
    NpyArray a{{heads, len, meta.head_dim}, values};
    return WriteNpy(LayerPath(dir, layer, what), a, dtype);
  };
  RETURN_IF_ERROR(write("q", meta.q_heads, data.total, data.q));
  if (!data.qpre.empty()) {
    RETURN_IF_ERROR(write("qpre", meta.q_heads, data.total, data.qpre));
  }
  RETURN_IF_ERROR(write("k", meta.kv_heads, data.kv_len, data.k));
  RETURN_IF_ERROR(write("v", meta.kv_heads, data.kv_len, data.v));
  if (data.wo_hidden > 0) {
    NpyArray a{{data.wo_hidden, int64_t{meta.q_heads} * meta.head_dim}, data.wo};
    RETURN_IF_ERROR(WriteNpy(LayerPath(dir, layer, "wo"), a, dtype));
  }
  if (data.sketch_k > 0) {
    NpyArray c{{meta.q_heads, data.sketch_k, meta.head_dim}, data.sketch_centroids};
    RETURN_IF_ERROR(WriteNpy(LayerPath(dir, layer, "sketch"), c, NpyDtype::kFloat32));
    NpyArray w{{meta.q_heads, data.sketch_k}, data.sketch_weights};
    RETURN_IF_ERROR(WriteNpy(LayerPath(dir, layer, "sketch_weights"), w, NpyDtype::kFloat32));
  }
  return absl::OkStatus();
}

}  // namespace kvkeep::eval
