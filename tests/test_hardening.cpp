// Holes an adversarial probe found (issue P5), one test each: loss scaling that overflows after
// unscaling, finite inputs that used to overflow to Inf / NaN, options that do not survive the
// conversion to float, memory overlaps across tensors, element counts that overflow, a
// non-contiguous block, a StepResult that must survive add(), and the model container's
// checkpoint. Each check failed on the code before the fix.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>
#include <random>
#include <sstream>
#include <vector>

namespace {

using T = float;
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
using B = muon::backend::Eigen<T>;
constexpr T k_max = std::numeric_limits<T>::max();

void fill(Mat& m, double phase) {
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(std::sin(phase + 0.37 * static_cast<double>(i)));
}

}  // namespace

TEST_CASE("loss scaling: a gradient that overflows when unscaled fires the policy", "[hardening][loss_scaling]") {
  Mat w(4, 6), g(4, 6);
  fill(w, 0.0);
  fill(g, 1.0);
  g(0, 0) = 1e30f;  // finite, but x 1e10 is past the float range
  const Mat w0 = w;
  for (auto policy : {muon::NonFinitePolicy::skip_parameter, muon::NonFinitePolicy::skip_step,
                      muon::NonFinitePolicy::throw_error}) {
    muon::Muon<B> opt({.non_finite = policy, .loss_scaling = true});
    opt.add("w", w, g);
    if (policy == muon::NonFinitePolicy::throw_error) {
      CHECK_THROWS_WITH(opt.step({.inv_scale = 1e10}), Catch::Contains("parameter 'w'"));
    } else {
      const auto r = opt.step({.inv_scale = 1e10});
      CHECK(r.overflow);
      CHECK(r.skipped.size() == 1);
    }
    CHECK(w == w0);
    CHECK(opt.state_snapshot().at("w/momentum") == std::vector<double>(24, 0.0));
  }
  // An inv_scale the value type cannot hold is refused before anything happens.
  muon::Muon<B> opt({.loss_scaling = true});
  opt.add("w", w, g);
  CHECK_THROWS_WITH(opt.step({.inv_scale = 1e300}), Catch::Contains("inv_scale"));
  CHECK_THROWS_WITH(opt.step({.inv_scale = 1e-300}), Catch::Contains("inv_scale"));
  CHECK(opt.steps_taken() == 0);
  CHECK(w == w0);
}

