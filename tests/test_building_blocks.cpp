// The API a trainer that runs another optimizer expects: muon::orthogonalize / Orthogonalize
// (ops/orthogonalize.hpp), muon::qk_clip (ops/qk_clip.hpp), the fallback optimizers alone as
// typed aliases (AdamW, Lion, SGD; GrokfastMA), and Shape from a run-time list of dimensions.
#include <catch2/catch.hpp>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/golden.hpp"
#include "support/tolerance.hpp"

namespace {

using muon::index_t;
namespace policy = muon::policy;

template <class T>
using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

template <class T>
std::vector<T> normal_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(normal(rng));
  return v;
}

template <class T>
std::vector<double> widen(std::span<const T> v) {
  return {v.begin(), v.end()};
}

// orth(x) by the policy itself, with a workspace sized by its plan: the reference the one-call
// form must reproduce bit for bit.
template <class T, class O>
std::vector<T> by_policy(std::vector<T> x, index_t batch, index_t rows, index_t cols, const O& orth) {
  using B = muon::backend::Eigen<T>;
  B b;
  muon::Workspace<B> ws;
  ws.allocate(b, orth.plan(b, batch, rows, cols));
  orth.apply(b, muon::backend::MatrixView<T>{x.data(), batch, rows, cols}, ws);
  return x;
}

template <class T>
double max_abs(const std::vector<T>& a, const std::vector<T>& b) {
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  return m;
}

// Whether f throws muon::Error with `what` in its message.
template <class F>
void check_error(F&& f, const std::string& what) {
  try {
    f();
    FAIL("no muon::Error thrown; expected one mentioning '" << what << "'");
  } catch (const muon::Error& e) {
    INFO("message: " << e.what());
    CHECK(std::string(e.what()).find(what) != std::string::npos);
  }
}

}  // namespace

// ---- orthogonalize ------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("orthogonalize: one call matches the ns5 golden cases (matrix and rank-3 stack)",
                   "[building_blocks][orthogonalize][golden]", float, double) {
  using T = TestType;
  for (const char* name : {"ns5_64x64_s5", "ns5_96x256_s5", "ns5_4x32x48_s5"}) {
    const auto c = muon::test::load_golden_case(name);
    const auto& in = c.array("input").values;
    std::vector<T> x(in.begin(), in.end());
    const std::vector<std::int64_t> dims(c.shape.begin(), c.shape.end());  // a run-time shape
    muon::orthogonalize(muon::raw(x.data(), dims), muon::test::ns_options_from(c));
    const double err = muon::test::max_abs_diff(widen<T>(x), c.array("expected").values);
    const double tol = muon::test::Tolerance<T>::golden(c.suggested_atol);
    INFO(name << ": max abs error " << err << ", tolerance " << tol);
    CHECK(err <= tol);
  }
}

TEMPLATE_TEST_CASE("orthogonalize: the same bits as the policy with a hand-made workspace",
                   "[building_blocks][orthogonalize]", float, double) {
  using T = TestType;
  const auto x0 = normal_values<T>(3 * 24 * 40, 1);

  auto x = x0;
  muon::orthogonalize(muon::raw(x.data(), {3, 24, 40}));
  CHECK(x == by_policy(x0, 3, 24, 40, policy::NewtonSchulz{}));

  x = x0;
  muon::orthogonalize<policy::PolarExpress>(muon::raw(x.data(), {72, 40}), {.steps = 8});
  CHECK(x == by_policy(x0, 1, 72, 40, policy::PolarExpress({.steps = 8})));

  x = x0;
  muon::orthogonalize(muon::raw(x.data(), {40, 72}), {.steps = 3, .eps_mode = policy::EpsMode::clamp});
  CHECK(x == by_policy(x0, 1, 40, 72, policy::NewtonSchulz({.steps = 3, .eps_mode = policy::EpsMode::clamp})));

  // SvdPolar: the exact polar factor, so X X^T = I for a wide full-rank X.
  RowMat<T> w = Eigen::Map<const RowMat<T>>(x0.data(), 24, 40);
  muon::orthogonalize<policy::SvdPolar>(w);
  const RowMat<T> gram = w * w.transpose();
  CHECK((gram - RowMat<T>::Identity(24, 24)).cwiseAbs().maxCoeff() < (std::is_same_v<T, float> ? 1e-5 : 1e-12));
}

