// What the bulk channel accepts in a request frame (kvcache.proto, BulkRequest), checked before
// anything acts on it. The only untrusted input of the channel besides the raw bytes, whose
// lengths this check bounds (fuzzed by tests/fuzz/fuzz_bulk_request.cc).
//
//   RETURN_IF_ERROR(CheckBulkRequest(request, /*attached=*/true));
//
// Stateless; thread-safe.
#ifndef KVKEEP_SERVICE_BULK_CHANNEL_BULK_REQUESTS_H_
#define KVKEEP_SERVICE_BULK_CHANNEL_BULK_REQUESTS_H_

#include "absl/status/status.h"
#include "kvkeep/v1/kvcache.pb.h"

namespace kvkeep {

// INVALID_ARGUMENT, saying what was wrong, for: no request; `attach` after the connection
// attached, or anything else before; a ticket that is not kBulkTicketBytes long; a write without
// chunks or whose chunks announce more than kBulkMaxPayloadBytes of raw bytes. Each write chunk's
// own fields are the engine's to check (CacheEngine::PinWriteTargets).
absl::Status CheckBulkRequest(const v1::BulkRequest& request, bool attached);

// The raw bytes a write frame announces (its chunks' key_bytes + value_bytes); 0 past the limit.
uint64_t BulkWritePayload(const v1::BulkWrite& write);

// Whether the connection can go on after `request` failed CheckBulkRequest: a write within
// kBulkMaxPayloadBytes, whose raw bytes can be received and dropped so the next frame is found.
bool BulkRequestSkippable(const v1::BulkRequest& request);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_BULK_CHANNEL_BULK_REQUESTS_H_
