// GPU UUIDs in the form nvidia-smi prints: "GPU-" and 16 bytes as 8-4-4-4-12 hex digits. Arena
// exports carry the UUID of the device an arena lives on, so a worker maps it by identity, not by
// ordinal (ordinals differ between processes with different CUDA_VISIBLE_DEVICES). Host-only.
//
//   std::string uuid = FormatGpuUuid(prop.uuid.bytes);  // "GPU-8d0f4c2e-..."
#ifndef KVKEEP_GPU_GPU_UUID_H_
#define KVKEEP_GPU_GPU_UUID_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"

namespace kvkeep {

// `bytes` points at 16 bytes (cudaUUID_t::bytes).
inline std::string FormatGpuUuid(const char* bytes) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out = "GPU-";
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    const auto b = static_cast<uint8_t>(bytes[i]);
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

// Whether `s` has the form FormatGpuUuid produces (lower- or upper-case hex).
inline bool IsGpuUuid(absl::string_view s) {
  if (s.size() != 40 || s.substr(0, 4) != "GPU-") return false;
  for (std::size_t i = 4; i < s.size(); ++i) {
    const char c = s[i];
    const bool dash = i == 12 || i == 17 || i == 22 || i == 27;
    if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
                            (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

}  // namespace kvkeep

#endif  // KVKEEP_GPU_GPU_UUID_H_
