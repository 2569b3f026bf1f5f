// Learning-rate schedules (core/schedule.hpp) and modular lr scaling (Options::modular): the
// multiplier's values, the rates each step reports and uses on both paths, resume from a
// checkpoint at the right point of the schedule, and the errors for bad schedules and bad
// layer / depth registrations (raised before anything changes). Tests that step an optimizer run
// on every backend in MUON_TEST_BACKENDS.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <sstream>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/backends.hpp"
#include "support/buffers.hpp"

namespace {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

// A matrix-path weight (stored column-major) and a fallback-path bias with step-dependent gradients.
template <class B>
struct Rig {
  using T = typename B::value_type;
  std::vector<T> w, gw, b, gb;
  muon::Muon<B> opt;
  explicit Rig(typename muon::Muon<B>::Options o, muon::ParamOptions wo = {})
      : w(8 * 12), gw(8 * 12, T(0)), b(8, T(0)), gb(8, T(0)), opt(std::move(o)) {
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<T>(std::sin(0.37 * static_cast<double>(i)));
    opt.add("w", muon::test::raw_col_major(w.data(), 8, 12), muon::test::raw_col_major(gw.data(), 8, 12), wo);
    opt.add("b", muon::raw(b.data(), {8}), muon::raw(gb.data(), {8}), {.role = muon::Role::bias});
  }
  muon::StepResult step(int t) {
    for (std::size_t i = 0; i < gw.size(); ++i) gw[i] = static_cast<T>(std::cos(1.3 * t + 0.2 * static_cast<double>(i)));
    for (std::size_t i = 0; i < gb.size(); ++i) gb[i] = static_cast<T>(std::sin(0.9 * t + 0.5 * static_cast<double>(i)));
    return opt.step();
  }
};

template <class T>
double max_abs_diff(const std::vector<T>& a, const std::vector<T>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return m;
}

}  // namespace

TEST_CASE("warmup_cosine: linear warmup, cosine to min_lr_ratio, then flat", "[schedule]") {
  const auto s = muon::Schedule::warmup_cosine({.warmup_steps = 10, .total_steps = 110, .min_lr_ratio = 0.1});
  CHECK(s(1) == Approx(0.1).margin(1e-15));
  CHECK(s(5) == Approx(0.5).margin(1e-15));
  CHECK(s(10) == Approx(1.0).margin(1e-15));
  CHECK(s(60) == Approx(0.1 + 0.9 * 0.5).margin(1e-15));  // halfway through the cosine
  CHECK(s(35) == Approx(0.1 + 0.9 * 0.5 * (1 + std::cos(std::numbers::pi * 0.25))).margin(1e-15));
  CHECK(s(110) == Approx(0.1).margin(1e-15));
  CHECK(s(100000) == Approx(0.1).margin(1e-15));
  for (std::uint64_t t = 11; t < 110; ++t) CHECK(s(t + 1) <= s(t));  // monotone after warmup

  const auto no_warmup = muon::Schedule::warmup_cosine({.total_steps = 4, .min_lr_ratio = 0});
  CHECK(no_warmup(1) < 1.0);
  CHECK(no_warmup(4) == 0.0);
  CHECK(muon::Schedule::constant()(7) == 1.0);
  CHECK(muon::Schedule{}.is_constant());
}

TEMPLATE_TEST_CASE("bad schedules are rejected with a clear error", "[schedule][bad_input]", MUON_TEST_BACKENDS) {
  using Catch::Matchers::Contains;
  CHECK_THROWS_WITH(muon::Schedule::warmup_cosine({.warmup_steps = 5}), Contains("total_steps"));
  CHECK_THROWS_WITH(muon::Schedule::warmup_cosine({.warmup_steps = 5, .total_steps = 5}), Contains("must exceed"));
  CHECK_THROWS_WITH(muon::Schedule::warmup_cosine({.total_steps = 5, .min_lr_ratio = 1.5}), Contains("min_lr_ratio"));
  CHECK_THROWS_WITH(muon::Schedule::custom({}), Contains("empty"));

  // A custom schedule that goes bad at step 3: step() throws before anything changes.
  Rig<TestType> rig({.schedule = muon::Schedule::custom([](std::uint64_t t) {
    return t < 3 ? 1.0 : std::numeric_limits<double>::quiet_NaN();
  })});
  rig.step(0);
  rig.step(1);
  const auto w = rig.w;
  const auto state = rig.opt.state_snapshot();
  CHECK_THROWS_WITH(rig.step(2), Contains("step 3") && Contains("finite"));
  CHECK(rig.w == w);
  CHECK(rig.opt.state_snapshot() == state);
  CHECK(rig.opt.steps_taken() == 2);
}

