// QK-Clip (MuonClip): parity with the qk_clip_h4x8_32 golden case (Kimi K2 per-head clip) and
// the properties that make it QK-Clip: weight_norm mode never leaves a head above
// max_head_norm and leaves every other head bit-identical to plain Muon; logit mode scales
// exactly the offending heads (rotary query rows by gamma, other query rows by gamma^alpha, key
// rows by gamma^(1 - alpha)) and does nothing without a report; row- and column-major tensors;
// the step result's counts; bad input rejected with nothing changed; checkpoint round trip.
// Typed over every backend in MUON_TEST_BACKENDS; the tensors are Eigen matrices in both storage
// orders (containers every backend registers, and the test's own arithmetic on head rows).
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/backends.hpp"
#include "support/golden.hpp"
#include "support/tolerance.hpp"

template <class... Backends>
constexpr bool qk_clip_is_a_constraint = (muon::Constraint<muon::policy::QKClip, Backends, muon::policy::NewtonSchulz> && ...);
static_assert(qk_clip_is_a_constraint<MUON_TEST_BACKENDS>);

namespace {

using muon::index_t;
using muon::policy::QKClip;
using muon::policy::QKClipMode;

// A backend and an Eigen storage order for its tensors (row-major: physical = logical;
// column-major: the optimizer sees the transpose).
template <class B, int Order>
struct Storage {
  using backend = B;
  using scalar = typename B::value_type;
  using matrix = Eigen::Matrix<scalar, Eigen::Dynamic, Eigen::Dynamic, Order>;
  static constexpr const char* order = Order == Eigen::RowMajor ? "row-major" : "column-major";
};
using FloatRows = Storage<muon::backend::Eigen<float>, Eigen::RowMajor>;

// Runs f(Storage) for both storage orders of backend B (what the tests typed over float / double
// and both orders ran on the Eigen backend, now on every backend).
template <class B, class F>
void for_each_order(F&& f) {
  f(Storage<B, Eigen::RowMajor>{});
  f(Storage<B, Eigen::ColMajor>{});
}
// For the tests that ran on float row-major and double column-major: the same pairing per backend.
template <class B>
using OneOrder = Storage<B, std::is_same_v<typename B::value_type, float> ? Eigen::RowMajor : Eigen::ColMajor>;

template <class M>
double head_norm(const M& w, index_t h, index_t head_dim) {
  return w.middleRows(h * head_dim, head_dim).template cast<double>().norm();
}

template <class M>
void fill_normal(M& m, std::mt19937& rng, double scale) {
  std::normal_distribution<double> d(0.0, scale);
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) m(i, j) = static_cast<typename M::Scalar>(d(rng));
}

// The same attention layer (W_q, W_k and an untagged MLP matrix) in a MuonClip optimizer and in
// plain Muon with the same options and gradients: the Muon run is the reference a clip must
// leave alone.
template <class S>
struct Rig {
  using T = typename S::scalar;
  using M = typename S::matrix;
  using B = typename S::backend;

  index_t heads, head_dim, d_model;
  M q, k, mlp, gq, gk, gmlp;
  M ref_q, ref_k, ref_mlp;
  muon::MuonClip<B> clip;
  muon::Muon<B> ref;
  std::mt19937 rng;

  Rig(index_t heads_, index_t head_dim_, index_t d_model_, index_t rotary, QKClip::Options copt, double lr,
      std::uint32_t seed = 7)
      : heads(heads_),
        head_dim(head_dim_),
        d_model(d_model_),
        q(heads_ * head_dim_, d_model_),
        k(heads_ * head_dim_, d_model_),
        mlp(d_model_, d_model_),
        gq(M::Zero(heads_ * head_dim_, d_model_)),
        gk(M::Zero(heads_ * head_dim_, d_model_)),
        gmlp(M::Zero(d_model_, d_model_)),
        clip({.lr = lr, .constraint = copt}),
        ref({.lr = lr}),
        rng(seed) {
    fill_normal(q, rng, 0.1);
    fill_normal(k, rng, 0.1);
    fill_normal(mlp, rng, 0.1);
    ref_q = q;
    ref_k = k;
    ref_mlp = mlp;
    const muon::ParamOptions qo{.role = muon::Role::query, .heads = heads, .rotary_rows = rotary};
    const muon::ParamOptions ko{.role = muon::Role::key, .heads = heads};
    clip.add("q", q, gq, qo);
    clip.add("k", k, gk, ko);
    clip.add("mlp", mlp, gmlp);
    ref.add("q", ref_q, gq, qo);
    ref.add("k", ref_k, gk, ko);
    ref.add("mlp", ref_mlp, gmlp);
  }
  Rig(const Rig&) = delete;
  Rig& operator=(const Rig&) = delete;