TEMPLATE_TEST_CASE("orthogonalize: column-major Eigen matrices give orth of the logical matrix",
                   "[building_blocks][orthogonalize]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-12;
  for (auto [rows, cols] : {std::pair<index_t, index_t>{48, 20}, {20, 48}, {32, 32}}) {
    const auto v = normal_values<T>(static_cast<std::size_t>(rows * cols), 2);
    const RowMat<T> x0 = Eigen::Map<const RowMat<T>>(v.data(), rows, cols);
    RowMat<T> r = x0;
    ColMat<T> c = x0;
    muon::orthogonalize(r);
    muon::orthogonalize(c);
    INFO(rows << " x " << cols);
    CHECK((RowMat<T>(c) - r).cwiseAbs().maxCoeff() < tol);
    // A Map of a column-major buffer is the same tensor.
    ColMat<T> c2 = x0;
    muon::orthogonalize(Eigen::Map<ColMat<T>>(c2.data(), rows, cols));
    CHECK(c2 == c);
  }
}

TEMPLATE_TEST_CASE("orthogonalize: out of place leaves the input alone, across layouts",
                   "[building_blocks][orthogonalize]", float, double) {
  using T = TestType;
  const auto v = normal_values<T>(30 * 50, 3);
  const RowMat<T> in = Eigen::Map<const RowMat<T>>(v.data(), 30, 50);
  const RowMat<T> in_copy = in;

  RowMat<T> expected = in;
  muon::orthogonalize(expected);
  RowMat<T> out_row(30, 50);
  muon::orthogonalize(in, out_row);
  CHECK(out_row == expected);
  CHECK(in == in_copy);

  // Row-major in, column-major out: the same bits as orthogonalising a column-major copy.
  ColMat<T> expected_col = in;
  muon::orthogonalize(expected_col);
  ColMat<T> out_col(30, 50);
  muon::orthogonalize(in, out_col);
  CHECK(out_col == expected_col);
  // And back: column-major in, row-major out.
  const ColMat<T> in_col = in;
  RowMat<T> back(30, 50);
  muon::orthogonalize(in_col, back);
  CHECK(back == expected);

  // The same buffer as in and out is the in-place form.
  RowMat<T> same = in;
  muon::orthogonalize(same, same);
  CHECK(same == expected);
}

TEMPLATE_TEST_CASE("Orthogonalize: reusable, many shapes, the workspace grows only",
                   "[building_blocks][orthogonalize]", float, double) {
  using T = TestType;
  muon::Orthogonalize<muon::backend::Eigen<T>> orth;  // NewtonSchulz defaults
  CHECK(orth.workspace_bytes() == 0);
  const auto v = normal_values<T>(4 * 64 * 96, 4);

  auto run = [&](muon::Shape s) {
    std::vector<T> x(v.begin(), v.begin() + s.numel());
    orth(muon::raw(x.data(), s));
    CHECK(x == by_policy(std::vector<T>(v.begin(), v.begin() + s.numel()), s.batch(), s.rows(), s.cols(),
                         policy::NewtonSchulz{}));
  };
  run({64, 96});
  const std::size_t after_first = orth.workspace_bytes();
  CHECK(after_first > 0);
  run({64, 96});  // the second call of the documented low-level example used to throw
  run({16, 8});
  CHECK(orth.workspace_bytes() == after_first);  // smaller shapes reuse it
  run({4, 64, 96});
  const std::size_t after_batch = orth.workspace_bytes();
  CHECK(after_batch > after_first);
  run({64, 96});
  run({4, 64, 96});
  CHECK(orth.workspace_bytes() == after_batch);

  // reserve() sizes it ahead.
  muon::Orthogonalize<muon::backend::Eigen<T>, policy::PolarExpress> pe({.steps = 6});
  pe.reserve({2, 128, 64});
  const std::size_t reserved = pe.workspace_bytes();
  std::vector<T> x(v.begin(), v.begin() + 2 * 128 * 64);
  pe(muon::raw(x.data(), {2, 128, 64}));
  CHECK(pe.workspace_bytes() == reserved);
  CHECK(pe.options().steps == 6);
}

