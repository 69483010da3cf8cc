// RegisterModel's validation: a stream of ModelChunk messages as the RegisterModel reactor
// (service/kvcache_service.cc) applies them — the layout first, then W_O Grams.
//
// Input: records ([u16 length][ModelChunk bytes], fuzz_input.h), one ModelChunk each. Invariants:
// a layout Model::FromLayout accepts has a consistent geometry (page_bytes = 2 * tokens_per_page *
// head_dim * sizeof(dtype)), kv_heads dividing q_heads, and the limits of the header; a Gram
// AddWoGram accepts is stored with head_dim² finite values; a rejected one changes nothing; every
// error says why.
#include <cmath>
#include <cstdint>
#include <optional>

#include "kvkeep/v1/kvcache.pb.h"
#include "service/engine/model_layout.h"
#include "tests/fuzz/fuzz_input.h"

namespace kvkeep::fuzz {
namespace {

void CheckModel(const Model& model, const v1::ModelLayout& layout) {
  const PageGeometry& g = model.geometry();
  const uint64_t dtype_size = DTypeSize(layout.dtype());
  FUZZ_CHECK(dtype_size == 2 || dtype_size == 4, "accepted dtype without a size");
  FUZZ_CHECK(model.layers() >= 1 && model.layers() <= 1024, "layers out of range");
  FUZZ_CHECK(model.q_heads() >= 1 && model.kv_heads() >= 1, "no heads");
  FUZZ_CHECK(model.q_heads() % model.kv_heads() == 0, "kv_heads does not divide q_heads");
  FUZZ_CHECK(model.head_dim() >= 2 && model.head_dim() % 2 == 0, "odd head_dim");
  FUZZ_CHECK(g.tokens_per_page >= 1, "no tokens per page");
  FUZZ_CHECK(g.tokens_per_page == layout.tokens_per_page() && g.head_dim == layout.head_dim() &&
                 g.dtype == layout.dtype(),
             "geometry differs from the layout");
  FUZZ_CHECK(g.token_bytes == uint64_t{layout.head_dim()} * dtype_size, "token_bytes");
  FUZZ_CHECK(g.value_offset == uint64_t{layout.tokens_per_page()} * g.token_bytes, "value_offset");
  FUZZ_CHECK(g.page_bytes ==
                 2 * uint64_t{layout.tokens_per_page()} * layout.head_dim() * dtype_size,
             "page_bytes != 2 * tpp * head_dim * sizeof(dtype)");
  FUZZ_CHECK(model.head_tables() == model.layers() * model.kv_heads(), "head_tables");
  FUZZ_CHECK(ValidModelName(model.name()), "accepted an invalid name");
  FUZZ_CHECK(model.SameLayout(layout), "the model does not keep its layout");
  const v1::RopeConfig& rope = layout.rope();
  FUZZ_CHECK(std::isfinite(rope.theta()) && rope.theta() >= 0, "rope.theta");
  const uint32_t rotary = rope.rotary_dim() == 0 ? layout.head_dim() : rope.rotary_dim();
  FUZZ_CHECK(rotary <= layout.head_dim() && rotary % 2 == 0, "rope.rotary_dim");
  FUZZ_CHECK(rope.inv_freq_size() == 0 || static_cast<uint32_t>(rope.inv_freq_size()) == rotary / 2,
             "rope.inv_freq size");
  v1::PageGeometry proto;
  g.ToProto(&proto);
  FUZZ_CHECK(proto.page_bytes() == g.page_bytes && proto.value_offset() == g.value_offset,
             "PageGeometry::ToProto");
}

void CheckGram(const Model& model, const v1::WoGram& gram, const absl::Status& status,
               size_t count_before) {
  FUZZ_CHECK_STATUS_MESSAGE(status);
  if (!status.ok()) {
    FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument, status.ToString());
    FUZZ_CHECK(model.wo_gram_count() == count_before, "a rejected Gram changed the model");
    return;
  }
  FUZZ_CHECK(gram.layer() < model.layers() && gram.q_head() < model.q_heads(),
             "accepted a Gram outside the model");
  const std::vector<float>* stored = model.Gram(gram.layer(), gram.q_head());
  FUZZ_CHECK(stored != nullptr, "accepted Gram not stored");
  FUZZ_CHECK(stored->size() == uint64_t{model.head_dim()} * model.head_dim(), "Gram size");
  for (float v : *stored) FUZZ_CHECK(std::isfinite(v), "stored a non-finite Gram value");
  FUZZ_CHECK(model.wo_gram_count() <= count_before + 1, "Gram count grew by more than one");
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
  FuzzInput in(data, size);
  std::optional<Model> model;
  v1::ModelLayout layout;
  while (!in.empty()) {
    v1::ModelChunk chunk;
    if (!chunk.ParseFromString(in.Record())) continue;  // gRPC would refuse it before us
    if (chunk.has_layout()) {
      if (model.has_value()) continue;  // the reactor refuses a second layout
      absl::StatusOr<Model> m = Model::FromLayout(chunk.layout());
      FUZZ_CHECK_STATUS_MESSAGE(m.status());
      if (!m.ok()) {
        FUZZ_CHECK(m.status().code() == absl::StatusCode::kInvalidArgument, m.status().ToString());
        return 0;  // the reactor ends the stream
      }
      layout = chunk.layout();
      CheckModel(*m, layout);
      model = std::move(*m);
    } else if (chunk.has_wo_gram()) {
      if (!model.has_value()) return 0;
      const size_t before = model->wo_gram_count();
      absl::Status status = model->AddWoGram(chunk.wo_gram());
      CheckGram(*model, chunk.wo_gram(), status, before);
      if (!status.ok()) return 0;
    }
  }
  if (model.has_value()) {
    // The registered copy (shared_ptr<const Model>) must keep layout and Grams.
    Model copy = *model;
    CheckModel(copy, layout);
    FUZZ_CHECK(copy.wo_gram_count() == model->wo_gram_count(), "copy lost Grams");
  }
  return 0;
}
