// Loopback helpers for end-to-end tests that talk HTTP to a daemon (/metrics): a free TCP port and
// a plain HTTP/1.1 GET.
//
//   const int port = FreePort();                 // -1 when none could be had
//   daemon.Start({absl::StrCat("--metrics_address=127.0.0.1:", port)});
//   std::string reply = HttpGet(port, "/metrics");  // status line, headers and body
#ifndef KVKEEP_TESTS_LOCAL_HTTP_H_
#define KVKEEP_TESTS_LOCAL_HTTP_H_

#include <string>

namespace kvkeep::testing {

// A 127.0.0.1 port nobody listens on now (bind port 0, read it, close); -1 on failure. Another
// process may take it before the caller binds: callers retry a failed start.
int FreePort();

// GET `path` from 127.0.0.1:port with Connection: close; the whole response. Empty when the
// connection fails.
std::string HttpGet(int port, const std::string& path);

}  // namespace kvkeep::testing

#endif  // KVKEEP_TESTS_LOCAL_HTTP_H_