  void new_gradients() {
    fill_normal(gq, rng, 1.0);
    fill_normal(gk, rng, 1.0);
    fill_normal(gmlp, rng, 1.0);
  }
  auto& q_state() { return clip.constraint_state(0); }
  auto& k_state() { return clip.constraint_state(1); }
};

template <class T>
bool same_bits(const T& a, const T& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() && (a.array() == b.array()).all();
}

template <class M>
std::vector<double> row_major_values(const M& m) {
  std::vector<double> out;
  out.reserve(static_cast<std::size_t>(m.size()));
  for (index_t i = 0; i < m.rows(); ++i)
    for (index_t j = 0; j < m.cols(); ++j) out.push_back(static_cast<double>(m(i, j)));
  return out;
}

// gamma^e as the clip computes it (sqrt for 1/2), rounded to the parameter type.
template <class T>
T factor(double gamma, double e) {
  if (gamma == 1.0 || e == 0.0) return T(1);
  if (e == 1.0) return static_cast<T>(gamma);
  if (e == 0.5) return static_cast<T>(std::sqrt(gamma));
  return static_cast<T>(std::pow(gamma, e));
}

}  // namespace

// ---- Golden parity ----------------------------------------------------------------------------

TEMPLATE_TEST_CASE("QK-Clip matches the qk_clip golden case", "[golden][qk_clip]", MUON_TEST_BACKENDS) {
  for_each_order<TestType>([&]<class S>(S) {
    INFO(S::order << " tensors");
    using T = typename S::scalar;
    using M = typename S::matrix;
    using B = typename S::backend;
    const auto names = muon::test::golden_case_names("qk_clip");
    REQUIRE(names.size() == 1);
    const auto c = muon::test::load_golden_case(names.front());
    const auto& h = c.hyperparameters;
    const auto heads = h.at("n_heads").get<index_t>();
    const auto rows = static_cast<index_t>(c.shape[0]), cols = static_cast<index_t>(c.shape[1]);
    REQUIRE(rows == heads * h.at("head_dim").get<index_t>());

    auto load = [&](const std::string& key) {
      const auto& v = c.array(key).values;
      M m(rows, cols);
      for (index_t i = 0; i < rows; ++i)
        for (index_t j = 0; j < cols; ++j) m(i, j) = static_cast<T>(v[static_cast<std::size_t>(i * cols + j)]);
      return m;
    };
    M wq = load("wq"), wk = load("wk");
    M gq = M::Zero(rows, cols), gk = M::Zero(rows, cols);
    const auto& s_values = c.array("s_max").values;
    const std::vector<T> s(s_values.begin(), s_values.end());

    // lr 0 and a zero gradient leave W exactly as it is (W * 1 - 0 * orth(0)), so only the clip acts.
    muon::MuonClip<B> opt({.lr = 0.0,
                           .constraint = {.tau = h.at("tau").get<double>(), .alpha = h.at("alpha").get<double>()}});
    opt.add("layer0.q", wq, gq, {.role = muon::Role::query, .heads = heads});
    opt.add("layer0.k", wk, gk, {.role = muon::Role::key, .heads = heads});
    REQUIRE(opt.path(0) == muon::Path::matrix);
    REQUIRE(opt.path(1) == muon::Path::matrix);
    muon::set_max_logits(opt, "layer0.q", "layer0.k", s);
    const auto result = opt.step();

    const double tol = muon::test::Tolerance<T>::golden(c.suggested_atol);
    const double err_q = muon::test::max_abs_diff(row_major_values(wq), c.array("expected_wq").values);
    const double err_k = muon::test::max_abs_diff(row_major_values(wk), c.array("expected_wk").values);
    const auto scales = opt.constraint_state(0).head_scales();
    const std::vector<double> gammas(scales.begin(), scales.end());
    const double err_gamma = muon::test::max_abs_diff(gammas, c.array("expected_gamma").values);
    INFO(c.name << ": max abs error W_q " << err_q << ", W_k " << err_k << ", gamma " << err_gamma << ", tolerance "
                << tol);
    CHECK(err_q <= tol);
    CHECK(err_k <= tol);
    CHECK(err_gamma <= 1e-15);
    const auto k_scales = opt.constraint_state(1).head_scales();
    CHECK(std::vector<double>(k_scales.begin(), k_scales.end()) == gammas);

    // S = [50, 100, 150, 400], tau 100: heads 2 and 3 of both tensors (100 is not above tau).
    std::size_t expected_clipped = 0;
    double largest = 0;
    for (double v : s_values) {
      expected_clipped += v > h.at("tau").get<double>() ? 2 : 0;
      largest = std::max(largest, v);
    }
    CHECK(result.constraint.clipped_heads == expected_clipped);
    CHECK(result.constraint.max_head_value == largest);
    const auto clipped = opt.constraint_state(0).clipped_heads();
    CHECK(std::vector<index_t>(clipped.begin(), clipped.end()) == std::vector<index_t>{2, 3});
  });
}