TEMPLATE_TEST_CASE("a scheduled run equals a run whose rates are set by hand each step", "[schedule]", MUON_TEST_BACKENDS) {
  const double lr = 0.05, fallback_lr = 0.01;
  const auto schedule = muon::Schedule::warmup_cosine({.warmup_steps = 3, .total_steps = 12, .min_lr_ratio = 0.2});
  Rig<TestType> scheduled({.lr = lr, .weight_decay = 0.1, .schedule = schedule, .fallback = {.lr = fallback_lr}});
  Rig<TestType> by_hand({.lr = lr, .weight_decay = 0.1, .fallback = {.lr = fallback_lr}});
  for (int t = 0; t < 15; ++t) {
    const double m = schedule(static_cast<std::uint64_t>(t + 1));
    by_hand.opt.set_lr(lr * m);
    by_hand.opt.set_fallback_lr(fallback_lr * m);
    const auto r = scheduled.step(t);
    by_hand.step(t);
    CHECK(r.lr == lr * m);
    CHECK(r.fallback_lr == fallback_lr * m);
    REQUIRE(scheduled.w == by_hand.w);
    REQUIRE(scheduled.b == by_hand.b);
  }
  // The base rates are what the user set; the schedule multiplies them.
  CHECK(scheduled.opt.lr() == lr);
  CHECK(scheduled.opt.fallback_lr() == fallback_lr);
}

TEMPLATE_TEST_CASE("resume from a checkpoint continues the schedule where it was", "[schedule][checkpoint]",
                   MUON_TEST_BACKENDS) {
  const auto schedule = muon::Schedule::warmup_cosine({.warmup_steps = 4, .total_steps = 20});
  Rig<TestType> uninterrupted({.schedule = schedule});
  Rig<TestType> first({.schedule = schedule});
  for (int t = 0; t < 7; ++t) {
    uninterrupted.step(t);
    first.step(t);
  }
  std::stringstream file;
  first.opt.save(file, {.parameters = true});
  Rig<TestType> resumed({.schedule = schedule});
  resumed.opt.load(file);
  for (int t = 7; t < 20; ++t) {
    const auto a = uninterrupted.step(t);
    const auto b = resumed.step(t);
    CHECK(a.lr == b.lr);
    CHECK(a.fallback_lr == b.fallback_lr);
  }
  CHECK(uninterrupted.w == resumed.w);
  CHECK(uninterrupted.b == resumed.b);
}

TEMPLATE_TEST_CASE("modular scaling: lr x layer/depth x sqrt(fan_out/fan_in), each factor switchable",
                   "[schedule][modular]", MUON_TEST_BACKENDS) {
  // w is 8 x 12: fan_out 8, fan_in 12.
  const double shape = std::sqrt(8.0 / 12.0);
  auto scale_of = [](auto& rig) { return rig.opt.routing_report().entries[0].lr_scale; };
  Rig<TestType> both({.lr_adjust = muon::LrAdjust::none, .modular = {.depth = true, .shape = true}}, {.layer = 3, .depth = 4});
  CHECK(scale_of(both) == Approx(0.75 * shape).epsilon(1e-15));
  Rig<TestType> depth_only({.lr_adjust = muon::LrAdjust::none, .modular = {.depth = true}}, {.layer = 1, .depth = 4});
  CHECK(scale_of(depth_only) == Approx(0.25).epsilon(1e-15));
  Rig<TestType> shape_only({.lr_adjust = muon::LrAdjust::none, .modular = {.shape = true}});
  CHECK(scale_of(shape_only) == Approx(shape).epsilon(1e-15));
  Rig<TestType> off({}, {.layer = 2, .depth = 4});  // layer given, scaling off: the default lr_adjust only
  CHECK(scale_of(off) == 1.0);  // 8 x 12 is wide: sqrt(max(1, 8/12)) = 1
  CHECK(both.opt.routing_report().entries[1].lr_scale == 1.0);  // the fallback owns its lr

  // The factor is what the step applies: the same run with lr scaled by hand matches.
  Rig<TestType> by_hand({.lr = 0.02 * 0.75 * shape, .lr_adjust = muon::LrAdjust::none});
  for (int t = 0; t < 5; ++t) {
    both.step(t);
    by_hand.step(t);
  }
  CHECK(max_abs_diff(both.w, by_hand.w) < 1e-15);
}

