#include "client/kvkeepctl_fleet.h"

#include <cstdio>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/kvkeepctl_context.h"
#include "client/kvkeepctl_format.h"

namespace kvkeep::ctl {
namespace {

void PrintCounters(const v1::FleetCountersProto& c) {
  std::printf("  %-16s lookups %llu  hit pages %llu  misses %llu  corrupt %llu  read errors %llu"
              "  read %llu B  written %llu pages / %llu B  write errors %llu  dropped %llu\n",
              c.group().empty() ? "(total)" : c.group().c_str(),
              static_cast<unsigned long long>(c.lookups()),
              static_cast<unsigned long long>(c.hit_pages()),
              static_cast<unsigned long long>(c.misses()),
              static_cast<unsigned long long>(c.corrupt()),
              static_cast<unsigned long long>(c.read_errors()),
              static_cast<unsigned long long>(c.bytes_read()),
              static_cast<unsigned long long>(c.pages_written()),
              static_cast<unsigned long long>(c.bytes_written()),
              static_cast<unsigned long long>(c.write_errors()),
              static_cast<unsigned long long>(c.dropped()));
}

}  // namespace

int RunGroupSetSecret(AdminClient& admin, const std::string& group, const std::string& path,
                      bool json) {
  if (path.empty()) {
    std::fprintf(stderr, "kvkeepctl: give the secret's file: --from-file PATH\n");
    return 2;
  }
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  if (!in) {
    std::fprintf(stderr, "kvkeepctl: cannot read %s\n", path.c_str());
    return 2;
  }
  std::string secret = text.str();
  if (!secret.empty() && secret.back() == '\n') secret.pop_back();
  auto reply = admin.SetGroupSecret(group, secret);
  if (!reply.ok()) return FailStatus(reply.status());
  if (json) {
    PrintJson(*reply);
  } else {
    std::printf("group %s: fingerprint %s (%s)\n", reply->group().c_str(),
                reply->fingerprint().c_str(),
                reply->changed() ? "set" : "unchanged: the group already had this secret");
  }
  return 0;
}

int RunFleetStatus(AdminClient& admin, bool json) {
  auto s = admin.GetFleetStatus();
  if (!s.ok()) return FailStatus(s.status());
  if (json) {
    PrintJson(*s);
    return 0;
  }
  std::printf("node %s: cluster %s, %d of 16384 slots covered, write-behind queue %llu B\n",
              s->node_name().c_str(),
              s->reachable() ? "reachable" : ("UNREACHABLE (" + s->error() + ")").c_str(),
              s->covered_slots(), static_cast<unsigned long long>(s->queued_bytes()));
  for (const auto& n : s->nodes()) {
    std::printf("  %-24s %-8s %d slots\n", n.address().c_str(), n.role().c_str(), n.slots());
  }
  std::printf("groups: %s\n", s->group_fingerprints().empty()
                                  ? "none with a secret"
                                  : absl::StrJoin(s->group_fingerprints(), " ").c_str());
  if (!s->mismatches().empty()) {
    std::printf("  THIS NODE DIFFERS FROM THE FLEET: %s\n",
                absl::StrJoin(s->mismatches(), "; ").c_str());
  }
  if (!s->peers_error().empty()) {
    std::printf("  peers: unreadable (%s)\n", s->peers_error().c_str());
  } else if (s->peers().empty()) {
    std::printf("  peers: none with a live record\n");
  }
  for (const auto& p : s->peers()) {
    std::printf("  peer %s: %s | %s%s\n", p.node_name().c_str(),
                absl::StrJoin(p.groups(), " ").c_str(), absl::StrJoin(p.layouts(), " ").c_str(),
                p.mismatches().empty()
                    ? ""
                    : absl::StrCat("  MISMATCH: ", absl::StrJoin(p.mismatches(), "; ")).c_str());
  }
  std::printf("counters:\n");
  PrintCounters(s->total());
  for (const auto& g : s->groups()) PrintCounters(g);
  return 0;
}

}  // namespace kvkeep::ctl
