// kvkeep-grpc-floor: the bytes-path ceiling of gRPC itself on this machine, with no kvkeep code
// (issue 15 item 1). A server process (forked) and this client move the same bytes three ways,
// side by side in each rep:
//   raw    a socketpair copy (one thread writev()s chunk-sized pieces, the other read()s them
//          into a pre-faulted buffer), as `kvkeep-bench io` measures its bound;
//   write  a client stream of messages (each --message_kib of chunk-sized slices referencing a
//          pre-faulted source, as Client::WriteKV sends) to a server that copies every received
//          slice once into a pre-faulted destination (as WriteKV copies into pages);
//   read   the reverse: the server streams messages of slices referencing its pre-faulted
//          source (as ReadKV references pinned pages), the client copies every slice once into
//          its destination (as ReadHeadInto does).
// --no_copy drops the two copies into the destinations: what gRPC alone delivers. --server_memfd
// puts the server's source and destination in a MAP_SHARED memfd mapping, as kvkeepd's CPU arenas.
// The methods are KvBatch's (raw, so nothing is parsed); only channel arguments differ between
// runs: --arg NAME=INT (repeatable) sets one on both sides, on top of kvkeep's own (1 MiB frames,
// 4 MiB stream window) unless --no_kvkeep_args. Process settings as kvkeepd's: the server keeps
// 256 MiB of freed heap (--server_retain_mib), the client glibc's defaults unless
// --client_retain_mib; Abseil's deadlock detection off in both unless --deadlock_detection.
// Besides GB/s and the ratios to raw (per rep, and their medians), it prints the CPU seconds both
// processes spent per byte and how many cores each kept busy: on a shared machine the CPU cost
// per byte moves less than wall-clock rates do. Exit code 1 if a phase failed.
//
//   kvkeep-grpc-floor --mib 256 --chunk_kib 64 --reps 5 --client_retain_mib 256
//   kvkeep-grpc-floor --arg grpc.experimental.tcp_min_read_chunk_size=1048576
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <malloc.h>

#include "absl/synchronization/mutex.h"
#include "bench/writev_fully.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/impl/rpc_method.h"
#include "grpcpp/support/sync_stream.h"
#include "kvkeep/v1/kv_batch.grpc.pb.h"

