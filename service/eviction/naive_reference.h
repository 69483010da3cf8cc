// Test-only: plain double-precision re-computations of every scorer, written from
// shared/docs/algorithms.md with naive loops and explicit matrices, sharing no code with the
// implementation (not even gpu/math), so that the tests compare two independent derivations.
#ifndef KVKEEP_SERVICE_EVICTION_NAIVE_REFERENCE_H_
#define KVKEEP_SERVICE_EVICTION_NAIVE_REFERENCE_H_

#include <cstdint>
#include <vector>

#include "service/eviction/layer_inputs.h"
#include "service/eviction/policy.h"

namespace kvkeep::eviction::naive {

using Matrix = std::vector<std::vector<double>>;

// R̄ as a full head_dim × head_dim matrix, by summing the rotation matrices of every position.
Matrix AveragedRopeMatrix(const LayerInputs& in, int horizon);

// Scores [kv_head][token], double, following the same conventions as ScoreLayer (undefined tokens
// = max of the defined ones).
std::vector<std::vector<double>> Score(const Policy& policy, const LayerInputs& in);

// Brute-force greedy for capkv-greedy: order of the picked candidate indices (token indices) and
// the group-mean log-det gain of each pick; every step evaluates log det from scratch.
void BruteForceGreedy(const Policy& policy, const LayerInputs& in, int kv_head,
                      std::vector<int>* order, std::vector<double>* gains);

double LogDet(Matrix a);  // log det of a symmetric positive definite matrix (Gaussian elimination)

}  // namespace kvkeep::eviction::naive

#endif  // KVKEEP_SERVICE_EVICTION_NAIVE_REFERENCE_H_
