// The arena channel's messages (service/arena_channel, client/arena_channel_client.h): request
// datagrams through the daemon's handler (parser, one-time tickets, per-tenant fd rule) and reply
// datagrams through the client's parser.
//
// Input: [u8 mode][records: u16 length + one datagram each]. Datagrams go, in order, to ONE
// connection of the handler; 32 bytes of 'A' (or 'B') in a datagram are replaced by alpha's (or
// beta's) real attach ticket, so attached states are reachable. mode bit 0: also parse every
// record as a reply with (mode >> 1) & 3 fds. Invariants: every reply parses; an fd comes exactly
// with an OK arena reply, only on an attached connection, only for an arena of that connection's
// tenant (its group's arena read-only: an O_RDONLY fd); a ticket attaches at most once; every
// error says what was wrong; the client's parser accepts exactly the OK replies with their fd.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "client/arena_channel_client.h"
#include "service/arena_channel/arena_channel_handler.h"
#include "service/arena_channel/arena_channel_wire.h"
#include "service/observability/log.h"
#include "tests/fuzz/fuzz_input.h"

namespace {

using namespace kvkeep;

struct FakeArena {
  std::string owner;  // "alpha", "beta", or "group" (alpha's sharing group)
  int fd;
};

// Arenas 1-3 alpha's, 10 its group's, 20 beta's; each a small memfd made once.
const std::map<uint32_t, FakeArena>& Arenas() {
  static const auto* arenas = [] {
    auto* m = new std::map<uint32_t, FakeArena>;
    for (auto [id, owner] : std::map<uint32_t, std::string>{
             {1, "alpha"}, {2, "alpha"}, {3, "alpha"}, {10, "group"}, {20, "beta"}}) {
      int fd = memfd_create("fuzz-arena", MFD_CLOEXEC);
      if (fd < 0 || ftruncate(fd, 4096) != 0) std::abort();
      (*m)[id] = FakeArena{owner, fd};
    }
    return m;
  }();
  return *arenas;
}

class FakeSource final : public ArenaFdSource {
 public:
  absl::StatusOr<std::pair<v1::ArenaExport, int>> ArenaFd(const std::string& tenant,
                                                          const std::string& session_id,
                                                          uint32_t arena_id) const override {
    if (session_id != "s-" + tenant) return absl::NotFoundError("session not live");
    auto it = Arenas().find(arena_id);
    if (it == Arenas().end()) return absl::NotFoundError(absl::StrCat("no arena ", arena_id));
    const bool group = it->second.owner == "group" && tenant == "alpha";
    if (it->second.owner != tenant && !group) {
      return absl::PermissionDeniedError("arena does not belong to this tenant");
    }
    int fd = group ? open(absl::StrCat("/proc/self/fd/", it->second.fd).c_str(),
                          O_RDONLY | O_CLOEXEC)
                   : fcntl(it->second.fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return absl::ResourceExhaustedError("no fd");
    v1::ArenaExport out;
    out.set_arena_id(arena_id);
    out.set_kind(v1::HOST_MEMFD);
    out.set_size_bytes(4096);
    out.set_read_only(group);
    return std::make_pair(out, fd);
  }
};

void Substitute(std::string* datagram, char marker, const std::string& ticket) {
  const std::string placeholder(kAttachTicketBytes, marker);
  for (size_t at = datagram->find(placeholder); at != std::string::npos;
       at = datagram->find(placeholder, at + kAttachTicketBytes)) {
    datagram->replace(at, kAttachTicketBytes, ticket);
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvkeep::fuzz::SilenceProtobufLogs();
  // Refused tickets are logged per attempt: off, for speed.
  kvkeep::log::Configure(kvkeep::log::Level::kOff, kvkeep::log::Format::kText);
  Arenas();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvkeep::fuzz;
  FuzzInput in(data, size);
  const uint8_t mode = in.U8();
  ArenaTickets tickets;
  const std::string ticket_a = tickets.Issue("alpha", "s-alpha");
  const std::string ticket_b = tickets.Issue("beta", "s-beta");
  FUZZ_CHECK(ticket_a.size() == kAttachTicketBytes && ticket_a != ticket_b, "bad tickets");
  FakeSource source;
  ArenaChannelHandler handler(&tickets, &source);
  ArenaChannelConnection connection;
  int attaches = 0;
  bool closed = false;
  while (!in.empty() && !closed) {
    std::string datagram = in.Record();
    if (mode & 1) {
      const int fds = (mode >> 1) & 3;
      absl::StatusOr<v1::ArenaChannelReply> parsed = ParseArenaChannelReply(datagram, fds, true);
      FUZZ_CHECK_STATUS_MESSAGE(parsed.status());
      if (parsed.ok()) FUZZ_CHECK(fds == 1 && parsed->code() == 0 && parsed->has_arena(), "reply");
    }
    Substitute(&datagram, 'A', ticket_a);
    Substitute(&datagram, 'B', ticket_b);
    const bool was_attached = connection.session.has_value();
    ArenaChannelOutcome out = handler.Handle(connection, datagram);
    closed = out.close;
    v1::ArenaChannelReply reply;
    FUZZ_CHECK(reply.ParseFromString(out.reply), "the handler's reply does not parse");
    FUZZ_CHECK(reply.code() == 0 || !reply.message().empty(), "an error without a message");
    if (!was_attached && connection.session.has_value()) ++attaches;
    FUZZ_CHECK(attaches <= 1, "one connection attached twice");
    FUZZ_CHECK(out.fd.valid() == (reply.code() == 0 && reply.has_arena()), "fd without arena");
    // The client accepts exactly the OK replies, with their fd.
    absl::StatusOr<v1::ArenaChannelReply> client_view =
        ParseArenaChannelReply(out.reply, out.fd.valid() ? 1 : 0, reply.has_arena());
    FUZZ_CHECK(client_view.ok() == (reply.code() == 0), client_view.status().ToString());
    if (!out.fd.valid()) continue;
    FUZZ_CHECK(was_attached && connection.session.has_value(), "an fd before attach");
    const std::string& tenant = connection.session->tenant;
    const FakeArena& arena = Arenas().at(reply.arena().arena_id());
    const bool group = arena.owner == "group";
    FUZZ_CHECK(arena.owner == tenant || (group && tenant == "alpha"),
               absl::StrCat(tenant, " got an fd of ", arena.owner, "'s arena"));
    const int access = fcntl(out.fd.get(), F_GETFL) & O_ACCMODE;
    FUZZ_CHECK(group == reply.arena().read_only(), "read_only flag");
    FUZZ_CHECK(!group || access == O_RDONLY, "a group arena's fd is writable");
  }
  // A ticket never attaches twice: at most the two issued ones are gone.
  FUZZ_CHECK(tickets.outstanding() + static_cast<size_t>(attaches) == 2, "ticket accounting");
  return 0;
}
