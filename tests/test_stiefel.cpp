// Stiefel (StiefelMuon, manifold Muon): every kind of tensor stays on the manifold for 1000 steps
// (float64; 300 in float32); the direction is a tangent descent direction, better tangent than the
// plain msign of the projected gradient, and independent of the gradient's scale; square matrices
// converge in one dual iteration; at most dual_steps + 2 orthogonalizer calls per step; zero
// gradients, zero and rank-deficient W; retract_every; what the step reports; checkpoints resume
// bit-identically (the step counter travels); NS5 as msign; bad options. No golden vectors
// exist for Stiefel: every check is a property computed here, in double, from the tensors.
// Every test runs on every backend in MUON_TEST_BACKENDS; a test whose bounds are float64
// properties (1e-10 .. 1e-13) runs its checks on the double backends and its float32 sibling (or
// float sections) on the float ones.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/backends.hpp"

template <class... Backends>
constexpr bool stiefel_is_a_constraint =
    ((muon::Constraint<muon::policy::Stiefel, Backends, muon::policy::PolarExpress> &&
      muon::Constraint<muon::policy::Stiefel, Backends, muon::policy::NewtonSchulz>) && ...);
static_assert(stiefel_is_a_constraint<MUON_TEST_BACKENDS>);

namespace {

using muon::index_t;
using muon::policy::Stiefel;

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;
using MatD = RowMat<double>;

template <class B>
using Opt = muon::StiefelMuon<B>;
template <class B>
inline constexpr bool in_double = std::is_same_v<typename B::value_type, double>;

// Per scalar: what the retraction reaches (its rounding floor, measured about 1e-15 in double
// and 1e-6 in float32 on these shapes) with a margin, and how closely our double recomputation
// of the residual must match the one the policy measured in T.
template <class T>
struct Tol;
template <>
struct Tol<double> {
  static constexpr double stiefel = 1e-10;
  static constexpr double residual_match = 1e-10;
  static constexpr double square_residual = 1e-12;
  static constexpr double scale_invariance = 1e-10;
};
template <>
struct Tol<float> {
  // float32: W^T W is summed in float, each entry off by about eps sqrt(n) (6e-8 x 7 here),
  // and ||.||_F over m^2 such entries measured 4e-7 .. 8e-7 for these shapes after 1000 steps.
  // 1e-5 leaves >10x margin and is still 1e4 below what a retraction by Polar Express alone
  // leaves (0.1 .. 1, see "the polish is what puts W on the manifold").
  static constexpr double stiefel = 1e-5;
  static constexpr double residual_match = 1e-5;
  static constexpr double square_residual = 1e-5;  // H rounds at ~1e-6 in float
  static constexpr double scale_invariance = 1e-4;
};

// A logical slice's ||W^T W - I||_F (W W^T - I when wide), computed in double.
double stiefel_error(const MatD& w) {
  const MatD gram = w.rows() >= w.cols() ? MatD(w.transpose() * w) : MatD(w * w.transpose());
  return (gram - MatD::Identity(gram.rows(), gram.cols())).norm();
}
template <class T>
double stiefel_error(const T* data, index_t rows, index_t cols) {
  return stiefel_error(Eigen::Map<const RowMat<T>>(data, rows, cols).template cast<double>());
}
// Worst slice of a row-major batch.
template <class T>
double stiefel_error(const std::vector<T>& v, index_t batch, index_t rows, index_t cols) {
  double worst = 0;
  for (index_t s = 0; s < batch; ++s) worst = std::max(worst, stiefel_error(v.data() + s * rows * cols, rows, cols));
  return worst;
}

// ||W^T A + A^T W||_F / m (W A^T + A W^T when wide), the tangent residual.
double tangent_residual(const MatD& w, const MatD& a) {
  const MatD h = w.rows() >= w.cols() ? MatD(w.transpose() * a + a.transpose() * w) : MatD(w * a.transpose() + a * w.transpose());
  return h.norm() / static_cast<double>(h.rows());
}

// The tangent projection of G at W (W on the manifold): G - W sym(W^T G) (G - sym(G W^T) W wide).
MatD tangent_projection(const MatD& w, const MatD& g) {
  if (w.rows() >= w.cols()) {
    const MatD s = w.transpose() * g;
    return g - w * (0.5 * (s + s.transpose()));
  }
  const MatD s = g * w.transpose();
  return g - (0.5 * (s + s.transpose())) * w;
}

double nuclear_norm(const MatD& x) { return Eigen::JacobiSVD<MatD>(x).singularValues().sum(); }

template <class T>
void fill_normal(std::vector<T>& v, std::mt19937& rng, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  for (auto& x : v) x = static_cast<T>(d(rng));
}
template <class M>
void fill_normal(M& m, std::mt19937& rng, double scale = 1.0) {
  std::normal_distribution<double> d(0.0, scale);
  for (index_t k = 0; k < m.size(); ++k) m.data()[k] = static_cast<typename M::Scalar>(d(rng));
}

// A random point of the manifold (the polar factor of a Gaussian matrix), row-major.
MatD random_stiefel(index_t rows, index_t cols, std::mt19937& rng) {
  MatD g(rows, cols);
  fill_normal(g, rng);
  Eigen::JacobiSVD<MatD> svd(g, Eigen::ComputeThinU | Eigen::ComputeThinV);
  return svd.matrixU() * svd.matrixV().transpose();
}

// The policy called directly, with a workspace of exactly what plan() reports for the logical
// shape (so a take() beyond the plan throws).
template <class B, class Orth = muon::policy::PolarExpress>
struct Direct {
  using T = typename B::value_type;
  B b;
  Orth orth;
  Stiefel stiefel;
  muon::ParamInfo info;
  muon::Workspace<B> ws;
  Stiefel::State<B> state;

