#pragma once
// Test matrices with a chosen spectrum (orthogonalizer properties, bf16 accuracy).
#include <Eigen/Core>
#include <Eigen/QR>
#include <algorithm>
#include <cmath>
#include <random>

namespace muon::test {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// m x n matrix with singular values log-spaced from 1 down to 1/kappa and random singular vectors.
inline MatD with_spectrum(int m, int n, double kappa, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  auto gaussian = [&](int r, int c) { return MatD(MatD::NullaryExpr(r, c, [&] { return normal(rng); })); };
  const int k = std::min(m, n);
  MatD u = Eigen::HouseholderQR<MatD>(gaussian(m, m)).householderQ();
  MatD v = Eigen::HouseholderQR<MatD>(gaussian(n, n)).householderQ();
  Eigen::VectorXd s(k);
  for (int i = 0; i < k; ++i) s(i) = std::pow(kappa, -static_cast<double>(i) / std::max(k - 1, 1));
  return u.leftCols(k) * s.asDiagonal() * v.leftCols(k).transpose();
}

}  // namespace muon::test