TEMPLATE_TEST_CASE("orthogonalize: bad input throws muon::Error and changes nothing",
                   "[building_blocks][orthogonalize][errors]", float, double) {
  using T = TestType;
  std::vector<T> x = normal_values<T>(64, 5);
  const auto x0 = x;
  check_error([&] { muon::orthogonalize(muon::raw(x.data(), {64})); }, "expected a matrix (rank 2) or a stack");
  check_error([&] { muon::orthogonalize(muon::raw(x.data(), {2, 2, 4, 4})); }, "shape (2, 2, 4, 4)");
  check_error([&] { muon::orthogonalize(muon::raw(x.data(), {0, 4})); }, "every dimension must be > 0");
  check_error([&] { muon::orthogonalize(muon::raw(x.data(), std::vector<int>{-4, -16})); },
              "every dimension must be > 0");
  check_error([&] { muon::orthogonalize(muon::raw(static_cast<T*>(nullptr), {8, 8})); }, "null data");
  check_error([&] { muon::orthogonalize(muon::TensorRef<T>{x.data(), {2, 4, 8}, muon::Layout::col_major}); },
              "must be row-major");
  CHECK(x == x0);

  for (T bad : {std::numeric_limits<T>::quiet_NaN(), std::numeric_limits<T>::infinity()}) {
    auto y = x0;
    y[37] = bad;
    const auto y0 = y;
    check_error([&] { muon::orthogonalize(muon::raw(y.data(), {8, 8})); }, "1 NaN or Inf value(s)");
    CHECK(std::memcmp(y.data(), y0.data(), y.size() * sizeof(T)) == 0);
    std::vector<T> out(64, T(7));
    check_error([&] { muon::orthogonalize(muon::raw(std::as_const(y).data(), {8, 8}), muon::raw(out.data(), {8, 8})); },
                "NaN or Inf");
    CHECK(out == std::vector<T>(64, T(7)));
  }

  std::vector<T> out(64, T(7));
  check_error([&] { muon::orthogonalize(muon::raw(x.data(), {8, 8}), muon::raw(out.data(), {4, 16})); },
              "they must match");
  check_error([&] { muon::orthogonalize(muon::raw(x.data(), {4, 8}), muon::raw(x.data() + 8, {4, 8})); },
              "overlap");
  check_error([&] {
    muon::orthogonalize(muon::TensorRef<T>{x.data(), {8, 8}, muon::Layout::col_major}, muon::raw(x.data(), {8, 8}));
  }, "different layouts");
  check_error([&] { muon::orthogonalize(muon::raw(x.data(), {8, 8}), {.steps = -1}); }, "'steps'");
  CHECK(x == x0);
  CHECK(out == std::vector<T>(64, T(7)));
}

// ---- qk_clip ------------------------------------------------------------------------------------

TEMPLATE_TEST_CASE("qk_clip: one call matches the qk_clip golden case", "[building_blocks][qk_clip][golden]", float,
                   double) {
  using T = TestType;
  const auto c = muon::test::load_golden_case("qk_clip_h4x8_32");
  const auto& h = c.hyperparameters;
  const auto& wq0 = c.array("wq").values;
  const auto& wk0 = c.array("wk").values;
  std::vector<T> wq(wq0.begin(), wq0.end()), wk(wk0.begin(), wk0.end());
  const auto& s = c.array("s_max").values;
  const std::vector<T> logits(s.begin(), s.end());
  const std::vector<std::size_t>& shape = c.shape;

  const auto r = muon::qk_clip(muon::raw(wq.data(), shape), muon::raw(wk.data(), shape), logits,
                               {.heads = h.at("n_heads").get<index_t>(),
                                .tau = h.at("tau").get<double>(),
                                .alpha = h.at("alpha").get<double>()});
  const double tol = muon::test::Tolerance<T>::golden(c.suggested_atol);
  CHECK(muon::test::max_abs_diff(widen<T>(wq), c.array("expected_wq").values) <= tol);
  CHECK(muon::test::max_abs_diff(widen<T>(wk), c.array("expected_wk").values) <= tol);
  CHECK(r.clipped_heads == std::vector<index_t>{2, 3});  // S = 50, 100, 150, 400 against tau 100
  const auto& gamma = c.array("expected_gamma").values;
  REQUIRE(r.scales.size() == gamma.size());
  for (std::size_t i = 0; i < gamma.size(); ++i) CHECK(r.scales[i] == Approx(gamma[i]).epsilon(1e-7));
}

