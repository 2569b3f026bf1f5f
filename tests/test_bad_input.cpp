// Bad input: each gets a muon::Error that names the parameter (or option), and leaves the
// optimizer exactly as it was. NaN/Inf gradients follow the NonFinitePolicy.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

namespace {

template <class T>
using Opt = muon::Muon<muon::backend::Eigen<T>>;

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

// A small model: one matrix (Muon path) and one bias (AdamW path), with non-trivial state
// after two steps.
template <class T>
struct Model {
  Mat<T> w = Mat<T>::Random(8, 12);
  Mat<T> gw = Mat<T>::Random(8, 12);
  Vec<T> b = Vec<T>::Random(8);
  Vec<T> gb = Vec<T>::Random(8);
  Opt<T> opt;

  explicit Model(typename Opt<T>::Options o = {}) : opt(o) {
    opt.add("layer.weight", w, gw);
    opt.add("layer.bias", b, gb, {.role = muon::Role::bias});
    opt.step();
    opt.step();
  }
};

template <class T>
void require_error_naming(auto&& f, const std::string& needle) {
  try {
    f();
  } catch (const muon::Error& e) {
    INFO("message: " << e.what());
    CHECK(std::string(e.what()).find(needle) != std::string::npos);
    return;
  }
  FAIL("expected muon::Error mentioning '" << needle << "'");
}

}  // namespace

TEMPLATE_TEST_CASE("registration errors name the parameter and change nothing", "[bad_input]", float, double) {
  Model<TestType> m;
  const auto state_before = m.opt.state_snapshot();
  const auto report_before = m.opt.routing_report().to_string();
  Mat<TestType> w = Mat<TestType>::Random(4, 6);

  SECTION("gradient shape differs from parameter shape") {
    Mat<TestType> g = Mat<TestType>::Zero(6, 4);
    require_error_naming<TestType>([&] { m.opt.add("proj", w, g); }, "parameter 'proj': gradient shape (6, 4)");
  }
  SECTION("gradient rank differs") {
    Vec<TestType> g = Vec<TestType>::Zero(24);
    require_error_naming<TestType>([&] { m.opt.add("proj", w, g); }, "'proj'");
  }
  SECTION("null parameter data") {
    std::vector<TestType> g(24);
    require_error_naming<TestType>(
        [&] { m.opt.add("proj", muon::raw(static_cast<TestType*>(nullptr), {4, 6}), muon::raw(g.data(), {4, 6})); },
        "parameter 'proj': parameter data is null");
  }
  SECTION("null gradient data") {
    require_error_naming<TestType>(
        [&] { m.opt.add("proj", muon::raw(w.data(), {4, 6}), muon::raw(static_cast<const TestType*>(nullptr), {4, 6})); },
        "parameter 'proj': gradient data is null");
  }
  SECTION("duplicate name") {
    Mat<TestType> g = Mat<TestType>::Zero(4, 6);
    require_error_naming<TestType>([&] { m.opt.add("layer.weight", w, g); }, "parameter 'layer.weight': a parameter with this name");
  }
  SECTION("empty tensor") {
    Mat<TestType> e(0, 5), ge(0, 5);
    require_error_naming<TestType>([&] { m.opt.add("empty", e, ge); }, "parameter 'empty': empty tensor (0, 5)");
  }
  SECTION("gradient overlapping its parameter") {
    require_error_naming<TestType>([&] { m.opt.add("proj", w, w); }, "parameter 'proj': gradient memory overlaps");
  }
  SECTION("parameter overlapping another parameter") {
    std::vector<TestType> g(12);
    require_error_naming<TestType>(
        [&] { m.opt.add("view", muon::raw(m.w.data() + 4, {12}), muon::raw(g.data(), {12})); },
        "parameter 'view': parameter memory overlaps parameter 'layer.weight'");
  }
  SECTION("tied tensor with a different gradient") {
    Mat<TestType> g = Mat<TestType>::Zero(8, 12);
    require_error_naming<TestType>([&] { m.opt.add("tied", m.w, g); }, "one gradient");
  }
  SECTION("tied tensor whose registrations disagree on the path") {
    require_error_naming<TestType>([&] { m.opt.add("head", m.w, m.gw, {.role = muon::Role::output_head}); },
                                   "parameter 'head': is the same tensor as 'layer.weight'");
  }
  SECTION("override to the matrix path for a vector") {
    Vec<TestType> v = Vec<TestType>::Zero(5), gv = Vec<TestType>::Zero(5);
    require_error_naming<TestType>([&] { m.opt.add("vec", v, gv, {.path = muon::Path::matrix}); },
                                   "parameter 'vec': the matrix path needs a rank-2 or rank-3 tensor");
  }
  SECTION("non-contiguous Eigen block") {
    Mat<TestType> big = Mat<TestType>::Zero(10, 10), gbig = Mat<TestType>::Zero(10, 10);
    Eigen::Ref<Mat<TestType>> blk = big.block(0, 0, 4, 4);
    Eigen::Ref<Mat<TestType>> gblk = gbig.block(0, 0, 4, 4);
    CHECK_THROWS_AS(m.opt.add("block", blk, gblk), muon::Error);
  }
  CHECK(m.opt.state_snapshot() == state_before);
  CHECK(m.opt.routing_report().to_string() == report_before);
  CHECK(m.opt.size() == 2);
  // The optimizer still works after a rejected registration.
  CHECK(m.opt.step().step == 3);
}

