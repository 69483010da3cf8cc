// Tests of the fp16 / bf16 conversions against known bit patterns and independent references.
#include "gpu/math/dtype.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>

namespace kvkeep::gpu_math {
namespace {

struct HalfCase {
  float value;
  uint16_t bits;
};

TEST(DtypeMath, HalfKnownBitPatterns) {
  const HalfCase cases[] = {
      {0.0f, 0x0000},
      {-0.0f, 0x8000},
      {1.0f, 0x3c00},
      {-2.0f, 0xc000},
      {0.5f, 0x3800},
      {65504.0f, 0x7bff},
      {-65504.0f, 0xfbff},
      {0x1p-14f, 0x0400},
      {0x1p-24f, 0x0001},
      {0x3ffp-24f, 0x03ff},
      {-0x1p-24f, 0x8001},
      {1.0009765625f, 0x3c01},
      {3.140625f, 0x4248},
      {std::numeric_limits<float>::infinity(), 0x7c00},
      {-std::numeric_limits<float>::infinity(), 0xfc00},
  };
  for (const HalfCase& c : cases) {
    EXPECT_EQ(FloatToHalfBits(c.value), c.bits) << c.value;
    const float back = HalfBitsToFloat(c.bits);
    EXPECT_EQ(FloatBits(back), FloatBits(c.value)) << std::hex << c.bits;
  }
}

TEST(DtypeMath, HalfRoundsToNearestEven) {
  EXPECT_EQ(FloatToHalfBits(0.1f), 0x2e66);
  // 1 + 2^-11 is half-way between 1 (even) and 1 + 2^-10: rounds down to the even one.
  EXPECT_EQ(FloatToHalfBits(1.0f + 0x1p-11f), 0x3c00);
  // 1 + 3 * 2^-11 is half-way between 0x3c01 (odd) and 0x3c02: rounds up to the even one.
  EXPECT_EQ(FloatToHalfBits(1.0f + 3 * 0x1p-11f), 0x3c02);
  // Just above the half-way point rounds up.
  EXPECT_EQ(FloatToHalfBits(std::nextafter(1.0f + 0x1p-11f, 2.0f)), 0x3c01);
  // 65519.99 stays finite, 65520 overflows to infinity.
  EXPECT_EQ(FloatToHalfBits(std::nextafter(65520.0f, 0.0f)), 0x7bff);
  EXPECT_EQ(FloatToHalfBits(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToHalfBits(1e10f), 0x7c00);
  // Subnormal ties: 2^-25 rounds to 0, 3 * 2^-25 to 2 * 2^-24, just above 2^-25 to 2^-24.
  EXPECT_EQ(FloatToHalfBits(0x1p-25f), 0x0000);
  EXPECT_EQ(FloatToHalfBits(3 * 0x1p-25f), 0x0002);
  EXPECT_EQ(FloatToHalfBits(std::nextafter(0x1p-25f, 1.0f)), 0x0001);
  // The largest subnormal plus half a unit carries into the smallest normal.
  EXPECT_EQ(FloatToHalfBits(0x3ffp-24f + 0x1p-25f), 0x0400);
  EXPECT_EQ(FloatToHalfBits(1e-10f), 0x0000);
  EXPECT_EQ(FloatToHalfBits(-1e-10f), 0x8000);
}

TEST(DtypeMath, HalfNaNStaysNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const uint16_t h = FloatToHalfBits(nan);
  EXPECT_EQ(h & 0x7c00, 0x7c00);
  EXPECT_NE(h & 0x03ff, 0);
  EXPECT_TRUE(std::isnan(HalfBitsToFloat(0x7e00)));
  EXPECT_TRUE(std::isnan(HalfBitsToFloat(0x7c01)));  // signalling half NaN widens to a NaN
  EXPECT_TRUE(std::isnan(HalfBitsToFloat(FloatToHalfBits(-nan))));
}

TEST(DtypeMath, EveryHalfRoundTripsAndMatchesItsValue) {
  for (uint32_t u = 0; u <= 0xffff; ++u) {
    const uint16_t h = static_cast<uint16_t>(u);
    const float f = HalfBitsToFloat(h);
    const uint32_t exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    if (exponent == 31 && mantissa != 0) {
      EXPECT_TRUE(std::isnan(f)) << std::hex << u;
      continue;
    }
    // Independent value: (-1)^s * 2^(e - 15) * (1 + m / 1024), or 2^-14 * m / 1024 if e == 0.
    double want = exponent == 0 ? std::ldexp(static_cast<double>(mantissa), -24)
                  : exponent == 31
                      ? std::numeric_limits<double>::infinity()
                      : std::ldexp(1.0 + mantissa / 1024.0, static_cast<int>(exponent) - 15);
    if (h & 0x8000) want = -want;
    ASSERT_EQ(static_cast<double>(f), want) << std::hex << u;
    ASSERT_EQ(std::signbit(f), (h & 0x8000) != 0) << std::hex << u;
    ASSERT_EQ(FloatToHalfBits(f), h) << std::hex << u;
  }
}

#if defined(__FLT16_MAX__)
// GCC's _Float16 conversion (SSE/F16C or libgcc soft-float) is an independent reference.
TEST(DtypeMath, HalfNarrowingMatchesCompilerFloat16) {
  std::mt19937 rng(7);
  auto check = [](uint32_t bits) {
    const float f = BitsToFloat(bits);
    if (std::isnan(f)) return;
    volatile float vf = f;
    const _Float16 ref = static_cast<_Float16>(vf);
    uint16_t ref_bits;
    memcpy(&ref_bits, &ref, sizeof(ref_bits));
    ASSERT_EQ(FloatToHalfBits(f), ref_bits) << std::hex << bits;
  };
  for (int i = 0; i < 2000000; ++i) check(rng());
  // Dense around the subnormal / normal / overflow boundaries.
  for (uint32_t base : {0x33000000u, 0x38800000u, 0x477fe000u, 0x3f800000u}) {
    for (uint32_t d = 0; d < 20000; ++d) {
      check(base + d - 10000);
      check((base + d - 10000) | 0x80000000u);
    }
  }
}
#endif

// Independent bf16 rounding: the nearer of the two truncation neighbours, ties to the even one.
uint16_t ReferenceBf16(float f) {
  const uint32_t bits = FloatBits(f);
  const uint16_t lo = static_cast<uint16_t>(bits >> 16);
  if ((bits & 0xffff) == 0) return lo;
  const uint16_t hi = static_cast<uint16_t>(lo + 1);
  const double x = f;
  const double dlo = std::fabs(x - static_cast<double>(Bf16BitsToFloat(lo)));
  // hi may be the infinity beyond the largest finite: its "value" is 2^128 for rounding purposes.
  const double hi_value = ((hi & 0x7fff) == 0x7f80) ? std::copysign(std::ldexp(1.0, 128), x)
                                                    : static_cast<double>(Bf16BitsToFloat(hi));
  const double dhi = std::fabs(x - hi_value);
  if (dlo < dhi) return lo;
  if (dhi < dlo) return hi;
  return (lo & 1) ? hi : lo;
}

TEST(DtypeMath, Bf16KnownBitPatterns) {
  EXPECT_EQ(FloatToBf16Bits(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBf16Bits(-2.0f), 0xc000);
  EXPECT_EQ(FloatToBf16Bits(0.1f), 0x3dcd);  // 0x3dcccccd rounds up
  EXPECT_EQ(FloatToBf16Bits(3.140625f), 0x4049);
  EXPECT_EQ(FloatToBf16Bits(-0.0f), 0x8000);
  // Ties: 0x3f808000 is half-way between 0x3f80 (even, stays) and 0x3f81.
  EXPECT_EQ(FloatToBf16Bits(BitsToFloat(0x3f808000u)), 0x3f80);
  EXPECT_EQ(FloatToBf16Bits(BitsToFloat(0x3f818000u)), 0x3f82);
  EXPECT_EQ(FloatToBf16Bits(BitsToFloat(0x3f808001u)), 0x3f81);
  // The largest float rounds to infinity; infinity stays.
  EXPECT_EQ(FloatToBf16Bits(std::numeric_limits<float>::max()), 0x7f80);
  EXPECT_EQ(FloatToBf16Bits(-std::numeric_limits<float>::infinity()), 0xff80);
  EXPECT_EQ(FloatBits(Bf16BitsToFloat(0x3f80)), 0x3f800000u);
  EXPECT_EQ(FloatBits(Bf16BitsToFloat(0xc049)), 0xc0490000u);
  // NaN stays NaN (a NaN whose payload lives only in the low half must not become infinity).
  const uint16_t n = FloatToBf16Bits(BitsToFloat(0x7f800001u));
  EXPECT_TRUE(std::isnan(Bf16BitsToFloat(n))) << std::hex << n;
  EXPECT_TRUE(std::isnan(Bf16BitsToFloat(FloatToBf16Bits(BitsToFloat(0xffc00000u)))));
}

TEST(DtypeMath, EveryBf16RoundTrips) {
  for (uint32_t u = 0; u <= 0xffff; ++u) {
    const uint16_t b = static_cast<uint16_t>(u);
    const float f = Bf16BitsToFloat(b);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16Bits(f), b) << std::hex << u;
  }
}

TEST(DtypeMath, Bf16NarrowingMatchesReference) {
  std::mt19937 rng(11);
  for (int i = 0; i < 2000000; ++i) {
    const uint32_t bits = rng();
    const float f = BitsToFloat(bits);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16Bits(f), ReferenceBf16(f)) << std::hex << bits;
  }
}

}  // namespace
}  // namespace kvkeep::gpu_math
