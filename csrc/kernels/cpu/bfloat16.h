// bfloat16 for the CPU kernels without torch: the upper 16 bits of an IEEE float, the layout
// of c10::BFloat16 (aten/common.h checks that). Kernels load it into float, compute in
// float and round back to nearest-even once per stored value.
#pragma once

#include <cstdint>
#include <cstring>

namespace pybert::cpu {

struct bfloat16 {
  uint16_t bits;
};

inline float to_float(float value) { return value; }
inline float to_float(bfloat16 value) {
  const uint32_t word = uint32_t(value.bits) << 16;
  float result;
  std::memcpy(&result, &word, sizeof(result));
  return result;
}

// Rounds to nearest, ties to even; NaN stays a (quiet) NaN.
template <typename T>
inline T from_float(float value);
template <>
inline float from_float<float>(float value) { return value; }
template <>
inline bfloat16 from_float<bfloat16>(float value) {
  uint32_t word;
  std::memcpy(&word, &value, sizeof(word));
  if ((word & 0x7fffffffu) > 0x7f800000u) return {uint16_t((word >> 16) | 0x0040u)};
  word += 0x7fffu + ((word >> 16) & 1u);
  return {uint16_t(word >> 16)};
}

}  // namespace pybert::cpu