  Direct(muon::Shape logical, Stiefel::Options o = {}) : stiefel(o), info{"w", logical} {
    ws.allocate(b, stiefel.plan(b, orth, info));
    state = stiefel.make_state(b, info);
  }
  // direction() on physical batch x rows x cols storage w (row-major, updated in place if the
  // policy retracts it first) and gradient g; returns A.
  std::vector<T> direction(std::vector<T>& w, std::vector<T> g, index_t batch, index_t rows, index_t cols,
                           bool transposed = false) {
    ws.reset();
    const muon::MatrixParam<T> p{{w.data(), batch, rows, cols}, transposed, &info, 0.02};
    stiefel.direction(b, state, orth, p, muon::backend::MatrixView<T>{g.data(), batch, rows, cols}, ws);
    return g;
  }
};

template <class T>
std::vector<T> to_vector(const MatD& m) {
  std::vector<T> v(static_cast<std::size_t>(m.size()));
  Eigen::Map<RowMat<T>>(v.data(), m.rows(), m.cols()) = m.template cast<T>();
  return v;
}
template <class T>
MatD slice(const std::vector<T>& v, index_t s, index_t rows, index_t cols) {
  return Eigen::Map<const RowMat<T>>(v.data() + s * rows * cols, rows, cols).template cast<double>();
}

// An orthogonalizer that forwards to Polar Express and counts its calls.
struct CountingPolarExpress : muon::policy::PolarExpress {
  using muon::policy::PolarExpress::PolarExpress;
  static inline long calls = 0;
  template <class B>
  void apply(B& b, muon::backend::MatrixView<typename B::value_type> x, muon::Workspace<B>& ws) const {
    ++calls;
    muon::policy::PolarExpress::apply(b, x, ws);
  }
};
static_assert(muon::Orthogonalizer<CountingPolarExpress, muon::backend::Eigen<double>>);

// Five tensors of every kind the matrix path takes: square, tall, wide (row-major), a 3-D stack
// of tall slices, a column-major matrix (wide logically, tall physically); and a bias (AdamW).
// Parameters start Gaussian, off the manifold.
template <class B, class Orth = muon::policy::PolarExpress>
struct Model {
  using T = typename B::value_type;
  using Composition = muon::Optimizer<B, muon::policy::NoFilter, muon::policy::ShapeRoleRouter, Orth,
                                      Stiefel, muon::policy::AdamW>;
  std::vector<T> square = std::vector<T>(24 * 24), tall = std::vector<T>(40 * 12), wide = std::vector<T>(12 * 40),
                 stack = std::vector<T>(4 * 16 * 8);
  ColMat<T> col = ColMat<T>(16, 28);
  Eigen::Matrix<T, Eigen::Dynamic, 1> bias = Eigen::Matrix<T, Eigen::Dynamic, 1>::Zero(16);
  std::vector<T> g_square = square, g_tall = tall, g_wide = wide, g_stack = stack;
  ColMat<T> g_col = ColMat<T>::Zero(16, 28);
  Eigen::Matrix<T, Eigen::Dynamic, 1> g_bias = bias;
  Composition opt;
  std::mt19937 rng{7};

