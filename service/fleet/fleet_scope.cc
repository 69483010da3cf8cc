#include "service/fleet/fleet_scope.h"

#include "service/fleet/fleet_keys.h"
#include "service/fleet/layout_hash.h"

namespace kvkeep::fleet {

absl::StatusOr<FleetScope> FleetScope::Make(absl::string_view group, absl::string_view group_secret,
                                            const v1::ModelLayout& layout) {
  absl::StatusOr<GroupKeys> keys = DeriveGroupKeys(group_secret);
  if (!keys.ok()) return keys.status();
  FleetScope scope;
  scope.group = std::string(group);
  scope.keys = std::make_shared<const GroupKeys>(*std::move(keys));
  scope.layout_hash = FleetLayoutHash(layout);
  scope.shape = PageShape::Of(layout);
  if (scope.shape.payload_bytes() == 0) {
    return absl::InvalidArgumentError("the layout's pages have no bytes (dtype or sizes unset)");
  }
  return scope;
}

std::vector<std::string> FleetScope::KeyNames(absl::Span<const uint32_t> tokens) const {
  return FleetKeyNames(*keys, layout_hash, tokens, shape.tokens_per_page);
}

}  // namespace kvkeep::fleet
