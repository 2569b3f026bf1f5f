#pragma once
// How optimizer state is stored: in value_type (StateFormat::full, the default), in bfloat16
// (StateFormat::bf16: half the bytes of float state, as modded-nanogpt and Dion keep Muon's
// momentum), or 8-bit block-wise quantized (StateFormat::q8, AdamW and Lion moments: a quarter,
// plus one value_type scale per block, in the spirit of bitsandbytes' 8-bit optimizers). A
// stored value is read, updated in value_type arithmetic and written back in its format inside
// the one pass that updates it: there is never a value_type copy of the whole state.
//
// The 8-bit code (q8). Each block of StateStorage::block values (default 256) keeps its largest
// magnitude as a value_type scale; a value is stored as a byte on a power-law grid relative to
// that scale:
//   signed items (first moments):     x = scale * sign(q) * (|q| / 127)^2,  q in [-127, 127]
//   non-negative items (exp_avg_sq):  v = scale * (q / 255)^4,             q in [0, 255]
// Why this code and not a linear one: a block's moments spread over orders of magnitude, and a
// linear grid rounds everything below scale/255 to zero; a zero second moment under a nonzero
// first one would turn AdamW's step into m / eps. The power law keeps a relative step of 2/|q|
// (4/q for v) over about 4 (8) decades, like the dynamic tree code bitsandbytes uses, and unlike
// that code it encodes and decodes in closed form (a square root; no table, no search), the
// same way on a CPU and in a CUDA kernel. A nonzero v is never stored as zero (q >= 1). The
// block's scale is taken over the new values, so the largest one is stored exactly.
//
// Rounding (StateRounding):
//   nearest_even  bit-identical to the CPU backends' and the CUDA backend's float -> bf16
//                 conversion (and to torch's): deterministic, biased toward keeping small
//                 EMA increments from accumulating (an increment below half a bf16 ulp of the
//                 state is lost every step).
//   stochastic    rounds up with probability equal to the discarded fraction, so that the
//                 expected stored value equals the exact one and small increments accumulate
//                 on average. The random bits come from a counter-based hash of (tensor name,
//                 state item, step, element index): a run is reproducible, resumes from a
//                 checkpoint to the same bits, and does not depend on the thread count.
// Both saturate: a finite value beyond bf16's range is stored as the largest finite bf16 of its
// sign (state must stay finite); NaN and Inf are stored as they are (a NaN gradient never
// reaches state: the step skips that tensor first).
//
// StateBuffer<B> holds one state item in its format. Its storage is a value_type buffer (bf16
// values packed two per float, four per double), so every backend that holds value_type holds
// it and moves it to the host unchanged. Checkpoints store a bf16 item as 16-bit elements
// (core/checkpoint.hpp), and load() converts between formats only when asked
// (Optimizer::LoadOptions::convert_state_formats).
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <type_traits>

#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/low_precision.hpp"

