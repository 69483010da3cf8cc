// A raw Session stream of the real daemon whose SessionStarted (its attach and bulk tickets, its
// socket paths) a test reads itself, to drive the side channels by hand.
//
//   auto raw = OpenSession(daemon, token, "w0");
//   ArenaChannelClient::Connect(..., raw->started.attach_ticket());
//   raw->End();   // the session ends: the daemon closes its side-channel connections
#ifndef KVKEEP_TESTS_RAW_SESSION_H_
#define KVKEEP_TESTS_RAW_SESSION_H_

#include <memory>
#include <string>

#include "kvkeep/v1/kvcache.grpc.pb.h"
#include "tests/daemon_process.h"

namespace kvkeep::testing {

struct RawSession {
  std::unique_ptr<v1::KvCache::Stub> stub;
  std::unique_ptr<grpc::ClientContext> context;
  std::unique_ptr<grpc::ClientReader<v1::SessionEvent>> reader;
  v1::SessionStarted started;

  // Cancels the stream and waits until it has ended.
  void End();
};

// A session of `token` as worker `worker` (a second session of the same tenant and worker name
// supersedes the first); null when it does not start.
std::unique_ptr<RawSession> OpenSession(const DaemonProcess& daemon, const std::string& token,
                                        const std::string& worker);

}  // namespace kvkeep::testing

#endif  // KVKEEP_TESTS_RAW_SESSION_H_
