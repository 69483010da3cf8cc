// Whether a CreateSequence reply can be sent: the one place that sizes it against the daemon's
// message limit, so that nothing is created whose id the caller could never learn.
//
// The reply is a v1::PageTable with one HeadTable per (layer, KV head); an upper bound of its
// encoded size is computed from the model alone (no sequence needs to exist). If page tables are
// ever sent in chunks, this is the function to change.
#ifndef KVKEEP_SERVICE_ENGINE_CREATE_REPLY_SIZE_H_
#define KVKEEP_SERVICE_ENGINE_CREATE_REPLY_SIZE_H_

#include <cstdint>

#include "absl/status/status.h"
#include "service/engine/model_layout.h"

namespace kvkeep {

// Upper bound of the encoded CreateSequence reply for a new sequence of `model` that starts with
// `shared_pages` shared prefix pages per head (their page ids are listed, and the arenas that hold
// them).
uint64_t CreateReplyBytes(const Model& model, uint32_t shared_pages);

// OK when CreateReplyBytes fits `max_message_bytes`; RESOURCE_EXHAUSTED naming both figures and
// the layout's head count otherwise (nothing is created then).
absl::Status CheckCreateReplyFits(const Model& model, uint32_t shared_pages,
                                  uint64_t max_message_bytes);

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_CREATE_REPLY_SIZE_H_