TEMPLATE_TEST_CASE("qk_clip: alpha split, rotary rows and column-major tensors", "[building_blocks][qk_clip]", float,
                   double) {
  using T = TestType;
  // 2 heads x head_dim 4 (last 2 rows rotary), d_model 3. Head 1 has S = 400 > tau = 100, so
  // gamma = 1/4: W_q non-rotary rows x gamma^alpha, rotary rows x gamma, W_k x gamma^(1-alpha).
  const index_t heads = 2, hd = 4, d = 3;
  const std::vector<T> logits{T(20), T(400)};
  for (double alpha : {0.5, 0.0, 1.0}) {
    RowMat<T> q = RowMat<T>::Ones(heads * hd, d), k = RowMat<T>::Ones(heads * hd, d);
    ColMat<T> qc = q, kc = k;
    const muon::QKClipOptions o{.heads = heads, .tau = 100.0, .alpha = alpha, .rotary_rows = 2};
    const auto r = muon::qk_clip(q, k, logits, o);
    const auto rc = muon::qk_clip(qc, kc, logits, o);
    CHECK(r.clipped_heads == std::vector<index_t>{1});
    CHECK(rc.clipped_heads == r.clipped_heads);
    CHECK(r.scales == std::vector<double>{1.0, 0.25});
    const T q_plain = static_cast<T>(std::pow(0.25, alpha)), k_scale = static_cast<T>(std::pow(0.25, 1.0 - alpha));
    for (index_t row = 0; row < heads * hd; ++row) {
      const bool clipped = row >= hd;
      const bool rotary = row % hd >= hd - 2;
      const T qs = !clipped ? T(1) : rotary ? T(0.25) : q_plain;
      const T ks = !clipped ? T(1) : k_scale;
      INFO("alpha " << alpha << " row " << row);
      CHECK(q.row(row) == RowMat<T>::Constant(1, d, qs));
      CHECK(k.row(row) == RowMat<T>::Constant(1, d, ks));
    }
    CHECK(RowMat<T>(qc) == q);
    CHECK(RowMat<T>(kc) == k);
  }
  // No head above tau: nothing changes, nothing reported clipped.
  RowMat<T> q = RowMat<T>::Ones(8, 3), k = RowMat<T>::Ones(8, 3);
  const std::vector<T> low{T(100), T(0)};
  const auto r = muon::qk_clip(q, k, low, {.heads = 2});
  CHECK(r.clipped_heads.empty());
  CHECK(q == RowMat<T>::Ones(8, 3));
  CHECK(k == RowMat<T>::Ones(8, 3));
}

TEMPLATE_TEST_CASE("qk_clip: bad shapes, logits and options throw muon::Error and change nothing",
                   "[building_blocks][qk_clip][errors]", float, double) {
  using T = TestType;
  const RowMat<T> q0 = RowMat<T>::Constant(8, 4, T(2)), k0 = RowMat<T>::Constant(8, 4, T(3));
  RowMat<T> q = q0, k = k0;
  const std::vector<T> big{T(500), T(500)};
  auto clip = [&](auto&& qq, auto&& kk, const std::vector<T>& s, muon::QKClipOptions o) {
    return [&, s, o] { (void)muon::qk_clip(qq, kk, s, o); };
  };
  check_error(clip(q, k, big, {.heads = 0}), "'heads' must be > 0");
  check_error(clip(q, k, big, {.heads = 3}), "not a multiple of heads = 3");
  RowMat<T> k_odd = RowMat<T>::Constant(6, 4, T(3));
  check_error(clip(q, k_odd, big, {.heads = 4}), "w_k has 6 rows");
  check_error(clip(q, k, {T(500)}, {.heads = 2}), "got 1 max logits for 2 heads");
  check_error(clip(q, k, {T(500), std::numeric_limits<T>::quiet_NaN()}, {.heads = 2}), "head 1 must be finite");
  check_error(clip(q, k, {T(-1), T(500)}, {.heads = 2}), "head 0 must be finite and >= 0");
  check_error(clip(q, k, big, {.heads = 2, .rotary_rows = 4}), "'rotary_rows' must be in [0, 4)");
  check_error(clip(q, k, big, {.heads = 2, .tau = 0.0}), "'tau' must be > 0");
  check_error(clip(q, k, big, {.heads = 2, .alpha = 1.5}), "'alpha' must be in [0, 1]");
  check_error(clip(q, q, big, {.heads = 2}), "share memory");
  check_error(clip(muon::raw(q.data(), {4, 4}), muon::raw(q.data() + 8, {4, 4}), big, {.heads = 2}), "share memory");
  check_error(clip(muon::raw(q.data(), {2, 4, 4}), k, big, {.heads = 2}), "expected a matrix");
  check_error(clip(muon::raw(static_cast<T*>(nullptr), {8, 4}), k, big, {.heads = 2}), "w_q has null data");
  check_error(clip(muon::raw(q.data(), {0, 4}), k, big, {.heads = 2}), "every dimension must be > 0");
  CHECK(q == q0);
  CHECK(k == k0);
}