TEMPLATE_TEST_CASE("non-finite hyperparameters are rejected at construction", "[bad_input]", float, double) {
  using O = typename Opt<TestType>::Options;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  CHECK_THROWS_WITH(Opt<TestType>(O{.lr = nan}), Catch::Contains("'lr' must be finite"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.lr = -1}), Catch::Contains("'lr' must be >= 0"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.momentum = 1.0}), Catch::Contains("'momentum' must be in [0, 1)"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.weight_decay = inf}), Catch::Contains("'weight_decay' must be finite"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.orthogonalizer = {.steps = -1}}), Catch::Contains("NewtonSchulz"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.orthogonalizer = {.coefficients = {nan, 1, 1}}}), Catch::Contains("coefficients.a"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.orthogonalizer = {.eps = 0}}), Catch::Contains("'eps' must be > 0"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.router = {.max_aspect_ratio = nan}}), Catch::Contains("max_aspect_ratio"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.fallback = {.lr = inf}}), Catch::Contains("AdamW: option 'lr'"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.fallback = {.beta2 = 1.5}}), Catch::Contains("AdamW: option 'beta2'"));
  CHECK_THROWS_WITH(Opt<TestType>(O{.fallback = {.eps = nan}}), Catch::Contains("AdamW: option 'eps'"));
  CHECK_THROWS_WITH(muon::MuonSGD<muon::backend::Eigen<TestType>>({.fallback = {.nesterov = true}}),
                    Catch::Contains("SGD: nesterov needs momentum"));

  Model<TestType> m;
  CHECK_THROWS_WITH(m.opt.set_lr(nan), Catch::Contains("'lr' must be finite"));
  CHECK_THROWS_WITH(m.opt.set_fallback_lr(-inf), Catch::Contains("AdamW"));
  CHECK(m.opt.lr() == 0.02);
}

TEMPLATE_TEST_CASE("a NaN/Inf gradient skips that parameter by default", "[bad_input][non_finite]", float, double) {
  Model<TestType> m;
  const auto state_before = m.opt.state_snapshot();
  const Mat<TestType> w_before = m.w;
  const Vec<TestType> b_before = m.b;
  m.gw(3, 5) = std::numeric_limits<TestType>::quiet_NaN();

  const auto r = m.opt.step();
  REQUIRE(r.skipped.size() == 1);
  CHECK(m.opt.name(r.skipped[0]) == "layer.weight");
  CHECK(m.w == w_before);    // the poisoned tensor did not move
  CHECK(m.b != b_before);    // the healthy one did
  auto after = m.opt.state_snapshot();
  CHECK(after.at("layer.weight/momentum") == state_before.at("layer.weight/momentum"));
  CHECK(after.at("layer.bias/fallback/step") == std::vector<double>{3});
  CHECK(m.w.allFinite());

  // Inf in the AdamW tensor: skipped too, and its step counter does not advance.
  m.gw.setRandom();
  m.gb(0) = std::numeric_limits<TestType>::infinity();
  const auto r2 = m.opt.step();
  REQUIRE(r2.skipped.size() == 1);
  CHECK(m.opt.name(r2.skipped[0]) == "layer.bias");
  CHECK(m.opt.state_snapshot().at("layer.bias/fallback/step") == std::vector<double>{3});
}

