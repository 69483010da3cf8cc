#include "engines/llama/kv_bridge.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace kvkeep::llama {
namespace {

absl::Status CheckTable(const v1::PageTable& table, const ModelShape& shape,
                        const std::string& sequence) {
  const size_t want = size_t{shape.layers} * shape.kv_heads;
  if (static_cast<size_t>(table.heads_size()) != want) {
    return absl::FailedPreconditionError(
        absl::StrCat("sequence ", sequence, " of model \"", table.model(), "\" has ",
                     table.heads_size(), " (layer, KV head) pairs; the loaded model has ",
                     shape.layers, " layers x ", shape.kv_heads, " KV heads"));
  }
  return absl::OkStatus();
}

}  // namespace

v1::ModelLayout LayoutFor(const std::string& name, const ModelShape& shape) {
  v1::ModelLayout layout;
  layout.set_name(name);
  layout.set_layers(shape.layers);
  layout.set_q_heads(shape.q_heads);
  layout.set_kv_heads(shape.kv_heads);
  layout.set_head_dim(shape.head_dim);
  layout.set_dtype(v1::DTYPE_FP16);
  layout.set_tokens_per_page(kTokensPerPage);
  layout.mutable_rope()->set_theta(shape.rope_theta);
  layout.mutable_rope()->set_interleaved(shape.rope_interleaved);
  return layout;
}

absl::Status RegisterLayout(Client& client, const v1::ModelLayout& layout) {
  absl::StatusOr<v1::RegisterModelReply> reply = client.RegisterModel(layout);
  if (reply.ok()) return absl::OkStatus();
  if (reply.status().code() == absl::StatusCode::kAlreadyExists) {
    return absl::FailedPreconditionError(absl::StrCat(
        "model \"", layout.name(), "\" is registered in kvkeep with another layout than this GGUF ",
        "(", layout.layers(), " layers, ", layout.q_heads(), " q / ", layout.kv_heads(),
        " KV heads, head_dim ", layout.head_dim(), "): ", reply.status().message(),
        ". Use the matching model, or --model-name to register it under another name"));
  }
  return reply.status();
}

absl::StatusOr<std::string> StoreState(Client& client, const std::string& model,
                                       const ModelShape& shape, const std::string& state,
                                       const std::vector<v1::LayerStats>& stats,
                                       const StoreOptions& options) {
  ASSIGN_OR_RETURN(
      const SeqState parsed,
      SeqState::Parse(
          absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(state.data()), state.size()),
          shape.cache()));
  const uint32_t n = parsed.cells();
  ASSIGN_OR_RETURN(std::string sequence, client.CreateSequence(model, options.retain));
  RETURN_IF_ERROR(client.Allocate(sequence, n).status());
  const size_t head_bytes = size_t{n} * shape.head_dim * 2;
  std::vector<uint8_t> keys(head_bytes), values(head_bytes);
  for (uint32_t l = 0; l < shape.layers; ++l) {
    for (uint32_t h = 0; h < shape.kv_heads; ++h) {
      parsed.CopyHeadKeys(l, h, keys.data());
      parsed.CopyHeadValues(l, h, values.data());
      RETURN_IF_ERROR(client.WriteInPlace(sequence, l, h, 0, n, keys.data(), values.data()));
    }
  }
  RETURN_IF_ERROR(client.Commit(sequence, n, parsed.positions(), stats).status());
  return sequence;
}

absl::StatusOr<std::vector<int32_t>> SequencePositions(Client& client, const ModelShape& shape,
                                                       const std::string& sequence) {
  ASSIGN_OR_RETURN(const v1::PageTable table, client.GetSequence(sequence, true));
  RETURN_IF_ERROR(CheckTable(table, shape, sequence));
  const auto& first = table.heads(0).positions();
  for (const v1::HeadTable& head : table.heads()) {
    if (head.positions_size() != first.size() ||
        !std::equal(first.begin(), first.end(), head.positions().begin())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "sequence ", sequence, ": layer ", head.layer(), " KV head ", head.kv_head(),
          " holds other tokens than layer 0 head 0 (", head.positions_size(), " vs ", first.size(),
          "); llama.cpp keeps one set of cells for all layers and heads: compress "
          "with allocation \"sequence\""));
    }
  }
  return std::vector<int32_t>(first.begin(), first.end());
}

absl::StatusOr<std::string> LoadState(Client& client, const std::string& model,
                                      const ModelShape& shape, const std::string& sequence,
                                      uint32_t max_tokens) {
  ASSIGN_OR_RETURN(const v1::PageTable table, client.GetSequence(sequence, false));
  if (table.model() != model) {
    return absl::FailedPreconditionError(absl::StrCat(
        "sequence ", sequence, " holds the KV cache of model \"", table.model(),
        "\"; this is model \"", model, "\" (", shape.layers, " layers, ", shape.kv_heads,
        " KV heads, head_dim ", shape.head_dim, "): restore it with the model that wrote it"));
  }
  ASSIGN_OR_RETURN(const v1::PageTable acquired, client.Acquire(sequence));
  RETURN_IF_ERROR(CheckTable(acquired, shape, sequence));
  for (const v1::ArenaExport& arena : acquired.arenas()) {
    if (arena.geometry().head_dim() != shape.head_dim) {
      (void)client.Release(sequence);
      return absl::FailedPreconditionError(absl::StrCat(
          "sequence ", sequence, " has pages of head_dim ", arena.geometry().head_dim(),
          "; the loaded model has head_dim ", shape.head_dim));
    }
  }
  absl::StatusOr<std::vector<int32_t>> positions = SequencePositions(client, shape, sequence);
  if (!positions.ok()) {
    (void)client.Release(sequence);
    return positions.status();
  }
  if (max_tokens > 0 && positions->size() > max_tokens) positions->resize(max_tokens);
  const uint32_t n = static_cast<uint32_t>(positions->size());
  SeqStateWriter writer(shape.cache(), *std::move(positions), 0, /*v_trans=*/true);
  const size_t head_bytes = size_t{n} * shape.head_dim * 2;
  std::vector<uint8_t> keys(head_bytes), values(head_bytes);
  absl::Status status;
  for (uint32_t l = 0; l < shape.layers && status.ok(); ++l) {
    for (uint32_t h = 0; h < shape.kv_heads && status.ok(); ++h) {
      status = client.ReadInPlace(sequence, l, h, 0, n, keys.data(), values.data());
      if (status.ok()) writer.SetHead(l, h, keys.data(), values.data());
    }
  }
  absl::Status released = client.Release(sequence).status();
  RETURN_IF_ERROR(status);
  RETURN_IF_ERROR(released);
  return writer.bytes();
}

}  // namespace kvkeep::llama
