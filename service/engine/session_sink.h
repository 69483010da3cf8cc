// The daemon's side of a worker's Session stream: where engine events go.
//
// Implemented by the Session RPC reactor. Both methods only queue and never block; they may be
// called with the engine's lock held. After CacheEngine::EndSession returns for a session, the
// engine never calls its sink again.
#ifndef KVKEEP_SERVICE_ENGINE_SESSION_SINK_H_
#define KVKEEP_SERVICE_ENGINE_SESSION_SINK_H_

#include "absl/status/status.h"
#include "service/pool/page_pool.h"

namespace kvkeep {

class SessionSink {
 public:
  virtual ~SessionSink() = default;
  // A new arena of the session's tenant that the worker should map.
  virtual void ArenaAdded(const ArenaInfo& arena) = 0;
  // Ends the stream: ABORTED when superseded or the tenant was deleted, OK with a drain event on
  // shutdown.
  virtual void End(const absl::Status& status) = 0;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ENGINE_SESSION_SINK_H_
