#include "tests/raw_session.h"

#include "client/call_context.h"

namespace kvkeep::testing {

void RawSession::End() {
  context->TryCancel();
  v1::SessionEvent ignored;
  while (reader->Read(&ignored)) {
  }
  reader->Finish();
}

std::unique_ptr<RawSession> OpenSession(const DaemonProcess& daemon, const std::string& token,
                                        const std::string& worker) {
  auto s = std::make_unique<RawSession>();
  s->stub = v1::KvCache::NewStub(MakeChannel(daemon.channel()));
  s->context = MakeCallContext(token);
  v1::AttachRequest request;
  request.set_worker_name(worker);
  s->reader = s->stub->Session(s->context.get(), request);
  v1::SessionEvent event;
  if (!s->reader->Read(&event) || !event.has_started()) return nullptr;
  s->started = event.started();
  return s;
}

}  // namespace kvkeep::testing