TEST_CASE("modular scaling: bad options and registrations are rejected", "[schedule][modular][bad_input]") {
  // Option and registration checks run before any backend work: one backend covers them.
  using Catch::Matchers::Contains;
  using Opt = muon::Muon<muon::backend::Eigen<double>>;
  CHECK_THROWS_WITH(Opt({.modular = {.shape = true}}), Contains("lr_adjust"));
  Opt opt({.lr_adjust = muon::LrAdjust::none, .modular = {.depth = true}});
  Mat<double> w = Mat<double>::Ones(4, 4), g = Mat<double>::Zero(4, 4);
  CHECK_THROWS_WITH(opt.add("w", w, g), Contains("'w'") && Contains("layer and depth"));
  CHECK_THROWS_WITH(opt.add("w", w, g, {.layer = 5, .depth = 4}), Contains("'w'") && Contains("1 <= layer <= depth"));
  CHECK_THROWS_WITH(opt.add("w", w, g, {.layer = 2}), Contains("together"));
  CHECK(opt.size() == 0);
  opt.add("w", w, g, {.layer = 4, .depth = 4});
  CHECK(opt.size() == 1);
}

TEST_CASE("lr_adjust defaults: original for Muon, none for the manifold compositions", "[schedule][lr_adjust]") {
  // Options defaults and the routing report's lr scale involve no backend arithmetic; by-name
  // construction for every backend is test_by_name's (and would multiply this file's build time).
  using B = muon::backend::Eigen<double>;
  // A tall 40 x 12 weight: original scales its lr by sqrt(40 / 12); the manifold constraints step
  // lr * A as their formulas say, so their compositions default to none.
  auto scale_of = []<class Opt>(Opt opt) {
    Mat<double> w = Mat<double>::Identity(40, 12), g = Mat<double>::Zero(40, 12);
    opt.add("w", w, g);
    return opt.routing_report().entries[0].lr_scale;
  };
  CHECK(muon::Muon<B>::Options{}.lr_adjust == muon::LrAdjust::original);
  CHECK(muon::StiefelMuon<B>::Options{}.lr_adjust == muon::LrAdjust::none);
  CHECK(muon::HypersphereMuon<B>::Options{}.lr_adjust == muon::LrAdjust::none);
  CHECK(scale_of(muon::Muon<B>{}) == Approx(std::sqrt(40.0 / 12.0)).epsilon(1e-15));
  CHECK(scale_of(muon::StiefelMuon<B>{}) == 1.0);
  CHECK(scale_of(muon::HypersphereMuon<B>{}) == 1.0);
  // Still a choice: set explicitly, it applies.
  CHECK(scale_of(muon::StiefelMuon<B>({.lr_adjust = muon::LrAdjust::original})) == Approx(std::sqrt(40.0 / 12.0)).epsilon(1e-15));
  // By name, the same defaults.
  for (const char* name : {"stiefel_muon", "hypersphere_muon"}) {
    INFO(name);
    auto opt = muon::make_optimizer<B>(name, {});
    Mat<double> w = Mat<double>::Identity(40, 12), g = Mat<double>::Zero(40, 12);
    opt->add("w", w, g);
    CHECK(opt->routing_report().entries[0].lr_scale == 1.0);
  }
  // The modular shape factor needs lr_adjust none: the manifold compositions take it as they are.
  CHECK_NOTHROW(muon::StiefelMuon<B>({.modular = {.shape = true}}));
  CHECK_THROWS_WITH(muon::Muon<B>({.modular = {.shape = true}}), Catch::Contains("lr_adjust"));
}
