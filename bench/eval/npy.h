// Reading and writing NumPy .npy files (format versions 1.0 and 2.0).
//
// Only what the eval harness needs: little-endian float16 or float32, C order, any rank. Data is
// always held as float32 in memory; float16 is converted on read and, if asked, on write.
//
//   ASSIGN_OR_RETURN(NpyArray q, ReadNpy("/data/L0.q.npy"));   // q.shape = {8, 2176, 64}
//   RETURN_IF_ERROR(WriteNpy("/tmp/s.npy", scores, NpyDtype::kFloat32));
#ifndef KVKEEP_BENCH_EVAL_NPY_H_
#define KVKEEP_BENCH_EVAL_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace kvkeep::eval {

enum class NpyDtype { kFloat16, kFloat32 };

// A dense C-order array of float32. data.size() == product of shape.
struct NpyArray {
  std::vector<int64_t> shape;
  std::vector<float> data;

  int64_t size() const;  // product of shape (1 for rank 0)
};

// Reads `path`. Errors:
//   kNotFound            the file cannot be opened;
//   kInvalidArgument     not an .npy file, an unsupported version, dtype (only '<f2', '<f4'; '|'/'='
//                        byte orders accepted for these), Fortran order, or a truncated payload.
// The message always names the file.
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// Writes `array` as a version 1.0 .npy file. kInvalidArgument if data.size() != product of shape,
// kInternal if the file cannot be written.
absl::Status WriteNpy(const std::string& path, const NpyArray& array,
                      NpyDtype dtype = NpyDtype::kFloat32);

// IEEE 754 binary16 conversions (round to nearest even; subnormals, infinities, NaN kept).
float HalfToFloat(uint16_t h);
uint16_t FloatToHalf(float f);

}  // namespace kvkeep::eval

#endif  // KVKEEP_BENCH_EVAL_NPY_H_
