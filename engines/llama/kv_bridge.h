// Moves a llama.cpp sequence's KV cache into kvkeep pages and back.
//
// Store: parses the state llama_state_seq_get_data wrote (state_format.h), allocates pages for
// every (layer, KV head), copies each head's keys and values straight into the mapped arena
// (Client::WriteInPlace: no bytes over gRPC), and commits them with the cells' positions and the
// query statistics. Load: acquires the sequence (a spilled one is restored by the daemon), reads
// every head from the mapped pages and builds the state llama_state_seq_set_data reads, with the
// positions kvkeep kept. llama.cpp keeps one set of cells for all layers and heads, so Load
// refuses a sequence whose heads hold different positions (compress with allocation `sequence`).
//
// Stateless functions over a Client (thread-safe as the Client is).
#ifndef KVKEEP_ENGINES_LLAMA_KV_BRIDGE_H_
#define KVKEEP_ENGINES_LLAMA_KV_BRIDGE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "engines/llama/llama_runtime.h"

namespace kvkeep::llama {

inline constexpr uint32_t kTokensPerPage = 16;

// The kvkeep layout of the model's cache (fp16, 16 tokens per page).
v1::ModelLayout LayoutFor(const std::string& name, const ModelShape& shape);

// Registers the layout; a name already registered with another layout is FAILED_PRECONDITION
// saying so (the daemon's ALREADY_EXISTS, with what this model is).
absl::Status RegisterLayout(Client& client, const v1::ModelLayout& layout);

struct StoreOptions {
  bool retain = false;  // survives the session (and can be spilled)
};

// Stores the sequence state `state` as a new kvkeep sequence of `model`; returns its id.
absl::StatusOr<std::string> StoreState(Client& client, const std::string& model,
                                       const ModelShape& shape, const std::string& state,
                                       const std::vector<v1::LayerStats>& stats,
                                       const StoreOptions& options = {});

// The state of `sequence` as llama_state_seq_set_data reads it (sequence id 0). At most
// `max_tokens` leading tokens (0: all). Acquires and releases the sequence. FAILED_PRECONDITION
// when the sequence is of another model than `model` or its pages do not fit `shape`.
absl::StatusOr<std::string> LoadState(Client& client, const std::string& model,
                                      const ModelShape& shape, const std::string& sequence,
                                      uint32_t max_tokens = 0);

// The positions every head of `sequence` holds now (equal across heads, or FAILED_PRECONDITION).
absl::StatusOr<std::vector<int32_t>> SequencePositions(Client& client, const ModelShape& shape,
                                                       const std::string& sequence);

}  // namespace kvkeep::llama

#endif  // KVKEEP_ENGINES_LLAMA_KV_BRIDGE_H_