namespace {

using ::kvkeep::bench::WritevFully;
using Clock = std::chrono::steady_clock;

struct Config {
  uint64_t mib = 256;
  uint64_t chunk = 64 << 10;
  uint64_t message = 1 << 20;
  int reps = 5;
  bool kvkeep_args = true;
  bool copy = true;
  int raw_sndbuf = 0;
  bool server_memfd = false;  // the server's source and destination in a MAP_SHARED memfd (as arenas)
  // SO_SNDBUF of the raw copy's sender (0: the system's default)
  std::string phases = "raw,write,read";  // which of the three each rep runs
  int server_retain_mib = 256;  // as kvkeepd's --malloc_retain_mib
  int client_retain_mib = 0;    // as kvkeep-bench (glibc's defaults)
  bool deadlock_detection = false;  // Abseil's (Debian's build leaves it on); kvkeepd turns it off
  std::vector<std::pair<std::string, int>> args;
  std::string socket;
};

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::vector<std::pair<std::string, int>> AllArgs(const Config& c) {
  std::vector<std::pair<std::string, int>> all;
  if (c.kvkeep_args) {
    all.emplace_back(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, 1 << 20);
    all.emplace_back(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 4 << 20);
  }
  for (const auto& a : c.args) all.push_back(a);
  return all;
}

// A pre-faulted buffer the copies wrap around in (the bytes' content does not matter here).
std::vector<char> Faulted(uint64_t bytes) {
  std::vector<char> b(bytes);
  std::memset(b.data(), 1, b.size());
  return b;
}

constexpr uint64_t kRing = 64 << 20;

template <typename Dst>
void CopyOut(const grpc::ByteBuffer& message, Dst& dst, uint64_t* at) {
  std::vector<grpc::Slice> slices;
  (void)message.Dump(&slices);
  for (const grpc::Slice& s : slices) {
    if (*at + s.size() > dst.size()) *at = 0;
    std::memcpy(dst.data() + *at, s.begin(), s.size());
    *at += s.size();
  }
}

// One message of `bytes` made of chunk-sized slices referencing `src` (no copy).
template <typename Src>
grpc::ByteBuffer Message(const Src& src, uint64_t bytes, uint64_t chunk, uint64_t* at) {
  std::vector<grpc::Slice> slices;
  for (uint64_t done = 0; done < bytes;) {
    const uint64_t n = std::min(chunk, bytes - done);
    if (*at + n > src.size()) *at = 0;
    slices.emplace_back(const_cast<char*>(src.data() + *at), n, grpc::Slice::STATIC_SLICE);
    *at += n;
    done += n;
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

// Pre-faulted memory: a vector, or (memfd) a MAP_SHARED mapping of a memfd, as kvkeepd's CPU
// arenas are.
class Region {
 public:
  Region(uint64_t bytes, bool memfd) : size_(bytes) {
    if (memfd) {
      const int fd = memfd_create("kvkeep-grpc-floor", MFD_CLOEXEC);
      if (fd >= 0 && ftruncate(fd, static_cast<off_t>(bytes)) == 0) {
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        if (p != MAP_FAILED) data_ = static_cast<char*>(p);
      }
      if (fd >= 0) close(fd);
      mapped_ = data_ != nullptr;
    }
    if (data_ == nullptr) {
      vec_.resize(bytes);
      data_ = vec_.data();
    }
    std::memset(data_, 1, bytes);
  }
  ~Region() {
    if (mapped_) munmap(data_, size_);
  }
  char* data() { return data_; }
  const char* data() const { return data_; }
  uint64_t size() const { return size_; }

 private:
  uint64_t size_;
  char* data_ = nullptr;
  bool mapped_ = false;
  std::vector<char> vec_;
};

class FloorService final
    : public kvkeep::v1::KvBatch::WithRawCallbackMethod_WriteKVBatch<
          kvkeep::v1::KvBatch::WithRawCallbackMethod_ReadKVBatch<
              kvkeep::v1::KvBatch::CallbackService>> {
 public:
  explicit FloorService(const Config& c)
      : c_(c), src_(kRing, c.server_memfd), dst_(kRing, c.server_memfd) {}

  grpc::ServerReadReactor<grpc::ByteBuffer>* WriteKVBatch(grpc::CallbackServerContext*,
                                                          grpc::ByteBuffer* reply) override {
    class Reader : public grpc::ServerReadReactor<grpc::ByteBuffer> {
     public:
      Reader(FloorService* s, grpc::ByteBuffer* reply) : s_(s), reply_(reply) {
        StartRead(&in_);
      }
      void OnReadDone(bool ok) override {
        if (!ok) {
          grpc::Slice empty("", 0);
          *reply_ = grpc::ByteBuffer(&empty, 1);
          Finish(grpc::Status::OK);
          return;
        }
        if (s_->c_.copy) CopyOut(in_, s_->dst_, &at_);
        in_.Clear();
        StartRead(&in_);
      }
      void OnDone() override { delete this; }

     private:
      FloorService* s_;
      grpc::ByteBuffer* reply_;
      grpc::ByteBuffer in_;
      uint64_t at_ = 0;
    };
    return new Reader(this, reply);
  }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* ReadKVBatch(grpc::CallbackServerContext*,
                                                          const grpc::ByteBuffer*) override {
    class Writer : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
     public:
      explicit Writer(FloorService* s) : s_(s), left_(s->c_.mib << 20) { Next(); }
      void OnWriteDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::CANCELLED);
          return;
        }
        Next();
      }
      void OnDone() override { delete this; }

     private:
      void Next() {
        if (left_ == 0) {
          Finish(grpc::Status::OK);
          return;
        }
        const uint64_t n = std::min(left_, s_->c_.message);
        out_ = Message(s_->src_, n, s_->c_.chunk, &at_);
        left_ -= n;
        StartWrite(&out_);
      }
      FloorService* s_;
      uint64_t left_;
      grpc::ByteBuffer out_;
      uint64_t at_ = 0;
    };
    return new Writer(this);
  }

 private:
  const Config& c_;
  Region src_;
  Region dst_;
};

// kvkeepd's TuneAllocator (common/process_tuning.cc), inlined: no kvkeep code here.
void Retain(int mib) {
  if (mib <= 0) return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, mib << 20);
}

