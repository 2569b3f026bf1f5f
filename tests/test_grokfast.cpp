// Grokfast gradient filters (GrokfastEMA, GrokfastMA): golden parity with the official code's
// semantics (tests/data/golden, grokfast_ema+adamw and grokfast_ma+sgd), and properties: the
// user's gradient is never written, warm-up, mean vs sum, the matrix path, NaN skips, bad
// options, state and memory reports. Typed over every backend in MUON_TEST_BACKENDS.
//
// Several tests read the filtered gradient g' directly: with plain SGD (lr 1, no momentum, no
// weight decay) as the fallback and the parameter set to 0 before each step, the step writes
// p = 0 - 1 (g' + 0 p) = -g' exactly.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/backends.hpp"
#include "support/golden.hpp"
#include "support/tolerance.hpp"

namespace {

using muon::index_t;
using muon::policy::GrokfastEMA;
using muon::policy::GrokfastMA;

template <class B, class Filter, class Fb>
using Composition = muon::Optimizer<B, Filter, muon::policy::ShapeRoleRouter,
                                    muon::policy::NewtonSchulz, muon::policy::NoConstraint, Fb>;

template <class B>
using EmaAdamW = Composition<B, GrokfastEMA, muon::policy::AdamW>;
template <class B>
using EmaSGD = Composition<B, GrokfastEMA, muon::policy::SGD>;
template <class B>
using MaSGD = Composition<B, GrokfastMA, muon::policy::SGD>;

template <class T>
std::vector<T> cast_values(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <class T>
std::vector<double> widen(const std::vector<T>& v) {
  return std::vector<double>(v.begin(), v.end());
}

// Overwrites a registered buffer in place (assigning a new vector would move its storage away
// from the pointer the optimizer holds).
template <class T>
void fill_from(std::vector<T>& dst, const std::vector<double>& src) {
  REQUIRE(dst.size() == src.size());
  std::transform(src.begin(), src.end(), dst.begin(), [](double x) { return static_cast<T>(x); });
}

// Random gradients already rounded to T, kept as double for the references.
template <class T>
std::vector<std::vector<double>> random_grads(std::size_t steps, std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<std::vector<double>> out(steps, std::vector<double>(n));
  for (auto& g : out)
    for (auto& x : g) x = static_cast<double>(static_cast<T>(normal(rng)));
  return out;
}

// The official gradfilter_ema in double: the filtered gradient of every step.
std::vector<std::vector<double>> reference_ema(const std::vector<std::vector<double>>& grads, double alpha,
                                               double lamb) {
  std::vector<std::vector<double>> out;
  std::vector<double> h;
  for (const auto& g : grads) {
    if (h.empty()) h = g;
    std::vector<double> f(g.size());
    for (std::size_t i = 0; i < g.size(); ++i) {
      h[i] = h[i] * alpha + g[i] * (1 - alpha);
      f[i] = g[i] + h[i] * lamb;
    }
    out.push_back(f);
  }
  return out;
}

// The official gradfilter_ma (trigger=False) in double: the filtered gradient of every step.
std::vector<std::vector<double>> reference_ma(const std::vector<std::vector<double>>& grads, std::size_t window,
                                              double lamb, bool mean, bool warmup) {
  std::vector<std::vector<double>> out, held;
  for (const auto& g : grads) {
    held.push_back(g);
    if (held.size() > window) held.erase(held.begin());
    std::vector<double> f = g;
    if (!warmup || held.size() == window) {
      for (std::size_t i = 0; i < g.size(); ++i) {
        double s = 0;
        for (const auto& x : held) s += x[i];
        const double avg = mean ? s / static_cast<double>(held.size()) : s;
        f[i] = g[i] + avg * lamb;
      }
    }
    out.push_back(f);
  }
  return out;
}

// A relative-to-magnitude bound for comparing a T computation with a double reference.
template <class T>
double loose_tol() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

// Runs `opt` (an SGD-fallback composition, lr 1) on one 1-D tensor, with p reset to 0 before
// every step, and returns g' of every step (= -p).
template <class T, class Opt>
std::vector<std::vector<double>> filtered_gradients(Opt& opt, const std::vector<std::vector<double>>& grads) {
  const std::size_t n = grads.front().size();
  std::vector<T> p(n), g(n);
  opt.add("p", muon::raw(p.data(), {static_cast<index_t>(n)}), muon::raw(g.data(), {static_cast<index_t>(n)}));
  std::vector<std::vector<double>> out;
  for (const auto& gt : grads) {
    std::fill(p.begin(), p.end(), T(0));
    fill_from(g, gt);
    REQUIRE(opt.step().all_applied());
    std::vector<double> f(n);
    for (std::size_t i = 0; i < n; ++i) f[i] = -static_cast<double>(p[i]);
    out.push_back(f);
  }
  return out;
}

double max_diff(const std::vector<std::vector<double>>& a, const std::vector<std::vector<double>>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t t = 0; t < a.size(); ++t) worst = std::max(worst, muon::test::max_abs_diff(a[t], b[t]));
  return worst;
}

// Feeds grads[t] and returns the worst max-abs error of p after step t+1 against expected[t],
// continuing from our own parameter.
template <class T, class Opt>
double run_golden(const muon::test::GoldenCase& c, Opt& opt) {
  const muon::Shape shape{static_cast<index_t>(c.shape.at(0)), static_cast<index_t>(c.shape.at(1))};
  auto p = cast_values<T>(c.array("p0").values);
  std::vector<T> g(p.size());
  opt.add("p", muon::raw(p.data(), shape), muon::raw(g.data(), shape), {.path = muon::Path::fallback});
  REQUIRE(opt.routing_report().entries.at(0).path == muon::Path::fallback);
  double worst = 0;
  for (std::size_t t = 0; t < static_cast<std::size_t>(c.steps); ++t) {
    fill_from(g, muon::test::slice(c.array("grads"), t));
    REQUIRE(opt.step().all_applied());
    worst = std::max(worst, muon::test::max_abs_diff(widen(p), muon::test::slice(c.array("expected"), t)));
  }
  return worst;
}

}  // namespace

