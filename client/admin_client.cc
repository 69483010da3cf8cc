#include "client/admin_client.h"

#include "client/unary_call.h"

namespace kvkeep {

std::unique_ptr<AdminClient> AdminClient::Connect(const ChannelOptions& options,
                                                  std::string token) {
  return Connect(MakeChannel(options), std::move(token));
}

std::unique_ptr<AdminClient> AdminClient::Connect(std::shared_ptr<grpc::Channel> channel,
                                                  std::string token) {
  return std::unique_ptr<AdminClient>(new AdminClient(std::move(channel), std::move(token)));
}

template <typename Request, typename Reply>
absl::StatusOr<Reply> AdminClient::Call(
    grpc::Status (v1::Admin::Stub::*method)(grpc::ClientContext*, const Request&, Reply*),
    const Request& request) {
  return UnaryCall(token_, *stub_, method, request);
}

absl::StatusOr<v1::DaemonStatus> AdminClient::GetStatus() {
  return Call(&v1::Admin::Stub::GetStatus, v1::GetStatusRequest());
}

absl::StatusOr<v1::CreateTenantReply> AdminClient::CreateTenant(
    const v1::CreateTenantRequest& request) {
  return Call(&v1::Admin::Stub::CreateTenant, request);
}

absl::StatusOr<v1::ListTenantsReply> AdminClient::ListTenants() {
  return Call(&v1::Admin::Stub::ListTenants, v1::ListTenantsRequest());
}

absl::StatusOr<v1::DeleteTenantReply> AdminClient::DeleteTenant(const std::string& name,
                                                                bool force) {
  v1::DeleteTenantRequest request;
  request.set_name(name);
  request.set_force(force);
  return Call(&v1::Admin::Stub::DeleteTenant, request);
}

absl::StatusOr<v1::TenantInfo> AdminClient::SetQuota(const v1::SetQuotaRequest& request) {
  return Call(&v1::Admin::Stub::SetQuota, request);
}

absl::StatusOr<v1::Policy> AdminClient::SetPolicy(const std::string& tenant,
                                                  const v1::Policy& policy) {
  v1::SetPolicyRequest request;
  request.set_tenant(tenant);
  *request.mutable_policy() = policy;
  return Call(&v1::Admin::Stub::SetPolicy, request);
}

absl::StatusOr<v1::Policy> AdminClient::GetPolicy(const std::string& tenant) {
  v1::GetPolicyRequest request;
  request.set_tenant(tenant);
  return Call(&v1::Admin::Stub::GetPolicy, request);
}

absl::StatusOr<v1::ListSequencesReply> AdminClient::ListSequences(const std::string& tenant) {
  v1::ListSequencesRequest request;
  request.set_tenant(tenant);
  return Call(&v1::Admin::Stub::ListSequences, request);
}

absl::StatusOr<v1::SpillReply> AdminClient::SpillSequence(const v1::SequenceRef& ref) {
  return Call(&v1::Admin::Stub::SpillSequence, ref);
}

absl::StatusOr<v1::SequenceInfo> AdminClient::RestoreSequence(const v1::SequenceRef& ref) {
  return Call(&v1::Admin::Stub::RestoreSequence, ref);
}

absl::StatusOr<v1::DropReply> AdminClient::DropSequence(const v1::SequenceRef& ref) {
  return Call(&v1::Admin::Stub::DropSequence, ref);
}

absl::StatusOr<v1::Watermarks> AdminClient::SetWatermarks(const v1::Watermarks& watermarks) {
  return Call(&v1::Admin::Stub::SetWatermarks, watermarks);
}

absl::StatusOr<v1::SequenceDetail> AdminClient::GetSequence(const v1::SequenceRef& ref) {
  return Call(&v1::Admin::Stub::GetSequence, ref);
}

absl::StatusOr<v1::CompressReply> AdminClient::CompressSequence(
    const v1::CompressSequenceRequest& request) {
  return Call(&v1::Admin::Stub::CompressSequence, request);
}

absl::StatusOr<v1::ValidatePolicyReply> AdminClient::ValidatePolicy(const std::string& tenant,
                                                                    const v1::Policy& policy) {
  v1::SetPolicyRequest request;
  request.set_tenant(tenant);
  *request.mutable_policy() = policy;
  return Call(&v1::Admin::Stub::ValidatePolicy, request);
}

absl::StatusOr<v1::SetGroupSecretReply> AdminClient::SetGroupSecret(const std::string& group,
                                                                    const std::string& secret) {
  v1::SetGroupSecretRequest request;
  request.set_group(group);
  request.set_secret(secret);
  return Call(&v1::Admin::Stub::SetGroupSecret, request);
}

absl::StatusOr<v1::FleetStatus> AdminClient::GetFleetStatus() {
  return Call(&v1::Admin::Stub::GetFleetStatus, v1::GetFleetStatusRequest());
}

}  // namespace kvkeep
