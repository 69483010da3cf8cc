// A 6-node Redis Cluster on loopback for the fleet tests, started and stopped with
// deploy/redis-cluster (3 masters + 3 replicas, the `kvkeep` ACL user limited to kvkeep:*).
//
//   if (!LocalRedisCluster::Available()) GTEST_SKIP() << LocalRedisCluster::kMissing;
//   ASSERT_OK_AND_ASSIGN(auto cluster, LocalRedisCluster::Start());
//   options.cluster.seeds = cluster->seeds();
//   options.cluster.connection = cluster->KvkeepUser();
//
// The destructor stops the cluster and removes its directory. Ports are drawn from this
// process's id (base 20000..49990, cluster bus +10000) and a second base is tried when the first
// is taken. Not thread-safe.
#ifndef KVKEEP_TESTS_FLEET_LOCAL_REDIS_CLUSTER_H_
#define KVKEEP_TESTS_FLEET_LOCAL_REDIS_CLUSTER_H_

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "service/fleet/cluster_client.h"
#include "service/fleet/node_address.h"

namespace kvkeep::fleet::testing {

class LocalRedisCluster {
 public:
  static constexpr char kMissing[] =
      "redis-server/redis-cli not found: the fleet integration tests need them "
      "(deploy/install-deps installs redis-server)";
  // redis-server and redis-cli are on $PATH.
  static bool Available();

  // UNAVAILABLE with the script's output when the cluster does not come up. `node_timeout`:
  // Redis's cluster-node-timeout, after which an unreachable master is failed over (short for a
  // failover test; long enough elsewhere that a loaded machine causes no spurious failover).
  static absl::StatusOr<std::unique_ptr<LocalRedisCluster>> Start(
      absl::Duration node_timeout = absl::Seconds(3));
  ~LocalRedisCluster();

  const std::vector<NodeAddress>& seeds() const { return seeds_; }
  // Connection options of the restricted ACL user (its password included).
  ConnectionOptions KvkeepUser() const;
  // Connection options of the default user (no password, every command): tests' admin.
  ConnectionOptions Admin() const;
  // The pid of the redis-server serving `port` (from its pid file), 0 when unknown.
  pid_t PidOf(int port) const;

 private:
  LocalRedisCluster(std::string dir, std::vector<NodeAddress> seeds, std::string password);

  std::string dir_;
  std::vector<NodeAddress> seeds_;
  std::string password_;
};

// Runs `command` through /bin/sh; its exit code and combined output.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};
CommandResult RunCommand(const std::string& command);

}  // namespace kvkeep::fleet::testing

#endif  // KVKEEP_TESTS_FLEET_LOCAL_REDIS_CLUSTER_H_