  explicit Model(typename Composition::Options o = {}) : opt(o) {
    std::mt19937 init(11);
    fill_normal(square, init, 0.2);
    fill_normal(tall, init, 0.2);
    fill_normal(wide, init, 0.2);
    fill_normal(stack, init, 0.2);
    fill_normal(col, init, 0.2);
    opt.add("square", muon::raw(square.data(), {24, 24}), muon::raw(static_cast<const T*>(g_square.data()), {24, 24}));
    opt.add("tall", muon::raw(tall.data(), {40, 12}), muon::raw(static_cast<const T*>(g_tall.data()), {40, 12}));
    opt.add("wide", muon::raw(wide.data(), {12, 40}), muon::raw(static_cast<const T*>(g_wide.data()), {12, 40}));
    opt.add("stack", muon::raw(stack.data(), {4, 16, 8}), muon::raw(static_cast<const T*>(g_stack.data()), {4, 16, 8}));
    opt.add("col", col, g_col);
    opt.add("bias", bias, g_bias, {.role = muon::Role::bias});
  }
  void random_gradients() {
    fill_normal(g_square, rng);
    fill_normal(g_tall, rng);
    fill_normal(g_wide, rng);
    fill_normal(g_stack, rng);
    fill_normal(g_col, rng);
    fill_normal(g_bias, rng);
  }
  // Gradients that depend only on the step index (for runs compared with each other).
  void gradients(int t) {
    auto f = [t](std::size_t i) { return static_cast<T>(std::sin(1.3 * t + 0.17 * static_cast<double>(i))); };
    for (auto* v : {&g_square, &g_tall, &g_wide, &g_stack})
      for (std::size_t i = 0; i < v->size(); ++i) (*v)[i] = f(i);
    for (index_t i = 0; i < g_col.size(); ++i) g_col.data()[i] = f(static_cast<std::size_t>(i) + 5);
    for (index_t i = 0; i < g_bias.size(); ++i) g_bias.data()[i] = f(static_cast<std::size_t>(i) + 9);
  }
  [[nodiscard]] double worst_error() const {
    const RowMat<double> c = col.template cast<double>();  // logical 16 x 28
    return std::max({stiefel_error(square, 1, 24, 24), stiefel_error(tall, 1, 40, 12), stiefel_error(wide, 1, 12, 40),
                     stiefel_error(stack, 4, 16, 8), stiefel_error(c)});
  }
  bool operator==(const Model& o) const {
    return square == o.square && tall == o.tall && wide == o.wide && stack == o.stack && col == o.col && bias == o.bias;
  }
};

template <class B>
void run_on_manifold(int steps) {
  using T = typename B::value_type;
  Model<B> model;
  const int tensors = 5;
  const auto& c0 = model.opt.options().constraint;
  std::vector<T> tall_after_first;
  for (int t = 0; t < steps; ++t) {
    model.random_gradients();
    const auto r = model.opt.step();
    REQUIRE(r.all_applied());
    // What the step reports, every step: on the manifold, a finite residual, iterations counted.
    REQUIRE(r.constraint.max_stiefel_error < Tol<T>::stiefel);
    REQUIRE(std::isfinite(r.constraint.max_residual));
    REQUIRE(r.constraint.dual_iterations >= static_cast<std::size_t>(tensors));
    REQUIRE(r.constraint.dual_iterations <= static_cast<std::size_t>(tensors * c0.dual_steps));
    if (t == 0) tall_after_first = model.tall;
    if (t % 100 == 0 || t == steps - 1) {
      INFO("step " << t);
      REQUIRE(model.worst_error() < Tol<T>::stiefel);
    }
  }
  // It moved: the last W is far from the first step's (a stuck optimizer is on the manifold too).
  const MatD a = slice(model.tall, 0, 40, 12), b = slice(tall_after_first, 0, 40, 12);
  CHECK((a - b).norm() > 0.5);
  CHECK(model.opt.constraint_state(model.opt.id("tall")).steps() == static_cast<std::uint64_t>(steps));
}

}  // namespace

TEMPLATE_TEST_CASE("Stiefel: 1000 steps keep every kind of tensor on the manifold (float64)", "[stiefel]",
                   MUON_TEST_BACKENDS) {
  if constexpr (in_double<TestType>)
    run_on_manifold<TestType>(1000);
  else
    SUCCEED("a float backend runs the float32 test below");
}

// 300 steps: float32 takes the same path as float64 (above); this checks its rounding floor
// (Tol<float>::stiefel), which is reached at every step, and keeps the sanitizer build short.
TEMPLATE_TEST_CASE("Stiefel: 300 steps keep every kind of tensor on the manifold (float32)", "[stiefel]",
                   MUON_TEST_BACKENDS) {
  if constexpr (!in_double<TestType>)
    run_on_manifold<TestType>(300);
  else
    SUCCEED("a double backend runs the float64 test above");
}

