#include "service/rpc/register_model_reactor.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/impl/codegen/proto_utils.h"
#include "service/rpc/reactors.h"

namespace kvkeep {

RegisterModelReactor::RegisterModelReactor(CacheEngine* engine, std::string method,
                                           absl::StatusOr<std::string> tenant,
                                           grpc::ByteBuffer* reply)
    : engine_(engine), method_(std::move(method)), tenant_(std::move(tenant)), reply_(reply) {
  if (!tenant_.ok()) {
    Finish(CallStatus(method_, "", tenant_.status()));
    return;
  }
  StartRead(&raw_);
}

void RegisterModelReactor::OnReadDone(bool ok) {
  if (!ok) {
    Register();
    return;
  }
  chunk_.Clear();
  const bool parsed = grpc::SerializationTraits<v1::ModelChunk>::Deserialize(&raw_, &chunk_).ok();
  absl::Status status =
      parsed ? Apply(chunk_)
             : absl::InvalidArgumentError("not a parseable kvkeep.v1.ModelChunk message");
  if (!status.ok()) {
    const std::string before =
        chunks_ == 0 ? "nothing"
                     : absl::StrCat("the layout and ", grams_, " W_o Gram matrices");
    Finish(CallStatus(method_, *tenant_,
                      absl::Status(status.code(),
                                   absl::StrCat("chunk ", chunks_, ": ", status.message(),
                                                "; applied before it: ", before,
                                                "; nothing registered"))));
    return;
  }
  ++chunks_;
  if (chunk_.has_wo_gram()) ++grams_;
  StartRead(&raw_);
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
  if (!reply.ok()) {
    Finish(CallStatus(method_, *tenant_, reply.status()));
    return;
  }
  bool own_buffer = false;
  Finish(grpc::SerializationTraits<v1::RegisterModelReply>::Serialize(*reply, reply_, &own_buffer));
}

}  // namespace kvkeep