int Serve(const Config& c, int ready_fd) {
  Retain(c.server_retain_mib);
  FloorService service(c);
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + c.socket, grpc::InsecureServerCredentials());
  builder.SetMaxReceiveMessageSize(8 << 20);
  builder.SetMaxSendMessageSize(8 << 20);
  for (const auto& [name, value] : AllArgs(c)) builder.AddChannelArgument(name, value);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  const char ok = server != nullptr ? 1 : 0;
  (void)!write(ready_fd, &ok, 1);
  close(ready_fd);
  if (server == nullptr) return 1;
  char b;
  while (read(STDIN_FILENO, &b, 1) > 0) {
  }  // the parent closes our stdin to stop us
  server->Shutdown();
  return 0;
}

double Raw(const Config& c, const std::vector<char>& src, std::vector<char>& dst) {
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, fds) != 0) return 0;
  const uint64_t total = c.mib << 20;
  if (c.raw_sndbuf > 0) setsockopt(fds[0], SOL_SOCKET, SO_SNDBUF, &c.raw_sndbuf, sizeof(int));
  const auto t0 = Clock::now();
  std::thread sender([&] {
    uint64_t at = 0;
    for (uint64_t done = 0; done < total;) {
      const uint64_t n = std::min(c.chunk, total - done);
      if (at + n > src.size()) at = 0;
      // two iovecs per chunk (keys and values), as the io bench does
      iovec iov[2] = {{const_cast<char*>(src.data() + at), n / 2},
                      {const_cast<char*>(src.data() + at + n / 2), n - n / 2}};
      if (!WritevFully(fds[0], iov, 2)) break;
      at += n;
      done += n;
    }
    shutdown(fds[0], SHUT_WR);
  });
  uint64_t got = 0, at = 0;
  while (got < total) {
    if (at + c.chunk > dst.size()) at = 0;
    const ssize_t r = read(fds[1], dst.data() + at, std::min(c.chunk, total - got));
    if (r <= 0) break;
    got += static_cast<uint64_t>(r);
    at += static_cast<uint64_t>(r);
  }
  sender.join();
  const double s = Since(t0);
  close(fds[0]);
  close(fds[1]);
  return got == total ? static_cast<double>(total) / s / 1e9 : 0;
}

double Write(const Config& c, grpc::Channel* channel, const std::vector<char>& src) {
  const uint64_t total = c.mib << 20;
  grpc::ClientContext context;
  grpc::ByteBuffer reply;
  const grpc::internal::RpcMethod method("/kvkeep.v1.KvBatch/WriteKVBatch",
                                         grpc::internal::RpcMethod::CLIENT_STREAMING);
  const auto t0 = Clock::now();
  std::unique_ptr<grpc::ClientWriter<grpc::ByteBuffer>> writer(
      grpc::internal::ClientWriterFactory<grpc::ByteBuffer>::Create(channel, method, &context,
                                                                    &reply));
  uint64_t at = 0;
  for (uint64_t done = 0; done < total;) {
    const uint64_t n = std::min(c.message, total - done);
    grpc::ByteBuffer m = Message(src, n, c.chunk, &at);
    if (!writer->Write(m, grpc::WriteOptions().set_buffer_hint())) break;
    done += n;
  }
  writer->WritesDone();
  const grpc::Status st = writer->Finish();
  const double s = Since(t0);
  if (!st.ok()) {
    std::fprintf(stderr, "write: %s\n", st.error_message().c_str());
    return 0;
  }
  return static_cast<double>(total) / s / 1e9;
}

double Read(const Config& c, grpc::Channel* channel, std::vector<char>& dst) {
  grpc::ClientContext context;
  const grpc::internal::RpcMethod method("/kvkeep.v1.KvBatch/ReadKVBatch",
                                         grpc::internal::RpcMethod::SERVER_STREAMING);
  grpc::Slice empty("", 0);
  grpc::ByteBuffer request(&empty, 1);
  const auto t0 = Clock::now();
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> reader(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(channel, method, &context,
                                                                    request));
  grpc::ByteBuffer in;
  uint64_t at = 0, got = 0;
  while (reader->Read(&in)) {
    got += in.Length();
    if (c.copy) CopyOut(in, dst, &at);
    in.Clear();
  }
  const grpc::Status st = reader->Finish();
  const double s = Since(t0);
  if (!st.ok() || got != (c.mib << 20)) {
    std::fprintf(stderr, "read: %s, %lu bytes\n", st.error_message().c_str(), got);
    return 0;
  }
  return static_cast<double>(got) / s / 1e9;
}