TEMPLATE_TEST_CASE("QK-Clip golden case through raw row-major buffers", "[golden][qk_clip]", MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  const auto c = muon::test::load_golden_case("qk_clip_h4x8_32");
  const auto& h = c.hyperparameters;
  const auto heads = h.at("n_heads").get<index_t>();
  const muon::Shape shape{static_cast<index_t>(c.shape[0]), static_cast<index_t>(c.shape[1])};
  std::vector<T> wq(c.array("wq").values.begin(), c.array("wq").values.end());
  std::vector<T> wk(c.array("wk").values.begin(), c.array("wk").values.end());
  std::vector<T> gq(wq.size()), gk(wk.size());
  const std::vector<T> s(c.array("s_max").values.begin(), c.array("s_max").values.end());

  muon::MuonClip<TestType> opt({.lr = 0.0, .constraint = {.tau = h.at("tau").get<double>()}});
  const auto q = opt.add("q", muon::raw(wq.data(), shape), muon::raw(gq.data(), shape),
                         {.role = muon::Role::query, .heads = heads});
  const auto k = opt.add("k", muon::raw(wk.data(), shape), muon::raw(gk.data(), shape),
                         {.role = muon::Role::key, .heads = heads});
  muon::set_max_logits(opt, q, s);
  muon::set_max_logits(opt, k, s);
  opt.step();
  const double tol = muon::test::Tolerance<T>::golden(c.suggested_atol);
  CHECK(muon::test::max_abs_diff(std::vector<double>(wq.begin(), wq.end()), c.array("expected_wq").values) <= tol);
  CHECK(muon::test::max_abs_diff(std::vector<double>(wk.begin(), wk.end()), c.array("expected_wk").values) <= tol);
}

// ---- Weight-norm mode -------------------------------------------------------------------------

TEMPLATE_TEST_CASE("QK-Clip weight_norm: no head ever ends a step above max_head_norm", "[qk_clip]", MUON_TEST_BACKENDS) {
  for_each_order<TestType>([&]<class S>(S) {
    INFO(S::order << " tensors");
    using T = typename S::scalar;
    const double limit = 1.0;
    // lr 0.5 grows every head well past the limit within a few steps.
    Rig<S> rig(4, 8, 24, 2, {.mode = QKClipMode::weight_norm, .max_head_norm = limit}, 0.5);
    const double slack = 4 * std::numeric_limits<T>::epsilon();
    std::size_t clipped_total = 0;
    for (int step = 0; step < 25; ++step) {
      rig.new_gradients();
      const auto r = rig.clip.step();
      clipped_total += r.constraint.clipped_heads;
      // The step result sums both tensors and takes the largest norm seen before clipping.
      const auto& qs = rig.q_state();
      const auto& ks = rig.k_state();
      CHECK(r.constraint.clipped_heads == qs.clipped_heads().size() + ks.clipped_heads().size());
      double largest = 0;
      for (double v : qs.head_values()) largest = std::max(largest, v);
      for (double v : ks.head_values()) largest = std::max(largest, v);
      CHECK(r.constraint.max_head_value == largest);
      for (index_t h = 0; h < rig.heads; ++h) {
        INFO("step " << step << ", head " << h);
        CHECK(head_norm(rig.q, h, rig.head_dim) <= limit * (1 + slack));
        CHECK(head_norm(rig.k, h, rig.head_dim) <= limit * (1 + slack));
      }
    }
    CHECK(clipped_total > 20);
  });
}

