#include "service/fleet/fleet_metrics.h"

#include <cstdint>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"

namespace kvkeep::fleet {
namespace {

struct Family {
  const char* name;
  const char* help;
  uint64_t FleetCounters::*field;
};

constexpr Family kFamilies[] = {
    {"lookups", "Fleet Lookup and Get calls", &FleetCounters::lookups},
    {"hit_pages", "Pages found in the fleet (present, or verified and returned)",
     &FleetCounters::hit_pages},
    {"misses", "Fleet reads whose run ended at an absent key", &FleetCounters::misses},
    {"corrupt", "Fleet values refused (checksum, header, size or authentication)",
     &FleetCounters::corrupt},
    {"read_errors", "Fleet reads cut short by the cluster (down, timeout, error)",
     &FleetCounters::read_errors},
    {"bytes_read", "Payload bytes read from the fleet", &FleetCounters::bytes_read},
    {"pages_written", "Pages the cluster acknowledged", &FleetCounters::pages_written},
    {"bytes_written", "Value bytes the cluster acknowledged", &FleetCounters::bytes_written},
    {"write_errors", "Pages whose write to the cluster failed", &FleetCounters::write_errors},
    {"dropped", "Pages not queued (queue full) or discarded at shutdown", &FleetCounters::dropped},
};

std::string Label(const std::string& value) {
  return absl::StrReplaceAll(value, {{"\\", "\\\\"}, {"\"", "\\\""}, {"\n", "\\n"}});
}

}  // namespace

std::string RenderFleetMetrics(FleetTier& tier, absl::Time deadline) {
  const std::map<std::string, FleetCounters> groups = tier.CountersByGroup();
  std::string out;
  for (const Family& f : kFamilies) {
    absl::StrAppend(&out, "# HELP kvkeep_fleet_", f.name, "_total ", f.help, "\n",
                    "# TYPE kvkeep_fleet_", f.name, "_total counter\n");
    for (const auto& [group, counters] : groups) {
      absl::StrAppend(&out, "kvkeep_fleet_", f.name, "_total{group=\"", Label(group), "\"} ",
                      counters.*(f.field), "\n");
    }
  }
  const FleetClusterStatus cluster = tier.ClusterStatus(deadline);
  absl::StrAppend(&out,
                  "# HELP kvkeep_fleet_queue_bytes Payload bytes queued for the cluster\n"
                  "# TYPE kvkeep_fleet_queue_bytes gauge\n"
                  "kvkeep_fleet_queue_bytes ", cluster.queued_bytes, "\n",
                  "# HELP kvkeep_fleet_cluster_reachable 1 when a cluster node gave the slot map\n"
                  "# TYPE kvkeep_fleet_cluster_reachable gauge\n"
                  "kvkeep_fleet_cluster_reachable ", cluster.reachable ? 1 : 0, "\n",
                  "# HELP kvkeep_fleet_covered_slots Hash slots (of 16384) served by a master\n"
                  "# TYPE kvkeep_fleet_covered_slots gauge\n"
                  "kvkeep_fleet_covered_slots ", cluster.covered_slots, "\n");
  return out;
}

}  // namespace kvkeep::fleet
