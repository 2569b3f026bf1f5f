// Lion fallback: parity with the lion_16x24 golden trajectory (lucidrains lion-pytorch
// update_fn, float64 reference) and the properties that make it Lion: sign(0) = 0, steps of
// exactly lr whatever the gradient's size, the sign taken from the momentum before the step,
// finite results for gradients near the largest finite value, option checks, and MuonLion's
// routing and state names.
#include <catch2/catch.hpp>

#include "support/backends.hpp"

#include <cmath>
#include <limits>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/golden.hpp"
#include "support/tolerance.hpp"

static_assert(muon::Fallback<muon::policy::Lion, muon::backend::Eigen<float>>);
static_assert(muon::Fallback<muon::policy::Lion, muon::backend::Eigen<double>>);

namespace {

using muon::index_t;

template <class T>
using LionOpt = muon::MuonLion<muon::backend::Eigen<T>>;

// lr 1/4 and weight decay 1/2 make the decay factor 7/8; with parameters on a 1/8 grid every
// product and sum below is exact in float and double, so the tests can compare with ==.
constexpr double k_lr = 0.25;
constexpr double k_wd = 0.5;
constexpr double k_decay = 1.0 - k_lr * k_wd;

template <class T>
std::vector<T> eighths(std::size_t n) {
  std::vector<T> p(n);
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<T>((static_cast<int>(i % 17) - 8) / 8.0);
  return p;
}

}  // namespace

TEMPLATE_TEST_CASE("Lion fallback matches the lion-pytorch golden trajectory", "[golden][lion]", MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  const auto names = muon::test::golden_case_names("lion");
  REQUIRE(names.size() == 1);
  const auto c = muon::test::load_golden_case(names.front());
  REQUIRE(c.shape.size() == 2);
  const auto& h = c.hyperparameters;
  const muon::Shape shape{static_cast<index_t>(c.shape[0]), static_cast<index_t>(c.shape[1])};

  const auto& p0 = c.array("p0").values;
  std::vector<T> p(p0.begin(), p0.end()), g(p.size());
  muon::MuonLion<TestType> opt({.fallback = {.lr = h.at("lr").get<double>(),
                               .beta1 = h.at("beta1").get<double>(),
                               .beta2 = h.at("beta2").get<double>(),
                               .weight_decay = h.at("weight_decay").get<double>()}});
  // A 16x24 matrix would take the Muon path; the override sends it to the fallback under test.
  opt.add("p", muon::raw(p.data(), shape), muon::raw(g.data(), shape), {.path = muon::Path::fallback});
  REQUIRE(opt.path(0) == muon::Path::fallback);

  // The case was generated so that every sign argument is far from 0 relative to its terms
  // (manifest min_sign_margin) and float32 gives float64's signs: a correct float run cannot
  // flip one, so the whole error is the rounding of p * (1 - lr wd) - lr * sign.
  const auto& grads = c.array("grads");
  const auto& expected = c.array("expected");
  double worst = 0;
  for (std::size_t t = 0; t < static_cast<std::size_t>(c.steps); ++t) {
    const auto gt = muon::test::slice(grads, t);
    std::copy(gt.begin(), gt.end(), g.begin());
    REQUIRE(opt.step().all_applied());
    const std::vector<double> ours(p.begin(), p.end());
    worst = std::max(worst, muon::test::max_abs_diff(ours, muon::test::slice(expected, t)));
  }
  const double tol = muon::test::Tolerance<T>::golden(c.suggested_atol);
  INFO(c.name << ": worst max-abs error over " << c.steps << " steps " << worst << ", tolerance " << tol);
  CHECK(worst <= tol);
  CHECK(opt.state_snapshot().at("p/fallback/step") == std::vector<double>{static_cast<double>(c.steps)});
}

TEMPLATE_TEST_CASE("Lion: sign(0) = 0, so a zero gradient with zero momentum only decays", "[lion]",
                   MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  const std::size_t n = 40;
  const double wd = GENERATE(0.0, k_wd);
  auto p = eighths<T>(n);
  const auto p0 = p;
  std::vector<T> g(n, T(0));
  for (std::size_t i = 0; i < n; i += 2) g[i] = -T(0);  // negative zero is zero too
  muon::MuonLion<TestType> opt({.fallback = {.lr = k_lr, .weight_decay = wd}});
  opt.add("b", muon::raw(p.data(), {static_cast<index_t>(n)}), muon::raw(g.data(), {static_cast<index_t>(n)}));
  REQUIRE(opt.step().all_applied());
  const T decay = static_cast<T>(1.0 - k_lr * wd);
  for (std::size_t i = 0; i < n; ++i) CHECK(p[i] == p0[i] * decay);
  const auto snap = opt.state_snapshot();  // keep the map alive while iterating over it
  for (double m : snap.at("b/fallback/exp_avg")) CHECK(m == 0.0);
}

