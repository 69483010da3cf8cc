// The bulk channel's framing (common/bulk_frame.h) and request check (service/bulk_channel/
// bulk_requests.h) over a real socket: the input is what a peer sends, byte for byte, and the
// daemon's reading loop runs on it as BulkConnection::Serve does (a frame, its check, its raw
// bytes skipped when the check allows), until the input ends or a frame is refused.
//
// Invariants: every refusal is INVALID_ARGUMENT (a frame) or UNAVAILABLE (the input ended inside
// a frame) and says why; a request that passes the check announces at most kBulkMaxPayloadBytes;
// the loop never reads past the input (it ends).
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "common/bulk_frame.h"
#include "service/bulk_channel/bulk_requests.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  kvkeep::fuzz::SilenceProtobufLogs();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace kvkeep;
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) std::abort();
  std::thread peer([&] {
    size_t sent = 0;
    while (sent < size) {
      const ssize_t n = send(fds[0], data + sent, size - sent, MSG_NOSIGNAL);
      if (n <= 0) break;
      sent += static_cast<size_t>(n);
    }
    shutdown(fds[0], SHUT_WR);
  });
  bool attached = false;
  for (;;) {
    v1::BulkRequest request;
    absl::StatusOr<bool> got = RecvFrame(fds[1], &request, kBulkMaxRequestMessageBytes);
    if (!got.ok()) {
      FUZZ_CHECK(absl::IsInvalidArgument(got.status()) || absl::IsUnavailable(got.status()),
                 got.status().ToString());
      FUZZ_CHECK_STATUS_MESSAGE(got.status());
      break;
    }
    if (!*got) break;  // the input ended between frames
    absl::Status checked = CheckBulkRequest(request, attached);
    FUZZ_CHECK_STATUS_MESSAGE(checked);
    if (!checked.ok() && !BulkRequestSkippable(request)) break;
    if (request.has_attach()) attached = true;
    if (request.has_write()) {
      const uint64_t payload = BulkWritePayload(request.write());
      FUZZ_CHECK(payload <= kBulkMaxPayloadBytes, "a write past the payload limit passed");
      if (!DiscardBytes(fds[1], payload).ok()) break;
    }
  }
  close(fds[1]);  // unblocks the peer if it is still sending
  peer.join();
  close(fds[0]);
  return 0;
}
