// A minimal HTTP/1.1 server for Prometheus scrapes: GET (or HEAD) /metrics answers the text
// exposition; any other path is 404, any other method 405. One thread serves connections one at
// a time (scrapes are rare and cheap); every connection is closed after one response.
//
// Bounded: a request head larger than kMaxRequestBytes gets 431; a client gets kIoTimeout in all
// to send its request and read the response, so a stalled client cannot hold the thread. Loopback
// by default (the caller picks the address; the daemon's default is 127.0.0.1:9464).
//
//   ASSIGN_OR_RETURN(auto http, MetricsHttpServer::Start("127.0.0.1:0", [&] { return Render(); }));
//   int port = http->port();
//   http.reset();   // stops the thread, closes the socket
//
// Thread-safe: Stop() (or the destructor) may run on any thread.
#ifndef KVKEEP_SERVICE_OBSERVABILITY_METRICS_HTTP_H_
#define KVKEEP_SERVICE_OBSERVABILITY_METRICS_HTTP_H_

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvkeep {

class MetricsHttpServer {
 public:
  static constexpr size_t kMaxRequestBytes = 8192;
  static constexpr absl::Duration kIoTimeout = absl::Seconds(5);

  // Produces the body of GET /metrics; called on the server's thread, one call at a time.
  using Render = std::function<std::string()>;

  // Listens on `address`: "host:port", "[v6]:port" or ":port" (all interfaces); port 0 picks a
  // free one. INVALID_ARGUMENT for a malformed address, UNAVAILABLE when it cannot bind.
  static absl::StatusOr<std::unique_ptr<MetricsHttpServer>> Start(const std::string& address,
                                                                  Render render);
  ~MetricsHttpServer();
  MetricsHttpServer(const MetricsHttpServer&) = delete;
  MetricsHttpServer& operator=(const MetricsHttpServer&) = delete;

  // Stops accepting, finishes (or drops, on timeout) the connection being served, joins.
  void Stop();
  int port() const { return port_; }
  const std::string& address() const { return address_; }  // as bound, e.g. 127.0.0.1:9464

 private:
  MetricsHttpServer(int listen_fd, int wake_fd, int port, std::string address, Render render);
  void Loop();
  void Serve(int fd);

  const int listen_fd_;
  const int wake_fd_;  // eventfd: Stop() writes it to wake the poll
  const int port_;
  const std::string address_;
  const Render render_;
  std::thread thread_;
  std::once_flag stop_once_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_OBSERVABILITY_METRICS_HTTP_H_