TEMPLATE_TEST_CASE("Lion: every element moves by exactly lr (plus decay), whatever the gradient's size", "[lion]",
                   MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  // Magnitudes from 1e-30 to 1e30 (inside float's normal range once scaled by 1 - beta1).
  std::vector<T> g;
  for (int e = -30; e <= 30; e += 3) {
    g.push_back(static_cast<T>(std::pow(10.0, e)));
    g.push_back(static_cast<T>(-3 * std::pow(10.0, e)));
  }
  const std::size_t n = g.size();
  auto p = eighths<T>(n);
  const auto p0 = p;
  muon::MuonLion<TestType> opt({.fallback = {.lr = k_lr, .weight_decay = k_wd}});
  opt.add("b", muon::raw(p.data(), {static_cast<index_t>(n)}), muon::raw(g.data(), {static_cast<index_t>(n)}));
  REQUIRE(opt.step().all_applied());
  for (std::size_t i = 0; i < n; ++i) {
    INFO("g = " << g[i]);
    CHECK(p[i] == p0[i] * static_cast<T>(k_decay) - (g[i] > 0 ? T(k_lr) : -T(k_lr)));
  }
}

TEMPLATE_TEST_CASE("Lion: the sign uses the momentum from before this step", "[lion]", MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  // beta2 = 0 makes m the last gradient; beta1 = 0.9 weighs the old m heavily. Step 1 (g = 1)
  // moves p down by lr. At step 2, 0.9 * m_old + 0.1 * g2 with m_old = 1:
  //   g2 = -0.05: +0.895 -> down again (the updated m, -0.05, would have sent it up);
  //   g2 = -20:   -1.1   -> up.
  const auto [g2, expected] = GENERATE(std::pair<double, double>{-0.05, -2 * k_lr}, std::pair<double, double>{-20.0, 0.0});
  std::vector<T> p{T(0)}, g{T(1)};
  muon::MuonLion<TestType> opt({.fallback = {.lr = k_lr, .beta1 = 0.9, .beta2 = 0.0}});
  opt.add("s", muon::raw(p.data(), {1}), muon::raw(g.data(), {1}));
  REQUIRE(opt.step().all_applied());
  CHECK(p[0] == T(-k_lr));
  g[0] = static_cast<T>(g2);
  REQUIRE(opt.step().all_applied());
  CHECK(p[0] == T(expected));
  const auto snap = opt.state_snapshot();
  CHECK(snap.at("s/fallback/exp_avg") == std::vector<double>{static_cast<double>(static_cast<T>(g2))});
  CHECK(snap.at("s/fallback/step") == std::vector<double>{2.0});
}

TEMPLATE_TEST_CASE("Lion: gradients near the largest finite value keep parameters and momentum finite", "[lion]",
                   MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  constexpr T big = std::numeric_limits<T>::max();
  const auto [beta1, beta2] = GENERATE(std::pair<double, double>{0.9, 0.99}, std::pair<double, double>{0.0, 0.0},
                                       std::pair<double, double>{0.5, 0.999}, std::pair<double, double>{0.999999, 0.3},
                                       std::pair<double, double>{0.1, 0.9999999});
  const std::size_t n = 32, steps = 25;
  auto p = eighths<T>(n);
  const auto p0 = p;
  std::vector<T> g(n);
  muon::MuonLion<TestType> opt({.fallback = {.lr = 1e-3, .beta1 = beta1, .beta2 = beta2, .weight_decay = 0.1}});
  opt.add("e", muon::raw(p.data(), {static_cast<index_t>(n)}), muon::raw(g.data(), {static_cast<index_t>(n)}));
  for (std::size_t t = 0; t < steps; ++t) {
    // Runs of the same sign (m grows towards max) broken by flips (m's terms cancel).
    for (std::size_t i = 0; i < n; ++i) {
      const T mag = (i % 3 == 0) ? big : std::nextafter(big, T(0)) * T(0.999);
      g[i] = ((t / (1 + i % 4)) % 2 == 0) == (i % 2 == 0) ? mag : -mag;
    }
    REQUIRE(opt.step().all_applied());
  }
  INFO("beta1 " << beta1 << ", beta2 " << beta2);
  for (std::size_t i = 0; i < n; ++i) {
    REQUIRE(std::isfinite(p[i]));
    CHECK(std::abs(static_cast<double>(p[i]) - static_cast<double>(p0[i])) <= steps * (1e-3 + 1e-4) + 1e-6);
  }
  const auto snap = opt.state_snapshot();
  for (double m : snap.at("e/fallback/exp_avg")) CHECK(std::isfinite(m));
}

TEMPLATE_TEST_CASE("Lion: a skipped (non-finite) gradient leaves the tensor and its state alone", "[lion]",
                   MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  std::vector<T> p{T(1), T(2)}, g{T(1), std::numeric_limits<T>::quiet_NaN()};
  muon::MuonLion<TestType> opt({.fallback = {.lr = k_lr}});
  opt.add("b", muon::raw(p.data(), {2}), muon::raw(g.data(), {2}));
  const auto result = opt.step();
  CHECK_FALSE(result.all_applied());
  CHECK(p == std::vector<T>{T(1), T(2)});
  const auto snap = opt.state_snapshot();
  CHECK(snap.at("b/fallback/step") == std::vector<double>{0.0});
  CHECK(snap.at("b/fallback/exp_avg") == std::vector<double>{0.0, 0.0});
}

