// Shared by tests/consumer (find_package) and tests/consumer_subdir (add_subdirectory): a
// downstream program that trains one step of Muon + AdamW through the public API.
#include <muon/muon.hpp>

#include <Eigen/Core>  // reachable only through muon::eigen's usage requirements

#include <iostream>

#if defined(MUON_WITH_XTENSOR)  // defined by muon::xtensor
#include <muon/backend/xtensor.hpp>

// One Muon step on an xtensor matrix; true when it moved.
bool xtensor_step() {
  xt::xtensor<double, 2> w = xt::ones<double>({16, 32}), gw = xt::ones<double>({16, 32});
  gw(0, 0) = -1.0;
  muon::Muon<muon::backend::Xtensor<double>> opt({.lr = 0.02});
  opt.add("w", w, gw);
  const bool applied = opt.step().all_applied();
  std::cout << "xtensor backend: products on " << muon::backend::cpu::to_string(muon::backend::Xtensor<double>::product_library)
            << "\n";
  return applied && w(0, 0) != 1.0;
}
#else
bool xtensor_step() { return true; }
#endif

int main() {
  Eigen::MatrixXf w = Eigen::MatrixXf::Random(16, 32), gw = Eigen::MatrixXf::Random(16, 32);
  Eigen::VectorXf b = Eigen::VectorXf::Zero(16), gb = Eigen::VectorXf::Ones(16);
  muon::Muon<muon::backend::Eigen<float>> opt({.lr = 0.02, .fallback = {.lr = 1e-3}});
  opt.add("w", w, gw);
  opt.add("b", b, gb, {.role = muon::Role::bias});
  const Eigen::MatrixXf w0 = w;
  const auto result = opt.step();
  std::cout << "math errno: " << (muon::math_errno ? "on" : "off") << "\n";
  std::cout << "muon " << muon::version_string << ": step " << result.step << ", |dW| = " << (w - w0).norm()
            << "\n"
            << opt.routing_report();
  return result.all_applied() && (w - w0).norm() > 0 && b(0) < 0 && xtensor_step() ? 0 : 1;
}