namespace muon {

enum class StateFormat : std::uint8_t {
  full,  // value_type (float or double)
  bf16,  // bfloat16: 8 significant bits, float's range
  q8,    // 8-bit block-wise quantized (AdamW and Lion moments only)
};
enum class StateRounding : std::uint8_t { nearest_even, stochastic };

[[nodiscard]] constexpr const char* to_string(StateFormat f) {
  return f == StateFormat::bf16 ? "bf16" : (f == StateFormat::q8 ? "q8" : "full");
}
[[nodiscard]] constexpr const char* to_string(StateRounding r) {
  return r == StateRounding::stochastic ? "stochastic" : "nearest_even";
}

// A state item's format and rounding, as policies' Options name them.
struct StateStorage {
  StateFormat format = StateFormat::full;
  StateRounding rounding = StateRounding::nearest_even;
  std::size_t block = 256;  // q8: values per block (one scale each), 16 .. 65536
};

namespace detail {

// SplitMix64's finaliser: a bijective mix of 64 bits (the counter-based hash behind stochastic
// rounding).
MUON_HOST_DEVICE inline std::uint64_t mix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// A stream id for stochastic rounding: one per (tensor name, state item) and step.
[[nodiscard]] inline std::uint64_t rounding_stream(std::string_view tensor, std::string_view item, std::uint64_t step) {
  std::uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over the names, then mixed with the step
  for (const char c : tensor) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  h = (h ^ 0x2fu) * 0x100000001b3ull;
  for (const char c : item) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ull;
  return mix64(h ^ mix64(step));
}

// 16 uniform random bits for element k of a stochastic-rounding stream.
MUON_HOST_DEVICE inline std::uint32_t random16(std::uint64_t stream, std::uint64_t k) {
  return static_cast<std::uint32_t>(mix64(stream ^ mix64(k)) & 0xffffu);
}

// v rounded to bf16 bits as the state rounding says, saturated to the finite range; NaN and Inf
// stay what they are. Without branches (selects only), so that the loops calling it vectorize;
// the update functors pass `stochastic` as a constant (a template argument), so that a
// nearest-even loop computes no random bits.
template <class V>
MUON_HOST_DEVICE inline std::uint16_t encode_state_bf16(V v, bool stochastic, std::uint64_t stream, std::uint64_t k) {
  V c = v;
  if constexpr (sizeof(V) > sizeof(float)) {  // a double beyond float's range: clamp before the cast
    const V m = V(3.4028234663852886e38);
    c = c > m ? m : (c < -m ? -m : c);
  }
  const std::uint32_t x = std::bit_cast<std::uint32_t>(static_cast<float>(c));
  const std::uint32_t magnitude = x & 0x7fffffffu, sign = (x >> 16) & 0x8000u;
  // Nearest even adds 0x7fff plus the lowest kept bit; stochastic adds 16 random bits (carrying
  // into the kept bits with probability equal to the discarded fraction).
  const std::uint32_t add = stochastic ? random16(stream, k) : 0x7fffu + ((magnitude >> 16) & 1u);
  std::uint32_t kept = (magnitude + add) >> 16;
  const bool nan = magnitude > 0x7f800000u, inf = magnitude == 0x7f800000u;
  kept = kept >= 0x7f80u ? 0x7f7fu : kept;  // a finite value carried into Inf: saturate
  kept = nan ? ((magnitude >> 16) | 0x0040u) : (inf ? 0x7f80u : kept);
  return static_cast<std::uint16_t>(sign | kept);
}

// |x| as an unsigned integer of x's width: ordered as |x| is for every non-NaN x, so a block's
// largest magnitude is an integer maximum, which compilers vectorize (a float maximum under IEEE
// rules they do not).
template <class T>
using magnitude_bits_t = fn::bits_of_t<T>;
template <class T>
MUON_HOST_DEVICE inline magnitude_bits_t<T> magnitude_bits(T x) {
  return std::bit_cast<magnitude_bits_t<T>>(x) & (~magnitude_bits_t<T>(0) >> 1);
}
template <class T>
MUON_HOST_DEVICE inline T from_magnitude_bits(magnitude_bits_t<T> bits) {
  return std::bit_cast<T>(bits);
}

// ---- The q8 code (closed form on host and device, in value_type, without branches) ----
// The code index for y = 127 sqrt(|x| / scale) (signed) or 255 (v / scale)^(1/4): floor(y + u)
// with u = 1/2 (nearest, ties up) or uniform in [0, 1) (stochastic: up with probability frac(y)).
template <class T>
MUON_HOST_DEVICE inline T q8_offset(bool stochastic, std::uint64_t stream, std::uint64_t k) {
  return stochastic ? static_cast<T>(random16(stream, k)) * T(1.0 / 65536.0) : T(0.5);
}
template <class T>
MUON_HOST_DEVICE inline T q8_decode_signed(std::int8_t q, T scale) {
  const T r = static_cast<T>(q);
  return scale * ((r * std::fabs(r)) / T(127 * 127));  // a division: code 127 decodes to exactly 1
}
// `scale` is the block's largest magnitude (0: everything encodes to 0). A division, not a
// reciprocal: the largest value must give exactly 1, subnormal scales included.
// Written without a data-dependent select (integer min, masks, a two's-complement negation):
// a compiler turns selects into branches, threads the square roots into them, and then cannot
// vectorize the loop (a square root may not be speculated).
template <class T>
MUON_HOST_DEVICE inline T q8_unit(T magnitude, T scale) {
  // magnitude / scale clamped to [0, 1] (0 for a zero scale, and for a NaN, which is never
  // expected), clamped on the bits: for non-negative values they are ordered as the values.
  using Bits = magnitude_bits_t<T>;
  const Bits r = magnitude_bits(magnitude / (scale > T(0) ? scale : T(1)));
  const Bits one = std::bit_cast<Bits>(T(1)), inf = std::bit_cast<Bits>(std::numeric_limits<T>::infinity());
  const Bits keep = Bits(0) - static_cast<Bits>((r <= inf) & (scale > T(0)));  // all ones, or 0
  return std::bit_cast<T>((r < one ? r : one) & keep);
}
template <class T>
MUON_HOST_DEVICE inline std::int8_t q8_encode_signed(T x, T scale, bool stochastic, std::uint64_t stream, std::uint64_t k) {
  const T r = q8_unit(x < T(0) ? -x : x, scale);
  const int q = static_cast<int>(T(127) * std::sqrt(r) + q8_offset<T>(stochastic, stream, k));
  const int c = q < 127 ? q : 127;
  const int negative = -static_cast<int>(x < T(0));       // all ones or 0
  return static_cast<std::int8_t>((c ^ negative) - negative);  // -c or c
}
template <class T>
MUON_HOST_DEVICE inline T q8_decode_unsigned(std::uint8_t q, T scale) {
  const T r = static_cast<T>(q) / T(255);  // exactly 1 for code 255
  return scale * (r * r) * (r * r);
}
template <class T>
MUON_HOST_DEVICE inline std::uint8_t q8_encode_unsigned(T v, T scale, bool stochastic, std::uint64_t stream, std::uint64_t k) {
  const T r = q8_unit(v, scale);
  const int q = static_cast<int>(T(255) * std::sqrt(std::sqrt(r)) + q8_offset<T>(stochastic, stream, k));
  const int c = q < 255 ? q : 255;
  const bool nonzero = (v > T(0)) & (scale > T(0));  // both evaluated: no short-circuit
  return static_cast<std::uint8_t>(c + static_cast<int>(nonzero & (c == 0)));  // nonzero v stays nonzero
}

// Calls f(std::true_type{}) for stochastic rounding and f(std::false_type{}) for nearest even.
// The update functors take the rounding as a template argument: a nearest-even loop then holds
// no random-bit hashing and vectorizes.
template <class F>
decltype(auto) with_rounding(StateRounding rounding, F&& f) {
  return rounding == StateRounding::stochastic ? f(std::true_type{}) : f(std::false_type{});
}

}  // namespace detail

template <class B>
class StateBuffer {
 public:
  using value_type = typename B::value_type;
  // bf16 values per value_type element of storage.
  static constexpr std::size_t k_packed = sizeof(value_type) / sizeof(std::uint16_t);

