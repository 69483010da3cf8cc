// `kvkeep-bench fleet --sequence`: the time to create a sequence of `tokens` tokens on node B from
// a prefix that node A published to the fleet (CreateSequenceWithPrefix: cluster GET, verify,
// decrypt, copy into B's pool), against writing the same bytes fresh on B (CreateSequence,
// Allocate, WriteInPlace of every (layer, KV head), Commit), and against recomputing them at an
// assumed prefill rate (a stated assumption, not a measurement). Two real kvkeepd processes
// (--backend=cpu) on the cluster the fleet bench uses.
//
// Both ways write into B's pool, and the first write into a pool page faults it in (on the KVM
// guest of docs/benchmarks.md that alone costs ~60 MB/s), in the daemon and in every process
// that maps the arena. So that the two ways are compared on equal terms, each node's pool holds
// exactly two sequences (--pool_mib = 2 x the sequence's KV in whole 64 MiB arenas;
// --low_free=0 --high_free=0: no background relief), each rep writes fresh first and imports
// while the fresh sequence is still held, and one warm-up rep comes first, reported apart as
// "cold": it touches (and maps) every pool page. In each counted rep the fresh write reuses the
// tenant's arenas the previous rep dropped, and the import the group's arenas (the previous
// import, still cached, is released by the import's own pressure relief): no empty arena is
// destroyed and re-created, so neither way faults.
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
  double cold_from_fleet = 0;  // the warm-up rep (fresh pool pages)
  double cold_fresh_write = 0;
  uint64_t bytes = 0;  // KV bytes of one sequence
};

absl::StatusOr<FleetSeqSamples> MeasureFleetSequence(const FleetSeqOptions& options);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_FLEET_SEQ_BENCH_H_