TEMPLATE_TEST_CASE("Stiefel: the direction is a tangent descent direction", "[stiefel]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  std::mt19937 rng(5);
  struct Case {
    index_t batch, rows, cols;
  };
  for (const Case c : {Case{1, 48, 16}, Case{1, 16, 48}, Case{1, 96, 40}, Case{3, 24, 12}}) {
    INFO(c.batch << " x " << c.rows << " x " << c.cols);
    const muon::Shape shape = c.batch == 1 ? muon::Shape{c.rows, c.cols} : muon::Shape{c.batch, c.rows, c.cols};
    std::vector<T> w, g(static_cast<std::size_t>(c.batch * c.rows * c.cols));
    for (index_t s = 0; s < c.batch; ++s) {
      const auto ws = to_vector<T>(random_stiefel(c.rows, c.cols, rng));
      w.insert(w.end(), ws.begin(), ws.end());
    }
    fill_normal(g, rng, 1e-3);  // gradient-sized numbers: the dual step must not care

    Direct<B> full(shape);
    std::vector<T> w_full = w;
    const std::vector<T> a = full.direction(w_full, g, c.batch, c.rows, c.cols);
    Direct<B> plain(shape, {.dual_steps = 1});  // msign of the tangent projection, no dual ascent
    std::vector<T> w_plain = w;
    const std::vector<T> a0 = plain.direction(w_plain, g, c.batch, c.rows, c.cols);

    double residual = 0, residual0 = 0;
    for (index_t s = 0; s < c.batch; ++s) {
      const MatD ws = slice(w_full, s, c.rows, c.cols), as = slice(a, s, c.rows, c.cols), gs = slice(g, s, c.rows, c.cols);
      residual = std::max(residual, tangent_residual(ws, as));
      residual0 = std::max(residual0, tangent_residual(ws, slice(a0, s, c.rows, c.cols)));
      // Descent: <G, A> > 0, so W - lr A lowers the loss to first order; and nearly as much as
      // the best a tangent direction of spectral norm 1 can do, ||P_T(G)||_* (measured 0.98-1.00;
      // it can pass 1 because A's singular values are Polar Express's, within about 0.12 of 1).
      const double inner = (gs.array() * as.array()).sum();
      CHECK(inner > 0);
      CHECK(inner > 0.9 * nuclear_norm(tangent_projection(ws, gs)));
      // A has the size of an msign: every singular value near 1.
      const auto sv = Eigen::JacobiSVD<MatD>(as).singularValues();
      CHECK(sv.maxCoeff() < 1.25);
      CHECK(sv.minCoeff() > 0.75);
    }
    // Tangent to the tolerance the dual ascent reaches in 10 iterations (measured 4.6e-3 ..
    // 1.7e-2 over these shapes), and 6-10x better than without it (residual0, 4.5e-2 .. 0.11).
    CHECK(full.state.last_dual_iterations() == 10);
    CHECK(residual < 3e-2);
    CHECK(residual < 0.3 * residual0);
    CHECK(full.state.last_residual() == Approx(residual).margin(Tol<T>::residual_match));

    // Scale invariance: the same direction for a gradient a million times larger.
    std::vector<T> g_big = g;
    for (auto& x : g_big) x *= T(1e6);
    Direct<B> again(shape);
    std::vector<T> w_again = w;
    const std::vector<T> a_big = again.direction(w_again, g_big, c.batch, c.rows, c.cols);
    double diff = 0;
    for (std::size_t k = 0; k < a.size(); ++k) diff = std::max(diff, std::abs(static_cast<double>(a[k] - a_big[k])));
    CHECK(diff < Tol<T>::scale_invariance);
  }
}

TEMPLATE_TEST_CASE("Stiefel: a gradient that is almost all normal still gets a tangent descent direction", "[stiefel]",
                   MUON_TEST_BACKENDS) {
  // Near an optimum the gradient is mostly normal to the manifold (W times a symmetric matrix,
  // which the multiplier cancels) and its tangent part is small. The dual step is relative to
  // the tangent part, so the dual ascent is as good as for any gradient. Scaled by all of G
  // instead (before 2026-12-02), it overshot on these cases: residual 0.03-0.36 and
  // <P_T(G), A> only 0.08-0.6 of the best.
  using B = TestType;
  using T = typename B::value_type;
  std::mt19937 rng(8);
  for (const double eps : {1e-1, 1e-2, 1e-3}) {
    for (const auto& [rows, cols] : {std::pair<index_t, index_t>{64, 32}, {32, 80}}) {
      INFO("eps " << eps << ", " << rows << " x " << cols);
      const MatD w = random_stiefel(rows, cols, rng);
      const index_t m = std::min(rows, cols);
      MatD s0(m, m), noise(rows, cols);
      fill_normal(s0, rng);
      fill_normal(noise, rng);
      const MatD sym = s0 + s0.transpose();
      const MatD g = (rows >= cols ? MatD(w * sym) : MatD(sym * w)) + eps * noise;
      Direct<B> d(muon::Shape{rows, cols});
      std::vector<T> wv = to_vector<T>(w);
      const std::vector<T> av = d.direction(wv, to_vector<T>(g), 1, rows, cols);
      const MatD a = slice(av, 0, rows, cols), pt = tangent_projection(w, g);
      // measured 6e-3 .. 2e-2 (double and float alike)
      CHECK(tangent_residual(w, a) < 3e-2);
      // measured 0.9-1.0 of the best a tangent direction of spectral norm 1 can do
      CHECK((pt.array() * a.array()).sum() > 0.8 * nuclear_norm(pt));
    }
  }
}