// ---- the fallbacks alone --------------------------------------------------------------------------

namespace {

template <class B>
using HandAdamW = muon::Optimizer<B, policy::NoFilter, policy::FallbackOnlyRouter, policy::NewtonSchulz,
                                  policy::NoConstraint, policy::AdamW>;
template <class B>
using HandGrokfastMA = muon::Optimizer<B, policy::GrokfastMA, policy::FallbackOnlyRouter, policy::NewtonSchulz,
                                       policy::NoConstraint, policy::AdamW>;

using BF = muon::backend::Eigen<float>;
static_assert(std::is_same_v<muon::AdamW<BF>, HandAdamW<BF>>);
static_assert(std::is_same_v<muon::GrokfastMA<BF>, HandGrokfastMA<BF>>);
static_assert(std::is_same_v<muon::Lion<BF>::fallback_type, policy::Lion>);
static_assert(std::is_same_v<muon::SGD<BF>::fallback_type, policy::SGD>);
static_assert(std::is_same_v<muon::SGD<BF>::router_type, policy::FallbackOnlyRouter>);
static_assert(std::is_same_v<muon::MuonGrokfastMA<BF>::filter_type, policy::GrokfastMA>);
static_assert(std::is_same_v<muon::MuonGrokfastMA<BF>::router_type, policy::ShapeRoleRouter>);

// Two tensors (a matrix that Muon would orthogonalise, and a vector), `steps` steps of given
// gradients; returns the parameters after each step, flattened.
template <class Opt, class T = typename Opt::value_type>
std::vector<std::vector<T>> run(typename Opt::Options o, const std::vector<std::vector<T>>& grads) {
  Opt opt(std::move(o));
  std::vector<T> w = normal_values<T>(16 * 24 + 24, 9), g(w.size());
  opt.add("w", muon::raw(w.data(), {16, 24}), muon::raw(g.data(), {16, 24}));
  opt.add("b", muon::raw(w.data() + 16 * 24, {24}), muon::raw(g.data() + 16 * 24, {24}));
  std::vector<std::vector<T>> out;
  for (const auto& gt : grads) {
    g = gt;
    REQUIRE(opt.step().all_applied());
    out.push_back(w);
  }
  return out;
}

template <class T>
std::vector<std::vector<T>> gradients(std::size_t steps) {
  std::vector<std::vector<T>> g;
  for (std::size_t t = 0; t < steps; ++t) g.push_back(normal_values<T>(16 * 24 + 24, 20 + static_cast<unsigned>(t)));
  return g;
}

// torch.optim.AdamW in double on the gradients the filter hands it.
std::vector<std::vector<double>> reference_adamw(std::vector<double> p, const std::vector<std::vector<double>>& grads,
                                                 double lr, double b1, double b2, double eps, double wd) {
  std::vector<double> m(p.size()), v(p.size());
  std::vector<std::vector<double>> out;
  for (std::size_t t = 1; t <= grads.size(); ++t) {
    const double bc1 = 1 - std::pow(b1, static_cast<double>(t)), bc2 = 1 - std::pow(b2, static_cast<double>(t));
    for (std::size_t i = 0; i < p.size(); ++i) {
      const double g = grads[t - 1][i];
      p[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g;
      v[i] = b2 * v[i] + (1 - b2) * g * g;
      p[i] -= (lr / bc1) * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + eps);
    }
    out.push_back(p);
  }
  return out;
}

template <class T>
std::vector<std::vector<double>> widen_all(const std::vector<std::vector<T>>& v) {
  std::vector<std::vector<double>> out;
  for (const auto& x : v) out.emplace_back(x.begin(), x.end());
  return out;
}

template <class T>
double worst(const std::vector<std::vector<T>>& ours, const std::vector<std::vector<double>>& ref) {
  double m = 0;
  for (std::size_t t = 0; t < ours.size(); ++t) m = std::max(m, muon::test::max_abs_diff(widen<T>(ours[t]), ref[t]));
  return m;
}

}  // namespace

