#include "service/bulk_channel/bulk_requests.h"

#include <optional>

#include "absl/strings/str_cat.h"
#include "common/bulk_frame.h"

namespace kvkeep {
namespace {

// The raw bytes a write announces, or nullopt past kBulkMaxPayloadBytes (no overflow).
std::optional<uint64_t> PayloadOf(const v1::BulkWrite& w) {
  uint64_t total = 0;
  for (const v1::BulkChunk& c : w.chunks()) {
    if (c.key_bytes() > kBulkMaxPayloadBytes || c.value_bytes() > kBulkMaxPayloadBytes) {
      return std::nullopt;
    }
    total += c.key_bytes() + c.value_bytes();
    if (total > kBulkMaxPayloadBytes) return std::nullopt;
  }
  return total;
}

}  // namespace

absl::Status CheckBulkRequest(const v1::BulkRequest& r, bool attached) {
  using R = v1::BulkRequest;
  if (r.request_case() == R::REQUEST_NOT_SET) {
    return absl::InvalidArgumentError("bulk request sets none of attach, write, end_writes, read");
  }
  if (r.request_case() == R::kAttach) {
    if (attached) return absl::InvalidArgumentError("this bulk connection is already attached");
    if (r.attach().size() != kBulkTicketBytes) {
      return absl::InvalidArgumentError(absl::StrCat("a bulk ticket is ", kBulkTicketBytes,
                                                     " bytes, not ", r.attach().size()));
    }
    return absl::OkStatus();
  }
  if (!attached) {
    return absl::InvalidArgumentError(
        "the first bulk request must be attach with SessionStarted.bulk_ticket");
  }
  if (r.request_case() != R::kWrite) return absl::OkStatus();
  if (!PayloadOf(r.write()).has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a bulk write frame carries at most ", kBulkMaxPayloadBytes,
        " bytes of keys and values; split the chunks over several frames"));
  }
  if (r.write().chunks_size() == 0) {
    return absl::InvalidArgumentError("a bulk write frame needs at least one chunk");
  }
  return absl::OkStatus();
}

uint64_t BulkWritePayload(const v1::BulkWrite& write) { return PayloadOf(write).value_or(0); }

bool BulkRequestSkippable(const v1::BulkRequest& r) {
  return r.request_case() == v1::BulkRequest::kWrite && PayloadOf(r.write()).has_value();
}

}  // namespace kvkeep
