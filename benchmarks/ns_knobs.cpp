// Do the MuonFast report's knobs (seeds/004) pay at equal accuracy? Prints, on spectra a gradient
// can have (condition numbers 10 and 100, a 1/(1+i) power law; square, wide and tall):
//  (1) fewer Newton-Schulz iterations for small matrices (the report caps them at 3): the range
//      of singular values of NS5's result after 3, 4 and 5 iterations;
//  (2) an early stop on the residual ||I - X X^T||_F / sqrt(n): its value after each iteration of
//      Polar Express (the schedule that converges; NS5's fixed coefficients keep the singular
//      values moving inside their band, so its residual never falls).
// The findings are in docs/performance.md ("The MuonFast knobs"). Not a timing: run it anywhere.
//   build-bench/benchmarks/ns_knobs
#include <muon/muon.hpp>
#include <Eigen/QR>
#include <Eigen/SVD>
#include <cstdio>
#include <random>
using MatD = Eigen::Matrix<double, -1, -1, Eigen::RowMajor>;
using MatF = Eigen::Matrix<float, -1, -1, Eigen::RowMajor>;
MatD spectrum(int m, int n, double kappa, unsigned seed, bool power) {
  std::mt19937 rng(seed); std::normal_distribution<double> nd;
  auto g = [&](int r, int c) { return MatD(MatD::NullaryExpr(r, c, [&] { return nd(rng); })); };
  int k = std::min(m, n);
  MatD u = Eigen::HouseholderQR<MatD>(g(m, m)).householderQ(), v = Eigen::HouseholderQR<MatD>(g(n, n)).householderQ();
  Eigen::VectorXd s(k);
  for (int i = 0; i < k; ++i) s(i) = power ? 1.0 / (1.0 + i) : std::pow(kappa, -double(i) / std::max(k - 1, 1));
  return u.leftCols(k) * s.asDiagonal() * v.leftCols(k).transpose();
}
template <class O> MatF run(O& o, const MatD& g) {
  using B = muon::backend::Eigen<float>; B b; muon::Workspace<B> ws; ws.allocate(b, o.plan(b, 1, g.rows(), g.cols()));
  MatF x = g.cast<float>(); o.apply(b, muon::backend::MatrixView<float>{x.data(), 1, x.rows(), x.cols()}, ws); return x;
}
int main() {
  struct C { int m, n; double kappa; bool power; const char* what; };
  C cases[] = {{64, 64, 10, false, "64x64 kappa 10"}, {64, 64, 100, false, "64x64 kappa 100"}, {128, 32, 100, false, "128x32 kappa 100"},
               {64, 256, 0, true, "64x256 sigma_i = 1/(1+i)"}, {256, 256, 0, true, "256x256 sigma_i = 1/(1+i)"}};
  std::printf("(1) NS5 coefficients: singular values of the result after k iterations\n");
  for (auto c : cases) {
    MatD g = spectrum(c.m, c.n, c.kappa, 7, c.power);
    std::printf("  %-26s", c.what);
    for (int k : {3, 4, 5}) {
      muon::policy::NewtonSchulz ns({.steps = k});
      auto sv = Eigen::JacobiSVD<MatD>(run(ns, g).cast<double>()).singularValues();
      std::printf("  k=%d [%.3f, %.3f]", k, sv.minCoeff(), sv.maxCoeff());
    }
    std::printf("\n");
  }
  std::printf("(2) Polar Express: residual ||I - X X^T||_F / sqrt(n) after k iterations\n");
  for (auto c : cases) {
    MatD g = spectrum(c.m, c.n, c.kappa, 7, c.power);
    std::printf("  %-26s", c.what);
    for (int k = 1; k <= 8; ++k) {
      muon::policy::PolarExpress pe({.steps = k});
      MatD x = run(pe, g).cast<double>(); if (x.rows() > x.cols()) x.transposeInPlace();
      double r = (MatD::Identity(x.rows(), x.rows()) - x * x.transpose()).norm() / std::sqrt(double(x.rows()));
      std::printf(" %.1e", r);
    }
    std::printf("\n");
  }
}
