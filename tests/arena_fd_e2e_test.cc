// Arenas as file descriptors (issue 13, defect 3) against the real daemon: a zero-copy worker under
// another uid than the daemon's, nothing to open by name, one-time tickets, and no fd of another
// tenant's arena ever sent.
#include <fcntl.h>
#include <grp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/arena_channel_client.h"
#include "client/client.h"
#include "common/status_matchers.h"
#include "gtest/gtest.h"
#include "tests/daemon_process.h"
#include "tests/raw_session.h"

namespace kvkeep {
namespace {

using ::kvkeep::testing::DaemonProcess;
using ::kvkeep::testing::OpenSession;
using ::kvkeep::testing::RawSession;
using ::kvkeep::testing::PatternBytes;
using ::kvkeep::testing::StatusIs;
using absl::StatusCode;

constexpr uid_t kNobody = 65534;

// Sends one raw datagram on a fresh connection (no attach) and returns the reply's code and the
// number of fds that came with it.
std::pair<int, int> RawRequest(const std::string& path, const std::string& datagram) {
  int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    return {-1, 0};
  }
  send(fd, datagram.data(), datagram.size(), MSG_NOSIGNAL);
  char buffer[4097];
  iovec iov{buffer, sizeof(buffer)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * 4)] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  int fds = 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
    if (c->cmsg_type == SCM_RIGHTS) fds += static_cast<int>((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
  }
  close(fd);
  v1::ArenaChannelReply reply;
  if (n <= 0 || !reply.ParseFromArray(buffer, static_cast<int>(n))) return {-2, fds};
  return {reply.code(), fds};
}

class ArenaFdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(daemon_.Start());
    ASSERT_OK_AND_ASSIGN(token_a_, daemon_.CreateTenant("alpha"));
    ASSERT_OK_AND_ASSIGN(token_b_, daemon_.CreateTenant("beta"));
    arena_socket_ = daemon_.dir() + "/kvkeepd.sock.arenas";
  }

  std::unique_ptr<Client> AttachWithPages(const std::string& token, const std::string& worker,
                                          std::string* sequence) {
    auto client = Client::Attach(daemon_.channel(), token, worker);
    if (!client.ok()) return nullptr;
    if (!(*client)->RegisterModel(testing::TestLayout()).ok()) return nullptr;
    auto seq = (*client)->CreateSequence("test-model");
    if (!seq.ok() || !(*client)->Allocate(*seq, 16).ok()) return nullptr;
    *sequence = *seq;
    return *std::move(client);
  }

  DaemonProcess daemon_;
  std::string token_a_, token_b_;
  std::string arena_socket_;
};