TEST_CASE("finite gradients near the float maximum give finite parameters", "[hardening][numerics]") {
  Mat g(4, 6);
  fill(g, 2.0);
  auto run = [&](auto& opt, auto&... params) {
    for (int t = 0; t < 4; ++t) {
      g = (t % 2 == 0 ? 1.0f : -1.0f) * Mat::Constant(4, 6, k_max);  // momentum m ~ max, then g - m overflows
      g(1, 1) = 0;
      const auto r = opt.step();
      CHECK(r.all_applied());
    }
    CHECK((params.allFinite() && ...));
  };
  SECTION("Muon: momentum interpolation") {
    Mat w(4, 6);
    fill(w, 0.0);
    muon::Muon<B> opt({.momentum = 0.5});
    opt.add("w", w, g);
    run(opt, w);
    const auto m = opt.state_snapshot().at("w/momentum");
    for (double v : m) CHECK(std::isfinite(v));
  }
  SECTION("Grokfast EMA amplification") {
    Mat w(4, 6);
    fill(w, 0.0);
    muon::MuonGrokfast<B> opt({.filter = {.alpha = 0.5, .lamb = 5.0}});
    opt.add("w", w, g);
    run(opt, w);
  }
  SECTION("Grokfast MA sums a window") {
    Mat w(4, 6);
    fill(w, 0.0);
    muon::Optimizer<B, muon::policy::GrokfastMA, muon::policy::ShapeRoleRouter, muon::policy::NewtonSchulz,
                    muon::policy::NoConstraint, muon::policy::AdamW>
        opt({.filter = {.window = 3, .lamb = 5.0, .reduction = muon::policy::GrokfastMA::Reduction::sum, .warmup = false}});
    opt.add("w", w, g);
    run(opt, w);
  }
  SECTION("fallbacks: AdamW, Lion, SGD with momentum") {
    Mat a(4, 6), l(4, 6), s(4, 6);
    fill(a, 0.0);
    fill(l, 0.0);
    fill(s, 0.0);
    muon::Muon<B> adamw({.fallback = {.lr = 0.1, .weight_decay = 0.0}});
    muon::MuonLion<B> lion;
    muon::MuonSGD<B> sgd({.fallback = {.lr = 0.5, .momentum = 0.9}});
    adamw.add("a", a, g, {.role = muon::Role::embedding});
    lion.add("l", l, g, {.role = muon::Role::embedding});
    sgd.add("s", s, g, {.role = muon::Role::embedding});
    run(adamw, a);
    run(lion, l);
    run(sgd, s);
    // AdamW's second moment saturates rather than becoming Inf (which would freeze the tensor).
    const auto state = adamw.state_snapshot();
    for (double v : state.at("a/fallback/exp_avg_sq")) CHECK(std::isfinite(v));
  }
  SECTION("a learning rate beyond the float range (schedule x group scale)") {
    Mat w(4, 6), b(4, 1), gb(4, 1);
    fill(w, 0.0);
    fill(b, 1.0);
    fill(gb, 2.0);
    // The schedule alone: refused before anything changes.
    muon::Muon<B> wild({.schedule = muon::Schedule::custom([](std::uint64_t) { return 1e300; })});
    Mat w0 = w;
    wild.add("w", w0, g);
    CHECK_THROWS_WITH(wild.step(), Catch::Contains("beyond the float range"));
    CHECK(w0 == w);
    // Within range, times a group scale and the shape factor past it: used as FLT_MAX.
    muon::Muon<B> opt({.weight_decay = 0.1, .schedule = muon::Schedule::custom([](std::uint64_t) { return 1e30; })});
    opt.add("w", w, g, {.lr_scale = 1e30});
    opt.add("b", b, gb, {.role = muon::Role::bias, .lr_scale = 1e30});
    run(opt, w, b);
  }
  SECTION("parameters near the float maximum") {
    Mat w = Mat::Constant(4, 6, -k_max);
    muon::Muon<B> opt({.lr = 1e37});
    opt.add("w", w, g);
    run(opt, w);
  }
}

TEST_CASE("options that do not survive the conversion to float are refused", "[hardening][options]") {
  CHECK_THROWS_WITH(muon::Muon<B>({.fallback = {.eps = 1e-50}}), Catch::Contains("'eps'"));
  CHECK_THROWS_WITH(muon::Muon<B>({.lr = 1e39}), Catch::Contains("float range"));
  CHECK_THROWS_WITH(muon::MuonGrokfast<B>({.filter = {.lamb = -1e300}}), Catch::Contains("'lamb'"));
  CHECK_THROWS_WITH(muon::Muon<B>({.normuon = true, .normuon_eps = 1e-45}), Catch::Contains("'normuon_eps'"));
  // The same limits for a double optimizer: one Options means the same on every backend.
  CHECK_THROWS_AS(muon::Muon<muon::backend::Eigen<double>>({.fallback = {.eps = 1e-50}}), muon::Error);
  // Values inside the range are fine.
  muon::Muon<B> ok({.fallback = {.eps = 1e-30}});
  CHECK(ok.size() == 0);
}

