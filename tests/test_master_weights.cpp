// Master weights, quantized views and loss scaling (core/master_weights.hpp): 16-bit
// conversions bit-exact against Eigen's; bf16 / fp16 parameters updated through an fp32 master
// that follows the fp32 run exactly, with the 16-bit tensor its rounding; small updates that a
// 16-bit tensor alone would round away; loss-scaled fp16 gradients; overflow skips and reports
// with nothing changed; quantized views on the integer grid with straight-through updates;
// checkpoints restore the master and rewrite the 16-bit tensor; bad input rejected.
// The behaviour runs on every backend in MUON_TEST_BACKENDS, the master in the backend's scalar.
// The 16-bit tensors are Eigen::bfloat16 / Eigen::half matrices: containers every backend
// registers (they carry the bits), and the independent rounding the master's rounding is held to.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/backends.hpp"

namespace {

using muon::index_t;
using Backend = muon::backend::Eigen<float>;
template <class S>
using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic>;
template <class S>
using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
using Eigen::bfloat16;
using Eigen::half;

// A model stored in S (bf16 or fp16) with gradients in G, and the same model in the backend's
// scalar T fed the same gradient values: the reference the master copy must follow exactly.
template <class B, class S, class G = S>
struct Pair {
  using T = typename B::value_type;
  Mat<S> w;
  Mat<G> gw;
  Vec<S> b;
  Vec<G> gb;
  Mat<T> ref_w, ref_gw;
  Vec<T> ref_b, ref_gb;
  muon::Muon<B> low, ref;

  explicit Pair(typename muon::Muon<B>::Options o = {.lr = 0.01, .weight_decay = 0.1, .fallback = {.lr = 1e-3}})
      : w(10, 14), gw(10, 14), b(10), gb(10), low(o), ref(o) {
    std::mt19937 rng(3);
    std::normal_distribution<float> d(0.0f, 0.5f);
    for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = S(d(rng));
    for (Eigen::Index i = 0; i < b.size(); ++i) b.data()[i] = S(d(rng));
    gw.setZero();
    gb.setZero();
    ref_w = w.template cast<T>();
    ref_b = b.template cast<T>();
    ref_gw = Mat<T>::Zero(10, 14);
    ref_gb = Vec<T>::Zero(10);
    low.add("w", w, gw);
    low.add("b", b, gb, {.role = muon::Role::bias});
    ref.add("w", ref_w, ref_gw);
    ref.add("b", ref_b, ref_gb, {.role = muon::Role::bias});
  }
  // Gradients of step t; the reference gets the values after rounding to G, times `unscale`.
  void gradients(int t, float scale = 1.0f) {
    for (Eigen::Index i = 0; i < gw.size(); ++i)
      gw.data()[i] = G(scale * std::sin(0.7f * static_cast<float>(t) + 0.13f * static_cast<float>(i)));
    for (Eigen::Index i = 0; i < gb.size(); ++i)
      gb.data()[i] = G(scale * std::cos(0.3f * static_cast<float>(t) + 0.41f * static_cast<float>(i)));
    ref_gw = gw.template cast<T>() / static_cast<T>(scale);
    ref_gb = gb.template cast<T>() / static_cast<T>(scale);
  }
  std::vector<double> master(const std::string& name) { return low.state_snapshot().at(name + "/master"); }
};

template <class M>
std::vector<double> values(const M& m) {
  std::vector<double> v(static_cast<std::size_t>(m.size()));
  for (Eigen::Index i = 0; i < m.size(); ++i) v[static_cast<std::size_t>(i)] = static_cast<double>(m.data()[i]);
  return v;
}

}  // namespace

