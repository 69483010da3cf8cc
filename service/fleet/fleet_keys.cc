#include "service/fleet/fleet_keys.h"

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "service/pool/prefix_index.h"

namespace kvkeep::fleet {

std::string FleetKeyName(absl::string_view layout_hash, absl::string_view chain_key) {
  return absl::StrCat(kFleetKeyPrefix, absl::BytesToHexString(layout_hash.substr(0, 8)), ":",
                      absl::BytesToHexString(chain_key));
}

std::vector<std::string> FleetKeyNames(const GroupKeys& keys, absl::string_view layout_hash,
                                       absl::Span<const uint32_t> tokens,
                                       uint32_t tokens_per_page) {
  std::vector<std::string> names;
  for (const std::string& chain_key :
       PrefixChain(keys.chain_salt, layout_hash, tokens, tokens_per_page)) {
    names.push_back(FleetKeyName(layout_hash, chain_key));
  }
  return names;
}

}  // namespace kvkeep::fleet
