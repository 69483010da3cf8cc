#include "engines/llama/worker_common.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engines/llama/kv_bridge.h"

extern char** environ;

namespace kvkeep::llama {

absl::StatusOr<std::unique_ptr<Client>> AttachWorker(const Options& options,
                                                     const std::string& token_file,
                                                     const std::string& worker) {
  std::ifstream in(token_file);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read the token file ", token_file));
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat(token_file, " is empty"));
  ChannelOptions channel;
  channel.target = "unix:" + options.socket;
  return Client::Attach(channel, token, worker);
}

absl::StatusOr<std::unique_ptr<LlamaRuntime>> LoadModel(const Options& options, bool capture) {
  RuntimeOptions ro;
  ro.model_path = options.model;
  ro.threads = options.threads;
  ro.capture = capture;
  // The same for every process of one check (the restores compare logits bit for bit).
  ro.context =
      std::max<uint32_t>(512, ((options.prompt_tokens + options.decode + 64) / 256 + 1) * 256);
  return LlamaRuntime::Load(ro);
}

absl::Status WriteLogits(const std::string& path, const std::vector<float>& logits) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(logits.data()),
            static_cast<std::streamsize>(logits.size() * sizeof(float)));
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<float>> ReadLogits(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string bytes = ss.str();
  std::vector<float> out(bytes.size() / sizeof(float));
  std::memcpy(out.data(), bytes.data(), out.size() * sizeof(float));
  return out;
}

double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b) {
  if (a.size() != b.size() || a.empty()) return INFINITY;
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::fabs(double{a[i]} - b[i]));
  return m;
}

double KlDivergence(const std::vector<float>& p, const std::vector<float>& q) {
  auto log_softmax = [](const std::vector<float>& x) {
    double mx = -INFINITY;
    for (float v : x) mx = std::max(mx, double{v});
    double z = 0;
    for (float v : x) z += std::exp(v - mx);
    std::vector<double> out(x.size());
    for (size_t i = 0; i < x.size(); ++i) out[i] = x[i] - mx - std::log(z);
    return out;
  };
  const std::vector<double> lp = log_softmax(p), lq = log_softmax(q);
  double kl = 0;
  for (size_t i = 0; i < lp.size(); ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  return std::max(0.0, kl);
}

absl::StatusOr<std::string> RunSelf(const std::vector<std::string>& args) {
  std::vector<std::string> argv_s = {"/proc/self/exe"};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  int out_pipe[2], err_pipe[2];
  if (pipe(out_pipe) != 0 || pipe(err_pipe) != 0) return absl::InternalError("pipe failed");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], 1);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  posix_spawn_file_actions_addclose(&actions, out_pipe[0]);
  posix_spawn_file_actions_addclose(&actions, err_pipe[0]);
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, "/proc/self/exe", &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out_pipe[1]);
  close(err_pipe[1]);
  if (rc != 0) {
    close(out_pipe[0]);
    close(err_pipe[0]);
    return absl::InternalError(absl::StrCat("cannot start a second kvkeep-llama: ", rc));
  }
  // Outputs are small (JSON lines, error messages): read stdout, then stderr.
  auto drain = [](int fd) {
    std::string s;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) s.append(buf, n);
    close(fd);
    return s;
  };
  std::string out = drain(out_pipe[0]);
  std::string err = drain(err_pipe[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    return absl::InternalError(absl::StrCat(
        "kvkeep-llama ", args.empty() ? "" : args[0], " (second process) failed with status ",
        WIFEXITED(status) ? WEXITSTATUS(status) : -1, ": ",
        err.size() > 2000 ? err.substr(err.size() - 2000) : err));
  }
  return out;
}

v1::Policy SequencePolicy(const std::string& scorer, double keep) {
  v1::Policy p;
  p.set_scorer(scorer);
  p.set_allocation("sequence");
  p.set_keep_ratio(keep);
  return p;
}

absl::Status KeepOnly(LlamaRuntime& rt, const std::vector<int32_t>& kept, int32_t end) {
  int32_t next = 0;  // first position not yet accounted for
  for (int32_t p : kept) {
    if (p > next) RETURN_IF_ERROR(rt.RemoveCells(next, p));
    next = p + 1;
  }
  if (next < end) RETURN_IF_ERROR(rt.RemoveCells(next, end));
  return absl::OkStatus();
}

}  // namespace kvkeep::llama
