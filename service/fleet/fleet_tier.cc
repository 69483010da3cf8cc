#include "service/fleet/fleet_tier.h"

namespace kvkeep::fleet {

void FleetCounters::Add(const FleetCounters& o) {
  lookups += o.lookups;
  hit_pages += o.hit_pages;
  misses += o.misses;
  corrupt += o.corrupt;
  read_errors += o.read_errors;
  bytes_read += o.bytes_read;
  pages_written += o.pages_written;
  bytes_written += o.bytes_written;
  write_errors += o.write_errors;
  dropped += o.dropped;
}

}  // namespace kvkeep::fleet
