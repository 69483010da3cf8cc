// The summary every benchmark reports for a repeated measurement: median, min and max.
#ifndef KVKEEP_BENCH_REP_STATS_H_
#define KVKEEP_BENCH_REP_STATS_H_

#include <algorithm>
#include <vector>

namespace kvkeep::bench {

struct Stats {
  double median = 0, min = 0, max = 0;
};

// Median (mean of the middle two for an even count), min and max; all 0 for no samples.
inline Stats Summarise(std::vector<double> v) {
  Stats s;
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  s.min = v.front();
  s.max = v.back();
  const size_t n = v.size();
  s.median = n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
  return s;
}

}  // namespace kvkeep::bench

#endif  // KVKEEP_BENCH_REP_STATS_H_
