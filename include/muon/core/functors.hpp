#pragma once
// Elementwise functors shared by several policies. Each is a small copyable struct whose call
// operator compiles for host and device; arithmetic is in the parameter type, as PyTorch does.
#include <bit>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "muon/core/config.hpp"

namespace muon::fn {

// The unsigned integer of T's width (float: 32 bits, double: 64), for bit-level selects and
// orderings.
template <class T>
using bits_of_t = std::conditional_t<sizeof(T) == sizeof(std::uint32_t), std::uint32_t, std::uint64_t>;

// c ? a : b, by bit masks. The same value as the conditional, but GCC (12) vectorizes a select
// whose condition is a loop-invariant bool (a functor's option: Nesterov or not, a first call)
// only in this form; as a conditional, the whole loop around it stays scalar.
template <class T>
MUON_HOST_DEVICE inline T pick(bool c, T a, T b) {
  using Bits = bits_of_t<T>;
  const Bits mask = Bits(0) - static_cast<Bits>(c);
  return std::bit_cast<T>((std::bit_cast<Bits>(a) & mask) | (std::bit_cast<Bits>(b) & ~mask));
}

// The value type's largest finite value (host side; functors carry it to the device).
template <class T>
inline constexpr T k_largest = std::numeric_limits<T>::max();

// x clamped to [-max, max], max = the type's largest finite value: where finite inputs overflow
// (a gradient near the float maximum, amplified or squared) the result keeps its sign and stays
// finite instead of becoming Inf, so no parameter turns non-finite from finite input. NaN stays
// NaN (the step's non-finite check has already run). `max` is passed in so that device code
// needs no numeric_limits. Two selects, each comparison made unconditionally: a comparison
// under another's condition is one a compiler may not speculate, and the loop stays scalar.
template <class T>
MUON_HOST_DEVICE inline T saturate(T x, T max) {
  const T below = x > max ? max : x;
  return below < -max ? -max : below;
}

// A coefficient computed in double (lr x factors), converted to the value type without becoming
// Inf: a learning rate that is finite but beyond T's range (a schedule multiplier x lr_scale x
// adj) is used as T's largest value.
template <class T>
T saturate_cast(double v) {
  const double max = static_cast<double>(k_largest<T>);
  return static_cast<T>(v > max ? max : (v < -max ? -max : v));
}

// out = saturate(x).
template <class T>
struct Saturate {
  T max = k_largest<T>;
  MUON_HOST_DEVICE T operator()(T x) const { return saturate(x, max); }
};

// out = x (a copy).
struct Copy {
  template <class T>
  MUON_HOST_DEVICE T operator()(T x) const { return x; }
};

// out = 0, whatever x holds (NaN and Inf included, which s * x with s = 0 would keep).
struct Zero {
  template <class T>
  MUON_HOST_DEVICE T operator()(T) const { return T(0); }
};

// out = s * x.
template <class T>
struct Scale {
  T s;
  MUON_HOST_DEVICE T operator()(T x) const { return s * x; }
};

// out = a * x + y.
template <class T>
struct Axpy {
  T a;
  MUON_HOST_DEVICE T operator()(T x, T y) const { return a * x + y; }
};

// out = lerp(x, y, w) = x + w (y - x), evaluated as torch.lerp does (from the nearer end), so
// the EMA m.lerp_(g, 1 - beta) and Nesterov's g.lerp(m, beta) round as they do in PyTorch.
// The difference is taken halved, h = y/2 - x/2, and the weight doubled: scaling by 2 is exact,
// so (2w) h rounds exactly as w (y - x) does, but h cannot overflow where y - x can (finite x, y
// of opposite signs near the float maximum), and for w in [0, 1] the result stays finite. (Only
// halves below the smallest normal float, |x| < 2.4e-38, can round differently.)
template <class T>
struct Lerp {
  T w;
  MUON_HOST_DEVICE T operator()(T x, T y) const {
    const T h = y * T(0.5) - x * T(0.5);
    // x + (2w) h from x's end, y - (2 (1 - w)) h from y's, written as one expression over
    // selected operands (the same bits: negating a product is exact). Arithmetic under a
    // condition is what a compiler may not speculate (it could raise a floating-point flag),
    // and then the loop around it stays scalar.
    const bool from_x = (w < T(0.5)) & (w > T(-0.5));  // both compared: no short-circuit
    const T to_x = T(2) * w, to_y = -(T(2) * (T(1) - w));
    return pick(from_x, x, y) + pick(from_x, to_x, to_y) * h;
  }
};

}  // namespace muon::fn
