// A pool of RedisClusterClients, so concurrent lookups each get a client of their own (a client
// is single-threaded) and keep its connections and slot map between calls.
//
//   ClusterClientPool pool(options, /*max_idle=*/8);
//   {
//     ClusterClientPool::Lease client = pool.Borrow();
//     client->Execute(commands, deadline);
//   }  // back to the pool
//
// Borrow never waits: it takes an idle client or makes a new one (which connects lazily, on its
// first command). At most `max_idle` clients are kept when returned; others are closed.
//
// Thread-safe; mu_ protects idle_.
#ifndef KVKEEP_SERVICE_FLEET_CLIENT_POOL_H_
#define KVKEEP_SERVICE_FLEET_CLIENT_POOL_H_

#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "service/fleet/cluster_client.h"

namespace kvkeep::fleet {

class ClusterClientPool {
 public:
  // A borrowed client; returned to its pool when destroyed. The pool must outlive it.
  class Lease {
   public:
    Lease(ClusterClientPool* pool, std::unique_ptr<RedisClusterClient> client)
        : pool_(pool), client_(std::move(client)) {}
    ~Lease() { pool_->Return(std::move(client_)); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    RedisClusterClient* operator->() const { return client_.get(); }
    RedisClusterClient& operator*() const { return *client_; }

   private:
    ClusterClientPool* pool_;
    std::unique_ptr<RedisClusterClient> client_;
  };

  ClusterClientPool(ClusterOptions options, size_t max_idle);

  Lease Borrow();

 private:
  void Return(std::unique_ptr<RedisClusterClient> client);

  // Constant after construction
  const ClusterOptions options_;
  const size_t max_idle_;

  absl::Mutex mu_;
  std::vector<std::unique_ptr<RedisClusterClient>> idle_ ABSL_GUARDED_BY(mu_);
};

}  // namespace kvkeep::fleet

#endif  // KVKEEP_SERVICE_FLEET_CLIENT_POOL_H_