// ---- golden parity -----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("GrokfastEMA + AdamW matches the grokfast_ema+adamw golden trajectory", "[golden][grokfast]",
                   MUON_TEST_BACKENDS) {
  const auto c = muon::test::load_golden_case("grokfast_ema_adamw_16x24");
  REQUIRE(c.algorithm == "grokfast_ema+adamw");
  const auto& h = c.hyperparameters;
  typename EmaAdamW<TestType>::Options o;
  o.filter = {.alpha = h.at("grokfast_ema").at("alpha").get<double>(),
              .lamb = h.at("grokfast_ema").at("lamb").get<double>()};
  const auto& a = h.at("adamw");
  o.fallback = {.lr = a.at("lr").get<double>(),
                .beta1 = a.at("beta1").get<double>(),
                .beta2 = a.at("beta2").get<double>(),
                .eps = a.at("eps").get<double>(),
                .weight_decay = a.at("weight_decay").get<double>()};
  EmaAdamW<TestType> opt(o);
  const double err = run_golden<typename TestType::value_type>(c, opt);
  const double tol = muon::test::Tolerance<typename TestType::value_type>::golden(c.suggested_atol);
  INFO(c.name << ": worst max-abs error over steps " << err << ", tolerance " << tol);
  CHECK(err <= tol);
}