TEST_CASE("memory overlaps between tensors are refused both ways", "[hardening][registration]") {
  std::vector<T> buffer(200, 0.5f);
  muon::Muon<B> opt;
  opt.add("a", muon::raw(buffer.data(), {4, 10}), muon::raw(static_cast<const T*>(buffer.data() + 40), {4, 10}));
  // b's gradient lies on a's parameter (the step writes a while reading b's gradient).
  CHECK_THROWS_WITH(opt.add("b", muon::raw(buffer.data() + 100, {4, 10}), muon::raw(static_cast<const T*>(buffer.data() + 20), {4, 10})),
                    Catch::Contains("parameter 'b': gradient memory overlaps parameter 'a'"));
  // c's parameter lies on a's gradient (the step writes c while reading a's gradient).
  CHECK_THROWS_WITH(opt.add("c", muon::raw(buffer.data() + 60, {4, 10}), muon::raw(static_cast<const T*>(buffer.data() + 140), {4, 10})),
                    Catch::Contains("parameter 'c': parameter memory overlaps the gradient of 'a'"));
  // Gradients may share memory: both are only read.
  opt.add("d", muon::raw(buffer.data() + 100, {4, 10}), muon::raw(static_cast<const T*>(buffer.data() + 40), {4, 10}));
  CHECK(opt.size() == 2);
}

TEST_CASE("element counts that overflow are refused", "[hardening][registration]") {
  std::vector<T> p(4), g(4);
  muon::Muon<B> opt;
  const muon::index_t huge = muon::index_t{1} << 40;
  CHECK_THROWS_WITH(opt.add("x", muon::raw(p.data(), {huge, huge}), muon::raw(static_cast<const T*>(g.data()), {huge, huge})),
                    Catch::Contains("parameter 'x': shape (1099511627776, 1099511627776) has too many elements"));
  CHECK(opt.size() == 0);
}

TEST_CASE("a non-contiguous Eigen block is refused naming the parameter", "[hardening][registration]") {
  Mat big(8, 8), gbig(8, 8);
  fill(big, 0.0);
  fill(gbig, 1.0);
  muon::Muon<B> opt;
  auto block = big.block(0, 0, 4, 4);
  auto gblock = gbig.block(0, 0, 4, 4);
  Eigen::Ref<Mat, 0, Eigen::OuterStride<>> ref(block);
  Eigen::Ref<const Mat, 0, Eigen::OuterStride<>> gref(gblock);
  CHECK_THROWS_WITH(opt.add("attn.q", ref, gref), Catch::Contains("parameter 'attn.q': parameter: Eigen tensor is not contiguous"));
  CHECK(opt.size() == 0);
}

TEST_CASE("a step's skipped list stays valid after add()", "[hardening][step_result]") {
  Mat w(4, 6), g(4, 6);
  fill(w, 0.0);
  g = Mat::Constant(4, 6, std::numeric_limits<T>::quiet_NaN());
  muon::Muon<B> opt;
  opt.add("w", w, g);
  const muon::StepResult r = opt.step();
  REQUIRE(r.skipped.size() == 1);
  // Many registrations after the step (the old code reallocated the list here).
  std::vector<Mat> more(40, Mat::Zero(3, 3)), gmore(40, Mat::Zero(3, 3));
  for (std::size_t i = 0; i < more.size(); ++i) {
    std::string name = "m";
    name += std::to_string(i);
    opt.add(name, more[i], gmore[i]);
  }
  CHECK(r.skipped.size() == 1);
  CHECK(r.skipped[0] == 0);  // read through the span: ASan reports a use-after-free if it dangles
}

