// What identifies one sharing group's pages of one model in the fleet: the group's keys, the
// canonical layout hash and the page shape every value must have.
//
//   ASSIGN_OR_RETURN(FleetScope scope, FleetScope::Make("group-a", secret, layout));
//   std::vector<std::string> names = scope.KeyNames(tokens);   // one per full page
//
// A plain value, cheap to copy (the keys are shared, immutable). Thread-compatible.
#ifndef KVKEEP_SERVICE_FLEET_FLEET_SCOPE_H_
#define KVKEEP_SERVICE_FLEET_FLEET_SCOPE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "kvkeep/v1/common.pb.h"
#include "service/fleet/group_keys.h"
#include "service/fleet/page_value.h"

namespace kvkeep::fleet {

struct FleetScope {
  std::string group;  // counters and logs only: never part of a key (the secret is)
  std::shared_ptr<const GroupKeys> keys;
  std::string layout_hash;  // FleetLayoutHash, 32 raw bytes
  PageShape shape;

  // INVALID_ARGUMENT for a secret too short (group_keys.h) or a layout whose pages have no bytes.
  static absl::StatusOr<FleetScope> Make(absl::string_view group, absl::string_view group_secret,
                                         const v1::ModelLayout& layout);

  // The Redis key names of the full pages of `tokens` (fleet_keys.h).
  std::vector<std::string> KeyNames(absl::Span<const uint32_t> tokens) const;
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_FLEET_SCOPE_H_