// Runs the test worker as uid/gid 65534 (setgid + setuid in the forked child), capturing stdout.
testing::ProcessExit RunWorkerAs(uid_t uid, const std::vector<std::string>& args) {
  int out[2];
  testing::ProcessExit result;
  if (pipe(out) != 0) return result;
  pid_t pid = fork();
  if (pid == 0) {
    dup2(out[1], 1);
    dup2(out[1], 2);
    close(out[0]);
    if (setgroups(0, nullptr) != 0 || setgid(uid) != 0 || setuid(uid) != 0) _exit(126);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  close(out[1]);
  char buf[512];
  ssize_t n;
  while ((n = read(out[0], buf, sizeof(buf))) > 0) result.out.append(buf, static_cast<size_t>(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  result.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return result;
}

TEST_F(ArenaFdTest, ZeroCopyWorkerUnderAnotherUidWritesAndReadsItsPages) {
  if (geteuid() != 0) {
    GTEST_SKIP() << "needs root to run the worker under uid " << kNobody
                 << " (setuid in a forked child); run the suite as root";
  }
  // The worker reaches the sockets through the group, as a deployment's worker group would; the
  // data dir itself stays closed to it except for traversal.
  ASSERT_EQ(chmod(daemon_.dir().c_str(), 0711), 0);
  for (const std::string& path : {daemon_.dir() + "/kvkeepd.sock", arena_socket_}) {
    ASSERT_EQ(chown(path.c_str(), static_cast<uid_t>(-1), kNobody), 0) << path;
  }
  const std::string worker = DaemonProcess::BinaryDir() + "/kvkeep-test-worker";
  testing::ProcessExit run = RunWorkerAs(
      kNobody, {worker, daemon_.target(), token_a_, "nobody-worker", "24", "retain", "verify"});
  ASSERT_EQ(run.code, 0) << run.out;
  EXPECT_NE(run.out.find("VERIFIED uid=65534"), std::string::npos) << run.out;
  ASSERT_EQ(run.out.rfind("READY ", 0), 0u) << run.out;
  const std::string seq = run.out.substr(6, run.out.find(' ', 6) - 6);

  // What uid 65534 wrote in place is what the daemon holds: read it back over gRPC.
  ASSERT_OK_AND_ASSIGN(auto reader, Client::Attach(daemon_.channel(), token_a_, "reader"));
  const v1::ModelLayout layout = testing::TestLayout();
  for (uint32_t layer = 0; layer < layout.layers(); ++layer) {
    for (uint32_t head = 0; head < layout.kv_heads(); ++head) {
      ASSERT_OK_AND_ASSIGN(HeadData data, reader->ReadHead(seq, layer, head));
      const std::string want = PatternBytes(layer * 10 + head, 24 * layout.head_dim() * 2);
      EXPECT_EQ(data.keys, want) << "layer " << layer << " head " << head;
      EXPECT_EQ(data.values, want);
    }
  }
}

TEST_F(ArenaFdTest, NothingToOpenByNameAndTicketsWorkOnce) {
  std::string seq;
  auto a = AttachWithPages(token_a_, "a0", &seq);
  ASSERT_NE(a, nullptr);
  ASSERT_OK(a->arena_channel_status());
  ASSERT_FALSE(a->MappedArenas().empty());
  // The daemon's arenas are anonymous memfds: no /dev/shm object among its mappings.
  std::ifstream maps(absl::StrCat("/proc/", daemon_.pid(), "/maps"));
  std::string line;
  int memfds = 0;
  while (std::getline(maps, line)) {
    EXPECT_EQ(line.find("/dev/shm/"), std::string::npos) << line;
    if (line.find("/memfd:kvkeep-arena") != std::string::npos) ++memfds;
  }
  EXPECT_GT(memfds, 0);
  v1::ArenaExport arena;
  ASSERT_OK_AND_ASSIGN(arena, a->GetArena(a->MappedArenas().front()));
  EXPECT_TRUE(arena.handle().empty());

  // A session's ticket attaches once; a replay, a made-up ticket and a request before attach get
  // nothing (no fd) and the connection closed.
  auto raw = OpenSession(daemon_, token_a_, "raw");
  ASSERT_NE(raw, nullptr);
  ASSERT_EQ(raw->started.attach_ticket().size(), 32u);
  EXPECT_EQ(raw->started.arena_socket(), arena_socket_);
  ASSERT_OK_AND_ASSIGN(auto channel,
                       ArenaChannelClient::Connect(arena_socket_, raw->started.attach_ticket()));
  EXPECT_EQ(channel->session_id(), raw->started.session_id());
  ASSERT_OK_AND_ASSIGN(ReceivedArena got, channel->Fetch(arena.arena_id()));
  EXPECT_TRUE(got.fd.valid());
  EXPECT_THAT(ArenaChannelClient::Connect(arena_socket_, raw->started.attach_ticket()),
              StatusIs(StatusCode::kNotFound));
  EXPECT_THAT(ArenaChannelClient::Connect(arena_socket_, std::string(32, 'x')),
              StatusIs(StatusCode::kNotFound));
  v1::ArenaChannelRequest unattached;
  unattached.set_arena_id(arena.arena_id());
  EXPECT_EQ(RawRequest(arena_socket_, unattached.SerializeAsString()),
            std::make_pair(static_cast<int>(StatusCode::kUnauthenticated), 0));
  EXPECT_EQ(RawRequest(arena_socket_, "\xff\xff garbage"),
            std::make_pair(static_cast<int>(StatusCode::kInvalidArgument), 0));

  // When the session ends, its ticket and its connection are void.
  raw->context->TryCancel();
  v1::SessionEvent ignored;
  while (raw->reader->Read(&ignored)) {
  }
  raw->reader->Finish();
  absl::Status after = absl::OkStatus();
  for (int i = 0; i < 100 && after.ok(); ++i) {
    after = channel->Fetch(arena.arena_id()).status();
    if (after.ok()) usleep(20000);
  }
  EXPECT_FALSE(after.ok()) << "the ended session's channel still hands out fds";
}

TEST_F(ArenaFdTest, TenantBNeverReceivesTenantAsFds) {
  std::string seq_a, seq_b;
  auto a = AttachWithPages(token_a_, "a0", &seq_a);
  auto b = AttachWithPages(token_b_, "b0", &seq_b);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const std::vector<uint32_t> a_arenas = a->MappedArenas();
  const std::vector<uint32_t> b_arenas = b->MappedArenas();
  ASSERT_FALSE(a_arenas.empty());
  for (uint32_t id : b_arenas) {
    EXPECT_EQ(std::find(a_arenas.begin(), a_arenas.end(), id), a_arenas.end());
  }
  auto raw = OpenSession(daemon_, token_b_, "b-raw");
  ASSERT_NE(raw, nullptr);
  ASSERT_OK_AND_ASSIGN(auto channel,
                       ArenaChannelClient::Connect(arena_socket_, raw->started.attach_ticket()));
  for (uint32_t id : a_arenas) {
    EXPECT_THAT(channel->Fetch(id), StatusIs(StatusCode::kPermissionDenied));
  }
  // Every arena id the daemon has: beta gets fds of its own arenas only.
  for (uint32_t id = 0; id < 64; ++id) {
    absl::StatusOr<ReceivedArena> got = channel->Fetch(id);
    if (!got.ok()) continue;
    EXPECT_NE(std::find(b_arenas.begin(), b_arenas.end(), id), b_arenas.end()) << id;
    EXPECT_FALSE(got->arena.read_only());
  }
  // Alpha's bytes are unchanged and its arenas still serve it.
  ASSERT_OK_AND_ASSIGN(auto again, a->GetArena(a_arenas.front()));
  EXPECT_EQ(again.arena_id(), a_arenas.front());
}

// A sharing group's arena comes to a member as an O_RDONLY fd: it cannot be mapped writable.
TEST_F(ArenaFdTest, GroupArenaFdCannotBeMappedWritable) {
  std::string tokens[2];
  for (int i = 0; i < 2; ++i) {
    v1::CreateTenantRequest r;
    r.set_name(i == 0 ? "ga" : "gb");
    r.set_sharing_group("team");
    ASSERT_OK_AND_ASSIGN(v1::CreateTenantReply reply, daemon_.Admin()->CreateTenant(r));
    tokens[i] = reply.token();
  }
  std::string seq;
  auto a = AttachWithPages(tokens[0], "ga0", &seq);
  ASSERT_NE(a, nullptr);
  ASSERT_OK(a->Commit(seq, 8).status());
  ASSERT_OK_AND_ASSIGN(v1::PublishPrefixReply pub,
                       a->PublishPrefix(seq, {1, 2, 3, 4, 5, 6, 7, 8}));
  uint32_t group_arena = 0;
  for (const auto& arena : pub.table().arenas()) {
    if (arena.read_only()) group_arena = arena.arena_id();
  }
  ASSERT_NE(group_arena, 0u);
  auto raw = OpenSession(daemon_, tokens[1], "gb-raw");
  ASSERT_NE(raw, nullptr);
  ASSERT_OK_AND_ASSIGN(auto channel,
                       ArenaChannelClient::Connect(arena_socket_, raw->started.attach_ticket()));
  ASSERT_OK_AND_ASSIGN(ReceivedArena got, channel->Fetch(group_arena));
  EXPECT_TRUE(got.arena.read_only());
  EXPECT_EQ(fcntl(got.fd.get(), F_GETFL) & O_ACCMODE, O_RDONLY);
  const size_t size = got.arena.size_bytes();
  void* writable = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, got.fd.get(), 0);
  EXPECT_EQ(writable, MAP_FAILED) << "a group arena mapped writable";
  if (writable != MAP_FAILED) munmap(writable, size);
  void* readable = mmap(nullptr, size, PROT_READ, MAP_SHARED, got.fd.get(), 0);
  ASSERT_NE(readable, MAP_FAILED);
  EXPECT_NE(mprotect(readable, size, PROT_READ | PROT_WRITE), 0);
  munmap(readable, size);
  // A tenant outside the group gets no fd of it.
  auto outsider = OpenSession(daemon_, token_b_, "b-raw");
  ASSERT_NE(outsider, nullptr);
  ASSERT_OK_AND_ASSIGN(auto other, ArenaChannelClient::Connect(
                                       arena_socket_, outsider->started.attach_ticket()));
  EXPECT_THAT(other->Fetch(group_arena), StatusIs(StatusCode::kPermissionDenied));
}

}  // namespace
}  // namespace kvkeep
