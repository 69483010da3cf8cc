#include "service/eviction/finite_scan.h"

#include <gtest/gtest.h>

#include <limits>
#include <vector>

namespace kvkeep::eviction {
namespace {

// Every position of arrays of block and tail sizes, NaN, +Inf and -Inf, float and double: the
// first non-finite index, whichever later ones follow; -1 when all are finite (huge values, -0,
// denormals included).
template <typename T>
void CheckType() {
  const T specials[] = {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity(),
                        -std::numeric_limits<T>::infinity()};
  for (int64_t n : {0, 1, 7, 8, 9, 1023, 1024, 1025, 3001}) {
    std::vector<T> x(n);
    for (int64_t i = 0; i < n; ++i) {
      x[i] = i % 3 == 0   ? std::numeric_limits<T>::max()
             : i % 3 == 1 ? -T(0)
                          : std::numeric_limits<T>::denorm_min() * T(i);
    }
    EXPECT_EQ(FirstNonFinite(x.data(), n), -1) << "n " << n;
    for (int64_t at = 0; at < n; at += (n > 40 ? 97 : 1)) {
      for (T bad : specials) {
        std::vector<T> y = x;
        y[at] = bad;
        if (at + 5 < n) y[at + 5] = specials[0];  // a later one does not count
        EXPECT_EQ(FirstNonFinite(y.data(), n), at) << "n " << n << " at " << at;
      }
    }
  }
}

TEST(FiniteScan, FindsTheFirstNonFiniteFloat) { CheckType<float>(); }
TEST(FiniteScan, FindsTheFirstNonFiniteDouble) { CheckType<double>(); }

}  // namespace
}  // namespace kvkeep::eviction
