// `kvkeep-bench fleet`: the fleet tier's data path (docs/fleet.md) against raw hiredis on the
// same Redis Cluster, in the same run, with the same bytes.
//
//   * fleet put: RedisFleetTier::PutAsync of every page + Flush (seal: AES-256-GCM + XXH64, SET
//     pipelined per node, `write_batch_pages` per round);
//   * raw SET: the same number of values of the same size (the sealed values) SET by plain hiredis
//     connections to each key's master, pipelined per node in rounds of the same size;
//   * fleet get: RedisFleetTier::GetInto of every page into buffers allocated once (as the
//     daemon's import writes into pool pages): GET pipelined per node, `get_window` per round,
//     every value received into a value buffer, checked and decrypted in one pass into its
//     destination; bit-exactness is checked after the clock stops;
//   * raw GET: the same keys' values read by plain hiredis, pipelined the same way.
// Both sides route with the same slot map. Before each phase the bench waits until every replica
// has caught up with its master, and fleet and raw swap order on odd repetitions, so neither is
// measured while the cluster still replicates the other's writes. The ratio fleet/raw of
// throughput is the figure
// (goal >= 0.8). The cluster is a local 6-node one started with deploy/redis-cluster (loopback),
// unless --seeds names one.
//
//   kvkeep-bench fleet                       # 64 pages of a llama3-8b layout (2 MiB each), 5 reps
//   kvkeep-bench fleet --pages 256 --json
//   kvkeep-bench fleet --seeds 10.0.0.5:6379 --user kvkeep --password_file /etc/kvkeep/redis.pw
//   kvkeep-bench fleet --smoke               # CI: tiny pages, 1 rep, exit code only
//
// Progress goes to stderr; the table (or JSON) to stdout.
#ifndef KVKEEP_BENCH_FLEET_BENCH_H_
#define KVKEEP_BENCH_FLEET_BENCH_H_

namespace kvkeep::bench {

// argv[0] is the subcommand name ("fleet") and is skipped. Returns a process exit code: 0 ok,
// 2 bad flags, 1 the cluster could not be started or reached, a call failed or a value read back
// was not bit-exact.
int RunFleetBench(int argc, char** argv);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_FLEET_BENCH_H_
