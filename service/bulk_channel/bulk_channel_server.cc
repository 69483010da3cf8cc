#include "service/bulk_channel/bulk_channel_server.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/bulk_frame.h"
#include "common/status_macros.h"
#include "common/unix_socket.h"
#include "service/bulk_channel/bulk_connection.h"
#include "service/bulk_channel/bulk_requests.h"
#include "service/observability/log.h"

namespace kvkeep {
namespace {

void SetTimeout(int fd, int option, absl::Duration d) {
  timeval tv = absl::ToTimeval(d);
  setsockopt(fd, SOL_SOCKET, option, &tv, sizeof(tv));
}

}  // namespace

absl::StatusOr<std::unique_ptr<BulkChannelServer>> BulkChannelServer::Start(
    const std::string& path, CacheEngine* engine, SessionLimits* limits) {
  ASSIGN_OR_RETURN(OwnedFd listener, ListenUnixSocket(path, SOCK_STREAM, "bulk channel"));
  OwnedFd wake(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake.valid()) return absl::UnavailableError(absl::StrCat("eventfd: ", std::strerror(errno)));
  auto server = std::unique_ptr<BulkChannelServer>(
      new BulkChannelServer(path, std::move(listener), std::move(wake), engine, limits));
  server->accept_thread_ = std::thread([s = server.get()] { s->AcceptLoop(); });
  log::Info("bulk_channel.bound", {{"address", path}, {"mode", "0660"}});
  return server;
}

BulkChannelServer::BulkChannelServer(std::string path, OwnedFd listener, OwnedFd wake,
                                     CacheEngine* engine, SessionLimits* limits)
    : path_(std::move(path)),
      listener_(std::move(listener)),
      wake_(std::move(wake)),
      engine_(engine),
      limits_(limits) {}

BulkChannelServer::~BulkChannelServer() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [id, c] : connections_) shutdown(c.fd, SHUT_RDWR);
  }
  uint64_t one = 1;
  (void)!write(wake_.get(), &one, sizeof(one));
  if (accept_thread_.joinable()) accept_thread_.join();
  {
    // The connection threads end once their sockets are shut down; each removes itself.
    absl::MutexLock lock(&mu_);
    for (auto& [id, c] : connections_) shutdown(c.fd, SHUT_RDWR);  // accepted meanwhile
    mu_.Await(absl::Condition(
        +[](absl::flat_hash_map<uint64_t, Connection>* c) { return c->empty(); }, &connections_));
  }
  unlink(path_.c_str());
}

std::string BulkChannelServer::Issue(const std::string& tenant, const std::string& session_id) {
  return tickets_.Issue(tenant, session_id);
}

void BulkChannelServer::EndSession(const std::string& session_id) {
  absl::MutexLock lock(&mu_);
  tickets_.EndSession(session_id);
  for (auto& [id, c] : connections_) {
    if (c.session_id == session_id) shutdown(c.fd, SHUT_RDWR);
  }
}

std::size_t BulkChannelServer::connections() const {
  absl::MutexLock lock(&mu_);
  return connections_.size();
}

void BulkChannelServer::WriteMetrics(ExpositionWriter* w) const {
  w->Family("kvkeep_bulk_connections", "gauge",
            "Bulk channel connections open (<socket>.bulk; attached or attaching)");
  w->Sample("kvkeep_bulk_connections", {}, static_cast<double>(connections()));
  w->Family("kvkeep_bulk_bytes_total", "counter",
            "Key and value bytes moved over the bulk channel, by direction");
  w->Sample("kvkeep_bulk_bytes_total", {{"direction", "write"}},
            static_cast<double>(stats_.write_bytes.load()));
  w->Sample("kvkeep_bulk_bytes_total", {{"direction", "read"}},
            static_cast<double>(stats_.read_bytes.load()));
  w->Family("kvkeep_bulk_chunks_total", "counter", "Chunks moved over the bulk channel");
  w->Sample("kvkeep_bulk_chunks_total", {{"direction", "write"}},
            static_cast<double>(stats_.write_chunks.load()));
  w->Sample("kvkeep_bulk_chunks_total", {{"direction", "read"}},
            static_cast<double>(stats_.read_chunks.load()));
  w->Family("kvkeep_bulk_errors_total", "counter",
            "Bulk channel write batches and reads that ended with an error status");
  w->Sample("kvkeep_bulk_errors_total", {{"op", "write"}},
            static_cast<double>(stats_.write_errors.load()));
  w->Sample("kvkeep_bulk_errors_total", {{"op", "read"}},
            static_cast<double>(stats_.read_errors.load()));
  w->Family("kvkeep_bulk_refused_connections_total", "counter",
            "Bulk channel connections closed before attaching (bad or used ticket, bad or no "
            "first frame within 10 s, connection limit)");
  w->Sample("kvkeep_bulk_refused_connections_total", {},
            static_cast<double>(refused_.load()));
}