TEMPLATE_TEST_CASE("QK-Clip weight_norm: heads under the limit stay bit-identical to plain Muon", "[qk_clip]", MUON_TEST_BACKENDS) {
  for_each_order<TestType>([&]<class S>(S) {
    INFO(S::order << " tensors");
    using T = typename S::scalar;
    const double limit = 1.0;
    Rig<S> rig(4, 8, 24, 0, {.mode = QKClipMode::weight_norm, .max_head_norm = limit}, 0.01);
    // Heads 1 and 3 start far above the limit, heads 0 and 2 far below (and stay there at lr 0.01).
    for (auto* m : {&rig.q, &rig.k, &rig.ref_q, &rig.ref_k}) {
      for (index_t h : {0, 2}) m->middleRows(h * rig.head_dim, rig.head_dim) *= T(0.1);
      for (index_t h : {1, 3}) m->middleRows(h * rig.head_dim, rig.head_dim) *= T(20);
    }

    for (int step = 0; step < 6; ++step) {
      rig.new_gradients();
      const auto r = rig.clip.step();
      rig.ref.step();
      // Heads 1 and 3 are clipped at the first step; later the update may take them back under.
      if (step == 0) CHECK(r.constraint.clipped_heads == 4);
      for (auto* st : {&rig.q_state(), &rig.k_state()})
        for (index_t h : st->clipped_heads()) CHECK((h == 1 || h == 3));
      for (index_t h : {0, 2}) {
        CHECK(same_bits(rig.q.middleRows(h * rig.head_dim, rig.head_dim),
                        rig.ref_q.middleRows(h * rig.head_dim, rig.head_dim)));
        CHECK(same_bits(rig.k.middleRows(h * rig.head_dim, rig.head_dim),
                        rig.ref_k.middleRows(h * rig.head_dim, rig.head_dim)));
      }
      CHECK(same_bits(rig.mlp, rig.ref_mlp));  // untagged: never touched
      if (step == 0) {
        // First step: the clipped heads are plain Muon's rows times max_head_norm / norm, the norm
        // being the one the clip reports (of the same values, summed in double).
        for (index_t h : {1, 3}) {
          const double n = rig.q_state().head_values()[static_cast<std::size_t>(h)];
          CHECK(n == Approx(head_norm(rig.ref_q, h, rig.head_dim)).epsilon(1e-12));
          CHECK(rig.q_state().head_scales()[static_cast<std::size_t>(h)] == limit / n);
          const auto expected = (rig.ref_q.middleRows(h * rig.head_dim, rig.head_dim) * static_cast<T>(limit / n)).eval();
          CHECK(same_bits(rig.q.middleRows(h * rig.head_dim, rig.head_dim).eval(), expected));
        }
      }
      for (index_t h : rig.q_state().clipped_heads())
        CHECK(head_norm(rig.q, h, rig.head_dim) == Approx(limit).epsilon(4 * std::numeric_limits<T>::epsilon()));
      for (index_t h : {1, 3})
        CHECK(head_norm(rig.q, h, rig.head_dim) <= limit * (1 + 4 * std::numeric_limits<T>::epsilon()));
    }
    // Untagged tensors get an empty state.
    CHECK(!rig.clip.constraint_state(2).applies());
  });
}

