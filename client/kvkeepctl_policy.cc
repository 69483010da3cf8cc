#include "client/kvkeepctl_policy.h"

#include <cstdio>
#include <type_traits>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "client/kvkeepctl_format.h"

namespace kvkeep::ctl {
namespace {

bool ParseNumber(const std::string& text, double* out) { return absl::SimpleAtod(text, out); }
template <typename T>  // an integer
bool ParseNumber(const std::string& text, T* out) { return absl::SimpleAtoi(text, out); }

}  // namespace

// The policy flags of `args` as a wire Policy; a usage error in *error otherwise.
bool PolicyFromFlags(const Args& args, v1::Policy* p, std::string* error) {
  auto value = [&](const std::string& flag) -> const std::string* {
    auto it = args.flags.find(flag);
    return it == args.flags.end() ? nullptr : &it->second;
  };
  // Sets the field from --flag when given; false (with *error) when its value does not parse.
  auto set = [&]<typename T>(const std::string& flag, void (v1::Policy::*setter)(T)) {
    const std::string* v = value(flag);
    if (v == nullptr) return true;
    T out;
    if (!ParseNumber(*v, &out)) {
      *error = absl::StrCat("--", flag, " \"", *v, "\" is not a ",
                            std::is_floating_point_v<T> ? "" : "whole ", "number");
      return false;
    }
    (p->*setter)(out);
    return true;
  };
  if (const std::string* v = value("scorer")) p->set_scorer(*v);
  if (const std::string* v = value("allocation")) p->set_allocation(*v);
  return set("max-tokens", &v1::Policy::set_max_tokens) && set("sinks", &v1::Policy::set_sinks) &&
         set("window", &v1::Policy::set_window) && set("pool-kernel", &v1::Policy::set_pool_kernel) &&
         set("seed", &v1::Policy::set_seed) && set("keep-ratio", &v1::Policy::set_keep_ratio) &&
         set("ada-alpha", &v1::Policy::set_ada_alpha);
}

void PrintPolicy(const v1::Policy& p) {
  auto or_default = [](bool has, const std::string& value, const std::string& def) {
    return has ? value : def + " (default)";
  };
  std::vector<std::vector<std::string>> rows = {
      {"scorer", p.scorer().empty() ? "snapkv (default)" : p.scorer()},
      {"allocation", p.allocation().empty() ? "scorer's default" : p.allocation()},
      {"keep_ratio", p.has_keep_ratio() ? absl::StrCat(p.keep_ratio()) : "-"},
      {"max_tokens", p.has_max_tokens() ? absl::StrCat(p.max_tokens()) : "-"},
      {"sinks", or_default(p.has_sinks(), absl::StrCat(p.sinks()), "4")},
      {"window", or_default(p.has_window(), absl::StrCat(p.window()), "32")},
      {"pool_kernel", or_default(p.has_pool_kernel(), absl::StrCat(p.pool_kernel()), "7")},
      {"ada_alpha", or_default(p.has_ada_alpha(), absl::StrCat(p.ada_alpha()), "0.2 GQA / 0.5")},
      {"seed", or_default(p.has_seed(), absl::StrCat(p.seed()), "0")}};
  PrintTable(rows);
}

int RunPolicy(Ctx& c, const std::string& sub) {
  const std::string& tenant = c.pos(2);
  if (sub == "show") {
    return Output(c, c.admin.GetPolicy(tenant), [&](const v1::Policy& p) {
      std::printf("policy of tenant %s\n", tenant.c_str());
      PrintPolicy(p);
    });
  }
  v1::Policy p;
  std::string error;
  if (!PolicyFromFlags(c.args, &p, &error)) return Fail(error);
  if (sub == "set") {
    return Output(c, c.admin.SetPolicy(tenant, p), [&](const v1::Policy& stored) {
      std::printf("policy of tenant %s (persisted, in effect)\n", tenant.c_str());
      PrintPolicy(stored);
    });
  }
  return Output(c, c.admin.ValidatePolicy(tenant, p), [&](const v1::ValidatePolicyReply& r) {
    std::printf("valid policy for tenant %s (nothing applied; `policy set` with the same flags "
                "stores it)\n",
                tenant.c_str());
    PrintPolicy(r.policy());
    std::printf("\neffective: scorer %s, allocation %s\n", r.scorer().c_str(),
                r.allocation().c_str());
    std::printf("budget: %s\n", r.has_budget()
                                    ? (r.decode_time_eviction()
                                           ? "max_tokens (also compresses inside CommitTokens)"
                                           : "keep_ratio")
                                    : "none: every Compress request must give one");
    std::printf("workers must send: %s\n",
                r.needs().empty() ? "nothing (keys/values only)"
                                  : absl::StrJoin(r.needs(), ", ").c_str());
  });
}

}  // namespace kvkeep::ctl