TEST_CASE("Lion: options default to lion-pytorch's and bad values throw naming the option", "[lion]") {
  using muon::policy::Lion;
  const Lion::Options d;
  CHECK(d.lr == 1e-4);
  CHECK(d.beta1 == 0.9);
  CHECK(d.beta2 == 0.99);
  CHECK(d.weight_decay == 0.0);
  CHECK_NOTHROW(Lion{});
  CHECK_NOTHROW(Lion({.lr = 0.0, .beta1 = 0.0, .beta2 = 0.0, .weight_decay = 0.0}));

  constexpr double nan = std::numeric_limits<double>::quiet_NaN();
  constexpr double inf = std::numeric_limits<double>::infinity();
  using Catch::Matchers::Contains;
  CHECK_THROWS_AS(Lion({.lr = -1e-3}), muon::Error);
  CHECK_THROWS_WITH(Lion({.lr = -1e-3}), Contains("'lr'"));
  CHECK_THROWS_WITH(Lion({.lr = nan}), Contains("'lr'"));
  CHECK_THROWS_WITH(Lion({.lr = inf}), Contains("'lr'"));
  CHECK_THROWS_WITH(Lion({.beta1 = 1.0}), Contains("'beta1'"));
  CHECK_THROWS_WITH(Lion({.beta1 = -0.1}), Contains("'beta1'"));
  CHECK_THROWS_WITH(Lion({.beta1 = nan}), Contains("'beta1'"));
  CHECK_THROWS_WITH(Lion({.beta2 = 1.0}), Contains("'beta2'"));
  CHECK_THROWS_WITH(Lion({.beta2 = -1e-9}), Contains("'beta2'"));
  CHECK_THROWS_WITH(Lion({.weight_decay = -0.1}), Contains("'weight_decay'"));
  CHECK_THROWS_WITH(Lion({.weight_decay = inf}), Contains("'weight_decay'"));

  Lion lion({.lr = 3e-4});
  CHECK_THROWS_WITH(lion.set_lr(-1.0), Contains("'lr'"));
  CHECK(lion.lr() == 3e-4);  // a rejected value changes nothing
  lion.set_lr(1e-5);
  CHECK(lion.lr() == 1e-5);

  // Through the composition: checked when the optimizer is built.
  CHECK_THROWS_WITH(LionOpt<float>({.fallback = {.beta2 = 1.5}}), Contains("'beta2'"));
}

TEMPLATE_TEST_CASE("MuonLion routes a bias to Lion and a matrix to Muon", "[lion][routing]", MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  const index_t rows = 16, cols = 32;
  std::vector<T> w(static_cast<std::size_t>(rows * cols)), dw(w.size());
  for (std::size_t i = 0; i < w.size(); ++i) {
    w[i] = static_cast<T>(0.01 * std::sin(0.1 * static_cast<double>(i)));
    dw[i] = static_cast<T>(std::cos(0.37 * static_cast<double>(i)));
  }
  auto b = eighths<T>(static_cast<std::size_t>(rows));
  const auto b0 = b;
  std::vector<T> db(b.size());
  for (std::size_t i = 0; i < db.size(); ++i) db[i] = (i % 3 == 0) ? T(-2) : T(0.5);

  muon::MuonLion<TestType> opt({.fallback = {.lr = k_lr, .weight_decay = k_wd}});
  opt.add("w", muon::raw(w.data(), {rows, cols}), muon::raw(dw.data(), {rows, cols}));
  opt.add("b", muon::raw(b.data(), {rows}), muon::raw(db.data(), {rows}), {.role = muon::Role::bias});
  CHECK(opt.path(opt.id("w")) == muon::Path::matrix);
  CHECK(opt.path(opt.id("b")) == muon::Path::fallback);
  CHECK(opt.fallback_lr() == k_lr);
  REQUIRE(opt.step().all_applied());

  // The bias took a Lion step: each element moved by exactly the fallback lr after decay.
  for (std::size_t i = 0; i < b.size(); ++i)
    CHECK(b[i] == b0[i] * static_cast<T>(k_decay) - (db[i] > 0 ? T(k_lr) : -T(k_lr)));

  const auto snap = opt.state_snapshot();
  REQUIRE(snap.count("b/fallback/exp_avg") == 1);
  REQUIRE(snap.count("b/fallback/step") == 1);
  CHECK(snap.at("b/fallback/exp_avg").size() == b.size());
  CHECK(snap.at("b/fallback/step") == std::vector<double>{1.0});
  CHECK(snap.at("b/fallback/exp_avg")[0] == Approx(0.01 * -2.0).epsilon(1e-6));
  CHECK(snap.count("w/momentum") == 1);
  CHECK(snap.count("w/fallback/exp_avg") == 0);
  // One buffer the size of the tensor: Lion's memory is half of AdamW's.
  CHECK(opt.memory_report().fallback_state_bytes == b.size() * sizeof(T));
}
