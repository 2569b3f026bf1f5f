// NorMuon (Options::normuon): a transcription of the rule in double, on top of the library's own
// Newton-Schulz, matches the optimizer; rows come out with equal update sizes; layouts agree.
#include <catch2/catch.hpp>

#include <cmath>
#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

namespace {
using B = muon::backend::Eigen<double>;
using RowMat = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

RowMat newton_schulz(RowMat x) {
  B backend;
  muon::policy::NewtonSchulz ns;
  muon::Workspace<B> ws;
  ws.allocate(backend, ns.plan(backend, 1, x.rows(), x.cols()));
  ns.apply(backend, muon::backend::MatrixView<double>{x.data(), 1, x.rows(), x.cols()}, ws);
  return x;
}

// Muon (Nesterov, lr adjust "original", no weight decay) with NorMuon, written out.
RowMat reference(RowMat w, const std::vector<RowMat>& grads, double lr, double beta2, double eps) {
  RowMat m = RowMat::Zero(w.rows(), w.cols());
  Eigen::VectorXd v = Eigen::VectorXd::Zero(w.rows());
  const double adj = std::sqrt(std::max(1.0, static_cast<double>(w.rows()) / static_cast<double>(w.cols())));
  for (const auto& g : grads) {
    m = m + 0.05 * (g - m);
    const RowMat u = g + 0.95 * (m - g);
    RowMat o = newton_schulz(u);
    const double before = o.norm();
    const Eigen::VectorXd ms = o.array().square().rowwise().mean();
    v = beta2 * v + (1 - beta2) * ms;
    for (Eigen::Index r = 0; r < o.rows(); ++r) o.row(r) /= std::sqrt(v(r)) + eps;
    o *= before / o.norm();
    w -= lr * adj * o;
  }
  return w;
}
}  // namespace

TEST_CASE("NorMuon matches its written-out rule", "[normuon]") {
  const RowMat w0 = RowMat::Random(12, 20);
  std::vector<RowMat> grads;
  for (int t = 0; t < 5; ++t) grads.push_back(RowMat::Random(12, 20) * (1 + t));
  const RowMat expected = reference(w0, grads, 0.02, 0.95, 1e-8);

  SECTION("row-major storage") {
    RowMat w = w0, g(12, 20);
    muon::Muon<B> opt({.normuon = true});
    opt.add("w", w, g);
    for (const auto& gt : grads) {
      g = gt;
      opt.step();
    }
    CHECK((w - expected).cwiseAbs().maxCoeff() < 1e-12);
    CHECK(opt.state_snapshot().at("w/normuon/row_second_moment").size() == 12);
    CHECK(opt.memory_report().matrix_state_bytes == (12 * 20 + 12) * sizeof(double));
  }
  SECTION("column-major storage (logical rows are physical columns)") {
    Eigen::MatrixXd w = w0, g(12, 20);
    muon::Muon<B> opt({.normuon = true});
    opt.add("w", w, g);
    for (const auto& gt : grads) {
      g = gt;
      opt.step();
    }
    CHECK((w - Eigen::MatrixXd(expected)).cwiseAbs().maxCoeff() < 1e-12);
  }
}

TEST_CASE("NorMuon's first step gives every row the same update size, at Muon's total size", "[normuon]") {
  const RowMat w0 = RowMat::Zero(10, 24);
  RowMat g = RowMat::Random(10, 24);
  g.row(0) *= 50;  // one row with a much larger gradient
  RowMat w_plain = w0, w_nor = w0;
  muon::Muon<B> plain, nor({.normuon = true});
  plain.add("w", w_plain, g);
  nor.add("w", w_nor, g);
  plain.step();
  nor.step();
  const Eigen::VectorXd row_norms = w_nor.rowwise().norm();
  CHECK(row_norms.maxCoeff() / row_norms.minCoeff() == Approx(1.0).epsilon(1e-6));
  CHECK(w_nor.norm() == Approx(w_plain.norm()).epsilon(1e-12));
}

TEST_CASE("NorMuon options are validated and a zero gradient stays a zero update", "[normuon][bad_input]") {
  CHECK_THROWS_WITH(muon::Muon<B>({.normuon = true, .normuon_beta2 = 1.0}), Catch::Contains("normuon_beta2"));
  CHECK_THROWS_WITH(muon::Muon<B>({.normuon = true, .normuon_eps = 0.0}), Catch::Contains("normuon_eps"));
  RowMat w = RowMat::Random(6, 9), g = RowMat::Zero(6, 9);
  const RowMat w0 = w;
  muon::Muon<B> opt({.normuon = true});
  opt.add("w", w, g);
  for (int i = 0; i < 3; ++i) opt.step();
  CHECK(w == w0);
}
