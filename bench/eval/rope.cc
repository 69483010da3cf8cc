#include "bench/eval/rope.h"

#include <cmath>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace kvkeep::eval {

absl::StatusOr<RopeStyle> ParseRopeStyle(absl::string_view name) {
  if (name == "half") return RopeStyle::kHalf;
  if (name == "interleaved") return RopeStyle::kInterleaved;
  return absl::InvalidArgumentError(
      absl::StrCat("rope_style must be \"half\" or \"interleaved\", got \"", name, "\""));
}

absl::string_view RopeStyleName(RopeStyle style) {
  return style == RopeStyle::kHalf ? "half" : "interleaved";
}

void RotateRows(RopeStyle style, double theta, int head_dim, int64_t first_position, int64_t rows,
                float* data, bool inverse) {
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) inv_freq[i] = std::pow(theta, -2.0 * i / head_dim);
  const double sign = inverse ? -1.0 : 1.0;
  for (int64_t r = 0; r < rows; ++r) {
    float* x = data + r * head_dim;
    const double pos = static_cast<double>(first_position + r);
    for (int i = 0; i < half; ++i) {
      const double angle = sign * pos * inv_freq[i];
      const double c = std::cos(angle), s = std::sin(angle);
      const int a = style == RopeStyle::kHalf ? i : 2 * i;
      const int b = style == RopeStyle::kHalf ? i + half : 2 * i + 1;
      const double xa = x[a], xb = x[b];
      x[a] = static_cast<float>(xa * c - xb * s);
      x[b] = static_cast<float>(xa * s + xb * c);
    }
  }
}

}  // namespace kvkeep::eval