TEMPLATE_TEST_CASE("AdamW / Lion / SGD aliases: every tensor on the fallback, the same bits as Muon with the matrix "
                   "path off, and the plain update", "[building_blocks][aliases]", float, double) {
  using T = TestType;
  using B = muon::backend::Eigen<T>;
  const double tol = std::is_same_v<T, float> ? 5e-6 : 1e-13;
  const auto grads = gradients<T>(2);
  const auto p0 = widen<T>(normal_values<T>(16 * 24 + 24, 9));

  {  // AdamW
    const policy::AdamW::Options f{.lr = 0.01, .beta1 = 0.8, .beta2 = 0.99, .eps = 1e-8, .weight_decay = 0.1};
    const auto ours = run<muon::AdamW<B>>({.fallback = f}, grads);
    CHECK(ours == run<muon::Muon<B>>({.enable_muon = false, .fallback = f}, grads));
    CHECK(worst(ours, reference_adamw(p0, widen_all(grads), 0.01, 0.8, 0.99, 1e-8, 0.1)) <= tol);
    muon::AdamW<B> opt;
    std::vector<T> w(16 * 24), g(w.size());
    opt.add("w", muon::raw(w.data(), {16, 24}), muon::raw(g.data(), {16, 24}));
    CHECK(opt.path(0) == muon::Path::fallback);
    CHECK(opt.options().fallback.lr == 1e-3);
  }
  {  // Lion: p <- p (1 - lr wd) - lr sign(beta1 m + (1 - beta1) g); m <- beta2 m + (1 - beta2) g
    const policy::Lion::Options f{.lr = 0.01, .beta1 = 0.9, .beta2 = 0.99, .weight_decay = 0.5};
    const auto ours = run<muon::Lion<B>>({.fallback = f}, grads);
    CHECK(ours == run<muon::MuonLion<B>>({.enable_muon = false, .fallback = f}, grads));
    std::vector<double> p = p0, m(p.size());
    std::vector<std::vector<double>> ref;
    for (const auto& gt : grads) {
      for (std::size_t i = 0; i < p.size(); ++i) {
        const double g = static_cast<double>(gt[i]);
        const double c = 0.9 * m[i] + 0.1 * g;
        p[i] = p[i] * (1 - 0.01 * 0.5) - 0.01 * (c > 0 ? 1.0 : c < 0 ? -1.0 : 0.0);
        m[i] = 0.99 * m[i] + 0.01 * g;
      }
      ref.push_back(p);
    }
    CHECK(worst(ours, ref) <= tol);
    CHECK(muon::Lion<B>().options().fallback.lr == 1e-4);
  }
  {  // SGD with momentum and Nesterov (torch.optim.SGD: the first buffer is the gradient)
    const policy::SGD::Options f{.lr = 0.05, .momentum = 0.9, .nesterov = true, .weight_decay = 0.01};
    const auto ours = run<muon::SGD<B>>({.fallback = f}, grads);
    CHECK(ours == run<muon::MuonSGD<B>>({.enable_muon = false, .fallback = f}, grads));
    std::vector<double> p = p0, buf(p.size());
    std::vector<std::vector<double>> ref;
    for (std::size_t t = 0; t < grads.size(); ++t) {
      for (std::size_t i = 0; i < p.size(); ++i) {
        const double d = static_cast<double>(grads[t][i]) + 0.01 * p[i];
        buf[i] = t == 0 ? d : 0.9 * buf[i] + d;
        p[i] -= 0.05 * (d + 0.9 * buf[i]);
      }
      ref.push_back(p);
    }
    CHECK(worst(ours, ref) <= tol);
    CHECK(muon::SGD<B>().options().fallback.momentum == 0.0);
  }
}

