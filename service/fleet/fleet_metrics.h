// The fleet tier's Prometheus families for GET /metrics (docs/fleet.md §9 item 8):
//   kvkeep_fleet_{lookups,hit_pages,misses,corrupt,read_errors,bytes_read,pages_written,
//                 bytes_written,write_errors,dropped}_total{group="..."}   counters per group
//   kvkeep_fleet_queue_bytes, kvkeep_fleet_cluster_reachable, kvkeep_fleet_covered_slots  gauges
//
//   std::string text = RenderFleetMetrics(tier, absl::Now() + absl::Milliseconds(200));
//
// Asks the cluster for its slot map (bounded by `deadline`). Thread-safe as FleetTier is.
#ifndef KVKEEP_SERVICE_FLEET_FLEET_METRICS_H_
#define KVKEEP_SERVICE_FLEET_FLEET_METRICS_H_

#include <string>

#include "absl/time/time.h"
#include "service/fleet/fleet_tier.h"

namespace kvkeep::fleet {

std::string RenderFleetMetrics(FleetTier& tier, absl::Time deadline);

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_FLEET_METRICS_H_