// CPU seconds (user + system) of this process and of the server process so far.
double SelfCpu() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}
double ProcCpu(pid_t pid) {
  FILE* f = std::fopen(("/proc/" + std::to_string(pid) + "/stat").c_str(), "r");
  if (f == nullptr) return 0;
  char buf[2048];
  const size_t n = std::fread(buf, 1, sizeof(buf) - 1, f);
  std::fclose(f);
  buf[n] = 0;
  const char* p = std::strrchr(buf, ')');
  if (p == nullptr) return 0;
  unsigned long ut = 0, st = 0;
  // fields after the command: state(3) ... utime(14) stime(15)
  if (std::sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2) {
    return 0;
  }
  return static_cast<double>(ut + st) / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

int Usage() {
  std::fprintf(stderr,
               "usage: kvkeep-grpc-floor [--mib N] [--chunk_kib N] [--message_kib N] [--reps N]\n"
               "       [--arg NAME=INT]... [--no_kvkeep_args] [--no_copy] [--server_retain_mib N]\n"
               "       [--client_retain_mib N] [--deadlock_detection] [--phases raw,write,read]\n"
               "       [--raw_sndbuf BYTES] [--server_memfd]\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--mib" && (v = next())) c.mib = std::strtoull(v, nullptr, 10);
    else if (a == "--chunk_kib" && (v = next())) c.chunk = std::strtoull(v, nullptr, 10) << 10;
    else if (a == "--message_kib" && (v = next())) c.message = std::strtoull(v, nullptr, 10) << 10;
    else if (a == "--reps" && (v = next())) c.reps = std::atoi(v);
    else if (a == "--no_kvkeep_args") c.kvkeep_args = false;
    else if (a == "--no_copy") c.copy = false;
    else if (a == "--raw_sndbuf" && (v = next())) c.raw_sndbuf = std::atoi(v);
    else if (a == "--server_memfd") c.server_memfd = true;

    else if (a == "--phases" && (v = next())) c.phases = v;
    else if (a == "--server_retain_mib" && (v = next())) c.server_retain_mib = std::atoi(v);
    else if (a == "--client_retain_mib" && (v = next())) c.client_retain_mib = std::atoi(v);
    else if (a == "--deadlock_detection") c.deadlock_detection = true;
    else if (a == "--arg" && (v = next())) {
      const std::string kv = v;
      const size_t eq = kv.find('=');
      if (eq == std::string::npos) return Usage();
      c.args.emplace_back(kv.substr(0, eq), std::atoi(kv.c_str() + eq + 1));
    } else {
      return Usage();
    }
  }
  if (c.mib == 0 || c.chunk == 0 || c.message == 0 || c.reps <= 0) return Usage();
  if (!c.deadlock_detection) absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  char dir[] = "/tmp/kvkeep-grpc-floor-XXXXXX";
  if (mkdtemp(dir) == nullptr) return 1;
  c.socket = std::string(dir) + "/s";
  int ready[2], stop[2];
  if (pipe(ready) != 0 || pipe(stop) != 0) return 1;
  const pid_t child = fork();
  if (child == 0) {
    close(ready[0]);
    close(stop[1]);
    dup2(stop[0], STDIN_FILENO);
    _exit(Serve(c, ready[1]));
  }
  close(ready[1]);
  close(stop[0]);
  Retain(c.client_retain_mib);
  char ok = 0;
  if (read(ready[0], &ok, 1) != 1 || ok != 1) {
    std::fprintf(stderr, "server did not start\n");
    return 1;
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(8 << 20);
  args.SetMaxSendMessageSize(8 << 20);
  for (const auto& [name, value] : AllArgs(c)) args.SetInt(name, value);
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateCustomChannel("unix:" + c.socket, grpc::InsecureChannelCredentials(), args);
  const std::vector<char> src = Faulted(kRing);
  std::vector<char> dst = Faulted(kRing);
  (void)Write(c, channel.get(), src);  // warm-up: connection, buffers
  (void)Read(c, channel.get(), dst);
  std::vector<double> raw, wr, rd, wratio, rratio, cpu_raw, cpu_wr, cpu_rd;
  // CPU ns per byte moved, both processes together (robust to other load, unlike GB/s).
  const double gb = static_cast<double>(c.mib << 20) / 1e9;
  auto cpu = [&] { return SelfCpu() + ProcCpu(child); };
  // Per process, summed over reps: seconds of CPU per second of wall (cores busy).
  double wall_w = 0, wall_r = 0, cli_w = 0, srv_w = 0, cli_r = 0, srv_r = 0;
  for (int r = 0; r < c.reps; ++r) {
    double t = cpu();
    const bool all = c.phases == "raw,write,read";
    raw.push_back(all || c.phases.find("raw") != std::string::npos ? Raw(c, src, dst) : 1);
    cpu_raw.push_back((cpu() - t) / gb);
    t = cpu();
    double c0 = SelfCpu(), s0 = ProcCpu(child);
    auto w0 = Clock::now();
    wr.push_back(c.phases.find("write") != std::string::npos ? Write(c, channel.get(), src) : -1);
    cpu_wr.push_back((cpu() - t) / gb);
    wall_w += Since(w0);
    cli_w += SelfCpu() - c0;
    srv_w += ProcCpu(child) - s0;
    c0 = SelfCpu();
    s0 = ProcCpu(child);
    w0 = Clock::now();
    t = cpu();
    rd.push_back(c.phases.find("read") != std::string::npos ? Read(c, channel.get(), dst) : -1);
    cpu_rd.push_back((cpu() - t) / gb);
    wall_r += Since(w0);
    cli_r += SelfCpu() - c0;
    srv_r += ProcCpu(child) - s0;
    wratio.push_back(raw.back() > 0 ? wr.back() / raw.back() : 0);
    rratio.push_back(raw.back() > 0 ? rd.back() / raw.back() : 0);
    std::fprintf(stderr, "rep %d: raw %.2f GB/s, write %.2f, read %.2f\n", r + 1, raw.back(),
                 wr.back(), rd.back());
  }
  std::printf("chunk %lu KiB, message %lu KiB, %lu MiB/rep, copy %d, retain MiB server %d client "
              "%d, deadlock detection %d, args:", c.chunk >> 10, c.message >> 10, c.mib,
              c.copy ? 1 : 0, c.server_retain_mib, c.client_retain_mib,
              c.deadlock_detection ? 1 : 0);
  for (const auto& [name, value] : AllArgs(c)) std::printf(" %s=%d", name.c_str(), value);
  std::printf("\n  medians: raw %.2f GB/s, write %.2f, read %.2f; write/raw %.2f, read/raw %.2f\n",
              Median(raw), Median(wr), Median(rd), Median(wratio), Median(rratio));
  std::printf("  CPU ns/byte (both processes), medians: raw %.3f, write %.3f, read %.3f; "
              "raw/write %.2f, raw/read %.2f\n", Median(cpu_raw), Median(cpu_wr), Median(cpu_rd),
              Median(cpu_raw) / Median(cpu_wr), Median(cpu_raw) / Median(cpu_rd));
  std::printf("  cores busy: write client %.2f server %.2f; read client %.2f server %.2f\n",
              cli_w / wall_w, srv_w / wall_w, cli_r / wall_r, srv_r / wall_r);
  std::printf("  write/raw per rep:");
  for (double x : wratio) std::printf(" %.2f", x);
  std::printf("\n  read/raw per rep:");
  for (double x : rratio) std::printf(" %.2f", x);
  std::printf("\n");
  channel.reset();
  close(stop[1]);
  int status = 0;
  waitpid(child, &status, 0);
  unlink(c.socket.c_str());
  rmdir(dir);
  // A phase that failed measured 0 GB/s (its error is on stderr).
  bool failed = !WIFEXITED(status) || WEXITSTATUS(status) != 0;
  for (int r = 0; r < c.reps; ++r) failed = failed || raw[r] == 0 || wr[r] == 0 || rd[r] == 0;
  return failed ? 1 : 0;
}
