// Starting the helper processes a benchmark measures against (kvkeepd, redis-server).
#ifndef KVKEEP_BENCH_CHILD_PROCESS_H_
#define KVKEEP_BENCH_CHILD_PROCESS_H_

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace kvkeep::bench {

// Forks and execs args[0] with `args`, stdout and stderr appended to `log` (mode 0600). The child
// gets SIGTERM when the benchmark dies, so no helper outlives it. INTERNAL when fork fails; an exec
// failure shows as the child exiting 127 with the reason in `log`.
absl::StatusOr<pid_t> SpawnLogged(std::vector<std::string> args, const std::string& log);

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_CHILD_PROCESS_H_
