// Deterministic scopes, prompts and page payloads for the fleet tests.
#ifndef KVKEEP_TESTS_FLEET_FLEET_TEST_DATA_H_
#define KVKEEP_TESTS_FLEET_FLEET_TEST_DATA_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "service/fleet/fleet_scope.h"
#include "service/fleet/fleet_tier.h"

namespace kvkeep::fleet {

inline constexpr uint32_t kTokensPerPage = 16;
inline constexpr char kSecretA[] = "group-a secret: 32 bytes, random";
inline constexpr char kSecretB[] = "group-b secret: 32 bytes, random";

// 4 layers × 2 KV heads × 16 tokens × 64 dims, fp16: 32 KiB per token page.
inline v1::ModelLayout TestLayout() {
  v1::ModelLayout layout;
  layout.set_name("fleet-test");
  layout.set_layers(4);
  layout.set_q_heads(8);
  layout.set_kv_heads(2);
  layout.set_head_dim(64);
  layout.set_dtype(v1::DTYPE_FP16);
  layout.set_tokens_per_page(kTokensPerPage);
  layout.mutable_rope()->set_theta(10000);
  return layout;
}

inline FleetScope TestScope(const std::string& group, const std::string& secret) {
  return *FleetScope::Make(group, secret, TestLayout());
}

inline std::vector<uint32_t> TestTokens(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint32_t> tokens(n);
  for (uint32_t& t : tokens) t = rng() % 128000;
  return tokens;
}

// One payload per name, random bytes drawn from `seed` and the page index.
inline std::vector<FleetPage> TestPages(const FleetScope& scope,
                                        const std::vector<std::string>& names, uint32_t seed) {
  std::vector<FleetPage> pages;
  for (size_t i = 0; i < names.size(); ++i) {
    std::mt19937_64 rng(seed * 1000003ULL + i);
    std::string payload(scope.shape.payload_bytes(), '\0');
    for (size_t j = 0; j + 8 <= payload.size(); j += 8) {
      const uint64_t v = rng();
      for (int b = 0; b < 8; ++b) payload[j + b] = static_cast<char>(v >> (8 * b));
    }
    pages.push_back({names[i], std::move(payload)});
  }
  return pages;
}

}  // namespace kvkeep::fleet

#endif  // KVKEEP_TESTS_FLEET_FLEET_TEST_DATA_H_
