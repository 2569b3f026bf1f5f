#pragma once
// Learning-rate schedules: a multiplier of every base learning rate (the matrix path's lr and
// the fallback's lr) as a function of the step being taken (1 for the first step). The
// optimizer applies it at each step, reports the learning rates it used in StepResult, and
// restores the position from a checkpoint's step count; the base rates stay what the user set.
//
//   Schedule::constant()                  1
//   Schedule::warmup_cosine({w, n, r})    t <= w:  t / w                      (linear warmup)
//                                         w < t <= n: r + (1 - r) (1 + cos(pi (t - w) / (n - w))) / 2
//                                         t > n:   r                          (stays at min_lr_ratio)
//   Schedule::custom(f)                   f(t), checked finite and >= 0 at every step
// Defaults of warmup_cosine: no warmup, min_lr_ratio 0.1 (the manifold guide's value); the
// total step count has no default (it must be given).
#include <cmath>
#include <cstdint>
#include <functional>
#include <numbers>
#include <string>
#include <utility>

#include "muon/core/error.hpp"
#include "muon/core/validate.hpp"

namespace muon {

class Schedule {
 public:
  struct WarmupCosine {
    std::uint64_t warmup_steps = 0;  // steps 1 .. warmup_steps ramp linearly up to the base lr
    std::uint64_t total_steps = 0;   // the cosine reaches min_lr_ratio here; > warmup_steps
    double min_lr_ratio = 0.1;       // final multiplier, in [0, 1]
  };

  // The default: a constant multiplier of 1.
  Schedule() = default;

  [[nodiscard]] static Schedule constant() { return {}; }

  [[nodiscard]] static Schedule warmup_cosine(WarmupCosine o) {
    if (o.total_steps == 0) detail::fail("Schedule::warmup_cosine: option 'total_steps' must be given (> 0)");
    if (o.total_steps <= o.warmup_steps)
      detail::fail("Schedule::warmup_cosine: option 'total_steps' (" + std::to_string(o.total_steps) +
                   ") must exceed 'warmup_steps' (" + std::to_string(o.warmup_steps) + ")");
    if (!(o.min_lr_ratio >= 0 && o.min_lr_ratio <= 1))
      detail::fail("Schedule::warmup_cosine: option 'min_lr_ratio' must be in [0, 1], got " +
                   detail::format_value(o.min_lr_ratio));
    Schedule s;
    s.kind_ = Kind::warmup_cosine;
    s.cosine_ = o;
    return s;
  }

  // Any function of the step (1-based). Its value is checked at every step: a negative, NaN
  // or infinite multiplier makes step() throw before anything changes.
  [[nodiscard]] static Schedule custom(std::function<double(std::uint64_t step)> f) {
    if (!f) detail::fail("Schedule::custom: the function is empty");
    Schedule s;
    s.kind_ = Kind::custom;
    s.custom_ = std::move(f);
    return s;
  }

  // The multiplier for step `step` (1 = the first step); throws muon::Error on a bad value.
  [[nodiscard]] double operator()(std::uint64_t step) const {
    double m = 1.0;
    switch (kind_) {
      case Kind::constant: return 1.0;
      case Kind::warmup_cosine: m = cosine(step); break;
      case Kind::custom: m = custom_(step); break;
    }
    if (!std::isfinite(m) || m < 0)
      detail::fail("Schedule: the multiplier for step " + std::to_string(step) + " is " + detail::format_value(m) +
                   " (it must be finite and >= 0)");
    return m;
  }

  [[nodiscard]] std::string name() const {
    switch (kind_) {
      case Kind::constant: return "constant";
      case Kind::warmup_cosine: return "warmup_cosine";
      case Kind::custom: return "custom";
    }
    return "?";
  }
  [[nodiscard]] bool is_constant() const { return kind_ == Kind::constant; }

 private:
  enum class Kind { constant, warmup_cosine, custom };

  [[nodiscard]] double cosine(std::uint64_t t) const {
    const auto& o = cosine_;
    if (t <= o.warmup_steps) return static_cast<double>(t) / static_cast<double>(o.warmup_steps);
    if (t >= o.total_steps) return o.min_lr_ratio;
    const double progress =
        static_cast<double>(t - o.warmup_steps) / static_cast<double>(o.total_steps - o.warmup_steps);
    return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + std::cos(std::numbers::pi * progress));
  }

  Kind kind_ = Kind::constant;
  WarmupCosine cosine_{};
  std::function<double(std::uint64_t)> custom_{};
};

}  // namespace muon
