#include "service/rpc/register_model_reactor.h"

#include <utility>

#include "service/rpc/reactors.h"

namespace kvkeep {

RegisterModelReactor::RegisterModelReactor(CacheEngine* engine, std::string method,
                                           absl::StatusOr<std::string> tenant,
                                           v1::RegisterModelReply* reply)
    : engine_(engine), method_(std::move(method)), tenant_(std::move(tenant)), reply_(reply) {
  if (!tenant_.ok()) {
    Finish(CallStatus(method_, "", tenant_.status()));
    return;
  }
  StartRead(&chunk_);
}

void RegisterModelReactor::OnReadDone(bool ok) {
  if (!ok) {
    Register();
    return;
  }
  absl::Status status = Apply(chunk_);
  if (!status.ok()) {
    Finish(CallStatus(method_, *tenant_, status));
    return;
  }
  StartRead(&chunk_);
}

absl::Status RegisterModelReactor::Apply(const v1::ModelChunk& chunk) {
  if (chunk.has_layout()) {
    if (model_.has_value()) {
      return absl::InvalidArgumentError("the layout must be sent once, in the first chunk");
    }
    auto model = Model::FromLayout(chunk.layout());
    if (model.ok()) model_ = std::move(*model);
    return model.status();
  }
  if (chunk.has_wo_gram()) {
    return model_.has_value() ? model_->AddWoGram(chunk.wo_gram())
                              : absl::InvalidArgumentError("the first chunk must carry the layout");
  }
  return absl::InvalidArgumentError("empty ModelChunk");
}

void RegisterModelReactor::Register() {
  if (!model_.has_value()) {
    Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "RegisterModel needs a first chunk with the layout"));
    return;
  }
  auto reply = engine_->RegisterModel(*tenant_, std::move(*model_));
  if (reply.ok()) *reply_ = *reply;
  Finish(CallStatus(method_, *tenant_, reply.status()));
}

}  // namespace kvkeep
