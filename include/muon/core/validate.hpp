#pragma once
// Hyperparameter checks shared by every Options struct. They run at construction (and when a
// value is changed), so a bad value is reported before any state exists or changes.
#include <cmath>
#include <cstdint>
#include <limits>
#include <sstream>
#include <string>

#include "muon/core/error.hpp"

namespace muon::detail {

// A value as an error message shows it: at most 40 characters (a huge value is cut, with its
// length said). Text from outside (config values, names read from a checkpoint) goes through it.
inline std::string shown_value(const std::string& text) {
  constexpr std::size_t k_max = 40;
  if (text.size() <= k_max) return "'" + text + "'";
  return "'" + text.substr(0, k_max) + "...' (" + std::to_string(text.size()) + " characters)";
}

inline std::string format_value(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// Options are checked in double but used in the value type, float or double. A value must
// survive the conversion to float (the narrowest value type), so that one Options means the same
// on every backend: no magnitude above float's largest, no positive value below its smallest
// normal (an eps of 1e-50 would become 0 and divide by zero).
inline constexpr double k_max_option_value = std::numeric_limits<float>::max();
inline constexpr double k_min_positive_option = std::numeric_limits<float>::min();

inline void require_finite(const char* owner, const char* field, double v) {
  if (!std::isfinite(v)) fail(std::string(owner) + ": option '" + field + "' must be finite, got " + format_value(v));
  if (std::abs(v) > k_max_option_value)
    fail(std::string(owner) + ": option '" + field + "' is beyond the float range (|v| <= " +
         format_value(k_max_option_value) + "), got " + format_value(v));
}

inline void require_non_negative(const char* owner, const char* field, double v) {
  require_finite(owner, field, v);
  if (v < 0) fail(std::string(owner) + ": option '" + field + "' must be >= 0, got " + format_value(v));
}

inline void require_positive(const char* owner, const char* field, double v) {
  require_finite(owner, field, v);
  if (!(v > 0)) fail(std::string(owner) + ": option '" + field + "' must be > 0, got " + format_value(v));
  if (v < k_min_positive_option)
    fail(std::string(owner) + ": option '" + field + "' is below the smallest normal float (" +
         format_value(k_min_positive_option) + ") and would round to zero or lose precision, got " + format_value(v));
}

// lo <= v < hi: momentum and beta coefficients (1 would freeze the average forever).
inline void require_unit_interval(const char* owner, const char* field, double v) {
  require_finite(owner, field, v);
  if (v < 0 || v >= 1) fail(std::string(owner) + ": option '" + field + "' must be in [0, 1), got " + format_value(v));
}

// Step counts and counters a checkpoint may hold: below 2^53 they are exact in double (bias
// corrections, schedules) and t + 1 cannot wrap.
inline constexpr std::uint64_t k_max_counter = std::uint64_t{1} << 53;

// What load() accepts for one stored state item, beyond "finite" (every buffer) and "at most
// k_max_counter" (every counter). A policy narrows it with an optional member
// `StateLimits limits(std::string_view key) const` (e.g. AdamW: exp_avg_sq >= 0).
struct StateLimits {
  std::uint64_t max_counter = k_max_counter;
  bool non_negative = false;  // buffers: every element >= 0
};

}  // namespace muon::detail