TEMPLATE_TEST_CASE("Stiefel: warm_start continues the dual ascent across steps", "[stiefel]", MUON_TEST_BACKENDS) {
  if constexpr (!in_double<TestType>) {
    SUCCEED("float64 bounds: checked on the double backends");
  } else {
    using B = TestType;
    // Momentum makes consecutive gradients close: starting from the last step's correction, fewer
    // iterations reach the residual that more reach from Lambda_0 every step. The same gradients,
    // a pull towards a fixed target plus noise, for every run (each on its own copy of W).
    struct Run {
      double mean_residual = 0;
      std::size_t iterations = 0;
    };
    auto run = [](int dual_steps, bool warm) {
      std::mt19937 rng(21);
      const MatD target = random_stiefel(96, 48, rng);
      MatD w0(96, 48);
      fill_normal(w0, rng);
      std::vector<double> w = to_vector<double>(w0), g(w.size());
      Opt<B> opt({.lr = 0.02, .constraint = {.dual_steps = dual_steps, .tol = 0, .warm_start = warm}});
      opt.add("w", muon::raw(w.data(), {96, 48}), muon::raw(static_cast<const double*>(g.data()), {96, 48}));
      std::mt19937 noise(22);
      std::normal_distribution<double> nd(0.0, 0.1);
      Run r;
      for (int t = 0; t < 60; ++t) {
        for (std::size_t k = 0; k < g.size(); ++k) g[k] = 0.3 * (w[k] - target.data()[k]) + nd(noise);
        const auto s = opt.step();
        REQUIRE(s.constraint.max_stiefel_error < 1e-10);
        if (t >= 20) r.mean_residual += s.constraint.max_residual / 40;
        r.iterations += s.constraint.dual_iterations;
      }
      return r;
    };
    const Run cold10 = run(10, false), cold5 = run(5, false), warm5 = run(5, true), warm3 = run(3, true);
    INFO("cold 10: " << cold10.mean_residual << ", cold 5: " << cold5.mean_residual << ", warm 5: " << warm5.mean_residual
                     << ", warm 3: " << warm3.mean_residual);
    // measured 1.01e-2, 1.81e-2, 1.05e-2, 1.50e-2: 5 warm iterations do about what 10 cold do
    CHECK(warm5.mean_residual < 1.15 * cold10.mean_residual);
    CHECK(warm5.mean_residual < 0.7 * cold5.mean_residual);
    CHECK(warm3.mean_residual < cold5.mean_residual);
    CHECK(warm5.iterations == 60 * 5);  // tol 0: every iteration runs
  }
}

TEMPLATE_TEST_CASE("Stiefel: no direction (and no warm correction) where the tangent projection is rounding noise", "[stiefel]", MUON_TEST_BACKENDS) {
  if constexpr (!in_double<TestType>) {
    SUCCEED("float64 bounds: checked on the double backends");
  } else {
    using B = TestType;
    std::mt19937 rng(9);
    const MatD w0 = random_stiefel(40, 12, rng);
    std::vector<double> w = to_vector<double>(w0), g(w.size());
    Opt<B> opt({.momentum = 0, .constraint = {.warm_start = true}});
    opt.add("w", muon::raw(w.data(), {40, 12}), muon::raw(static_cast<const double*>(g.data()), {40, 12}));
    MatD noise(40, 12);
    fill_normal(noise, rng);
    for (std::size_t k = 0; k < g.size(); ++k) g[k] = noise.data()[k];
    opt.step();  // a nonzero correction now
    const MatD before = slice(w, 0, 40, 12);
    // A purely normal gradient, W times a symmetric matrix: its tangent projection is zero.
    MatD s0(12, 12);
    fill_normal(s0, rng);
    const MatD normal = before * MatD(s0 + s0.transpose());
    for (std::size_t k = 0; k < g.size(); ++k) g[k] = normal.data()[k];
    const auto r = opt.step();
    CHECK(r.constraint.dual_iterations == 1);
    CHECK(r.constraint.max_residual == 0);
    CHECK((slice(w, 0, 40, 12) - before).norm() < 1e-12);  // the retraction's rounding only
    // tangent_eps = 0: the rounding noise of the projection (about 1e-15 of G) is a direction.
    Opt<B> eager({.momentum = 0, .constraint = {.tangent_eps = 0, .warm_start = true}});
    std::vector<double> w2 = to_vector<double>(before);
    eager.add("w", muon::raw(w2.data(), {40, 12}), muon::raw(static_cast<const double*>(g.data()), {40, 12}));
    eager.step();  // its first step: its own correction starts here
    CHECK((slice(w2, 0, 40, 12) - before).norm() > 1e-3);
  }
}

TEMPLATE_TEST_CASE("Stiefel: a square W converges in one dual iteration", "[stiefel]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  std::mt19937 rng(9);
  // Each slice square: its tangent projection's msign is already tangent (W msign(S), S skew).
  std::vector<T> w;
  for (int s = 0; s < 3; ++s) {
    const auto ws = to_vector<T>(random_stiefel(20, 20, rng));
    w.insert(w.end(), ws.begin(), ws.end());
  }
  std::vector<T> g(w.size());
  fill_normal(g, rng);
  Direct<B> d(muon::Shape{3, 20, 20});
  const auto a = d.direction(w, g, 3, 20, 20);
  CHECK(d.state.last_dual_iterations() == 1);
  CHECK(d.state.last_residual() < Tol<T>::square_residual);
  for (index_t s = 0; s < 3; ++s) CHECK(tangent_residual(slice(w, s, 20, 20), slice(a, s, 20, 20)) < Tol<T>::square_residual);
}

