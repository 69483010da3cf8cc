#include "client/kvkeepctl_status.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "client/kvkeepctl_format.h"
#include "client/kvkeepctl_tenant.h"
#include "google/protobuf/util/json_util.h"

namespace kvkeep::ctl {

int RunStatus(Ctx& c) {
  return Output(c, c.admin.GetStatus(), [](const v1::DaemonStatus& s) {
    std::printf("kvkeepd %s  backend=%s  uptime=%.0fs\n", s.version().c_str(),
                s.backend().c_str(), s.uptime_seconds());
    if (!s.backend_device().empty()) std::printf("device: %s\n", s.backend_device().c_str());
    std::printf("pool: %s used of %s (%s in %u arenas), %llu pages in use\n",
                HumanBytes(s.pool_used_bytes()).c_str(),
                HumanBytes(s.pool_capacity_bytes()).c_str(),
                HumanBytes(s.pool_arena_bytes()).c_str(), s.arenas(),
                static_cast<unsigned long long>(s.pages_in_use()));
    std::printf("spill tier: %s in %u sequences (%llu spills, %llu restores, %llu errors); "
                "watermarks %.0f%%/%.0f%% free\n",
                HumanBytes(s.spilled_bytes()).c_str(), s.spilled_sequences(),
                static_cast<unsigned long long>(s.spills()),
                static_cast<unsigned long long>(s.restores()),
                static_cast<unsigned long long>(s.spill_errors()),
                100 * s.watermarks().low_free(), 100 * s.watermarks().high_free());
    std::fputs(absl::StrFormat("pressure: policy %s, %d pages (%d tokens) evicted by capacity "
                               "cost, %d compressions freed %d pages, %d sequences spilled\n",
                               s.pressure_policy(), s.pressure_evicted_pages(),
                               s.pressure_evicted_tokens(), s.pressure_compressions(),
                               s.pressure_compressed_pages(), s.pressure_spills())
                   .c_str(), stdout);
    std::printf("tenants: %u  sessions: %u  sequences: %u\n\n", s.tenants(), s.sessions(),
                s.sequences());
    std::vector<std::vector<std::string>> rows = {TenantHeader()};
    for (const auto& t : s.tenant_usage()) rows.push_back(TenantRow(t));
    PrintTable(rows);
  });
}

int RunTop(Ctx& c) {
  double interval = 1;
  uint64_t iterations = 0;
  if (c.has("interval") && (!absl::SimpleAtod(c.flag("interval"), &interval) || !(interval >= 0.1))) {
    return Fail("--interval must be a number of seconds >= 0.1");
  }
  if (c.has("iterations") && !absl::SimpleAtoi(c.flag("iterations"), &iterations)) {
    return Fail("--iterations must be a whole number (0 = until Ctrl-C)");
  }
  const bool tty = isatty(fileno(stdout)) && !c.json;
  uint64_t prev_spills = 0, prev_restores = 0;
  for (uint64_t i = 0; iterations == 0 || i < iterations; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::duration<double>(interval));
    auto s = c.admin.GetStatus();
    if (!s.ok()) return FailStatus(s.status());
    if (c.json) {  // one JSON document per line and refresh, for scripts
      google::protobuf::util::JsonPrintOptions options;
      options.always_print_primitive_fields = true;
      std::string line;
      (void)google::protobuf::util::MessageToJsonString(*s, &line, options);
      std::printf("%s\n", line.c_str());
      std::fflush(stdout);
      continue;
    }
    if (tty) std::printf("\033[H\033[2J");
    std::printf("kvkeepd %s  %s  up %.0fs  pool %s / %s  pages %llu  sessions %u  sequences %u\n",
                s->version().c_str(), s->backend().c_str(), s->uptime_seconds(),
                HumanBytes(s->pool_used_bytes()).c_str(),
                HumanBytes(s->pool_capacity_bytes()).c_str(),
                static_cast<unsigned long long>(s->pages_in_use()), s->sessions(), s->sequences());
    std::printf("spill %s in %u sequences  spills %+lld  restores %+lld  errors %llu\n\n",
                HumanBytes(s->spilled_bytes()).c_str(), s->spilled_sequences(),
                static_cast<long long>(s->spills() - (i ? prev_spills : s->spills())),
                static_cast<long long>(s->restores() - (i ? prev_restores : s->restores())),
                static_cast<unsigned long long>(s->spill_errors()));
    prev_spills = s->spills();
    prev_restores = s->restores();
    std::vector<v1::TenantInfo> tenants(s->tenant_usage().begin(), s->tenant_usage().end());
    std::sort(tenants.begin(), tenants.end(), [](const v1::TenantInfo& a, const v1::TenantInfo& b) {
      return a.used_bytes() > b.used_bytes();
    });
    std::vector<std::vector<std::string>> rows = {TenantHeader()};
    for (const auto& t : tenants) rows.push_back(TenantRow(t));
    PrintTable(rows);
    std::fflush(stdout);
  }
  return 0;
}

int RunPool(Ctx& c) {
  auto print = [](const v1::Watermarks& w) {
    std::printf("spill when free < %.1f %% of the pool, until %.1f %% is free\n",
                100 * w.low_free(), 100 * w.high_free());
  };
  if (c.has("low") || c.has("high")) {
    double low = 0, high = 0;
    if (!c.has("low") || !c.has("high") || !absl::SimpleAtod(c.flag("low"), &low) ||
        !absl::SimpleAtod(c.flag("high"), &high)) {
      return Fail("give both --low and --high as fractions, e.g. --low 0.05 --high 0.1");
    }
    v1::Watermarks w;
    w.set_low_free(low);
    w.set_high_free(high);
    return Output(c, c.admin.SetWatermarks(w), print);
  }
  auto s = c.admin.GetStatus();
  if (!s.ok()) return FailStatus(s.status());
  return Output(c, absl::StatusOr<v1::Watermarks>(s->watermarks()), print);
}

}  // namespace kvkeep::ctl