TEMPLATE_TEST_CASE("GrokfastMA + SGD matches the grokfast_ma+sgd golden trajectory", "[golden][grokfast]",
                   MUON_TEST_BACKENDS) {
  const auto c = muon::test::load_golden_case("grokfast_ma_sgd_w5_mean_16x24");
  REQUIRE(c.algorithm == "grokfast_ma+sgd");
  const auto& h = c.hyperparameters.at("grokfast_ma");
  REQUIRE(h.at("filter_type").get<std::string>() == "mean");
  typename MaSGD<TestType>::Options o;
  o.filter = {.window = h.at("window_size").get<int>(),
              .lamb = h.at("lamb").get<double>(),
              .reduction = GrokfastMA::Reduction::mean,
              .warmup = h.at("warmup").get<bool>()};
  const auto& s = c.hyperparameters.at("sgd");
  o.fallback = {.lr = s.at("lr").get<double>(),
                .momentum = s.at("momentum").get<double>(),
                .weight_decay = s.at("weight_decay").get<double>()};
  MaSGD<TestType> opt(o);
  const double err = run_golden<typename TestType::value_type>(c, opt);
  const double tol = muon::test::Tolerance<typename TestType::value_type>::golden(c.suggested_atol);
  INFO(c.name << ": worst max-abs error over steps " << err << ", tolerance " << tol);
  CHECK(err <= tol);
}

// ---- filtered gradients against the official semantics ------------------------------------------

TEMPLATE_TEST_CASE("GrokfastEMA: g' = g + lamb h, h starts at the first gradient", "[grokfast]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const auto grads = random_grads<T>(12, 37, 1);
  const double alpha = 0.9, lamb = 3.0;
  EmaSGD<B> opt({.filter = {.alpha = alpha, .lamb = lamb}, .fallback = {.lr = 1.0}});
  const auto ours = filtered_gradients<T>(opt, grads);
  const auto ref = reference_ema(grads, alpha, lamb);
  CHECK(max_diff(ours, ref) <= 10 * loose_tol<T>());
  // Step 1: h == g, so g' == (1 + lamb) g.
  for (std::size_t i = 0; i < grads[0].size(); ++i)
    CHECK(ours[0][i] == Approx((1 + lamb) * grads[0][i]).epsilon(loose_tol<T>()).margin(loose_tol<T>()));
  CHECK(opt.state_snapshot().at("p/filter/steps") == std::vector<double>{12});
}

TEMPLATE_TEST_CASE("GrokfastMA: warm-up passes gradients unchanged for window - 1 steps", "[grokfast]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const int window = 4;
  const auto grads = random_grads<T>(11, 29, 2);
  MaSGD<B> opt({.filter = {.window = window, .lamb = 5.0}, .fallback = {.lr = 1.0}});
  const auto ours = filtered_gradients<T>(opt, grads);
  for (int t = 0; t < window - 1; ++t) {
    INFO("step " << t + 1);
    CHECK(ours[static_cast<std::size_t>(t)] == grads[static_cast<std::size_t>(t)]);  // bit for bit
  }
  CHECK(muon::test::max_abs_diff(ours[window - 1], grads[window - 1]) > 0.1);  // filtered from step `window`
  CHECK(max_diff(ours, reference_ma(grads, window, 5.0, true, true)) <= 10 * loose_tol<T>());
}

TEMPLATE_TEST_CASE("GrokfastMA: without warm-up every step is filtered over the gradients held", "[grokfast]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const auto grads = random_grads<T>(9, 23, 3);
  for (const auto reduction : {GrokfastMA::Reduction::mean, GrokfastMA::Reduction::sum}) {
    MaSGD<B> opt({.filter = {.window = 5, .lamb = 2.0, .reduction = reduction, .warmup = false}, .fallback = {.lr = 1.0}});
    const auto ours = filtered_gradients<T>(opt, grads);
    const auto ref = reference_ma(grads, 5, 2.0, reduction == GrokfastMA::Reduction::mean, false);
    CHECK(max_diff(ours, ref) <= 20 * loose_tol<T>());
  }
}

