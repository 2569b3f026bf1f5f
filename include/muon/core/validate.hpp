#pragma once
// Hyperparameter checks shared by every Options struct. They run at construction (and when a
// value is changed), so a bad value is reported before any state exists or changes.
#include <cmath>
#include <sstream>
#include <string>

#include "muon/core/error.hpp"

namespace muon::detail {

inline std::string format_value(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

inline void require_finite(const char* owner, const char* field, double v) {
  if (!std::isfinite(v)) fail(std::string(owner) + ": option '" + field + "' must be finite, got " + format_value(v));
}

inline void require_non_negative(const char* owner, const char* field, double v) {
  require_finite(owner, field, v);
  if (v < 0) fail(std::string(owner) + ": option '" + field + "' must be >= 0, got " + format_value(v));
}

inline void require_positive(const char* owner, const char* field, double v) {
  require_finite(owner, field, v);
  if (!(v > 0)) fail(std::string(owner) + ": option '" + field + "' must be > 0, got " + format_value(v));
}

// lo <= v < hi: momentum and beta coefficients (1 would freeze the average forever).
inline void require_unit_interval(const char* owner, const char* field, double v) {
  require_finite(owner, field, v);
  if (v < 0 || v >= 1) fail(std::string(owner) + ": option '" + field + "' must be in [0, 1), got " + format_value(v));
}

}  // namespace muon::detail