TEST_CASE("a load that fails late changes nothing: ManifoldModel and single optimizers", "[hardening][checkpoint]") {
  // A fallback lr of +Inf used to pass the reader and throw after state, parameters and the
  // step count were written.
  Mat w(4, 6), g(4, 6);
  Vec b(4), gb(4);
  fill(w, 0.0);
  fill(g, 1.0);
  gb.setConstant(0.5f);
  b.setConstant(0.1f);
  muon::Muon<B> source;
  source.add("w", w, g);
  source.add("b", b, gb, {.role = muon::Role::bias});
  source.step();
  std::stringstream file;
  source.save(file, {.parameters = true});
  std::string bytes = file.str();
  // fallback_lr sits after magic(8) version(4) size(4) steps(8) lr(8) momentum(8) nesterov(1) wd(8) lr_adjust(4).
  const std::size_t at = 8 + 4 + 4 + 8 + 8 + 8 + 1 + 8 + 4;
  const double inf = std::numeric_limits<double>::infinity();
  std::memcpy(bytes.data() + at, &inf, sizeof(double));
  const auto sum = muon::detail::fnv1a64(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size() - 8);
  for (int i = 0; i < 8; ++i) bytes[bytes.size() - 8 + static_cast<std::size_t>(i)] = static_cast<char>((sum >> (8 * i)) & 0xff);

  Mat w2(4, 6), g2 = Mat::Zero(4, 6);
  Vec b2 = Vec::Zero(4), gb2 = Vec::Zero(4);
  fill(w2, 3.0);
  const Mat w2_before = w2;
  muon::Muon<B> target;
  target.add("w", w2, g2);
  target.add("b", b2, gb2, {.role = muon::Role::bias});
  const auto state_before = target.state_snapshot();
  std::istringstream is(bytes);
  CHECK_THROWS_WITH(target.load(is), Catch::Contains("learning rate"));
  CHECK(w2 == w2_before);
  CHECK(target.state_snapshot() == state_before);
  CHECK(target.steps_taken() == 0);
}

TEST_CASE("a 16-bit parameter is written saturated, never Inf from a finite master", "[hardening][master_weights]") {
  std::vector<muon::float16> h(24);
  std::vector<muon::bfloat16> hb(24);
  std::vector<T> g(24, 1.0f);
  // Encoding alone: finite values past the format's range give its largest finite value.
  CHECK(muon::detail::encode16(muon::ElementFormat::fp16, 1e6f) == 0x7bff);
  CHECK(muon::detail::encode16(muon::ElementFormat::fp16, -1e6f) == 0xfbff);
  CHECK(muon::detail::encode16(muon::ElementFormat::bf16, k_max) == 0x7f7f);
  CHECK(muon::detail::encode16(muon::ElementFormat::bf16, 1e300) == 0x7f7f);
  CHECK(muon::detail::encode16(muon::ElementFormat::fp16, std::numeric_limits<T>::infinity()) == 0x7c00);
  CHECK((muon::detail::encode16(muon::ElementFormat::fp16, std::numeric_limits<T>::quiet_NaN()) & 0x7fff) > 0x7c00);
  // Through a step: an fp16 weight at its largest finite value pushed past it by the update.
  for (auto& x : h) x = muon::float16{0x7bff};
  muon::Muon<B> opt({.lr = 1000.0});
  opt.add("w", muon::raw(h.data(), {4, 6}), muon::raw(static_cast<const T*>(g.data()), {4, 6}));
  for (auto& x : g) x = -1.0f;
  opt.step();
  for (auto& x : h) CHECK((x.bits & 0x7fff) <= 0x7bff);
}

TEST_CASE("constraint state is readable through a const optimizer", "[hardening][api]") {
  Mat q(8, 6), gq(8, 6);
  fill(q, 0.0);
  fill(gq, 1.0);
  muon::MuonClip<B> opt;
  const auto id = opt.add("q", q, gq, {.role = muon::Role::query, .heads = 2});
  const auto& view = opt;
  const auto& state = view.constraint_state(id);
  CHECK_FALSE(state.reported());
  CHECK_THROWS_WITH(view.constraint_state(id + 1), Catch::Contains("no parameter with id 1 (1 registered)"));
  CHECK_THROWS_AS(opt.name(7), muon::Error);
}