TEMPLATE_TEST_CASE("GrokfastMA: sum is window times mean", "[grokfast]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const int window = 3;
  const double lamb = 1.5;
  const auto grads = random_grads<T>(8, 31, 4);
  MaSGD<B> mean_opt({.filter = {.window = window, .lamb = lamb, .reduction = GrokfastMA::Reduction::mean},
                     .fallback = {.lr = 1.0}});
  MaSGD<B> sum_opt({.filter = {.window = window, .lamb = lamb, .reduction = GrokfastMA::Reduction::sum},
                    .fallback = {.lr = 1.0}});
  const auto mean = filtered_gradients<T>(mean_opt, grads);
  const auto sum = filtered_gradients<T>(sum_opt, grads);
  CHECK(max_diff(sum, reference_ma(grads, window, lamb, false, true)) <= 20 * loose_tol<T>());
  for (std::size_t t = window - 1; t < grads.size(); ++t)
    for (std::size_t i = 0; i < grads[t].size(); ++i)
      CHECK(sum[t][i] - grads[t][i] ==
            Approx(window * (mean[t][i] - grads[t][i])).epsilon(20 * loose_tol<T>()).margin(20 * loose_tol<T>()));
}

TEMPLATE_TEST_CASE("GrokfastMA: the ring wraps many times without drifting", "[grokfast]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const auto grads = random_grads<T>(203, 7, 5);
  MaSGD<B> opt({.filter = {.window = 6, .lamb = 5.0}, .fallback = {.lr = 1.0}});
  const auto ours = filtered_gradients<T>(opt, grads);
  CHECK(max_diff(ours, reference_ma(grads, 6, 5.0, true, true)) <= 20 * loose_tol<T>());
  const auto snap = opt.state_snapshot();
  CHECK(snap.at("p/filter/count") == std::vector<double>{6});
  CHECK(snap.at("p/filter/head") == std::vector<double>{203 % 6});
}

// ---- the user's gradient ---------------------------------------------------------------------

TEMPLATE_TEST_CASE("Grokfast filters never write the user's gradient", "[grokfast]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const auto grads = random_grads<T>(6, 16 * 24, 6);
  auto run = [&](auto& opt) {
    std::vector<T> p(16 * 24, T(0.1)), w(16 * 24, T(0.2)), g(16 * 24), gw(16 * 24);
    opt.add("p", muon::raw(p.data(), {16, 24}), muon::raw(g.data(), {16, 24}), {.path = muon::Path::fallback});
    opt.add("w", muon::raw(w.data(), {16, 24}), muon::raw(gw.data(), {16, 24}));  // matrix path
    for (const auto& gt : grads) {
      fill_from(g, gt);
      std::copy(g.begin(), g.end(), gw.begin());
      const auto before = g;
      REQUIRE(opt.step().all_applied());
      CHECK(g == before);
      CHECK(gw == before);
    }
  };
  EmaAdamW<B> ema;
  run(ema);
  MaSGD<B> ma({.filter = {.window = 3}});
  run(ma);
}

// ---- in front of the Muon matrix path --------------------------------------------------------

