#include "service/fleet/client_pool.h"

namespace kvkeep::fleet {

ClusterClientPool::ClusterClientPool(ClusterOptions options, size_t max_idle)
    : options_(std::move(options)), max_idle_(max_idle) {}

ClusterClientPool::Lease ClusterClientPool::Borrow() {
  {
    absl::MutexLock lock(&mu_);
    if (!idle_.empty()) {
      std::unique_ptr<RedisClusterClient> client = std::move(idle_.back());
      idle_.pop_back();
      return Lease(this, std::move(client));
    }
  }
  return Lease(this, std::make_unique<RedisClusterClient>(options_));
}

void ClusterClientPool::Return(std::unique_ptr<RedisClusterClient> client) {
  absl::MutexLock lock(&mu_);
  if (idle_.size() < max_idle_) idle_.push_back(std::move(client));
}

}  // namespace kvkeep::fleet