  StateBuffer() = default;
  // `non_negative`: the item never holds negative values (AdamW's exp_avg_sq); in q8 it then
  // takes the unsigned code.
  StateBuffer(B& b, std::size_t count, const StateStorage& storage, bool non_negative = false)
      : storage_(b.template allocate<value_type>(storage_elements(count, storage))),
        count_(count),
        format_(storage.format),
        block_(storage.format == StateFormat::q8 ? storage.block : 0),
        non_negative_(non_negative) {}

  // value_type elements that hold `count` values in `storage`'s format.
  [[nodiscard]] static std::size_t storage_elements(std::size_t count, const StateStorage& storage) {
    switch (storage.format) {
      case StateFormat::bf16: return (count + k_packed - 1) / k_packed;
      case StateFormat::q8: return code_elements(count) + (count + storage.block - 1) / storage.block;
      default: return count;
    }
  }

  // The storage: the values (full), or the packed bf16 bits (bf16; see bits()).
  [[nodiscard]] value_type* data() { return storage_.data(); }
  [[nodiscard]] const value_type* data() const { return storage_.data(); }
  // Storage elements of value_type (what the state costs); count() is the number of values.
  [[nodiscard]] std::size_t size() const { return storage_.size(); }
  [[nodiscard]] std::size_t count() const { return count_; }
  [[nodiscard]] StateFormat format() const { return format_; }
  // The bf16 values (format() == bf16), in backend memory.
  [[nodiscard]] std::uint16_t* bits() { return reinterpret_cast<std::uint16_t*>(storage_.data()); }
  // q8: the codes (count() bytes), then one value_type scale per block.
  [[nodiscard]] std::uint8_t* codes() { return reinterpret_cast<std::uint8_t*>(storage_.data()); }
  [[nodiscard]] value_type* scales() { return storage_.data() + code_elements(count_); }
  [[nodiscard]] std::size_t block() const { return block_; }
  [[nodiscard]] std::size_t blocks() const { return block_ ? (count_ + block_ - 1) / block_ : 0; }
  [[nodiscard]] bool non_negative() const { return non_negative_; }

