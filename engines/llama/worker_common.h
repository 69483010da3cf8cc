// Pieces every kvkeep-llama command shares: attaching to the daemon from the options, the probe's
// logits files, comparing logits, and running this program again as another process.
#ifndef KVKEEP_ENGINES_LLAMA_WORKER_COMMON_H_
#define KVKEEP_ENGINES_LLAMA_WORKER_COMMON_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/client.h"
#include "engines/llama/llama_runtime.h"
#include "engines/llama/options.h"
#include "kvkeep/v1/common.pb.h"

namespace kvkeep::llama {

// Reads the tenant token from `token_file` and attaches as worker `worker`.
absl::StatusOr<std::unique_ptr<Client>> AttachWorker(const Options& options,
                                                     const std::string& token_file,
                                                     const std::string& worker);
// Loads the model (capture: install the eval callback), with a context for the prompt and decode.
absl::StatusOr<std::unique_ptr<LlamaRuntime>> LoadModel(const Options& options, bool capture);

absl::Status WriteLogits(const std::string& path, const std::vector<float>& logits);
absl::StatusOr<std::vector<float>> ReadLogits(const std::string& path);
// max_i |a_i - b_i|; +inf when the sizes differ.
double MaxAbsDiff(const std::vector<float>& a, const std::vector<float>& b);
// KL(softmax(p) || softmax(q)) in nats.
double KlDivergence(const std::vector<float>& p, const std::vector<float>& q);

// Runs /proc/self/exe with `args`; its stdout, or an error with its exit status and stderr tail.
absl::StatusOr<std::string> RunSelf(const std::vector<std::string>& args);

// The policy of a Compress: `scorer`, allocation `sequence`, the keep ratio.
v1::Policy SequencePolicy(const std::string& scorer, double keep);

// Removes from the runtime's sequence every cell whose position is not in `kept` (ascending),
// among positions [0, end).
absl::Status KeepOnly(LlamaRuntime& rt, const std::vector<int32_t>& kept, int32_t end);

}  // namespace kvkeep::llama

#endif  // KVKEEP_ENGINES_LLAMA_WORKER_COMMON_H_
