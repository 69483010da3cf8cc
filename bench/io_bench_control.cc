// `kvkeep-bench io`, control path: AllocatePages + CommitTokens against Ping on the same server
// (bench/io_bench_internal.h).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <latch>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "bench/io_bench_internal.h"
#include "common/status_macros.h"

namespace kvkeep::bench::io_internal {
namespace {

using Clock = std::chrono::steady_clock;

double SecondsSince(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Nearest-rank percentile of latencies in nanoseconds; reorders `v`.
double Percentile(std::vector<int64_t>& v, double p) {
  if (v.empty()) return 0;
  size_t k = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return static_cast<double>(v[k]);
}

// Runs `body(worker, deadline, samples...)` on `n` threads that start together; returns the
// wall time from the common start to the last worker's end.
template <typename Body>
double RunWorkers(uint32_t n, double seconds, Body body) {
  std::latch ready(n);
  std::latch go(1);
  std::vector<double> ends(n);
  Clock::time_point start;
  std::vector<std::thread> threads;
  threads.reserve(n);
  for (uint32_t w = 0; w < n; ++w) {
    threads.emplace_back([&, w] {
      ready.count_down();
      go.wait();
      const Clock::time_point deadline =
          start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
      body(w, deadline);
      ends[w] = SecondsSince(start);
    });
  }
  ready.wait();
  start = Clock::now();
  go.count_down();
  for (auto& t : threads) t.join();
  return *std::max_element(ends.begin(), ends.end());
}

int64_t Nanos(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(b - a).count();
}

}  // namespace

absl::StatusOr<OpsRep> MeasureOps(std::vector<std::unique_ptr<Client>>& clients, const Options& o,
                                  uint32_t n, uint32_t seq_pages) {
  OpsRep rep;
  const uint32_t tpp = o.pages.front();
  const std::string model = ModelName(o.shape, tpp);
  absl::Mutex mu;
  absl::Status failure;
  auto fail = [&](const absl::Status& s) {
    absl::MutexLock lock(&mu);
    if (failure.ok()) failure = s;
  };
  auto failed = [&] {
    absl::MutexLock lock(&mu);
    return !failure.ok();
  };

  // Ping: the floor.
  {
    std::vector<std::vector<int64_t>> lat(n);
    for (auto& l : lat) l.reserve(1 << 16);
    const double wall = RunWorkers(n, o.seconds, [&](uint32_t w, Clock::time_point deadline) {
      Client& c = *clients[w];
      while (Clock::now() < deadline) {
        const auto t0 = Clock::now();
        absl::Status s = c.Ping();
        const auto t1 = Clock::now();
        if (!s.ok()) return fail(s);
        lat[w].push_back(Nanos(t0, t1));
      }
    });
    RETURN_IF_ERROR(failure);
    std::vector<int64_t> all;
    for (auto& l : lat) all.insert(all.end(), l.begin(), l.end());
    rep.ping_per_s = static_cast<double>(all.size()) / wall;
    rep.ping_p50 = Percentile(all, 0.50) / 1e3;
    rep.ping_p99 = Percentile(all, 0.99) / 1e3;
  }

  // AllocatePages + CommitTokens on each worker's own sequence, created before the start.
  std::vector<std::string> seqs(n);
  for (uint32_t w = 0; w < n; ++w) {
    ASSIGN_OR_RETURN(seqs[w], clients[w]->CreateSequence(model));
  }
  std::vector<std::vector<int64_t>> alloc(n), commit(n), pair(n);
  for (uint32_t w = 0; w < n; ++w) {
    alloc[w].reserve(1 << 15);
    commit[w].reserve(1 << 15);
    pair[w].reserve(1 << 15);
  }
  const double wall = RunWorkers(n, o.seconds, [&](uint32_t w, Clock::time_point deadline) {
    Client& c = *clients[w];
    uint32_t pages = 0;
    while (Clock::now() < deadline && !failed()) {
      if (pages == seq_pages) {
        // Bound the memory held: start a new sequence (outside the latency samples).
        auto dropped = c.Drop(seqs[w]);
        if (!dropped.ok()) return fail(dropped.status());
        auto created = c.CreateSequence(model);
        if (!created.ok()) return fail(created.status());
        seqs[w] = *created;
        pages = 0;
      }
      const auto t0 = Clock::now();
      auto a = c.Allocate(seqs[w], tpp);
      const auto t1 = Clock::now();
      if (!a.ok()) return fail(a.status());
      auto m = c.Commit(seqs[w], tpp);
      const auto t2 = Clock::now();
      if (!m.ok()) return fail(m.status());
      alloc[w].push_back(Nanos(t0, t1));
      commit[w].push_back(Nanos(t1, t2));
      pair[w].push_back(Nanos(t0, t2));
      ++pages;
    }
  });
  for (uint32_t w = 0; w < n; ++w) {
    auto dropped = clients[w]->Drop(seqs[w]);
    if (!dropped.ok() && failure.ok()) failure = dropped.status();
  }
  RETURN_IF_ERROR(failure);
  auto merge = [](std::vector<std::vector<int64_t>>& parts) {
    std::vector<int64_t> all;
    for (auto& p : parts) all.insert(all.end(), p.begin(), p.end());
    return all;
  };
  std::vector<int64_t> a = merge(alloc), m = merge(commit), p = merge(pair);
  rep.pair_per_s = static_cast<double>(p.size()) / wall;
  rep.alloc_p50 = Percentile(a, 0.50) / 1e3;
  rep.alloc_p99 = Percentile(a, 0.99) / 1e3;
  rep.commit_p50 = Percentile(m, 0.50) / 1e3;
  rep.commit_p99 = Percentile(m, 0.99) / 1e3;
  rep.pair_p50 = Percentile(p, 0.50) / 1e3;
  rep.pair_p99 = Percentile(p, 0.99) / 1e3;
  return rep;
}

}  // namespace kvkeep::bench::io_internal