TEMPLATE_TEST_CASE("Stiefel: plan() covers a transposed (column-major) tensor", "[stiefel]", MUON_TEST_BACKENDS) {
  if constexpr (!in_double<TestType>) {
    SUCCEED("float64 bounds: checked on the double backends");
  } else {
    using B = TestType;
    // Logical 16 x 48 registered column-major: the policy sees 48 x 16 physical storage.
    std::mt19937 rng(13);
    auto w = to_vector<double>(random_stiefel(48, 16, rng));
    std::vector<double> g(w.size());
    fill_normal(g, rng);
    Direct<B> d(muon::Shape{16, 48});
    std::vector<double> a;
    REQUIRE_NOTHROW(a = d.direction(w, g, 1, 48, 16, true));
    CHECK(tangent_residual(slice(w, 0, 48, 16), slice(a, 0, 48, 16)) < 3e-2);
    const muon::MatrixParam<double> p{{w.data(), 1, 48, 16}, true, &d.info, 0.02};
    REQUIRE_NOTHROW(d.stiefel.retract(d.b, d.state, d.orth, p, d.ws));
    CHECK(stiefel_error(w, 1, 48, 16) < 1e-12);
  }
}

TEMPLATE_TEST_CASE("Stiefel: at most dual_steps + 2 orthogonalizer calls per step", "[stiefel]", MUON_TEST_BACKENDS) {
  if constexpr (!in_double<TestType>) {
    SUCCEED("float64 bounds: checked on the double backends");
  } else {
    using B = TestType;
    struct Case {
      index_t rows, cols;
      double lr;
      int dual_steps;
    };
    // lr 0.5 moves W out of the polish's basin, so the retraction needs the orthogonalizer too.
    for (const Case c : {Case{48, 16, 0.02, 10}, Case{16, 48, 0.5, 10}, Case{32, 32, 0.02, 10}, Case{40, 24, 0.5, 3}}) {
      INFO(c.rows << " x " << c.cols << ", lr " << c.lr << ", dual_steps " << c.dual_steps);
      using Composition = muon::Optimizer<B, muon::policy::NoFilter, muon::policy::ShapeRoleRouter,
                                          CountingPolarExpress, Stiefel, muon::policy::AdamW>;
      Composition opt({.lr = c.lr, .constraint = {.dual_steps = c.dual_steps}});
      std::mt19937 rng(17);
      std::vector<double> w(static_cast<std::size_t>(c.rows * c.cols)), g(w.size());
      fill_normal(w, rng, 0.3);  // off the manifold: the first step retracts before its direction
      opt.add("w", muon::raw(w.data(), {c.rows, c.cols}), muon::raw(static_cast<const double*>(g.data()), {c.rows, c.cols}));
      long most = 0;
      bool retraction_used_orth = false;
      for (int t = 0; t < 40; ++t) {
        fill_normal(g, rng);
        CountingPolarExpress::calls = 0;
        const auto r = opt.step();
        const auto& s = opt.constraint_state(0);
        most = std::max(most, CountingPolarExpress::calls);
        REQUIRE(CountingPolarExpress::calls <= c.dual_steps + 2);
        REQUIRE(r.constraint.dual_iterations == static_cast<std::size_t>(s.last_dual_iterations()));
        // After the first step the count is exact: the dual iterations, plus one when the
        // retraction needed the orthogonalizer.
        if (t > 0) REQUIRE(CountingPolarExpress::calls == s.last_dual_iterations() + (s.last_used_orthogonalizer() ? 1 : 0));
        retraction_used_orth = retraction_used_orth || (t > 0 && s.last_used_orthogonalizer());
        REQUIRE(stiefel_error(w, 1, c.rows, c.cols) < 1e-10);
      }
      CHECK(retraction_used_orth == (c.lr > 0.1));
      if (c.rows == c.cols) CHECK(most == 2);  // first step: retraction of the Gaussian W + 1 dual iteration
    }
  }
}

TEMPLATE_TEST_CASE("Stiefel: the polish is what puts W on the manifold", "[stiefel]", MUON_TEST_BACKENDS) {
  if constexpr (!in_double<TestType>) {
    SUCCEED("float64 bounds: checked on the double backends");
  } else {
    using B = TestType;
    // The retraction's msign by Polar Express alone leaves W about 0.1 off (per singular value);
    // Keller Jordan's NS5 coefficients leave more. With the polish both reach the rounding floor.
    std::mt19937 rng(19);
    auto run = [&](auto opt) {
      using T = double;
      std::vector<T> w(48 * 16), g(w.size());
      fill_normal(w, rng, 0.3);
      opt.add("w", muon::raw(w.data(), {48, 16}), muon::raw(static_cast<const T*>(g.data()), {48, 16}));
      for (int t = 0; t < 50; ++t) {
        fill_normal(g, rng);
        opt.step();
      }
      const double reported = opt.constraint_state(0).last_stiefel_error();
      CHECK(reported == Approx(stiefel_error(w, 1, 48, 16)).margin(1e-12));
      return stiefel_error(w, 1, 48, 16);
    };
    using NS5 = muon::Optimizer<B, muon::policy::NoFilter, muon::policy::ShapeRoleRouter,
                                muon::policy::NewtonSchulz, Stiefel, muon::policy::AdamW>;
    // lr 0.5 keeps W leaving the polish's basin, so every retraction starts with the orthogonalizer.
    CHECK(run(Opt<B>({.lr = 0.5, .constraint = {.polish_steps = 0}})) > 1e-2);
    CHECK(run(NS5({.lr = 0.5, .constraint = {.polish_steps = 0}})) > 1e-1);
    CHECK(run(Opt<B>({.lr = 0.5})) < 1e-12);
    CHECK(run(NS5({.lr = 0.5})) < 1e-12);
    CHECK(run(NS5{}) < 1e-12);
  }
}

