#include "service/observability/metrics_http.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "service/observability/metrics.h"

namespace kvkeep {
namespace {

using Clock = std::chrono::steady_clock;

struct HostPort {
  std::string host;
  std::string port;
};

absl::StatusOr<HostPort> ParseAddress(const std::string& address) {
  HostPort out;
  absl::string_view rest;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find(']');
    if (close == std::string::npos || close + 1 >= address.size() || address[close + 1] != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics address \"", address, "\" is not [v6-address]:port"));
    }
    out.host = address.substr(1, close - 1);
    rest = absl::string_view(address).substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics address \"", address, "\" is not host:port"));
    }
    out.host = address.substr(0, colon);
    rest = absl::string_view(address).substr(colon + 1);
  }
  uint32_t port = 0;
  if (rest.empty() || rest.size() > 5 || !absl::SimpleAtoi(rest, &port) || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", address, "\" has no valid port (0..65535)"));
  }
  out.port = std::string(rest);
  if (out.host.empty()) out.host = "0.0.0.0";
  return out;
}

std::string Describe(const sockaddr_storage& addr) {
  char host[INET6_ADDRSTRLEN] = {0};
  int port = 0;
  if (addr.ss_family == AF_INET6) {
    const auto* a = reinterpret_cast<const sockaddr_in6*>(&addr);
    inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
    port = ntohs(a->sin6_port);
    return absl::StrCat("[", host, "]:", port);
  }
  const auto* a = reinterpret_cast<const sockaddr_in*>(&addr);
  inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
  port = ntohs(a->sin_port);
  return absl::StrCat(host, ":", port);
}

// Waits until `fd` is ready for `events` or the deadline or a wake-up. True when ready.
bool WaitFor(int fd, short events, int wake_fd, Clock::time_point deadline) {
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline -
                                                                            Clock::now());
    if (left.count() <= 0) return false;
    pollfd fds[2] = {{fd, events, 0}, {wake_fd, POLLIN, 0}};
    const int n = poll(fds, 2, static_cast<int>(left.count()));
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (fds[1].revents != 0) return false;  // stopping
    if (fds[0].revents != 0) return true;
  }
}

std::string Response(int code, absl::string_view reason, absl::string_view content_type,
                     const std::string& body, bool head_only, absl::string_view extra = "") {
  std::string out = absl::StrCat("HTTP/1.1 ", code, " ", reason, "\r\nContent-Type: ",
                                 content_type, "\r\nContent-Length: ", body.size(),
                                 "\r\nConnection: close\r\n", extra, "\r\n");
  if (!head_only) out += body;
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<MetricsHttpServer>> MetricsHttpServer::Start(
    const std::string& address, Render render) {
  auto hp = ParseAddress(address);
  if (!hp.ok()) return hp.status();
  addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  if (int rc = getaddrinfo(hp->host.c_str(), hp->port.c_str(), &hints, &found); rc != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address \"", address, "\": ", gai_strerror(rc)));
  }
  int fd = -1;
  std::string last_error = "no address";
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 16) == 0) break;
    last_error = std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(found);
  if (fd < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for metrics on ", address, ": ", last_error));
  }
  sockaddr_storage bound = {};
  socklen_t len = sizeof(bound);
  getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
  const int port = bound.ss_family == AF_INET6
                       ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                       : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
  const int wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake < 0) {
    close(fd);
    return absl::InternalError(absl::StrCat("eventfd: ", std::strerror(errno)));
  }
  std::unique_ptr<MetricsHttpServer> server(
      new MetricsHttpServer(fd, wake, port, Describe(bound), std::move(render)));
  server->thread_ = std::thread([s = server.get()] { s->Loop(); });
  return server;
}

MetricsHttpServer::MetricsHttpServer(int listen_fd, int wake_fd, int port, std::string address,
                                     Render render)
    : listen_fd_(listen_fd), wake_fd_(wake_fd), port_(port), address_(std::move(address)),
      render_(std::move(render)) {}

MetricsHttpServer::~MetricsHttpServer() {
  Stop();
  close(listen_fd_);
  close(wake_fd_);
}

void MetricsHttpServer::Stop() {
  std::call_once(stop_once_, [this] {
    const uint64_t one = 1;
    (void)!write(wake_fd_, &one, sizeof(one));
    if (thread_.joinable()) thread_.join();
  });
}

void MetricsHttpServer::Loop() {
  while (true) {
    pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents != 0) return;
    if (fds[0].revents == 0) continue;
    const int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK);
    if (fd < 0) {
      // EAGAIN (the client went away), or EMFILE and friends: back off briefly.
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
        pollfd wake = {wake_fd_, POLLIN, 0};
        if (poll(&wake, 1, 100) > 0) return;
      }
      continue;
    }
    Serve(fd);
    close(fd);
  }
}

void MetricsHttpServer::Serve(int fd) {
  const auto deadline = Clock::now() + absl::ToChronoMilliseconds(kIoTimeout);
  std::string request;
  size_t head_end = std::string::npos;
  char buf[2048];
  bool too_large = false;
  while (head_end == std::string::npos) {
    if (!WaitFor(fd, POLLIN, wake_fd_, deadline)) return;  // timeout or stopping: drop it
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) return;  // closed before a full request
    request.append(buf, static_cast<size_t>(n));
    head_end = request.find("\r\n\r\n");
    if (head_end == std::string::npos) head_end = request.find("\n\n");
    if (head_end == std::string::npos && request.size() > kMaxRequestBytes) {
      too_large = true;
      break;
    }
  }
  if (head_end != std::string::npos && head_end > kMaxRequestBytes) too_large = true;

  std::string response;
  if (too_large) {
    response = Response(431, "Request Header Fields Too Large", "text/plain; charset=utf-8",
                        "request too large\n", false);
  } else {
    // Request line: METHOD SP target SP HTTP/x.y
    const size_t eol = request.find_first_of("\r\n");
    const absl::string_view line = absl::string_view(request).substr(0, eol);
    const size_t sp1 = line.find(' ');
    const size_t sp2 = sp1 == absl::string_view::npos ? sp1 : line.find(' ', sp1 + 1);
    if (sp1 == absl::string_view::npos || sp2 == absl::string_view::npos ||
        line.substr(sp2 + 1).rfind("HTTP/", 0) != 0) {
      response = Response(400, "Bad Request", "text/plain; charset=utf-8", "bad request\n", false);
    } else {
      const absl::string_view method = line.substr(0, sp1);
      absl::string_view path = line.substr(sp1 + 1, sp2 - sp1 - 1);
      path = path.substr(0, path.find('?'));
      const bool head = method == "HEAD";
      if (method != "GET" && !head) {
        response = Response(405, "Method Not Allowed", "text/plain; charset=utf-8",
                            "only GET and HEAD\n", false, "Allow: GET, HEAD\r\n");
      } else if (path != "/metrics") {
        response = Response(404, "Not Found", "text/plain; charset=utf-8",
                            "not found; metrics are at /metrics\n", head);
      } else {
        response = Response(200, "OK", kMetricsContentType, render_(), head);
      }
    }
  }

  size_t sent = 0;
  while (sent < response.size()) {
    if (!WaitFor(fd, POLLOUT, wake_fd_, deadline)) return;
    const ssize_t n = send(fd, response.data() + sent, response.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK)) continue;
    if (n <= 0) return;
    sent += static_cast<size_t>(n);
  }
  shutdown(fd, SHUT_WR);
}

}  // namespace kvkeep
