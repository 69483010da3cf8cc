#include "client/admin_client.h"

#include "common/grpc_status.h"

namespace kvkeep {

std::unique_ptr<AdminClient> AdminClient::Connect(const ChannelOptions& options,
                                                  std::string token) {
  return std::unique_ptr<AdminClient>(new AdminClient(MakeChannel(options), std::move(token)));
}

namespace {
template <typename Reply, typename Call>
absl::StatusOr<Reply> Invoke(const std::string& token, Call call) {
  auto context = MakeCallContext(token);
  Reply reply;
  grpc::Status status = call(context.get(), &reply);
  if (!status.ok()) return FromGrpcStatus(status);
  return reply;
}
}  // namespace

absl::StatusOr<v1::DaemonStatus> AdminClient::GetStatus() {
  return Invoke<v1::DaemonStatus>(token_, [&](grpc::ClientContext* c, v1::DaemonStatus* r) {
    return stub_->GetStatus(c, v1::GetStatusRequest(), r);
  });
}

absl::StatusOr<v1::CreateTenantReply> AdminClient::CreateTenant(
    const v1::CreateTenantRequest& request) {
  return Invoke<v1::CreateTenantReply>(
      token_, [&](grpc::ClientContext* c, v1::CreateTenantReply* r) {
        return stub_->CreateTenant(c, request, r);
      });
}

absl::StatusOr<v1::ListTenantsReply> AdminClient::ListTenants() {
  return Invoke<v1::ListTenantsReply>(token_, [&](grpc::ClientContext* c, v1::ListTenantsReply* r) {
    return stub_->ListTenants(c, v1::ListTenantsRequest(), r);
  });
}

absl::StatusOr<v1::DeleteTenantReply> AdminClient::DeleteTenant(const std::string& name,
                                                                bool force) {
  v1::DeleteTenantRequest request;
  request.set_name(name);
  request.set_force(force);
  return Invoke<v1::DeleteTenantReply>(
      token_, [&](grpc::ClientContext* c, v1::DeleteTenantReply* r) {
        return stub_->DeleteTenant(c, request, r);
      });
}

absl::StatusOr<v1::TenantInfo> AdminClient::SetQuota(const v1::SetQuotaRequest& request) {
  return Invoke<v1::TenantInfo>(token_, [&](grpc::ClientContext* c, v1::TenantInfo* r) {
    return stub_->SetQuota(c, request, r);
  });
}

absl::StatusOr<v1::Policy> AdminClient::SetPolicy(const std::string& tenant,
                                                  const v1::Policy& policy) {
  v1::SetPolicyRequest request;
  request.set_tenant(tenant);
  *request.mutable_policy() = policy;
  return Invoke<v1::Policy>(token_, [&](grpc::ClientContext* c, v1::Policy* r) {
    return stub_->SetPolicy(c, request, r);
  });
}

absl::StatusOr<v1::Policy> AdminClient::GetPolicy(const std::string& tenant) {
  v1::GetPolicyRequest request;
  request.set_tenant(tenant);
  return Invoke<v1::Policy>(token_, [&](grpc::ClientContext* c, v1::Policy* r) {
    return stub_->GetPolicy(c, request, r);
  });
}

absl::StatusOr<v1::ListSequencesReply> AdminClient::ListSequences(const std::string& tenant) {
  v1::ListSequencesRequest request;
  request.set_tenant(tenant);
  return Invoke<v1::ListSequencesReply>(
      token_, [&](grpc::ClientContext* c, v1::ListSequencesReply* r) {
        return stub_->ListSequences(c, request, r);
      });
}

absl::StatusOr<v1::SpillReply> AdminClient::SpillSequence(const v1::SequenceRef& ref) {
  return Invoke<v1::SpillReply>(token_, [&](grpc::ClientContext* c, v1::SpillReply* r) {
    return stub_->SpillSequence(c, ref, r);
  });
}

absl::StatusOr<v1::SequenceInfo> AdminClient::RestoreSequence(const v1::SequenceRef& ref) {
  return Invoke<v1::SequenceInfo>(token_, [&](grpc::ClientContext* c, v1::SequenceInfo* r) {
    return stub_->RestoreSequence(c, ref, r);
  });
}

absl::StatusOr<v1::DropReply> AdminClient::DropSequence(const v1::SequenceRef& ref) {
  return Invoke<v1::DropReply>(token_, [&](grpc::ClientContext* c, v1::DropReply* r) {
    return stub_->DropSequence(c, ref, r);
  });
}

absl::StatusOr<v1::Watermarks> AdminClient::SetWatermarks(const v1::Watermarks& watermarks) {
  return Invoke<v1::Watermarks>(token_, [&](grpc::ClientContext* c, v1::Watermarks* r) {
    return stub_->SetWatermarks(c, watermarks, r);
  });
}

absl::StatusOr<v1::SequenceDetail> AdminClient::GetSequence(const v1::SequenceRef& ref) {
  return Invoke<v1::SequenceDetail>(token_, [&](grpc::ClientContext* c, v1::SequenceDetail* r) {
    return stub_->GetSequence(c, ref, r);
  });
}

absl::StatusOr<v1::CompressReply> AdminClient::CompressSequence(
    const v1::CompressSequenceRequest& request) {
  return Invoke<v1::CompressReply>(token_, [&](grpc::ClientContext* c, v1::CompressReply* r) {
    return stub_->CompressSequence(c, request, r);
  });
}

absl::StatusOr<v1::ValidatePolicyReply> AdminClient::ValidatePolicy(const std::string& tenant,
                                                                    const v1::Policy& policy) {
  v1::SetPolicyRequest request;
  request.set_tenant(tenant);
  *request.mutable_policy() = policy;
  return Invoke<v1::ValidatePolicyReply>(
      token_, [&](grpc::ClientContext* c, v1::ValidatePolicyReply* r) {
        return stub_->ValidatePolicy(c, request, r);
      });
}

}  // namespace kvkeep