// ---- Logit mode -------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("QK-Clip logit: scales exactly the offending heads", "[qk_clip]", MUON_TEST_BACKENDS) {
  for_each_order<TestType>([&]<class S>(S) {
    INFO(S::order << " tensors");
    using T = typename S::scalar;
    const double tau = 100, alpha = 0.3;
    const index_t rotary = 2;
    Rig<S> rig(4, 6, 16, rotary, {.tau = tau, .alpha = alpha}, 0.02);
    const std::vector<T> s{T(10), T(250), T(100), T(1000)};  // heads 1 and 3 above tau; 100 is not
    rig.new_gradients();
    muon::set_max_logits(rig.clip, "q", "k", s);
    CHECK(rig.q_state().reported());
    const auto r = rig.clip.step();
    rig.ref.step();
    CHECK(!rig.q_state().reported());
    CHECK(r.constraint.clipped_heads == 4);
    CHECK(r.constraint.max_head_value == 1000.0);

    const index_t hd = rig.head_dim;
    for (index_t h = 0; h < rig.heads; ++h) {
      const double sh = static_cast<double>(s[static_cast<std::size_t>(h)]);
      const double gamma = sh > tau ? tau / sh : 1.0;
      CHECK(rig.q_state().head_scales()[static_cast<std::size_t>(h)] == gamma);
      CHECK(rig.q_state().head_values()[static_cast<std::size_t>(h)] == sh);
      for (index_t j = 0; j < hd; ++j) {
        const index_t row = h * hd + j;
        const bool rot = j >= hd - rotary;
        const T fq = factor<T>(gamma, rot ? 1.0 : alpha);
        const T fk = factor<T>(gamma, 1.0 - alpha);
        INFO("head " << h << ", row " << row << (rot ? " (rotary)" : ""));
        CHECK(same_bits(rig.q.row(row).eval(), (rig.ref_q.row(row) * fq).eval()));
        CHECK(same_bits(rig.k.row(row).eval(), (rig.ref_k.row(row) * fk).eval()));
        if (gamma == 1.0) {
          CHECK(same_bits(rig.q.row(row).eval(), rig.ref_q.row(row).eval()));
          CHECK(same_bits(rig.k.row(row).eval(), rig.ref_k.row(row).eval()));
        } else {
          CHECK(!same_bits(rig.q.row(row).eval(), rig.ref_q.row(row).eval()));
        }
      }
    }
    CHECK(same_bits(rig.mlp, rig.ref_mlp));

    // The product q_h . k_h scales by gamma_h: rotary rows pair with a shared (untouched) key, the
    // rest with the clipped key, gamma^alpha * gamma^(1 - alpha) = gamma.
    const T f_q = factor<T>(0.1, alpha), f_k = factor<T>(0.1, 1 - alpha);
    CHECK(static_cast<double>(f_q) * static_cast<double>(f_k) == Approx(0.1).epsilon(1e-6));
  });
}

TEMPLATE_TEST_CASE("QK-Clip logit: a step without a report changes nothing", "[qk_clip]", MUON_TEST_BACKENDS) {
  for_each_order<TestType>([&]<class S>(S) {
    INFO(S::order << " tensors");
    Rig<S> rig(4, 8, 24, 2, {}, 0.02);
    for (int step = 0; step < 3; ++step) {
      rig.new_gradients();
      const auto r = rig.clip.step();
      rig.ref.step();
      CHECK(r.constraint.clipped_heads == 0);
      CHECK(r.constraint.max_head_value == 0.0);
      CHECK(rig.q_state().head_values().empty());
      CHECK(rig.q_state().clipped_heads().empty());
      CHECK(same_bits(rig.q, rig.ref_q));
      CHECK(same_bits(rig.k, rig.ref_k));
    }
    // A report is used by one step only.
    using T = typename S::scalar;
    const std::vector<T> s(4, T(1e4));
    muon::set_max_logits(rig.clip, "q", "k", s);
    rig.new_gradients();
    CHECK(rig.clip.step().constraint.clipped_heads == 8);
    CHECK(!rig.q_state().reported());
    rig.new_gradients();
    const auto r = rig.clip.step();
    CHECK(r.constraint.clipped_heads == 0);
    CHECK(rig.q_state().clipped_heads().empty());
  });
}

