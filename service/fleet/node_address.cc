#include "service/fleet/node_address.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace kvkeep::fleet {

std::string NodeAddress::ToString() const {
  if (host.find(':') != std::string::npos) return absl::StrCat("[", host, "]:", port);
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<NodeAddress> ParseNodeAddress(absl::string_view text) {
  const size_t colon = text.rfind(':');
  int port = 0;
  if (colon == absl::string_view::npos || !absl::SimpleAtoi(text.substr(colon + 1), &port) ||
      port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad Redis node address \"", text, "\": want HOST:PORT, port 1..65535"));
  }
  absl::string_view host = text.substr(0, colon);
  if (absl::ConsumePrefix(&host, "[") && !absl::ConsumeSuffix(&host, "]")) {
    return absl::InvalidArgumentError(absl::StrCat("bad Redis node address \"", text, "\""));
  }
  if (host.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad Redis node address \"", text, "\": empty host"));
  }
  return NodeAddress{std::string(host), port};
}

absl::StatusOr<std::vector<NodeAddress>> ParseSeedList(absl::string_view text) {
  std::vector<NodeAddress> seeds;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    absl::StatusOr<NodeAddress> address = ParseNodeAddress(absl::StripAsciiWhitespace(part));
    if (!address.ok()) return address.status();
    seeds.push_back(*std::move(address));
  }
  if (seeds.empty()) return absl::InvalidArgumentError("empty Redis seed list");
  return seeds;
}

}  // namespace kvkeep::fleet
