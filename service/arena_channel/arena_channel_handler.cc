#include "service/arena_channel/arena_channel_handler.h"

#include "absl/strings/str_cat.h"
#include "service/arena_channel/arena_channel_wire.h"
#include "service/observability/log.h"

namespace kvkeep {
namespace {

ArenaChannelOutcome Refuse(const absl::Status& status, bool close) {
  ArenaChannelOutcome out;
  out.reply = EncodeArenaChannelError(status.code(), status.message());
  out.close = close;
  return out;
}

}  // namespace

ArenaChannelOutcome ArenaChannelHandler::Handle(ArenaChannelConnection& connection,
                                                absl::string_view datagram) const {
  absl::StatusOr<v1::ArenaChannelRequest> request = ParseArenaChannelRequest(datagram);
  if (!request.ok()) return Refuse(request.status(), /*close=*/true);

  if (request->request_case() == v1::ArenaChannelRequest::kAttach) {
    if (connection.session.has_value()) {
      return Refuse(absl::FailedPreconditionError("this connection is already attached"), true);
    }
    absl::StatusOr<TicketBinding> binding = tickets_->Redeem(request->attach());
    if (!binding.ok()) {
      log::Warn("arena_channel.ticket_refused", {{"peer_uid", connection.peer_uid}});
      return Refuse(binding.status(), /*close=*/true);
    }
    connection.session = *std::move(binding);
    log::Info("arena_channel.attached", {{"tenant", connection.session->tenant},
                                         {"session", connection.session->session_id},
                                         {"peer_uid", connection.peer_uid}});
    v1::ArenaChannelReply reply;
    reply.set_session_id(connection.session->session_id);
    ArenaChannelOutcome out;
    out.reply = reply.SerializeAsString();
    return out;
  }

  if (!connection.session.has_value()) {
    return Refuse(absl::UnauthenticatedError("attach with the session's ticket first"), true);
  }
  absl::StatusOr<std::pair<v1::ArenaExport, int>> arena = source_->ArenaFd(
      connection.session->tenant, connection.session->session_id, request->arena_id());
  // Refused (another tenant's arena, unknown, ended session): no fd. The server closes the
  // connections of ended sessions itself (ArenaChannelServer::EndSession).
  if (!arena.ok()) return Refuse(arena.status(), /*close=*/false);
  ArenaChannelOutcome out;
  out.fd.reset(arena->second);
  v1::ArenaChannelReply reply;
  *reply.mutable_arena() = std::move(arena->first);
  out.reply = reply.SerializeAsString();
  return out;
}

}  // namespace kvkeep