void BulkChannelServer::AcceptLoop() {
  pollfd fds[2] = {{wake_.get(), POLLIN, 0}, {listener_.get(), POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0 && errno != EINTR) return;
    if (fds[0].revents != 0) return;  // stopping
    if ((fds[1].revents & POLLIN) == 0) continue;
    for (;;) {  // every pending connection (the listener is non-blocking)
      OwnedFd fd(accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (!fd.valid()) break;
      uint64_t id;
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
        if (connections_.size() >= kMaxConnections) {
          log::Warn("bulk_channel.refused", {{"reason", "too many connections"}});
          ++refused_;
          continue;  // closed by fd's destructor
        }
        id = next_id_++;
        connections_[id] = Connection{fd.get(), ""};
      }
      std::thread([this, id, fd = std::move(fd)]() mutable { Serve(id, std::move(fd)); }).detach();
    }
  }
}

absl::StatusOr<TicketBinding> BulkChannelServer::Attach(uint64_t id, const std::string& ticket) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(TicketBinding who, tickets_.Redeem(ticket));
  std::size_t of_tenant = 0;
  for (const auto& [other, c] : connections_) of_tenant += c.tenant == who.tenant;
  if (of_tenant >= kMaxConnectionsPerTenant) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "tenant ", who.tenant, " has ", of_tenant, " bulk channel connections, the most one "
        "tenant may have; this session's bytes path uses gRPC"));
  }
  Connection& c = connections_[id];
  c.session_id = who.session_id;
  c.tenant = who.tenant;
  return who;
}

void BulkChannelServer::Serve(uint64_t id, OwnedFd fd) {
  // The attach frame must come within kAttachTimeout; from then on every send and receive inside
  // a frame must progress within kStallTimeout (the wait between frames has no limit).
  SetTimeout(fd.get(), SO_RCVTIMEO, kAttachTimeout);
  SetTimeout(fd.get(), SO_SNDTIMEO, kStallTimeout);
  // Room for a read frame's bytes in the socket (up to net.core.wmem_max), so the next batch is
  // prepared while the worker drains this one.
  const int send_buffer = kSendBufferBytes;
  setsockopt(fd.get(), SOL_SOCKET, SO_SNDBUF, &send_buffer, sizeof(send_buffer));
  v1::BulkRequest first;
  absl::StatusOr<bool> got = RecvFrame(fd.get(), &first, kBulkMaxRequestMessageBytes);
  absl::Status attached = got.ok() ? absl::OkStatus() : got.status();
  if (attached.ok() && !*got) attached = absl::CancelledError("closed before attaching");
  if (attached.ok()) attached = CheckBulkRequest(first, /*attached=*/false);
  absl::StatusOr<TicketBinding> who =
      attached.ok() ? Attach(id, first.attach()) : absl::StatusOr<TicketBinding>(attached);
  if (!who.ok()) {  // counted before the peer hears it
    ++refused_;
    if (!absl::IsCancelled(who.status())) {
      log::Info("bulk_channel.refused", {{"status", who.status()}});
    }
  }
  // A peer that sent a frame, or bytes that are not one, hears why it is refused.
  if ((got.ok() && *got) || absl::IsInvalidArgument(got.status())) {
    v1::BulkReply reply;
    reply.set_code(static_cast<int>(who.status().code()));
    if (!who.ok()) {
      reply.set_message(absl::IsNotFound(who.status())
                            ? "bulk ticket unknown, already used, or its session ended"
                            : std::string(who.status().message()));
    } else {
      reply.set_session_id(who->session_id);
    }
    if (!SendFrame(fd.get(), reply).ok() && who.ok()) who = absl::UnavailableError("peer gone");
  }
  if (who.ok()) {
    SetTimeout(fd.get(), SO_RCVTIMEO, kStallTimeout);
    BulkConnection connection(fd.get(), engine_, limits_, &stats_,
                              {who->tenant, who->session_id});
    absl::Status ended = connection.Serve();
    if (!ended.ok() && !absl::IsUnavailable(ended)) {
      log::Info("bulk_channel.closed", {{"tenant", who->tenant},
                                        {"session", who->session_id},
                                        {"status", ended}});
    }
  }
  absl::MutexLock lock(&mu_);
  connections_.erase(id);  // before fd closes: EndSession never shuts a reused fd number down
}

}  // namespace kvkeep