TEMPLATE_TEST_CASE("GrokfastMA alias: the MA filter in front of AdamW for every tensor", "[building_blocks][aliases]",
                   float, double) {
  using T = TestType;
  using B = muon::backend::Eigen<T>;
  const auto grads = gradients<T>(2);
  const policy::GrokfastMA::Options fo{.window = 2, .lamb = 2.0, .warmup = false};
  const policy::AdamW::Options ao{.lr = 0.01, .weight_decay = 0.0};
  const auto ours = run<muon::GrokfastMA<B>>({.filter = fo, .fallback = ao}, grads);
  // By hand: the MA filter with the Muon router, matrix path off.
  using Hand = muon::Optimizer<B, policy::GrokfastMA, policy::ShapeRoleRouter, policy::NewtonSchulz,
                               policy::NoConstraint, policy::AdamW>;
  CHECK(ours == run<Hand>({.enable_muon = false, .filter = fo, .fallback = ao}, grads));
  // g'_1 = g1 + 2 g1;  g'_2 = g2 + 2 (g1 + g2) / 2.
  std::vector<std::vector<double>> filtered(2, std::vector<double>(grads[0].size()));
  for (std::size_t i = 0; i < filtered[0].size(); ++i) {
    const double g1 = static_cast<double>(grads[0][i]), g2 = static_cast<double>(grads[1][i]);
    filtered[0][i] = g1 + 2.0 * g1;
    filtered[1][i] = g2 + 2.0 * (g1 + g2) / 2.0;
  }
  const auto ref = reference_adamw(widen<T>(normal_values<T>(16 * 24 + 24, 9)), filtered, 0.01, 0.9, 0.999, 1e-8, 0.0);
  CHECK(worst(ours, ref) <= (std::is_same_v<T, float> ? 5e-6 : 1e-13));
  CHECK(muon::GrokfastMA<B>().options().filter.window == 100);
}

// ---- Shape from run-time dimensions ----------------------------------------------------------------

TEST_CASE("Shape from a run-time list of dimensions", "[building_blocks][shape]") {
  const std::vector<std::int64_t> sizes{4, 16, 32};
  const std::vector<index_t> idx{4, 16, 32};
  const std::vector<int> ints{4, 16, 32};
  const std::array<unsigned, 3> uns{4, 16, 32};
  const muon::Shape expected{4, 16, 32};
  CHECK(muon::Shape(sizes) == expected);
  CHECK(muon::Shape(std::span<const index_t>(idx)) == expected);
  CHECK(muon::Shape(idx) == expected);
  CHECK(muon::Shape(ints) == expected);
  CHECK(muon::Shape(uns) == expected);
  CHECK(muon::Shape(std::vector<int>{}) == muon::Shape{});
  static_assert(muon::Shape(std::array<index_t, 2>{3, 5}).rows() == 3);
  static_assert(!std::is_constructible_v<muon::Shape, std::string>);  // characters are not dimensions
  static_assert(!std::is_constructible_v<muon::Shape, std::vector<bool>>);

  std::vector<float> x(4 * 16 * 32);
  const auto t = muon::raw(x.data(), sizes);  // implicit, as a trainer's sizes() would be passed
  CHECK(t.shape == expected);

  // Rank above max_rank throws, like the list form; negative dimensions are kept (registration
  // rejects them) in both forms.
  check_error([] { (void)muon::Shape(std::vector<std::int64_t>(7, 1)); }, "shape rank 7 is above 6");
  check_error([] { (void)muon::Shape{1, 1, 1, 1, 1, 1, 1}; }, "shape rank 7 is above 6");
  check_error([] { (void)muon::Shape(std::vector<std::uint64_t>{std::numeric_limits<std::uint64_t>::max()}); },
              "does not fit in index_t");
  const muon::Shape neg(std::vector<std::int64_t>{-2, 3});
  CHECK(neg == muon::Shape{-2, 3});
  CHECK(neg[0] == -2);
  muon::Muon<muon::backend::Eigen<float>> opt;
  std::vector<float> g(x.size());
  CHECK_THROWS_AS(opt.add("neg", muon::raw(x.data(), neg), muon::raw(g.data(), neg)), muon::Error);
}
