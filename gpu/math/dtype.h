// Element-type conversions of page contents: IEEE half (fp16) and bfloat16 <-> float32.
//
// Written once for both backends (KVKEEP_HOST_DEVICE), bit-exact and independent of the hardware's
// conversion instructions: widening is exact; narrowing rounds to nearest, ties to even, overflows
// to infinity, keeps the sign of zero, and turns NaN into a quiet NaN of the same sign.
//
//   uint16_t h = gpu_math::FloatToHalfBits(0.1f);      // 0x2e66
//   float x = gpu_math::HalfBitsToFloat(h);            // 0.0999755859375
//   float y = gpu_math::Bf16BitsToFloat(0x3f80);       // 1.0f
#ifndef KVKEEP_GPU_MATH_DTYPE_H_
#define KVKEEP_GPU_MATH_DTYPE_H_

#include <stdint.h>
#include <string.h>

#include "gpu/math/host_device.h"

namespace kvkeep::gpu_math {

KVKEEP_HOST_DEVICE inline uint32_t FloatBits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof(u));
  return u;
}

KVKEEP_HOST_DEVICE inline float BitsToFloat(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof(x));
  return x;
}

// fp16 -> float32, exact.
KVKEEP_HOST_DEVICE inline float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    // Zero or subnormal: mantissa * 2^-24, exact in float32 (10 bits times a power of two).
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return BitsToFloat(FloatBits(magnitude) | sign);
  }
  if (exponent == 31) {
    // Infinity, or NaN with its payload kept.
    return BitsToFloat(sign | 0x7f800000u | (mantissa << 13));
  }
  return BitsToFloat(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// float32 -> fp16, round to nearest even.
KVKEEP_HOST_DEVICE inline uint16_t FloatToHalfBits(float f) {
  const uint32_t bits = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t x = bits & 0x7fffffffu;
  if (x >= 0x7f800000u) {
    if (x == 0x7f800000u) return sign | 0x7c00u;                          // infinity
    return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));  // quiet NaN
  }
  // 65520 (half-way between 65504, the largest half, and 2^16) rounds to even: infinity.
  if (x >= 0x477ff000u) return sign | 0x7c00u;
  if (x < 0x38800000u) {
    // Below 2^-14: a half subnormal (units of 2^-24) or zero; 2^-25 is a tie that rounds to 0.
    if (x <= 0x33000000u) return sign;
    const uint32_t exponent = x >> 23;  // 102..112
    const uint32_t mantissa = (x & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126u - exponent;  // 14..24
    uint32_t r = mantissa >> shift;
    const uint32_t rest = mantissa & ((1u << shift) - 1u);
    const uint32_t half = 1u << (shift - 1u);
    if (rest > half || (rest == half && (r & 1u))) ++r;  // may carry into the smallest normal
    return static_cast<uint16_t>(sign | r);
  }
  const uint32_t rebiased = x - 0x38000000u;  // exponent bias 127 -> 15
  uint32_t r = rebiased >> 13;
  const uint32_t rest = rebiased & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (r & 1u))) ++r;
  return static_cast<uint16_t>(sign | r);
}

// bfloat16 -> float32, exact.
KVKEEP_HOST_DEVICE inline float Bf16BitsToFloat(uint16_t b) {
  return BitsToFloat(static_cast<uint32_t>(b) << 16);
}

// float32 -> bfloat16, round to nearest even.
KVKEEP_HOST_DEVICE inline uint16_t FloatToBf16Bits(float f) {
  const uint32_t bits = FloatBits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<uint16_t>((bits >> 16) | 0x0040u);  // quiet NaN, sign kept
  }
  const uint32_t bias = 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>((bits + bias) >> 16);  // overflow carries into infinity
}

}  // namespace kvkeep::gpu_math

#endif  // KVKEEP_GPU_MATH_DTYPE_H_
