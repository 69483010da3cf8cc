#include "service/fleet/redirection.h"

#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "service/fleet/key_slot.h"

namespace kvkeep::fleet {

std::optional<Redirection> ParseRedirection(absl::string_view error) {
  std::vector<absl::string_view> words = absl::StrSplit(error, ' ');
  if (words.size() != 3) return std::nullopt;
  Redirection redirection;
  if (words[0] == "MOVED") {
    redirection.kind = Redirection::Kind::kMoved;
  } else if (words[0] == "ASK") {
    redirection.kind = Redirection::Kind::kAsk;
  } else {
    return std::nullopt;
  }
  int slot = -1;
  if (!absl::SimpleAtoi(words[1], &slot) || slot < 0 || slot >= kClusterSlots) return std::nullopt;
  redirection.slot = static_cast<uint16_t>(slot);
  absl::StatusOr<NodeAddress> target = ParseNodeAddress(words[2]);
  if (!target.ok()) return std::nullopt;
  redirection.target = *std::move(target);
  return redirection;
}

}  // namespace kvkeep::fleet