TEMPLATE_TEST_CASE("NonFinitePolicy::throw_error throws before anything changes", "[bad_input][non_finite]", float, double) {
  Model<TestType> m({.non_finite = muon::NonFinitePolicy::throw_error});
  const auto state_before = m.opt.state_snapshot();
  const Mat<TestType> w_before = m.w;
  const Vec<TestType> b_before = m.b;
  m.gb(2) = -std::numeric_limits<TestType>::infinity();
  CHECK_THROWS_WITH(m.opt.step(), Catch::Contains("parameter 'layer.bias': gradient has 1 non-finite"));
  CHECK(m.opt.state_snapshot() == state_before);
  CHECK(m.w == w_before);
  CHECK(m.b == b_before);
  CHECK(m.opt.steps_taken() == 2);
  m.gb(2) = 0;
  CHECK(m.opt.step().all_applied());
}

TEMPLATE_TEST_CASE("NonFinitePolicy::skip_step leaves every tensor alone", "[bad_input][non_finite]", float, double) {
  Model<TestType> m({.non_finite = muon::NonFinitePolicy::skip_step});
  const auto state_before = m.opt.state_snapshot();
  const Mat<TestType> w_before = m.w;
  const Vec<TestType> b_before = m.b;
  m.gb(1) = std::numeric_limits<TestType>::quiet_NaN();
  const auto r = m.opt.step();
  CHECK(r.skipped.size() == 2);
  CHECK(m.opt.state_snapshot() == state_before);
  CHECK(m.w == w_before);
  CHECK(m.b == b_before);
}

TEMPLATE_TEST_CASE("a zero gradient gives a zero update, never NaN", "[bad_input][degenerate]", float, double) {
  Mat<TestType> w = Mat<TestType>::Random(6, 10), gw = Mat<TestType>::Zero(6, 10);
  Vec<TestType> b = Vec<TestType>::Random(6), gb = Vec<TestType>::Zero(6);
  Opt<TestType> opt({.weight_decay = 0, .fallback = {.weight_decay = 0}});
  opt.add("w", w, gw);
  opt.add("b", b, gb, {.role = muon::Role::bias});
  const Mat<TestType> w0 = w;
  const Vec<TestType> b0 = b;
  for (int i = 0; i < 3; ++i) CHECK(opt.step().all_applied());
  CHECK(w == w0);
  CHECK(b == b0);
}

TEMPLATE_TEST_CASE("degenerate matrices: rank one, tiny, huge, 1 x n stay finite", "[bad_input][degenerate]", float, double) {
  using T = TestType;
  const T big = std::numeric_limits<T>::max() / T(4);
  const T tiny = std::numeric_limits<T>::denorm_min();
  Mat<T> w = Mat<T>::Random(6, 10), g(6, 10);
  Opt<T> opt;
  opt.add("w", w, g);
  SECTION("rank one") { g = Vec<T>::LinSpaced(6, 1, 6) * Vec<T>::LinSpaced(10, -1, 1).transpose(); }
  SECTION("huge entries (norm beyond the type's range)") { g.setConstant(big); }
  SECTION("denormal entries") { g.setConstant(tiny); }
  SECTION("mixed huge and tiny") {
    g.setConstant(tiny);
    g(0, 0) = big;
  }
  for (int i = 0; i < 5; ++i) REQUIRE(opt.step().all_applied());
  CHECK(w.allFinite());
}

TEMPLATE_TEST_CASE("AdamW and SGD keep parameters finite under extreme gradients", "[bad_input][degenerate]", float, double) {
  using T = TestType;
  const T big = std::numeric_limits<T>::max() / T(2);
  Vec<T> b = Vec<T>::Random(16), gb = Vec<T>::Constant(16, big);
  gb(3) = -big;
  gb(4) = 0;
  Opt<T> opt;
  opt.add("b", b, gb, {.role = muon::Role::bias});
  for (int i = 0; i < 5; ++i) REQUIRE(opt.step().all_applied());
  CHECK(b.allFinite());
}
