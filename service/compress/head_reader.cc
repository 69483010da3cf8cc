#include "service/compress/head_reader.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "gpu/math/dtype.h"

namespace kvkeep {

absl::Status ReadHeadAsFloat(const PageGeometry& geo, const SequenceTable& table, uint32_t head,
                             bool values, const PagePool& pool, const Backend& backend,
                             std::vector<uint16_t>* staging, std::vector<float>* out) {
  const uint32_t n = table.head(head).count;
  const size_t d = geo.head_dim;
  out->resize(size_t{n} * d);
  if (geo.dtype != v1::DTYPE_FP32) staging->resize(size_t{geo.tokens_per_page} * d);
  absl::Status status;
  RETURN_IF_ERROR(table.ForEachSegment(
      head, 0, n, [&](uint64_t page, uint32_t slot, uint32_t count, uint64_t done) {
        if (!status.ok()) return;
        const Arena* arena = pool.ArenaOf(page);
        if (arena == nullptr) {
          status = absl::InternalError(absl::StrCat("page ", PageRef::Unpack(page).arena, ":",
                                                    PageRef::Unpack(page).index,
                                                    " of the sequence is not in the pool"));
          return;
        }
        const size_t offset = size_t{PageRef::Unpack(page).index} * geo.page_bytes +
                              (values ? geo.value_offset : 0) + size_t{slot} * geo.token_bytes;
        const size_t bytes = size_t{count} * geo.token_bytes;
        float* to = out->data() + done * d;
        if (geo.dtype == v1::DTYPE_FP32) {
          status = backend.Read(*arena, offset, to, bytes);
          return;
        }
        status = backend.Read(*arena, offset, staging->data(), bytes);
        if (!status.ok()) return;
        const uint16_t* from = staging->data();
        const size_t elements = size_t{count} * d;
        if (geo.dtype == v1::DTYPE_FP16) {
          for (size_t i = 0; i < elements; ++i) to[i] = gpu_math::HalfBitsToFloat(from[i]);
        } else {
          for (size_t i = 0; i < elements; ++i) to[i] = gpu_math::Bf16BitsToFloat(from[i]);
        }
      }));
  if (!status.ok()) return absl::InternalError(status.message());
  return absl::OkStatus();
}

}  // namespace kvkeep
