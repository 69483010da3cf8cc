// The daemon's ArenaFdSource: arena fds come from the engine (CacheEngine::ArenaFdFor), which
// checks the session is live and the arena is the tenant's own (read-write) or its sharing
// group's (read-only). Thread-safe as the engine is.
#ifndef KVKEEP_SERVICE_ARENA_CHANNEL_ENGINE_ARENA_FD_SOURCE_H_
#define KVKEEP_SERVICE_ARENA_CHANNEL_ENGINE_ARENA_FD_SOURCE_H_

#include "service/arena_channel/arena_channel_handler.h"
#include "service/engine/cache_engine.h"

namespace kvkeep {

class EngineArenaFdSource final : public ArenaFdSource {
 public:
  explicit EngineArenaFdSource(const CacheEngine* engine) : engine_(engine) {}
  absl::StatusOr<std::pair<v1::ArenaExport, int>> ArenaFd(const std::string& tenant,
                                                          const std::string& session_id,
                                                          uint32_t arena_id) const override {
    return engine_->ArenaFdFor(tenant, session_id, arena_id);
  }

 private:
  const CacheEngine* const engine_;
};

}  // namespace kvkeep

#endif  // KVKEEP_SERVICE_ARENA_CHANNEL_ENGINE_ARENA_FD_SOURCE_H_