TEMPLATE_TEST_CASE("QK-Clip: alpha 1 puts the whole scale on W_q", "[qk_clip]", MUON_TEST_BACKENDS) {
  using S = OneOrder<TestType>;
  using T = typename S::scalar;
  Rig<S> rig(2, 4, 8, 0, {.tau = 1.0, .alpha = 1.0}, 0.0);
  const std::vector<T> s{T(4), T(0.5)};
  muon::set_max_logits(rig.clip, "q", "k", s);
  rig.clip.step();
  CHECK(same_bits(rig.k, rig.ref_k));
  CHECK(same_bits(rig.q.topRows(4).eval(), (rig.ref_q.topRows(4) * T(0.25)).eval()));
  CHECK(same_bits(rig.q.bottomRows(4).eval(), rig.ref_q.bottomRows(4).eval()));
}

TEMPLATE_TEST_CASE("QK-Clip logit: a tensor stepped without max logits is reported", "[qk_clip]", MUON_TEST_BACKENDS) {
  using S = OneOrder<TestType>;
  using T = typename S::scalar;
  Rig<S> rig(4, 8, 24, 2, {}, 0.02);
  CHECK(!rig.q_state().stepped_without_logits());
  const std::vector<T> s{T(1), T(300), T(2), T(150)};
  auto step = [&] {
    rig.new_gradients();
    return rig.clip.step();
  };
  // Nothing reported: both tensors say so, the untagged one does not.
  auto r = step();
  CHECK(r.constraint.tensors_without_logits == 2);
  CHECK(rig.q_state().stepped_without_logits());
  CHECK(rig.k_state().stepped_without_logits());
  CHECK(!rig.clip.constraint_state(2).stepped_without_logits());
  // Only W_q reported: W_k is the one without.
  muon::set_max_logits(rig.clip, "q", s);
  r = step();
  CHECK(r.constraint.tensors_without_logits == 1);
  CHECK(r.constraint.clipped_heads == 2);
  CHECK(!rig.q_state().stepped_without_logits());
  CHECK(rig.k_state().stepped_without_logits());
  // Both reported: none.
  muon::set_max_logits(rig.clip, "q", "k", s);
  r = step();
  CHECK(r.constraint.tensors_without_logits == 0);
  CHECK(!rig.q_state().stepped_without_logits());
  CHECK(!rig.k_state().stepped_without_logits());
  // A tensor skipped for a NaN gradient was not updated, so it is not counted.
  rig.new_gradients();
  rig.gq(0, 0) = std::numeric_limits<T>::quiet_NaN();
  r = rig.clip.step();
  REQUIRE(r.skipped.size() == 1);
  CHECK(r.constraint.tensors_without_logits == 1);
  CHECK(rig.k_state().stepped_without_logits());

  // The count goes through merging (groups, threads) and the telemetry line.
  muon::ConstraintStats a, b;
  a.tensors_without_logits = 2;
  b.tensors_without_logits = 3;
  muon::merge_constraint_stats(a, b);
  CHECK(a.tensors_without_logits == 5);
  muon::Telemetry t;
  t.constraint = a;
  CHECK(t.to_json().find("\"tensors_without_logits\":5,") != std::string::npos);

  // Weight-norm mode needs no logits.
  Rig<S> w(4, 8, 24, 0, {.mode = QKClipMode::weight_norm}, 0.02);
  w.new_gradients();
  CHECK(w.clip.step().constraint.tensors_without_logits == 0);
  CHECK(!w.q_state().stepped_without_logits());
}

TEST_CASE("QK-Clip: a pair whose query and key are one tensor is rejected", "[qk_clip][bad_input]") {
  // Input checks that run before any backend work: one backend covers them.
  using S = FloatRows;
  Rig<S> rig(4, 8, 24, 2, {}, 0.02);
  // A second name of W_q (a tied registration with the same options).
  rig.clip.add("q_alias", rig.q, rig.gq, {.role = muon::Role::query, .heads = 4, .rotary_rows = 2});
  REQUIRE(rig.clip.id("q_alias") == rig.clip.id("q"));
  const std::vector<float> s{1, 2e3f, 3, 4};
  auto expect_error = [&](auto&& call, const std::string& needle) {
    try {
      call();
      FAIL("no muon::Error (expected: " << needle << ")");
    } catch (const muon::Error& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find(needle) != std::string::npos);
      CHECK(what.find("two tensors") != std::string::npos);
    }
    CHECK(!rig.q_state().reported());
  };
  expect_error([&] { muon::set_max_logits(rig.clip, "q", "q", s); }, "parameter 'q'");
  expect_error([&] { muon::set_max_logits(rig.clip, "q", "q_alias", s); }, "'q_alias' is the same");
  expect_error([&] { muon::set_max_logits(rig.clip, "q_alias", "q", s); }, "parameter 'q_alias'");
  expect_error([&] { muon::set_max_logits(rig.clip, muon::ParamId{0}, muon::ParamId{0}, s); }, "parameter 'q'");
  CHECK(rig.clip.step().constraint.clipped_heads == 0);
}