TEMPLATE_TEST_CASE("GrokfastEMA in front of the matrix path: momentum takes the filtered gradient", "[grokfast]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const std::size_t n = 16 * 24;
  const auto grads = random_grads<T>(2, n, 7);
  const double alpha = 0.98, lamb = 2.0, beta = 0.95;
  EmaAdamW<B> opt({.momentum = beta, .filter = {.alpha = alpha, .lamb = lamb}});
  muon::Muon<B> plain({.momentum = beta});
  std::vector<T> w(n, T(0.05)), g(n), w_plain(n, T(0.05)), g_plain(n);
  opt.add("w", muon::raw(w.data(), {16, 24}), muon::raw(g.data(), {16, 24}));
  plain.add("w", muon::raw(w_plain.data(), {16, 24}), muon::raw(g_plain.data(), {16, 24}));
  REQUIRE(opt.path(0) == muon::Path::matrix);

  const auto filtered = reference_ema(grads, alpha, lamb);
  std::vector<double> m(n, 0.0);
  for (std::size_t t = 0; t < grads.size(); ++t) {
    fill_from(g, grads[t]);
    std::copy(g.begin(), g.end(), g_plain.begin());
    REQUIRE(opt.step().all_applied());
    REQUIRE(plain.step().all_applied());
    for (std::size_t i = 0; i < n; ++i) m[i] += (1 - beta) * (filtered[t][i] - m[i]);
    const auto snap = opt.state_snapshot();
    INFO("step " << t + 1);
    CHECK(muon::test::max_abs_diff(snap.at("w/momentum"), m) <= 10 * loose_tol<T>());
    CHECK(snap.at("w/filter/steps") == std::vector<double>{static_cast<double>(t + 1)});
  }
  bool differs = false;
  for (std::size_t i = 0; i < n; ++i) {
    CHECK(std::isfinite(w[i]));
    differs = differs || std::abs(static_cast<double>(w[i]) - static_cast<double>(w_plain[i])) > 1e-4;
  }
  CHECK(differs);
}

TEMPLATE_TEST_CASE("GrokfastMA in front of the matrix path (column-major Eigen matrix)", "[grokfast]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;  // column-major: transposed physical view
  using Opt = Composition<B, GrokfastMA, muon::policy::AdamW>;
  const auto grads = random_grads<T>(3, 24 * 16, 8);
  const double beta = 0.9, lamb = 4.0;
  Opt opt({.momentum = beta, .filter = {.window = 2, .lamb = lamb, .reduction = GrokfastMA::Reduction::sum}});
  Mat W = Mat::Constant(24, 16, T(0.01)), G(24, 16);
  opt.add("w", W, G);
  REQUIRE(opt.path(0) == muon::Path::matrix);
  const auto filtered = reference_ma(grads, 2, lamb, false, true);
  std::vector<double> m(grads[0].size(), 0.0);
  for (std::size_t t = 0; t < grads.size(); ++t) {
    // grads[t] in the matrix's own (column-major) storage order, so m lines up with its buffer.
    std::copy(grads[t].begin(), grads[t].end(), G.data());
    REQUIRE(opt.step().all_applied());
    for (std::size_t i = 0; i < m.size(); ++i) m[i] += (1 - beta) * (filtered[t][i] - m[i]);
    INFO("step " << t + 1);
    CHECK(muon::test::max_abs_diff(opt.state_snapshot().at("w/momentum"), m) <= 10 * loose_tol<T>());
  }
  CHECK(W.allFinite());
}

// ---- NaN gradients ---------------------------------------------------------------------------

TEMPLATE_TEST_CASE("Grokfast: a NaN gradient skips the tensor and leaves its filter state alone", "[grokfast]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const std::size_t n = 16 * 24;
  auto run = [&](auto& opt, const std::vector<std::string>& keys) {
    std::vector<T> a(n, T(0.1)), b(n, T(0.1)), ga(n), gb(n);
    const auto ia = opt.add("a", muon::raw(a.data(), {16, 24}), muon::raw(ga.data(), {16, 24}));
    opt.add("b", muon::raw(b.data(), {static_cast<index_t>(n)}), muon::raw(gb.data(), {static_cast<index_t>(n)}));
    const auto grads = random_grads<T>(4, n, 9);
    for (std::size_t t = 0; t < 2; ++t) {
      fill_from(ga, grads[t]);
      std::copy(ga.begin(), ga.end(), gb.begin());
      REQUIRE(opt.step().all_applied());
    }
    const auto before = opt.state_snapshot();
    const auto a_before = a;
    fill_from(ga, grads[2]);
    std::copy(ga.begin(), ga.end(), gb.begin());
    ga[17] = std::numeric_limits<T>::quiet_NaN();
    const auto result = opt.step();
    REQUIRE(result.skipped.size() == 1);
    CHECK(result.skipped[0] == ia);
    const auto after = opt.state_snapshot();
    CHECK(a == a_before);
    for (const auto& key : keys) {
      INFO(key);
      CHECK(after.at("a/filter/" + key) == before.at("a/filter/" + key));
    }
    CHECK(after.at("a/momentum") == before.at("a/momentum"));
    CHECK(after.at("b/filter/" + keys.front()) != before.at("b/filter/" + keys.front()));
    // The next finite step continues as if the bad one never happened.
    fill_from(ga, grads[3]);
    REQUIRE(opt.step().all_applied());
    CHECK(std::all_of(a.begin(), a.end(), [](T x) { return std::isfinite(x); }));
  };
  EmaAdamW<B> ema;
  run(ema, {"ema", "steps"});
  MaSGD<B> ma({.filter = {.window = 2}});
  run(ma, {"window", "count", "head"});
}

