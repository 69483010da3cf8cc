// Reads the committed keys or values of one head table of a sequence out of its pages as float32,
// whatever the page dtype: the host-side gather that both the compressor (CPU scoring) and the
// page-cost pass of pool pressure need.
//
//   std::vector<uint16_t> staging;   // reused across calls
//   std::vector<float> keys;
//   RETURN_IF_ERROR(ReadHeadAsFloat(model.geometry(), table, h, /*values=*/false, pool, backend,
//                                   &staging, &keys));
//   // keys holds table.head(h).count * head_dim floats, token-major.
//
// Thread-compatible: the caller owns `staging` and `out` and keeps the table still (it holds the
// sequence's lock).
#ifndef KVKEEP_SERVICE_COMPRESS_HEAD_READER_H_
#define KVKEEP_SERVICE_COMPRESS_HEAD_READER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "gpu/backend.h"
#include "service/engine/model_layout.h"
#include "service/pool/page_pool.h"
#include "service/engine/sequence_table.h"

namespace kvkeep {

// OK: `out` holds the head's committed count x head_dim floats (resized; capacity kept).
// INTERNAL: a page of the table is not in the pool, or the backend read failed (the message says
// which page or read); `out` is unspecified then.
absl::Status ReadHeadAsFloat(const PageGeometry& geometry, const SequenceTable& table,
                             uint32_t head, bool values, const PagePool& pool,
                             const Backend& backend, std::vector<uint16_t>* staging,
                             std::vector<float>* out);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_COMPRESS_HEAD_READER_H_
