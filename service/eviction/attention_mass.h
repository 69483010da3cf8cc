// The h2o and observed scores of one KV head (shared/docs/algorithms.md): the group-mean
// attention mass of each token, and for observed that mean divided by how many queries could see
// the token. Internal to the scorers (service/eviction/scorers.cc calls it per KV head).
//
// One pass over the group's mass rows, eight tokens at a time in registers: the group sum, its
// NaN/Inf check, the mean and observed's division, AVX2 where the CPU has it. Every score is bit
// for bit what the unfused loops gave (the sum from 0.0f in increasing row order, then * (1/G),
// then / float(next - position)); only the schedule differs.
//
// Stateless; touches only the memory it is handed.
#ifndef KVKEEP_SERVICE_EVICTION_ATTENTION_MASS_H_
#define KVKEEP_SERVICE_EVICTION_ATTENTION_MASS_H_

#include <cstdint>
#include <vector>

namespace kvkeep::eviction::internal {

// For j in [0, n), with pos_j = positions ? positions[j] : j and S_j = ((0 + rows[0][j]) +
// rows[1][j]) + ... + rows[group - 1][j] (float):
//   h2o      (observed = false): out[j] = S_j * (1.0f / group)
//   observed (observed = true):  out[j] = (S_j * (1.0f / group)) / float(next - pos_j)
// rows: the group's `group` (>= 1) attention-mass rows, each of at least n floats. positions,
// when given, >= 0, ascending and < next (as ValidateLayerInputs requires).
// False when some S_j is not finite (a non-finite mass entry, or overflow of finite ones); out
// then holds S_j itself for every j (not the mean), as the unfused scorer left it.
bool GroupAttentionMass(const std::vector<float>* rows, int group, int n, const int32_t* positions,
                        int64_t next, bool observed, float* out);

}  // namespace kvkeep::eviction::internal

#endif  // KVKEEP_SERVICE_EVICTION_ATTENTION_MASS_H_