// ---- options -----------------------------------------------------------------------------------

TEST_CASE("Grokfast: bad options throw muon::Error naming the option", "[grokfast]") {
  using Catch::Matchers::Contains;
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_AS(GrokfastEMA({.alpha = 1.0}), muon::Error);
  CHECK_THROWS_WITH(GrokfastEMA({.alpha = 1.0}), Contains("alpha"));
  CHECK_THROWS_WITH(GrokfastEMA({.alpha = -0.1}), Contains("alpha"));
  CHECK_THROWS_WITH(GrokfastEMA({.alpha = nan}), Contains("alpha"));
  CHECK_THROWS_WITH(GrokfastEMA({.lamb = inf}), Contains("lamb"));
  CHECK_THROWS_WITH(GrokfastEMA({.lamb = nan}), Contains("lamb"));
  CHECK_NOTHROW(GrokfastEMA({.alpha = 0.0, .lamb = -1.0}));

  CHECK_THROWS_AS(GrokfastMA({.window = 0}), muon::Error);
  CHECK_THROWS_WITH(GrokfastMA({.window = 0}), Contains("window"));
  CHECK_THROWS_WITH(GrokfastMA({.window = -3}), Contains("window"));
  CHECK_THROWS_WITH(GrokfastMA({.lamb = nan}), Contains("lamb"));
  CHECK_THROWS_WITH(GrokfastMA({.reduction = static_cast<GrokfastMA::Reduction>(7)}), Contains("reduction"));
  CHECK_NOTHROW(GrokfastMA({.window = 1}));

  // Through the composition's options, before any state exists.
  CHECK_THROWS_WITH(EmaAdamW<muon::backend::Eigen<float>>({.filter = {.alpha = 1.5}}), Contains("alpha"));
  CHECK_THROWS_WITH(MaSGD<muon::backend::Eigen<double>>({.filter = {.window = 0}}), Contains("window"));

  // Defaults are the official code's.
  CHECK(GrokfastEMA{}.options().alpha == 0.98);
  CHECK(GrokfastEMA{}.options().lamb == 2.0);
  CHECK(GrokfastMA{}.options().window == 100);
  CHECK(GrokfastMA{}.options().lamb == 5.0);
  CHECK(GrokfastMA{}.options().reduction == GrokfastMA::Reduction::mean);
  CHECK(GrokfastMA{}.options().warmup);
}

TEMPLATE_TEST_CASE("Grokfast filters satisfy the GradientFilter concept", "[grokfast]", MUON_TEST_BACKENDS) {
  STATIC_REQUIRE(muon::GradientFilter<GrokfastEMA, TestType>);
  STATIC_REQUIRE(muon::GradientFilter<GrokfastMA, TestType>);
}

// ---- state and memory reports ------------------------------------------------------------------

