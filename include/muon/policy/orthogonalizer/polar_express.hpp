#pragma once
// Polar Express: Newton-Schulz with a per-iteration schedule of quintic coefficients chosen by
// minimax optimisation (Amsel, Persson, Musco, Gower 2025, arXiv:2505.16932, Algorithm 1;
// github.com/NoahAmsel/PolarExpress). Unlike the fixed (3.4445, -4.775, 2.0315) iteration it
// converges to the polar factor.
//
// For stability the first seven coefficient triples are divided by (safety, safety^3, safety^5)
// and the input is normalised by ||X|| * 1.01 + eps. From the eighth step on, the last triple
// (1.875, -1.25, 0.375) repeats. Defaults: 5 steps, safety 1.01, norm_scale 1.01, eps 1e-7.
#include <array>
#include <cmath>
#include <vector>

#include "muon/core/error.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"

namespace muon::policy {

// The published degree-5 schedule, before the safety factor.
inline constexpr std::array<QuinticCoefficients, 8> k_polar_express_raw{{
    {8.28721201814563, -23.595886519098837, 17.300387312530933},
    {4.107059111542203, -2.9478499167379106, 0.5448431082926601},
    {3.9486908534822946, -2.908902115962949, 0.5518191394370137},
    {3.3184196573706015, -2.488488024314874, 0.51004894012372},
    {2.300652019954817, -1.6689039845747493, 0.4188073119525673},
    {1.891301407787398, -1.2679958271945868, 0.37680408948524835},
    {1.8750014808534479, -1.2500016453999487, 0.3750001645474248},
    {1.875, -1.25, 0.375},
}};

// The schedule for `steps` iterations with the safety factor applied.
[[nodiscard]] inline std::vector<QuinticCoefficients> polar_express_schedule(int steps, double safety = 1.01) {
  if (steps < 0) detail::fail("polar_express_schedule: steps must be >= 0");
  if (!(safety >= 1.0) || !std::isfinite(safety)) detail::fail("polar_express_schedule: safety must be finite and >= 1");
  std::vector<QuinticCoefficients> out;
  out.reserve(static_cast<std::size_t>(steps));
  for (int k = 0; k < steps; ++k) {
    const auto raw = k_polar_express_raw[static_cast<std::size_t>(std::min(k, 7))];
    if (k < 7)
      out.push_back({raw.a / safety, raw.b / std::pow(safety, 3), raw.c / std::pow(safety, 5)});
    else
      out.push_back(raw);
  }
  return out;
}

// NewtonSchulz options that run Polar Express.
[[nodiscard]] inline NewtonSchulz::Options polar_express_options(int steps = 5, double safety = 1.01) {
  NewtonSchulz::Options o;
  o.steps = steps;
  o.schedule = polar_express_schedule(steps, safety);
  o.norm_scale = 1.01;
  o.eps = 1e-7;
  o.eps_mode = EpsMode::add;
  return o;
}

// The Polar Express orthogonalizer: NewtonSchulz driven by the schedule above. Its Options are
// its own (steps and safety; the schedule follows from them), so naming PolarExpress in a
// composition runs Polar Express by default.
class PolarExpress : public NewtonSchulz {
 public:
  struct Options {
    int steps = 5;
    double safety = 1.01;      // divides the first seven coefficient triples
    double norm_scale = 1.01;  // X / (||X|| * norm_scale + eps)
    double eps = 1e-7;
    EpsMode eps_mode = EpsMode::add;
    Precision precision = Precision::full;  // bf16: bf16 product inputs, float accumulation
  };

  PolarExpress() : PolarExpress(Options{}) {}
  explicit PolarExpress(const Options& options) : NewtonSchulz(to_newton_schulz(options)), options_(options) {}

  [[nodiscard]] const Options& options() const { return options_; }

 private:
  static NewtonSchulz::Options to_newton_schulz(const Options& o) {
    NewtonSchulz::Options ns;
    ns.steps = o.steps;
    ns.schedule = polar_express_schedule(o.steps, o.safety);
    ns.norm_scale = o.norm_scale;
    ns.eps = o.eps;
    ns.eps_mode = o.eps_mode;
    ns.precision = o.precision;
    return ns;
  }

  Options options_;
};

}  // namespace muon::policy
