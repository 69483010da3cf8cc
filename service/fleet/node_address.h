// The address of one Redis Cluster node ("127.0.0.1:7000") and the parsing of seed lists.
//
//   ASSIGN_OR_RETURN(std::vector<NodeAddress> seeds, ParseSeedList("10.0.0.5:6379,10.0.0.6:6379"));
//
// Plain values, thread-compatible.
#ifndef KVKEEP_SERVICE_FLEET_NODE_ADDRESS_H_
#define KVKEEP_SERVICE_FLEET_NODE_ADDRESS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace kvkeep::fleet {

struct NodeAddress {
  std::string host;  // an IP address or a host name; IPv6 without brackets
  int port = 0;

  // "host:port" ("[::1]:7000" for IPv6), the form Redis uses in redirections.
  std::string ToString() const;
  bool operator==(const NodeAddress& other) const {
    return port == other.port && host == other.host;
  }
  bool operator<(const NodeAddress& other) const {
    return host != other.host ? host < other.host : port < other.port;
  }
};

// "host:port", "[v6]:port" or "v6:port" (the last ':' separates the port, as in Redis's MOVED
// errors). INVALID_ARGUMENT naming the text for an empty host or a port outside 1..65535.
absl::StatusOr<NodeAddress> ParseNodeAddress(absl::string_view text);

// Comma-separated addresses (spaces around them ignored). INVALID_ARGUMENT for an empty list or
// any bad address.
absl::StatusOr<std::vector<NodeAddress>> ParseSeedList(absl::string_view text);

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_NODE_ADDRESS_H_
