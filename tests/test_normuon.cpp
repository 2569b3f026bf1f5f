// NorMuon (Options::normuon): a transcription of the rule in double, on top of the library's own
// Newton-Schulz, matches the optimizer; rows come out with equal update sizes; layouts agree.
// Typed over every backend in MUON_TEST_BACKENDS: the reference runs in double on the same
// backend family; a float backend consumes the same inputs rounded to float and is held to float
// tolerances (its error is float rounding, measured <= 1.4e-7 absolute here; the double bounds
// are unchanged).
#include <catch2/catch.hpp>

#include <cmath>
#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/backends.hpp"

namespace {
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using RowMatT = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMatT = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;

// The same backend family in double (the reference's Newton-Schulz).
template <class B>
struct in_double;
template <template <class> class Family, class T>
struct in_double<Family<T>> {
  using type = Family<double>;
};

template <class D>
RowMat newton_schulz(RowMat x) {
  D backend;
  muon::policy::NewtonSchulz ns;
  muon::Workspace<D> ws;
  ws.allocate(backend, ns.plan(backend, 1, x.rows(), x.cols()));
  ns.apply(backend, muon::backend::MatrixView<double>{x.data(), 1, x.rows(), x.cols()}, ws);
  return x;
}

// Muon (Nesterov, lr adjust "original", no weight decay) with NorMuon, written out.
template <class D>
RowMat reference(RowMat w, const std::vector<RowMat>& grads, double lr, double beta2, double eps) {
  RowMat m = RowMat::Zero(w.rows(), w.cols());
  Eigen::VectorXd v = Eigen::VectorXd::Zero(w.rows());
  const double adj = std::sqrt(std::max(1.0, static_cast<double>(w.rows()) / static_cast<double>(w.cols())));
  for (const auto& g : grads) {
    m = m + 0.05 * (g - m);
    const RowMat u = g + 0.95 * (m - g);
    RowMat o = newton_schulz<D>(u);
    const double before = o.norm();
    const Eigen::VectorXd ms = o.array().square().rowwise().mean();
    v = beta2 * v + (1 - beta2) * ms;
    for (Eigen::Index r = 0; r < o.rows(); ++r) o.row(r) /= std::sqrt(v(r)) + eps;
    o *= before / o.norm();
    w -= lr * adj * o;
  }
  return w;
}

// x rounded to T and back (the values a T run sees).
template <class T>
RowMat rounded(const RowMat& x) {
  return x.cast<T>().template cast<double>();
}
}  // namespace

TEMPLATE_TEST_CASE("NorMuon matches its written-out rule", "[normuon]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const double tol = std::is_same_v<T, float> ? 1e-6 : 1e-12;  // float: measured <= 1.4e-7
  const RowMat w0 = rounded<T>(RowMat::Random(12, 20));
  std::vector<RowMat> grads;
  for (int t = 0; t < 5; ++t) grads.push_back(rounded<T>(RowMat::Random(12, 20) * (1 + t)));
  const RowMat expected = reference<typename in_double<B>::type>(w0, grads, 0.02, 0.95, 1e-8);

  SECTION("row-major storage") {
    RowMatT<T> w = w0.cast<T>(), g(12, 20);
    muon::Muon<B> opt({.normuon = true});
    opt.add("w", w, g);
    for (const auto& gt : grads) {
      g = gt.cast<T>();
      opt.step();
    }
    const double err = (w.template cast<double>() - expected).cwiseAbs().maxCoeff();
    INFO("max error " << err);
    CHECK(err < tol);
    CHECK(opt.state_snapshot().at("w/normuon/row_second_moment").size() == 12);
    CHECK(opt.memory_report().matrix_state_bytes == (12 * 20 + 12) * sizeof(T));
  }
  SECTION("column-major storage (logical rows are physical columns)") {
    ColMatT<T> w = w0.cast<T>(), g(12, 20);
    muon::Muon<B> opt({.normuon = true});
    opt.add("w", w, g);
    for (const auto& gt : grads) {
      g = gt.cast<T>();
      opt.step();
    }
    const double err = (w.template cast<double>() - Eigen::MatrixXd(expected)).cwiseAbs().maxCoeff();
    INFO("max error " << err);
    CHECK(err < tol);
  }
}

TEMPLATE_TEST_CASE("NorMuon's first step gives every row the same update size, at Muon's total size", "[normuon]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const RowMatT<T> w0 = RowMatT<T>::Zero(10, 24);
  RowMatT<T> g = RowMat::Random(10, 24).cast<T>();
  g.row(0) *= T(50);  // one row with a much larger gradient
  RowMatT<T> w_plain = w0, w_nor = w0;
  muon::Muon<B> plain, nor({.normuon = true});
  plain.add("w", w_plain, g);
  nor.add("w", w_nor, g);
  plain.step();
  nor.step();
  const Eigen::VectorXd row_norms = w_nor.template cast<double>().rowwise().norm();
  CHECK(row_norms.maxCoeff() / row_norms.minCoeff() == Approx(1.0).epsilon(1e-6));
  CHECK(w_nor.template cast<double>().norm() ==
        Approx(w_plain.template cast<double>().norm()).epsilon(std::is_same_v<T, float> ? 1e-6 : 1e-12));
}

TEMPLATE_TEST_CASE("NorMuon options are validated and a zero gradient stays a zero update", "[normuon][bad_input]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  CHECK_THROWS_WITH(muon::Muon<B>({.normuon = true, .normuon_beta2 = 1.0}), Catch::Contains("normuon_beta2"));
  CHECK_THROWS_WITH(muon::Muon<B>({.normuon = true, .normuon_eps = 0.0}), Catch::Contains("normuon_eps"));
  RowMatT<T> w = RowMat::Random(6, 9).cast<T>(), g = RowMatT<T>::Zero(6, 9);
  const RowMatT<T> w0 = w;
  muon::Muon<B> opt({.normuon = true});
  opt.add("w", w, g);
  for (int i = 0; i < 3; ++i) opt.step();
  CHECK(w == w0);
}