 private:
  static std::size_t code_elements(std::size_t count) { return (count + sizeof(value_type) - 1) / sizeof(value_type); }

  typename B::template Buffer<value_type> storage_{};
  std::size_t count_ = 0;
  StateFormat format_ = StateFormat::full;
  std::size_t block_ = 0;
  bool non_negative_ = false;
};

namespace detail {
// Host side of q8 (checkpoint conversions, snapshots): the values of n codes with their
// block scales, and the codes and scales of n values (nearest rounding, scale = block absmax).
template <class T>
void q8_decode_host(const std::uint8_t* codes, const T* scales, std::size_t n, std::size_t block, bool non_negative, T* out) {
  for (std::size_t i = 0; i < n; ++i)
    out[i] = non_negative ? q8_decode_unsigned<T>(codes[i], scales[i / block])
                          : q8_decode_signed<T>(static_cast<std::int8_t>(codes[i]), scales[i / block]);
}
template <class T>
void q8_encode_host(const T* values, std::size_t n, std::size_t block, bool non_negative, std::uint8_t* codes, T* scales) {
  for (std::size_t lo = 0; lo < n; lo += block) {
    const std::size_t hi = lo + block < n ? lo + block : n;
    T amax = T(0);
    for (std::size_t i = lo; i < hi; ++i) amax = std::max(amax, values[i] < T(0) ? -values[i] : values[i]);
    scales[lo / block] = amax;
    for (std::size_t i = lo; i < hi; ++i)
      codes[i] = non_negative ? q8_encode_unsigned<T>(values[i], amax, false, 0, 0)
                              : static_cast<std::uint8_t>(q8_encode_signed<T>(values[i], amax, false, 0, 0));
  }
}

template <class X>
inline constexpr bool is_state_buffer_v = false;
template <class B>
inline constexpr bool is_state_buffer_v<StateBuffer<B>> = true;

// Refuses a StateStorage whose enums hold no named value (a cast from an integer), a q8 block
// out of range, and q8 where the item cannot take it.
inline void require_state_storage(std::string_view who, std::string_view option, const StateStorage& s,
                                  bool allow_q8) {
  if (s.format == StateFormat::q8 && !allow_q8)
    fail(std::string(who) + ": option '" + std::string(option) +
         ".format' cannot be StateFormat::q8 (8-bit block-wise state is for the fallbacks' moments: AdamW, Lion); use full or bf16");
  if (s.format != StateFormat::full && s.format != StateFormat::bf16 && s.format != StateFormat::q8)
    fail(std::string(who) + ": option '" + std::string(option) +
         ".format' must be StateFormat::full, StateFormat::bf16 or StateFormat::q8, got " +
         std::to_string(static_cast<int>(s.format)));
  if (s.block < 16 || s.block > 65536)
    fail(std::string(who) + ": option '" + std::string(option) + ".block' must be in [16, 65536], got " +
         std::to_string(s.block));
  if (s.rounding != StateRounding::nearest_even && s.rounding != StateRounding::stochastic)
    fail(std::string(who) + ": option '" + std::string(option) +
         ".rounding' must be StateRounding::nearest_even or StateRounding::stochastic, got " +
         std::to_string(static_cast<int>(s.rounding)));
}

// Bytes per value of a state item stored in `format` with value_type of `value_bytes` (q8:
// the codes; the scales are a separate "#absmax" item in checkpoints).
[[nodiscard]] constexpr std::size_t state_element_bytes(StateFormat format, std::size_t value_bytes) {
  return format == StateFormat::bf16 ? 2 : (format == StateFormat::q8 ? 1 : value_bytes);
}
}  // namespace detail

}  // namespace muon
