// Opt-in telemetry: the numbers match what they claim, and the JSON line parses. Typed over every
// backend in MUON_TEST_BACKENDS; the references are computed in double from the tensors' values.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>
#include <nlohmann/json.hpp>

#include "support/backends.hpp"

namespace {
using Mat = Eigen::MatrixXd;
template <class T>
using MatT = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using VecT = Eigen::Matrix<T, Eigen::Dynamic, 1>;
}  // namespace

TEMPLATE_TEST_CASE("telemetry is off by default", "[telemetry]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using Mat = MatT<typename B::value_type>;
  Mat w = Mat::Random(4, 6), g = Mat::Random(4, 6);
  muon::Muon<B> opt;
  opt.add("w", w, g);
  CHECK(opt.step().telemetry == nullptr);
}

TEMPLATE_TEST_CASE("telemetry: gradient norms, filter amplification, orthogonality, skipped, JSON", "[telemetry]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  using Mat = MatT<T>;
  using Vec = VecT<T>;
  // The raw norm is a double sum of the values in either scalar; the filtered gradient is
  // computed in T, so a float backend's carries float rounding (~1e-7 relative).
  const double filtered_eps = std::is_same_v<T, float> ? 1e-6 : 1e-12;
  Mat w = Mat::Random(8, 16), g = Mat::Random(8, 16);
  Vec b = Vec::Random(8), gb = Vec::Random(8);
  const double lamb = 0.5;
  muon::MuonGrokfast<B> opt({.telemetry = true, .filter = {.lamb = lamb}});
  opt.add("w", w, g);
  opt.add("b", b, gb, {.role = muon::Role::bias});

  auto r = opt.step();
  REQUIRE(r.telemetry != nullptr);
  const auto& t = *r.telemetry;
  const double raw = std::sqrt(g.template cast<double>().squaredNorm() + gb.template cast<double>().squaredNorm());
  CHECK(t.grad_norm == Approx(raw).epsilon(1e-12));
  // First Grokfast step: the EMA is the gradient itself, so g' = (1 + lamb) g.
  CHECK(t.filtered_grad_norm == Approx((1 + lamb) * raw).epsilon(filtered_eps));
  CHECK(t.filter_delta_norm == Approx(lamb * raw).epsilon(filtered_eps));
  CHECK(t.filter_ratio() == Approx(1 + lamb));
  // NS5 leaves singular values in about [0.68, 1.2]: a visible, bounded orthogonality error.
  CHECK(t.orthogonality_error > 0.01);
  CHECK(t.orthogonality_error < 0.5);
  CHECK(t.lr == 0.02);
  CHECK(t.step == 1);

  gb(3) = std::numeric_limits<T>::quiet_NaN();
  r = opt.step();
  REQUIRE(r.telemetry != nullptr);
  CHECK(r.telemetry->skipped == std::vector<std::string>{"b"});
  const nlohmann::json json = nlohmann::json::parse(r.telemetry->to_json());
  CHECK(json.at("step") == 2);
  CHECK(json.at("skipped") == nlohmann::json::array({"b"}));
  CHECK(json.at("grad_norm").get<double>() == Approx(g.template cast<double>().norm()).epsilon(1e-6));  // only "w" was updated
  for (const char* key : {"lr", "fallback_lr", "filtered_grad_norm", "filter_ratio", "filter_delta_norm",
                          "orthogonality_error", "clipped_heads", "max_head_value", "dual_iterations", "max_residual", "max_stiefel_error", "max_sphere_error"})
    CHECK(json.contains(key));
}

TEST_CASE("telemetry: Polar Express in double reports a near-zero orthogonality error", "[telemetry]") {
  // A float64 property (1e-9), on one double backend.
  using B = muon::backend::Eigen<double>;
  using PolarMuon = muon::Optimizer<B, muon::policy::NoFilter, muon::policy::ShapeRoleRouter, muon::policy::PolarExpress,
                                    muon::policy::NoConstraint, muon::policy::AdamW>;
  // A well-conditioned gradient (orthogonal plus a small perturbation), tall and batched.
  Mat q = Mat::Identity(12, 6) + 0.1 * Mat::Random(12, 6);
  Mat w = Mat::Zero(12, 6);
  std::vector<double> stack(2 * 5 * 9, 0.0), gstack(stack.size());
  for (std::size_t i = 0; i < gstack.size(); ++i) gstack[i] = (i % 10 == 0 ? 1.0 : 0.0) + 0.01 * std::sin(1.0 * i);
  PolarMuon opt({.telemetry = true, .orthogonalizer = {.steps = 12}});
  opt.add("w", w, q);
  opt.add("stack", muon::raw(stack.data(), {2, 5, 9}), muon::raw(static_cast<const double*>(gstack.data()), {2, 5, 9}));
  const auto r = opt.step();
  REQUIRE(r.telemetry != nullptr);
  CHECK(r.telemetry->orthogonality_error < 1e-9);
}
