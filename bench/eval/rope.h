// Rotary position embedding (RoPE) for the eval harness: the synthetic generator applies it to
// pre-RoPE queries/keys, and the dataset loader un-rotates post-RoPE queries when no `qpre` file
// is given. Both layouts are supported: "half" (Llama/NeoX: channel i pairs with i + d/2) and
// "interleaved" (GPT-J: channel 2i pairs with 2i + 1). inv_freq_i = theta^(-2i/d).
//
//   RotateRows(RopeStyle::kHalf, 5e5, /*head_dim=*/64, /*first_position=*/0, n, data);
#ifndef KVKEEP_BENCH_EVAL_ROPE_H_
#define KVKEEP_BENCH_EVAL_ROPE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvkeep::eval {

enum class RopeStyle { kHalf, kInterleaved };

absl::StatusOr<RopeStyle> ParseRopeStyle(absl::string_view name);  // "half" | "interleaved"
absl::string_view RopeStyleName(RopeStyle style);

// Rotates `rows` consecutive rows of `head_dim` floats in place; row r has position
// first_position + r. `inverse` applies the opposite rotation (un-RoPE). Angles are computed in
// double precision.
void RotateRows(RopeStyle style, double theta, int head_dim, int64_t first_position, int64_t rows,
                float* data, bool inverse = false);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_ROPE_H_