TEMPLATE_TEST_CASE("Stiefel: zero gradient, zero W and rank-deficient W give no NaN", "[stiefel]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  std::mt19937 rng(23);
  // The zero-W case holds in either scalar (Tol<T>); the other two have float64 bounds.
  SECTION("a zero W is -lr msign(G) after its first update, then retracted") {
    std::vector<T> w(24 * 40, T(0)), g(w.size());
    fill_normal(g, rng);
    Opt<B> opt;
    opt.add("w", muon::raw(w.data(), {24, 40}), muon::raw(static_cast<const T*>(g.data()), {24, 40}));
    const auto r = opt.step();
    for (const T x : w) REQUIRE(std::isfinite(x));
    CHECK(stiefel_error(w, 1, 24, 40) < Tol<T>::stiefel);
    CHECK(r.constraint.max_stiefel_error < Tol<T>::stiefel);
  }
  if constexpr (in_double<B>) {
    SECTION("a zero gradient leaves W where it is") {
      auto w = to_vector<double>(random_stiefel(40, 24, rng));
      const auto w0 = w;
      std::vector<double> g(w.size(), 0.0);
      Opt<B> opt;
      opt.add("w", muon::raw(w.data(), {40, 24}), muon::raw(static_cast<const double*>(g.data()), {40, 24}));
      for (int t = 0; t < 3; ++t) {
        const auto r = opt.step();
        CHECK(r.constraint.dual_iterations == 1);
        CHECK(r.constraint.max_residual == 0);
      }
      for (std::size_t k = 0; k < w.size(); ++k) REQUIRE(std::abs(w[k] - w0[k]) < 1e-13);
    }
    SECTION("a rank-deficient W that stays so reports its distance") {
      MatD w0 = random_stiefel(30, 10, rng);
      w0.col(3).setZero();  // rank 9: one singular value 0, msign keeps it 0
      auto w = to_vector<double>(w0);
      std::vector<double> g(w.size(), 0.0);
      Opt<B> opt;
      opt.add("w", muon::raw(w.data(), {30, 10}), muon::raw(static_cast<const double*>(g.data()), {30, 10}));
      const auto r = opt.step();
      for (const double x : w) REQUIRE(std::isfinite(x));
      // ||W^T W - I||_F = 1 with one zero singular value and the other nine at 1.
      CHECK(r.constraint.max_stiefel_error == Approx(1.0).margin(1e-9));
      CHECK(stiefel_error(w, 1, 30, 10) == Approx(1.0).margin(1e-9));
    }
  }
}

TEMPLATE_TEST_CASE("Stiefel: retract_every", "[stiefel]", MUON_TEST_BACKENDS) {
  if constexpr (!in_double<TestType>) {
    SUCCEED("float64 bounds: checked on the double backends");
  } else {
    using B = TestType;
    std::mt19937 rng(29);
    auto w = to_vector<double>(random_stiefel(48, 16, rng));
    std::vector<double> g(w.size());
    Opt<B> opt({.constraint = {.retract_every = 4}});
    opt.add("w", muon::raw(w.data(), {48, 16}), muon::raw(static_cast<const double*>(g.data()), {48, 16}));
    for (int t = 0; t < 12; ++t) {
      fill_normal(g, rng);
      const auto r = opt.step();
      const auto& s = opt.constraint_state(0);
      INFO("step " << t);
      CHECK(s.steps() == static_cast<std::uint64_t>(t + 1));
      CHECK(s.last_retracted() == (t % 4 == 0));
      const double e = stiefel_error(w, 1, 48, 16);
      CHECK(r.constraint.max_stiefel_error == Approx(e).margin(1e-12));
      if (t % 4 == 0) {
        CHECK(e < 1e-12);
      } else {
        // W - lr A from the manifold: ||W^T W - I||_F grows by about lr^2 ||A^T A||_F = 1.2e-3 x 4
        // per step (lr = 0.02 sqrt(3) here; measured 5e-3 a step): off the manifold, by little.
        CHECK(e > 1e-3);
        CHECK(e < 0.05);
      }
    }
  }
}