TEST_CASE("16-bit conversions round to nearest even, bit-exact with Eigen's", "[master_weights]") {
  using namespace muon::detail;
  for (std::uint32_t h = 0; h < 65536; ++h) {
    const auto bits = static_cast<std::uint16_t>(h);
    const float f16 = fp16_to_float(bits), fb = bf16_to_float(bits);
    const float e16 = static_cast<float>(Eigen::numext::bit_cast<half>(bits));
    const float eb = static_cast<float>(Eigen::numext::bit_cast<bfloat16>(bits));
    if (std::isnan(f16)) {
      REQUIRE(std::isnan(e16));
    } else {
      REQUIRE(std::bit_cast<std::uint32_t>(f16) == std::bit_cast<std::uint32_t>(e16));
      REQUIRE(float_to_fp16(f16) == bits);
    }
    if (std::isnan(fb)) {
      REQUIRE(std::isnan(eb));
    } else {
      REQUIRE(std::bit_cast<std::uint32_t>(fb) == std::bit_cast<std::uint32_t>(eb));
      REQUIRE(float_to_bf16(fb) == bits);
    }
  }
  std::mt19937 rng(7);
  std::size_t mismatches = 0;
  for (int i = 0; i < 1000000; ++i) {  // every float bit pattern class: normals, subnormals, huge
    const float f = std::bit_cast<float>(static_cast<std::uint32_t>(rng()));
    if (std::isnan(f)) continue;
    mismatches += float_to_fp16(f) != Eigen::numext::bit_cast<std::uint16_t>(half(f));
    mismatches += float_to_bf16(f) != Eigen::numext::bit_cast<std::uint16_t>(bfloat16(f));
  }
  CHECK(mismatches == 0);
  CHECK(float_to_fp16(65519.0f) == 0x7bff);  // rounds down to the largest half, 65504
  CHECK(float_to_fp16(65520.0f) == 0x7c00);  // rounds up to Inf
  CHECK(std::isnan(bf16_to_float(float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

TEMPLATE_TEST_CASE("a 16-bit parameter follows the fp32 run through its master copy", "[master_weights]",
                   MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  auto run = [&]<class S>(S) {
    INFO((std::is_same_v<S, bfloat16> ? "bf16" : "fp16"));
    Pair<TestType, S> pair;
    for (int t = 0; t < 12; ++t) {
      pair.gradients(t);
      REQUIRE(pair.low.step().all_applied());
      pair.ref.step();
      // The master is the run in T exactly (same arithmetic on the same values) ...
      REQUIRE(pair.master("w") == values(pair.ref_w));
      REQUIRE(pair.master("b") == values(pair.ref_b));
      // ... and the 16-bit tensor is its rounding.
      for (Eigen::Index i = 0; i < pair.w.size(); ++i)
        REQUIRE(Eigen::numext::bit_cast<std::uint16_t>(pair.w.data()[i]) ==
                Eigen::numext::bit_cast<std::uint16_t>(S(pair.ref_w.data()[i])));
    }
    const auto m = pair.low.memory_report();
    CHECK(m.master_weight_bytes == (10 * 14 + 10) * sizeof(T));
  };
  run(bfloat16{});
  run(half{});
}

TEMPLATE_TEST_CASE("updates too small for bf16 accumulate in the master", "[master_weights]", MUON_TEST_BACKENDS) {
  // bf16 spacing at 1.0 is 2^-7; SGD steps of 1e-4 round away in a bf16 tensor on their own.
  Vec<bfloat16> w = Vec<bfloat16>::Constant(4, bfloat16(1.0f)), g = Vec<bfloat16>::Constant(4, bfloat16(1.0f));
  muon::MuonSGD<TestType> opt({.fallback = {.lr = 1e-4}});
  opt.add("w", w, g);
  Vec<bfloat16> alone = w;
  for (int t = 0; t < 200; ++t) {
    opt.step();
    for (Eigen::Index i = 0; i < alone.size(); ++i)
      alone[i] = bfloat16(static_cast<float>(alone[i]) - 1e-4f * static_cast<float>(g[i]));
  }
  CHECK(static_cast<float>(alone[0]) == 1.0f);                              // stuck
  CHECK(static_cast<float>(w[0]) == Approx(0.98).margin(0.004));            // moved by 200 * 1e-4
  CHECK(opt.state_snapshot().at("w/master")[0] == Approx(0.98).epsilon(1e-4));
}

TEMPLATE_TEST_CASE("loss-scaled fp16 gradients are unscaled in workspace; overflow skips the step",
                   "[master_weights][loss_scale]", MUON_TEST_BACKENDS) {
  const float scale = 1024.0f;  // a power of two: unscaling is exact
  Pair<TestType, half> pair;
  for (int t = 0; t < 5; ++t) {
    pair.gradients(t, scale);
    const auto r = pair.low.step({.inv_scale = 1.0 / scale});
    CHECK_FALSE(r.overflow);
    pair.ref.step();
    REQUIRE(pair.master("w") == values(pair.ref_w));
    REQUIRE(pair.master("b") == values(pair.ref_b));
  }
  // An overflowed gradient: every tensor is skipped, nothing changes, the step says so.
  pair.gradients(5, scale);
  pair.gb[3] = half(std::numeric_limits<float>::infinity());
  const Mat<half> w = pair.w;
  const auto state = pair.low.state_snapshot();
  const auto r = pair.low.step({.inv_scale = 1.0 / scale});
  CHECK(r.overflow);
  CHECK(r.skipped.size() == 2);
  CHECK(pair.low.state_snapshot() == state);
  CHECK(values(pair.w) == values(w));
  // Without a loss scale, the default policy skips only the bad tensor and reports no overflow.
  const auto plain = pair.low.step();
  CHECK_FALSE(plain.overflow);
  CHECK(plain.skipped.size() == 1);
}

// (fp32 in the name: gradients in the backend's own scalar, float or double.)
TEMPLATE_TEST_CASE("loss scaling of fp32 gradients needs Options::loss_scaling; bad scales are rejected",
                   "[master_weights][loss_scale][bad_input]", MUON_TEST_BACKENDS) {
  using Catch::Matchers::Contains;
  using T = typename TestType::value_type;
  Mat<T> w = Mat<T>::Ones(6, 8), g = Mat<T>::Constant(6, 8, T(8));
  muon::Muon<TestType> plain;
  plain.add("w", w, g);
  CHECK_THROWS_WITH(plain.step({.inv_scale = 0.125}), Contains("'w'") && Contains("loss_scaling"));
  CHECK(plain.steps_taken() == 0);
  CHECK((w.array() == T(1)).all());

  Mat<T> w2 = w, g_scaled = g, w_ref = w, g_ref = g / T(8);
  muon::Muon<TestType> scaled({.loss_scaling = true}), ref;
  scaled.add("w", w2, g_scaled);
  ref.add("w", w_ref, g_ref);
  for (double bad : {0.0, -1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()})
    CHECK_THROWS_WITH(scaled.step({.inv_scale = bad}), Contains("inv_scale"));
  CHECK(scaled.steps_taken() == 0);
  scaled.step({.inv_scale = 0.125});
  ref.step();
  CHECK(w2 == w_ref);
  CHECK(g_scaled == g);  // the trainer's gradient is not written
}

TEMPLATE_TEST_CASE("a quantized view gets the fake-quantized master; updates go straight through",
                   "[master_weights][quantized]", MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  const index_t bits = 4;
  const T levels = 7;  // 2^(4-1) - 1
  Mat<T> view(8, 12), gview = Mat<T>::Zero(8, 12);
  std::mt19937 rng(11);
  std::normal_distribution<float> d(0.0f, 1.0f);
  for (Eigen::Index i = 0; i < view.size(); ++i) view.data()[i] = d(rng);
  Mat<T> ref = view, gref = gview;
  muon::Muon<TestType> opt, plain;
  opt.add("w", view, gview, {.fake_quant_bits = bits});
  plain.add("w", ref, gref);
  for (int t = 0; t < 6; ++t) {
    for (Eigen::Index i = 0; i < gview.size(); ++i) gview.data()[i] = static_cast<T>(std::sin(0.5f * static_cast<float>(t + i)));
    gref = gview;
    opt.step();
    plain.step();
    const auto master = opt.state_snapshot().at("w/master");
    REQUIRE(master == values(ref));  // straight-through: the master is the unquantized run
    double absmax = 0;
    for (double v : master) absmax = std::max(absmax, std::abs(v));
    const T s = static_cast<T>(absmax) / levels;
    std::size_t distinct_off_grid = 0;
    for (Eigen::Index i = 0; i < view.size(); ++i) {
      const T q = std::nearbyint(static_cast<T>(master[static_cast<std::size_t>(i)]) / s);
      CHECK(view.data()[i] == q * s);
      distinct_off_grid += view.data()[i] != static_cast<T>(master[static_cast<std::size_t>(i)]);
    }
    CHECK(distinct_off_grid > 0);
  }
}

TEMPLATE_TEST_CASE("checkpoints restore the master and rewrite the bf16 tensor", "[master_weights][checkpoint]",
                   MUON_TEST_BACKENDS) {
  Pair<TestType, bfloat16> a, b;
  for (int t = 0; t < 4; ++t) {
    a.gradients(t);
    a.low.step();
  }
  std::stringstream file;
  a.low.save(file);
  b.low.load(file);  // b's bf16 tensors still hold the initial values until load rewrites them
  CHECK(values(b.w) == values(a.w));
  CHECK(b.low.state_snapshot() == a.low.state_snapshot());
  for (int t = 4; t < 8; ++t) {
    a.gradients(t);
    b.gradients(t);
    a.low.step();
    b.low.step();
  }
  CHECK(values(b.w) == values(a.w));
  CHECK(b.master("w") == a.master("w"));
}

TEST_CASE("master-weight registrations are checked", "[master_weights][bad_input]") {
  // Registration checks run before any backend work: one backend covers them.
  using Catch::Matchers::Contains;
  Mat<bfloat16> w = Mat<bfloat16>::Zero(4, 4), g = Mat<bfloat16>::Zero(4, 4);
  Mat<float> gf = Mat<float>::Zero(4, 4);
  muon::Muon<Backend> opt;
  CHECK_THROWS_WITH(opt.add("w", w, g, {.fake_quant_bits = 1}), Contains("'w'") && Contains("fake_quant_bits"));
  CHECK_THROWS_WITH(opt.add("w", w, g, {.fake_quant_bits = 17}), Contains("fake_quant_bits"));
  // A bf16 tensor whose gradient is its own memory.
  CHECK_THROWS_WITH(opt.add("w", muon::raw(w.data(), {4, 4}), muon::raw(static_cast<const bfloat16*>(w.data() + 2), {4, 4})),
                    Contains("overlaps"));
  CHECK(opt.size() == 0);
  opt.add("w", w, gf);  // fp32 gradient for a bf16 parameter is fine
  CHECK(opt.size() == 1);
}
