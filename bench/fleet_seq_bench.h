// `kvkeep-bench fleet --sequence`: the time to create a sequence of `tokens` tokens on node B from
// a prefix that node A published to the fleet (CreateSequenceWithPrefix: cluster GET, verify,
// decrypt, copy into B's pool), against writing the same bytes fresh on B (CreateSequence,
// Allocate, WriteInPlace of every (layer, KV head), Commit), and against recomputing them at an
// assumed prefill rate (a stated assumption, not a measurement). Two real kvkeepd processes
// (--backend=cpu) on the cluster the fleet bench uses.
#ifndef KVKEEP_BENCH_FLEET_SEQ_BENCH_H_
#define KVKEEP_BENCH_FLEET_SEQ_BENCH_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvkeep::bench {

struct FleetSeqOptions {
  std::string kvkeepd;   // the binary ("" = next to kvkeep-bench)
  std::string seeds;     // HOST:PORT,... of the cluster
  std::string user;      // its ACL user
  std::string password;  // its password
  uint32_t tokens = 2048;
  int reps = 3;
  bool smoke = false;  // tiny layout (CI)
};

// Seconds per rep of each way; every fleet import checked bit-exact on one head.
struct FleetSeqSamples {
  std::vector<double> from_fleet;
  std::vector<double> fresh_write;
  uint64_t bytes = 0;  // KV bytes of one sequence
};

absl::StatusOr<FleetSeqSamples> MeasureFleetSequence(const FleetSeqOptions& options);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_FLEET_SEQ_BENCH_H_