TEMPLATE_TEST_CASE("Stiefel: the step reports dual iterations, residual and Stiefel error", "[stiefel]", MUON_TEST_BACKENDS) {
  if constexpr (!in_double<TestType>) {
    SUCCEED("float64 bounds: checked on the double backends");
  } else {
    using B = TestType;
    Model<B> model;
    model.random_gradients();
    model.opt.step();
    for (int t = 0; t < 3; ++t) {
      model.random_gradients();
      const auto r = model.opt.step();
      std::size_t iterations = 0;
      double residual = 0, error = 0;
      for (const char* name : {"square", "tall", "wide", "stack", "col"}) {
        const auto& s = model.opt.constraint_state(model.opt.id(name));
        iterations += static_cast<std::size_t>(s.last_dual_iterations());
        residual = std::max(residual, s.last_residual());
        error = std::max(error, s.last_stiefel_error());
        CHECK(s.last_retracted());
      }
      CHECK(r.constraint.dual_iterations == iterations);
      CHECK(r.constraint.max_residual == residual);
      CHECK(r.constraint.max_stiefel_error == error);
      // The square converges in 1 iteration, the other four use all 10.
      CHECK(iterations == 1 + 4 * 10);
      CHECK(model.opt.constraint_state(model.opt.id("square")).last_dual_iterations() == 1);
      CHECK(residual > 1e-4);
      CHECK(residual < 0.1);
      CHECK(error < 1e-10);
      CHECK(error == Approx(model.worst_error()).margin(1e-13));
    }
  }
}

TEMPLATE_TEST_CASE("Stiefel: resume from a checkpoint continues bit-identically", "[stiefel][checkpoint]", MUON_TEST_BACKENDS) {
  using B = TestType;
  // retract_every 3: the step counter decides which steps retract, so it must travel; with
  // warm_start, so must the dual correction.
  const bool warm = GENERATE(false, true);
  INFO("warm_start " << warm);
  const typename Model<B>::Composition::Options options{.constraint = {.retract_every = 3, .warm_start = warm}};
  Model<B> uninterrupted(options);
  Model<B> first(options);
  for (int t = 0; t < 10; ++t) {
    uninterrupted.gradients(t);
    REQUIRE(uninterrupted.opt.step().all_applied());
    if (t < 5) {
      first.gradients(t);
      first.opt.step();
    }
  }
  std::ostringstream os;
  first.opt.save(os, {.parameters = true});
  Model<B> resumed(options);
  std::istringstream is(os.str());
  resumed.opt.load(is);
  CHECK(resumed.opt.constraint_state(resumed.opt.id("stack")).steps() == 5);
  CHECK(resumed.opt.state_snapshot().at("tall/constraint/steps") == std::vector<double>{5.0});
  CHECK(resumed.opt.state_snapshot().at("tall/constraint/dual_correction").size() == (warm ? 12u * 12u : 0u));
  CHECK(resumed.opt.state_snapshot().at("stack/constraint/dual_correction").size() == (warm ? 4u * 8u * 8u : 0u));
  CHECK(resumed.opt.state_snapshot().at("square/constraint/dual_correction").empty());  // one iteration: nothing to carry
  CHECK(resumed == first);
  for (int t = 5; t < 10; ++t) {
    resumed.gradients(t);
    resumed.opt.step();
  }
  CHECK(resumed == uninterrupted);

  // The parameters alone, without the optimizer's state (momentum, step counter at 0): the run
  // differs, so the comparison above can fail.
  Model<B> fresh(options);
  fresh.square = first.square;
  fresh.tall = first.tall;
  fresh.wide = first.wide;
  fresh.stack = first.stack;
  fresh.col = first.col;
  fresh.bias = first.bias;
  for (int t = 5; t < 10; ++t) {
    fresh.gradients(t);
    fresh.opt.step();
  }
  CHECK_FALSE(fresh == uninterrupted);
}

TEST_CASE("Stiefel: options are validated at construction", "[stiefel]") {
  auto message = [](Stiefel::Options o) {
    try {
      Stiefel s(o);
    } catch (const muon::Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK_THAT(message({.dual_steps = 0}), Catch::Contains("dual_steps"));
  CHECK_THAT(message({.dual_lr = 0}), Catch::Contains("dual_lr"));
  CHECK_THAT(message({.dual_lr = std::numeric_limits<double>::quiet_NaN()}), Catch::Contains("dual_lr"));
  CHECK_THAT(message({.tol = -1e-3}), Catch::Contains("tol"));
  CHECK_THAT(message({.tangent_eps = -1e-6}), Catch::Contains("tangent_eps"));
  CHECK_THAT(message({.tol = std::numeric_limits<double>::infinity()}), Catch::Contains("tol"));
  CHECK_THAT(message({.retract_every = 0}), Catch::Contains("retract_every"));
  CHECK_THAT(message({.polish_steps = -1}), Catch::Contains("polish_steps"));
  CHECK(message({}).empty());
  CHECK(message({.tol = 0, .polish_steps = 0}).empty());
}
