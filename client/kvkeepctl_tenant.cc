#include "client/kvkeepctl_tenant.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "client/kvkeepctl_format.h"

namespace kvkeep::ctl {

std::vector<std::string> TenantHeader() {
  return {"TENANT",    "GUARANTEED", "MAX",     "WEIGHT", "FAIR-SHARE", "USED",  "PAGES",
          "SESSIONS",  "SEQUENCES",  "SPILLED", "SPILL-QUOTA", "GROUP", "SHARED", "METADATA",
          "METADATA-MAX"};
}

std::vector<std::string> TenantRow(const v1::TenantInfo& t) {
  return {t.name(),
          HumanBytes(t.quota_bytes()),
          t.max_bytes() == 0 ? "none" : HumanBytes(t.max_bytes()),
          absl::StrCat(t.weight()),
          HumanBytes(t.fair_share_bytes()),
          HumanBytes(t.used_bytes()),
          absl::StrCat(t.used_pages()),
          absl::StrCat(t.sessions()),
          absl::StrCat(t.sequences()),
          HumanBytes(t.spilled_bytes()),
          HumanBytes(t.spill_quota_bytes()),
          t.sharing_group().empty() ? "-" : t.sharing_group(),
          HumanBytes(t.shared_charge_bytes()),
          HumanBytes(t.metadata_bytes()),
          t.max_metadata_bytes() == 0 ? "none" : HumanBytes(t.max_metadata_bytes())};
}

int RunTenant(Ctx& c, const std::string& sub) {
  std::string error;
  auto size_flag = [&](const std::string& name, uint64_t* out) -> bool {
    if (!c.has(name)) return true;
    if (!ParseSize(c.flag(name), out)) {
      error = "--" + name + " \"" + c.flag(name) + "\" is not a size (e.g. 512MiB, 4GiB)";
      return false;
    }
    return true;
  };
  auto print_tenants = [](const auto& list) {
    std::vector<std::vector<std::string>> rows = {TenantHeader()};
    for (const auto& t : list) rows.push_back(TenantRow(t));
    PrintTable(rows);
  };
  if (sub == "list") {
    return Output(c, c.admin.ListTenants(),
                  [&](const v1::ListTenantsReply& r) { print_tenants(r.tenants()); });
  }
  const std::string& name = c.pos(2);
  uint64_t quota = 0, max = 0, spill_quota = 0;
  uint32_t weight = 0;
  if (!size_flag("quota", &quota) || !size_flag("max", &max) ||
      !size_flag("spill-quota", &spill_quota)) {
    return Fail(error);
  }
  if (c.has("weight") && (!absl::SimpleAtoi(c.flag("weight"), &weight) || weight == 0)) {
    return Fail("--weight must be a whole number >= 1");
  }
  if (sub == "create") {
    v1::CreateTenantRequest request;
    request.set_name(name);
    request.set_quota_bytes(quota);
    request.set_max_bytes(max);
    request.set_weight(weight);
    request.set_spill_quota_bytes(spill_quota);
    if (c.has("sharing-group")) request.set_sharing_group(c.flag("sharing-group"));
    if (c.has("token")) request.set_token(c.flag("token"));
    return Output(c, c.admin.CreateTenant(request), [](const v1::CreateTenantReply& r) {
      std::printf("created tenant %s\ntoken: %s\n(store it now: kvkeepd keeps only its hash)\n",
                  r.tenant().name().c_str(), r.token().c_str());
    });
  }
  if (sub == "set-quota") {
    v1::SetQuotaRequest request;
    request.set_name(name);
    if (!c.has("quota") && !c.has("max") && !c.has("weight") && !c.has("spill-quota") &&
        !c.has("sharing-group")) {
      return Fail(
          "set-quota needs at least one of --quota, --max, --weight, --spill-quota, "
          "--sharing-group");
    }
    if (c.has("quota")) request.set_quota_bytes(quota);
    if (c.has("max")) request.set_max_bytes(max);
    if (c.has("weight")) request.set_weight(weight);
    if (c.has("spill-quota")) request.set_spill_quota_bytes(spill_quota);
    if (c.has("sharing-group")) request.set_sharing_group(c.flag("sharing-group"));
    return Output(c, c.admin.SetQuota(request), [](const v1::TenantInfo& t) {
      PrintTable({TenantHeader(), TenantRow(t)});
    });
  }
  return Output(c, c.admin.DeleteTenant(name, c.has("force")),
                [&](const v1::DeleteTenantReply& r) {
                  std::printf("deleted tenant %s (%u sessions ended, %u sequences dropped)\n",
                              name.c_str(), r.sessions_ended(), r.sequences_dropped());
                });
}

}  // namespace kvkeep::ctl