namespace {
// The conditional forms the vectorizable functors replaced (written out as they were).
template <class V>
V lerp_conditional(V x, V y, V w) {
  const V h = y * V(0.5) - x * V(0.5);
  return (w < V(0.5) && w > V(-0.5)) ? x + (V(2) * w) * h : y - h * (V(2) * (V(1) - w));
}
template <class V>
V saturate_conditional(V x, V max) {
  return x > max ? max : (x < -max ? -max : x);
}
template <class V>
std::int8_t q8_signed_conditional(V x, V scale) {
  V r = scale > V(0) ? (x < V(0) ? -x : x) / scale : V(0);
  r = r >= V(0) ? (r < V(1) ? r : V(1)) : V(0);
  const int q = static_cast<int>(V(127) * std::sqrt(r) + V(0.5));
  const int c = q > 127 ? 127 : q;
  return static_cast<std::int8_t>(x < V(0) ? -c : c);
}
template <class V>
std::uint8_t q8_unsigned_conditional(V v, V scale) {
  V r = scale > V(0) ? v / scale : V(0);
  r = r >= V(0) ? (r < V(1) ? r : V(1)) : V(0);
  const int q = static_cast<int>(V(255) * std::sqrt(std::sqrt(r)) + V(0.5));
  const int c = q > 255 ? 255 : q;
  return static_cast<std::uint8_t>(v > V(0) && scale > V(0) && c < 1 ? 1 : c);
}
template <class V>
bool same_bits(V a, V b) {
  return std::memcmp(&a, &b, sizeof(V)) == 0;
}
}  // namespace

TEMPLATE_TEST_CASE("branch-free functors give the bits of the conditional forms they replaced", "[hardening][numerics]",
                   float, double) {
  using V = TestType;
  std::mt19937 rng(11);
  std::uniform_real_distribution<double> unit(-1.0, 1.0);
  std::uniform_int_distribution<int> decade(-30, 30);
  const auto value = [&] { return static_cast<V>(unit(rng) * std::pow(10.0, decade(rng))); };
  const V max = std::numeric_limits<V>::max();
  const V specials[] = {V(0), -V(0), V(1), -V(1), max, -max, std::numeric_limits<V>::denorm_min(),
                        std::numeric_limits<V>::infinity(), -std::numeric_limits<V>::infinity()};
  for (const V w : {V(0), V(0.05), V(0.1), V(0.4999), V(0.5), V(0.9), V(0.95), V(0.999), V(1)}) {
    for (int i = 0; i < 20000; ++i) {
      const V x = value(), y = value();
      REQUIRE(same_bits(muon::fn::Lerp<V>{w}(x, y), lerp_conditional(x, y, w)));
    }
    for (const V x : specials)
      for (const V y : specials)
        if (std::isfinite(x) && std::isfinite(y)) REQUIRE(same_bits(muon::fn::Lerp<V>{w}(x, y), lerp_conditional(x, y, w)));
  }
  for (int i = 0; i < 20000; ++i) {
    const V x = value() * V(1e10), m = std::abs(value());
    REQUIRE(same_bits(muon::fn::saturate(x, m), saturate_conditional(x, m)));
    REQUIRE(same_bits(muon::fn::pick(i % 2 == 0, x, m), i % 2 == 0 ? x : m));
  }
  const V nan = std::numeric_limits<V>::quiet_NaN();
  CHECK(std::isnan(muon::fn::saturate(nan, max)));
  CHECK(same_bits(muon::fn::pick(true, -V(0), V(0)), -V(0)));
  CHECK(std::isnan(muon::fn::pick(false, V(1), nan)));
  // The q8 code against its conditional form, values spread over the block's range and beyond
  // it, zero and subnormal scales included.
  for (int i = 0; i < 50000; ++i) {
    const V scale = i % 97 == 0 ? V(0) : (i % 89 == 0 ? std::numeric_limits<V>::denorm_min() : std::abs(value()));
    const V x = i % 13 == 0 ? value() : scale * static_cast<V>(unit(rng) * 1.01);
    REQUIRE(muon::detail::q8_encode_signed(x, scale, false, 0, 0) == q8_signed_conditional(x, scale));
    const V v = std::abs(x);
    REQUIRE(muon::detail::q8_encode_unsigned(v, scale, false, 0, 0) == q8_unsigned_conditional(v, scale));
  }
}