// ---- Bad input --------------------------------------------------------------------------------

TEST_CASE("QK-Clip: bad max logits throw, name the tensor and change nothing", "[qk_clip][bad_input]") {
  // Input checks that run before any backend work: one backend covers them.
  using S = FloatRows;
  Rig<S> rig(4, 8, 24, 2, {}, 0.02);
  auto expect_error = [&](auto&& call, const std::string& needle) {
    try {
      call();
      FAIL("no muon::Error (expected: " << needle << ")");
    } catch (const muon::Error& e) {
      const std::string what = e.what();
      INFO(what);
      CHECK(what.find(needle) != std::string::npos);
    }
    CHECK(!rig.q_state().reported());
    CHECK(!rig.k_state().reported());
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  expect_error([&] { muon::set_max_logits(rig.clip, "q", std::vector<float>{1, 2, 3}); }, "'q'");
  expect_error([&] { muon::set_max_logits(rig.clip, "q", std::vector<float>{1, 2, 3}); }, "3 max logits for 4 heads");
  expect_error([&] { muon::set_max_logits(rig.clip, "k", std::vector<float>{1, 2, 3, 4, 5}); }, "'k'");
  expect_error([&] { muon::set_max_logits(rig.clip, "q", std::vector<float>{1, -2, 3, 4}); }, "head 1");
  expect_error([&] { muon::set_max_logits(rig.clip, "q", std::vector<float>{1, 2, nan, 4}); }, "head 2");
  expect_error([&] { muon::set_max_logits(rig.clip, "q", std::vector<float>{1, 2, 3, inf}); }, "head 3");
  expect_error([&] { muon::set_max_logits(rig.clip, "mlp", std::vector<float>{1, 2, 3, 4}); }, "'mlp'");
  expect_error([&] { muon::set_max_logits(rig.clip, "nope", std::vector<float>{1, 2, 3, 4}); }, "nope");
  // The pair form checks both before setting either.
  expect_error([&] { muon::set_max_logits(rig.clip, "q", "mlp", std::vector<float>{1e3f, 2, 3, 4}); }, "'mlp'");

  // Nothing was reported, so the step is plain Muon.
  rig.new_gradients();
  CHECK(rig.clip.step().constraint.clipped_heads == 0);
  rig.ref.step();
  CHECK(same_bits(rig.q, rig.ref_q));

  // Weight-norm mode takes no logits.
  Rig<S> wrig(4, 8, 24, 0, {.mode = QKClipMode::weight_norm}, 0.02);
  try {
    muon::set_max_logits(wrig.clip, "q", std::vector<float>{1, 2, 3, 4});
    FAIL("weight_norm mode accepted max logits");
  } catch (const muon::Error& e) {
    CHECK(std::string(e.what()).find("weight_norm") != std::string::npos);
  }
  // A fallback-path tensor has no constraint state.
  std::vector<float> bias(24), gbias(24);
  wrig.clip.add("bias", muon::raw(bias.data(), {24}), muon::raw(gbias.data(), {24}), {.role = muon::Role::bias});
  CHECK_THROWS_AS(muon::set_max_logits(wrig.clip, "bias", std::vector<float>{1, 2, 3, 4}), muon::Error);
}

TEST_CASE("QK-Clip: registration and options are checked", "[qk_clip][bad_input]") {
  using B = muon::backend::Eigen<double>;
  muon::MuonClip<B> opt;
  Eigen::MatrixXd w = Eigen::MatrixXd::Zero(30, 16), g = Eigen::MatrixXd::Zero(30, 16);
  // 30 rows do not split into 4 heads (the core rejects it at registration).
  CHECK_THROWS_AS(opt.add("q", w, g, {.role = muon::Role::query, .heads = 4}), muon::Error);
  // A per-head rotary key is not what the rotary rule is for.
  try {
    opt.add("k", w, g, {.role = muon::Role::key, .heads = 5, .rotary_rows = 2});
    FAIL("a key with rotary_rows was accepted");
  } catch (const muon::Error& e) {
    CHECK(std::string(e.what()).find("'k'") != std::string::npos);
  }
  CHECK(opt.size() == 0);
  CHECK(opt.add("k", w, g, {.role = muon::Role::key, .heads = 5}) == 0);

  auto rejects = [](QKClip::Options o, const std::string& option) {
    try {
      QKClip clip(o);
      FAIL("accepted a bad '" << option << "'");
    } catch (const muon::Error& e) {
      CHECK(std::string(e.what()).find("'" + option + "'") != std::string::npos);
    }
  };
  rejects({.tau = 0}, "tau");
  rejects({.tau = -1}, "tau");
  rejects({.tau = std::numeric_limits<double>::infinity()}, "tau");
  rejects({.max_head_norm = 0}, "max_head_norm");
  rejects({.max_head_norm = std::numeric_limits<double>::quiet_NaN()}, "max_head_norm");
  rejects({.alpha = -0.1}, "alpha");
  rejects({.alpha = 1.5}, "alpha");
  rejects({.alpha = std::numeric_limits<double>::quiet_NaN()}, "alpha");
  rejects({.mode = static_cast<QKClipMode>(7)}, "mode");
  CHECK_NOTHROW(QKClip({.alpha = 0.0}));
  CHECK_NOTHROW(QKClip({.alpha = 1.0}));
  CHECK(QKClip{}.options().tau == 100.0);
  CHECK(QKClip{}.options().max_head_norm == 30.0);
  CHECK(QKClip{}.options().alpha == 0.5);
  CHECK(QKClip{}.options().mode == QKClipMode::logit);
}

// ---- State ------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("QK-Clip: state is named, sized by heads and survives a checkpoint", "[qk_clip][checkpoint]", MUON_TEST_BACKENDS) {
  using S = OneOrder<TestType>;
  using T = typename S::scalar;
  Rig<S> a(4, 8, 24, 2, {}, 0.02);
  Rig<S> b(4, 8, 24, 2, {}, 0.02);  // same seed: same parameters
  const std::vector<T> s{T(1), T(300), T(2), T(150)};
  a.new_gradients();
  b.new_gradients();
  muon::set_max_logits(a.clip, "q", "k", s);

  const auto snap = a.clip.state_snapshot();
  CHECK(snap.at("q/constraint/max_logits") == std::vector<double>(s.begin(), s.end()));
  CHECK(snap.at("q/constraint/reported") == std::vector<double>{1});
  CHECK(snap.count("mlp/constraint/max_logits") == 0);
  const auto mem = a.clip.memory_report();
  const auto mem_ref = a.ref.memory_report();
  CHECK(mem.matrix_state_bytes == mem_ref.matrix_state_bytes + 2 * 4 * sizeof(T));

  std::stringstream file;
  a.clip.save(file);
  b.clip.load(file);
  CHECK(b.q_state().reported());
  CHECK(b.k_state().reported());
  const auto ra = a.clip.step();
  const auto rb = b.clip.step();
  CHECK(ra.constraint.clipped_heads == 4);
  CHECK(rb.constraint.clipped_heads == ra.constraint.clipped_heads);
  CHECK(rb.constraint.max_head_value == ra.constraint.max_head_value);
  CHECK(same_bits(a.q, b.q));
  CHECK(same_bits(a.k, b.k));

  // Weight-norm mode keeps nothing between steps.
  Rig<S> w(4, 8, 24, 0, {.mode = QKClipMode::weight_norm}, 0.02);
  const auto wsnap = w.clip.state_snapshot();
  CHECK(wsnap.count("q/constraint/max_logits") == 0);
  CHECK(wsnap.count("q/constraint/reported") == 0);
}
