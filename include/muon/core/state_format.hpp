#pragma once
// How optimizer state is stored: in value_type (StateFormat::full, the default), or in bfloat16
// (StateFormat::bf16: half the bytes of float state, as modded-nanogpt and Dion keep Muon's
// momentum). A bf16 value is read, updated in value_type arithmetic and written back rounded,
// inside the one elementwise pass that updates it: there is never a value_type copy of the
// whole state.
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
#include <bit>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/low_precision.hpp"

namespace muon {

enum class StateFormat : std::uint8_t {
  full,  // value_type (float or double)
  bf16,  // bfloat16: 8 significant bits, float's range
};
enum class StateRounding : std::uint8_t { nearest_even, stochastic };

[[nodiscard]] constexpr const char* to_string(StateFormat f) { return f == StateFormat::bf16 ? "bf16" : "full"; }
[[nodiscard]] constexpr const char* to_string(StateRounding r) {
  return r == StateRounding::stochastic ? "stochastic" : "nearest_even";
}

// A state item's format and rounding, as policies' Options name them.
struct StateStorage {
  StateFormat format = StateFormat::full;
  StateRounding rounding = StateRounding::nearest_even;
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

// v rounded to bf16 bits as the state rounding says, saturated to the finite range.
template <class V>
MUON_HOST_DEVICE std::uint16_t encode_state_bf16(V v, bool stochastic, std::uint64_t stream, std::uint64_t k) {
  if (!stochastic) return encode16(ElementFormat::bf16, v);
  const bool finite = v - v == V(0);
  if (!finite) return encode16(ElementFormat::bf16, v);
  V c = v;
  if constexpr (sizeof(V) > sizeof(float)) {  // a double beyond float's range: clamp before the cast
    const V m = V(3.4028234663852886e38);
    c = c > m ? m : (c < -m ? -m : c);
  }
  const std::uint32_t x = std::bit_cast<std::uint32_t>(static_cast<float>(c));
  // Adding 16 random bits below the kept ones carries into them with probability equal to the
  // discarded fraction (on the magnitude: sign and magnitude are separate in IEEE formats).
  const std::uint32_t r = static_cast<std::uint32_t>(mix64(stream ^ mix64(k)) & 0xffffu);
  const std::uint32_t magnitude = ((x & 0x7fffffffu) + r) >> 16;
  const std::uint32_t kept = magnitude >= 0x7f80u ? 0x7f7fu : magnitude;  // carried into Inf: saturate
  return static_cast<std::uint16_t>(((x >> 16) & 0x8000u) | kept);
}

}  // namespace detail

template <class B>
class StateBuffer {
 public:
  using value_type = typename B::value_type;
  // bf16 values per value_type element of storage.
  static constexpr std::size_t k_packed = sizeof(value_type) / sizeof(std::uint16_t);

  StateBuffer() = default;
  StateBuffer(B& b, std::size_t count, StateFormat format)
      : storage_(b.template allocate<value_type>(format == StateFormat::bf16 ? (count + k_packed - 1) / k_packed : count)),
        count_(count),
        format_(format) {}

  // The storage: the values (full), or the packed bf16 bits (bf16; see bits()).
  [[nodiscard]] value_type* data() { return storage_.data(); }
  [[nodiscard]] const value_type* data() const { return storage_.data(); }
  // Storage elements of value_type (what the state costs); count() is the number of values.
  [[nodiscard]] std::size_t size() const { return storage_.size(); }
  [[nodiscard]] std::size_t count() const { return count_; }
  [[nodiscard]] StateFormat format() const { return format_; }
  // The bf16 values (format() == bf16), in backend memory.
  [[nodiscard]] std::uint16_t* bits() { return reinterpret_cast<std::uint16_t*>(storage_.data()); }

 private:
  typename B::template Buffer<value_type> storage_{};
  std::size_t count_ = 0;
  StateFormat format_ = StateFormat::full;
};

namespace detail {
template <class X>
inline constexpr bool is_state_buffer_v = false;
template <class B>
inline constexpr bool is_state_buffer_v<StateBuffer<B>> = true;

// Refuses a StateStorage whose enums hold no named value (a cast from an integer).
inline void require_state_storage(std::string_view who, std::string_view option, const StateStorage& s) {
  if (s.format != StateFormat::full && s.format != StateFormat::bf16)
    fail(std::string(who) + ": option '" + std::string(option) + ".format' must be StateFormat::full or StateFormat::bf16, got " +
         std::to_string(static_cast<int>(s.format)));
  if (s.rounding != StateRounding::nearest_even && s.rounding != StateRounding::stochastic)
    fail(std::string(who) + ": option '" + std::string(option) +
         ".rounding' must be StateRounding::nearest_even or StateRounding::stochastic, got " +
         std::to_string(static_cast<int>(s.rounding)));
}

// Bytes per value of a state item stored in `format` with value_type of `value_bytes`.
[[nodiscard]] constexpr std::size_t state_element_bytes(StateFormat format, std::size_t value_bytes) {
  return format == StateFormat::bf16 ? 2 : value_bytes;
}
}  // namespace detail

}  // namespace muon
