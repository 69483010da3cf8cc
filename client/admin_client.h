// C++ client of the operator API (kvkeep.v1.Admin), used by kvkeepctl and tests.
//
//   ASSIGN_OR_RETURN(auto admin, AdminClient::Connect({.target = "unix:/run/kvkeep/kvkeepd.sock"},
//                                                     admin_token));
//   ASSIGN_OR_RETURN(v1::CreateTenantReply t, admin->CreateTenant(request));
//
// Thread-safe.
#ifndef KVKEEP_CLIENT_ADMIN_CLIENT_H_
#define KVKEEP_CLIENT_ADMIN_CLIENT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "client/call_context.h"
#include "kvkeep/v1/admin.grpc.pb.h"

namespace kvkeep {

class AdminClient {
 public:
  // Every call fails with UNAVAILABLE while the daemon cannot be reached (no connection is made
  // here).
  static std::unique_ptr<AdminClient> Connect(const ChannelOptions& options, std::string token);
  // Over an existing channel (e.g. grpc::Server::InProcessChannel in tests).
  static std::unique_ptr<AdminClient> Connect(std::shared_ptr<grpc::Channel> channel,
                                              std::string token);

  absl::StatusOr<v1::DaemonStatus> GetStatus();
  absl::StatusOr<v1::CreateTenantReply> CreateTenant(const v1::CreateTenantRequest& request);
  absl::StatusOr<v1::ListTenantsReply> ListTenants();
  absl::StatusOr<v1::DeleteTenantReply> DeleteTenant(const std::string& name, bool force);
  absl::StatusOr<v1::TenantInfo> SetQuota(const v1::SetQuotaRequest& request);
  absl::StatusOr<v1::Policy> SetPolicy(const std::string& tenant, const v1::Policy& policy);
  absl::StatusOr<v1::Policy> GetPolicy(const std::string& tenant);
  absl::StatusOr<v1::ListSequencesReply> ListSequences(const std::string& tenant);
  absl::StatusOr<v1::SpillReply> SpillSequence(const v1::SequenceRef& ref);
  absl::StatusOr<v1::SequenceInfo> RestoreSequence(const v1::SequenceRef& ref);
  absl::StatusOr<v1::DropReply> DropSequence(const v1::SequenceRef& ref);
  absl::StatusOr<v1::Watermarks> SetWatermarks(const v1::Watermarks& watermarks);
  absl::StatusOr<v1::SequenceDetail> GetSequence(const v1::SequenceRef& ref);
  absl::StatusOr<v1::CompressReply> CompressSequence(const v1::CompressSequenceRequest& request);
  absl::StatusOr<v1::ValidatePolicyReply> ValidatePolicy(const std::string& tenant,
                                                         const v1::Policy& policy);
  // Fleet tier (docs/fleet.md).
  absl::StatusOr<v1::SetGroupSecretReply> SetGroupSecret(const std::string& group,
                                                         const std::string& secret);
  absl::StatusOr<v1::FleetStatus> GetFleetStatus();

 private:
  AdminClient(std::shared_ptr<grpc::Channel> channel, std::string token)
      : stub_(v1::Admin::NewStub(channel)), token_(std::move(token)) {}
  // One unary call with this client's token (client/unary_call.h).
  template <typename Request, typename Reply>
  absl::StatusOr<Reply> Call(
      grpc::Status (v1::Admin::Stub::*method)(grpc::ClientContext*, const Request&, Reply*),
      const Request& request);

  std::unique_ptr<v1::Admin::Stub> stub_;
  const std::string token_;
};

}  // namespace kvkeep

#endif  // KVKEEP_CLIENT_ADMIN_CLIENT_H_
