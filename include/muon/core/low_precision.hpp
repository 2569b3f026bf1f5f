#pragma once
// 16-bit parameter storage for master-weight training: the formats, their conversions (round to
// nearest even, written once for host and device), and the trait that says which tensor scalar
// types are 16-bit storage.
//
// A parameter registered with bf16 or fp16 elements is updated through a master copy in the
// backend's value_type (fp32) that the optimizer holds; after every step the 16-bit tensor is
// rewritten from it (see core/master_weights.hpp).
#include <bit>
#include <cstdint>
#include <string_view>
#include <type_traits>

#include "muon/core/config.hpp"

namespace muon {

// How a registered tensor's elements are stored.
enum class ElementFormat : std::uint8_t {
  value,  // the backend's value_type (float or double)
  bf16,   // bfloat16: 8 exponent bits, 7 mantissa bits
  fp16,   // IEEE 754 binary16: 5 exponent bits, 10 mantissa bits
};

[[nodiscard]] constexpr std::string_view to_string(ElementFormat f) {
  switch (f) {
    case ElementFormat::value: return "value_type";
    case ElementFormat::bf16: return "bf16";
    case ElementFormat::fp16: return "fp16";
  }
  return "?";
}

// Storage-only 16-bit types for raw buffers (muon::raw(ptr, shape) with bfloat16* / float16*).
// They carry bits, not arithmetic: convert with to_float / from_float.
struct bfloat16 {
  std::uint16_t bits = 0;
};
struct float16 {
  std::uint16_t bits = 0;
};

// Customisation point: element_format<S>::value for a 16-bit storage type S (muon's own types
// here; backend headers add their library's, e.g. Eigen::bfloat16 and Eigen::half). The type
// must be 2 bytes holding exactly the format's bits.
template <class S>
struct element_format {};
template <>
struct element_format<bfloat16> {
  static constexpr ElementFormat value = ElementFormat::bf16;
};
template <>
struct element_format<float16> {
  static constexpr ElementFormat value = ElementFormat::fp16;
};

template <class S>
concept Storage16 = sizeof(S) == 2 && std::is_trivially_copyable_v<S> && requires {
  { element_format<std::remove_cv_t<S>>::value } -> std::convertible_to<ElementFormat>;
};

namespace detail {

MUON_HOST_DEVICE inline float bf16_to_float(std::uint16_t h) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(h) << 16);
}

MUON_HOST_DEVICE inline std::uint16_t float_to_bf16(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((x >> 16) | 0x0040u);  // quiet NaN
  const std::uint32_t round = 0x7fffu + ((x >> 16) & 1u);  // ties to even
  return static_cast<std::uint16_t>((x + round) >> 16);
}

MUON_HOST_DEVICE inline float fp16_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {  // zero or subnormal: m * 2^-24 (exact in float)
    const float v = static_cast<float>(m) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (e == 31) return std::bit_cast<float>(sign | 0x7f800000u | (m << 13));  // Inf / NaN
  return std::bit_cast<float>(sign | ((e + 112u) << 23) | (m << 13));
}

MUON_HOST_DEVICE inline std::uint16_t float_to_fp16(float f) {
  const std::uint32_t x = std::bit_cast<std::uint32_t>(f);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) return static_cast<std::uint16_t>(sign | (ax > 0x7f800000u ? 0x7e00u : 0x7c00u));
  if (ax >= 0x477ff000u) return static_cast<std::uint16_t>(sign | 0x7c00u);  // >= 65520 rounds to Inf
  if (ax < 0x38800000u) {                                                    // below 2^-14: subnormal
    if (ax <= 0x33000000u) return static_cast<std::uint16_t>(sign);          // <= 2^-25 rounds to 0
    const std::uint32_t exp = ax >> 23, mant = (ax & 0x7fffffu) | 0x800000u;
    const std::uint32_t shift = 126u - exp;  // value / 2^-24 = mant >> shift
    std::uint32_t m = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1u), half = 1u << (shift - 1u);
    if (rem > half || (rem == half && (m & 1u))) ++m;
    return static_cast<std::uint16_t>(sign | m);  // m == 0x400 is the smallest normal, correctly
  }
  std::uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax & 0x7fffffu) >> 13);
  const std::uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry into the exponent is right
  return static_cast<std::uint16_t>(sign | h);
}

// Decode / encode one element of a 16-bit format (value is not a 16-bit format).
MUON_HOST_DEVICE inline float decode16(ElementFormat f, std::uint16_t h) {
  return f == ElementFormat::bf16 ? bf16_to_float(h) : fp16_to_float(h);
}
// Encoding writes the user's 16-bit parameter from its master copy, so it saturates: a finite
// master beyond the format's range (65504 for fp16; FLT_MAX rounds past bf16's largest) becomes
// the largest finite value of its sign, not Inf. NaN and Inf stay what they are.
template <class V>
MUON_HOST_DEVICE inline std::uint16_t encode16(ElementFormat f, V v) {
  const bool finite = v - v == V(0);
  V c = v;
  if constexpr (sizeof(V) > sizeof(float)) {  // a double beyond float's range: clamp before the cast
    const V m = V(3.4028234663852886e38);
    c = c > m ? m : (c < -m ? -m : c);
  }
  const float x = static_cast<float>(c);
  const std::uint16_t h = f == ElementFormat::bf16 ? float_to_bf16(x) : float_to_fp16(x);
  if (!finite || (h & 0x7fffu) != (f == ElementFormat::bf16 ? 0x7f80u : 0x7c00u)) return h;
  return static_cast<std::uint16_t>((h & 0x8000u) | (f == ElementFormat::bf16 ? 0x7f7fu : 0x7bffu));
}

}  // namespace detail
}  // namespace muon