TEMPLATE_TEST_CASE("Grokfast state shows in state_snapshot and memory_report", "[grokfast]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const std::size_t nm = 16 * 24, nv = 40;
  std::vector<T> w(nm), gw(nm, T(1)), v(nv), gv(nv, T(1));

  SECTION("GrokfastEMA: one copy of each tensor") {
    EmaAdamW<B> opt;
    opt.add("w", muon::raw(w.data(), {16, 24}), muon::raw(gw.data(), {16, 24}));
    opt.add("v", muon::raw(v.data(), {static_cast<index_t>(nv)}), muon::raw(gv.data(), {static_cast<index_t>(nv)}));
    CHECK(opt.memory_report().filter_state_bytes == (nm + nv) * sizeof(T));
    REQUIRE(opt.step().all_applied());
    const auto snap = opt.state_snapshot();
    CHECK(snap.at("w/filter/ema").size() == nm);
    CHECK(snap.at("v/filter/ema").size() == nv);
    CHECK(snap.at("w/filter/steps") == std::vector<double>{1});
    CHECK(snap.at("v/filter/ema") == std::vector<double>(nv, 1.0));  // h == g after step 1
  }
  SECTION("GrokfastMA: window copies of each tensor (plus a row of ones)") {
    const int window = 7;
    MaSGD<B> opt({.filter = {.window = window}});
    opt.add("w", muon::raw(w.data(), {16, 24}), muon::raw(gw.data(), {16, 24}));
    opt.add("v", muon::raw(v.data(), {static_cast<index_t>(nv)}), muon::raw(gv.data(), {static_cast<index_t>(nv)}));
    CHECK(opt.memory_report().filter_state_bytes == (window * (nm + nv) + 2 * window) * sizeof(T));
    REQUIRE(opt.step().all_applied());
    REQUIRE(opt.step().all_applied());
    const auto snap = opt.state_snapshot();
    CHECK(snap.at("w/filter/window").size() == window * nm);
    CHECK(snap.at("v/filter/ones") == std::vector<double>(window, 1.0));
    CHECK(snap.at("v/filter/count") == std::vector<double>{2});
    CHECK(snap.at("v/filter/head") == std::vector<double>{2});
    CHECK(opt.memory_report().filter_state_bytes == (window * (nm + nv) + 2 * window) * sizeof(T));
  }
}

// ---- checkpoints -------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("Grokfast state survives a checkpoint: resuming is bit-identical", "[grokfast][checkpoint]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const std::size_t n = 12 * 20;
  const auto grads = random_grads<T>(14, n, 10);
  auto check = [&](auto make, std::size_t save_at) {
    auto a = make();
    auto b = make();
    std::vector<T> pa(n, T(0.1)), ga(n), pb(n, T(0.3)), gb(n);
    a.add("w", muon::raw(pa.data(), {12, 20}), muon::raw(ga.data(), {12, 20}));
    b.add("w", muon::raw(pb.data(), {12, 20}), muon::raw(gb.data(), {12, 20}));
    for (std::size_t t = 0; t < save_at; ++t) {
      fill_from(ga, grads[t]);
      REQUIRE(a.step().all_applied());
    }
    std::stringstream file;
    a.save(file, {.parameters = true});
    b.load(file);
    CHECK(b.state_snapshot() == a.state_snapshot());
    for (std::size_t t = save_at; t < grads.size(); ++t) {
      fill_from(ga, grads[t]);
      std::copy(ga.begin(), ga.end(), gb.begin());
      REQUIRE(a.step().all_applied());
      REQUIRE(b.step().all_applied());
    }
    CHECK(pa == pb);
  };
  INFO("GrokfastEMA");
  check([] { return EmaAdamW<B>({.filter = {.alpha = 0.9}}); }, 5);
  for (const std::size_t save_at : {2, 4, 9}) {  // warming up, just full, wrapped
    INFO("GrokfastMA, saved after step " << save_at);
    check([] { return Composition<B, GrokfastMA, muon::policy::AdamW>({.filter = {.window = 4}}); }, save_at);
  }
}
