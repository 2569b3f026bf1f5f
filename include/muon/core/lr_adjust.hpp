#pragma once
// LrAdjust: how the matrix path scales lr by a tensor's shape, and which scaling a composition
// defaults to (its constraint may choose). Apart from the optimizer so that policies can name it.
#include <algorithm>
#include <cmath>
#include <concepts>

#include "muon/core/config.hpp"

namespace muon {

// How the matrix path scales lr by the shape (rows, cols = the last two logical dimensions).
enum class LrAdjust {
  none,             // lr
  original,         // lr * sqrt(max(1, rows / cols))      Keller Jordan; torch.optim.Muon default
  match_rms_adamw,  // lr * 0.2 * sqrt(max(rows, cols))     Moonlight; update RMS matches AdamW's
};

[[nodiscard]] inline double adjusted_lr(double lr, LrAdjust adjust, index_t rows, index_t cols) {
  switch (adjust) {
    case LrAdjust::none: return lr;
    case LrAdjust::original:
      return lr * std::sqrt(std::max(1.0, static_cast<double>(rows) / static_cast<double>(cols)));
    case LrAdjust::match_rms_adamw: return lr * 0.2 * std::sqrt(static_cast<double>(std::max(rows, cols)));
  }
  return lr;
}

namespace detail {
// The lr_adjust a composition defaults to. A constraint may name its own with a static
// `default_lr_adjust`: the manifold constraints say none, so that their step is lr * A as their
// formulas state (a shape factor would only lengthen the step; the manifold does not need it).
// Every other composition defaults to Keller Jordan's original.
template <class C>
[[nodiscard]] constexpr LrAdjust default_lr_adjust() {
  if constexpr (requires { { C::default_lr_adjust } -> std::convertible_to<LrAdjust>; })
    return C::default_lr_adjust;
  else
    return LrAdjust::original;
}
}  // namespace detail

}  // namespace muon
