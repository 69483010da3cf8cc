// CacheEngine as PressureRelief::Host (service/engine/pressure_relief.h does the relieving):
// the unleased sequences with what their tenants' policies protect, and the watermarks.
#include "service/engine/cache_engine.h"
#include "service/eviction/policy.h"

namespace kvkeep {

std::vector<PressureRelief::Host::Candidate> CacheEngine::UnleasedSequences() {
  std::vector<PressureRelief::Host::Candidate> out;
  const eviction::Policy defaults;
  absl::MutexLock lock(&mu_);
  for (auto& [name, t] : tenants_) {
    const v1::Policy& p = t.record.policy();
    const int sinks = p.has_sinks() ? static_cast<int>(p.sinks()) : defaults.sinks;
    const int window = p.has_window() ? static_cast<int>(p.window()) : defaults.window;
    for (auto& [id, seq] : t.sequences) {
      if (!sessions_.Leased(name, id)) out.push_back({seq, sinks, window});
    }
  }
  return out;
}

FreeWatermarks CacheEngine::Watermarks() const {
  absl::MutexLock lock(&mu_);
  return {watermarks_.low_free(), watermarks_.high_free()};
}

}  // namespace kvkeep
