// Shared by tests/consumer (find_package) and tests/consumer_subdir (add_subdirectory): a
// downstream program that trains one step of Muon + AdamW through the public API.
#include <muon/muon.hpp>

#include <Eigen/Core>  // reachable only through muon::eigen's usage requirements

#include <iostream>

int main() {
  Eigen::MatrixXf w = Eigen::MatrixXf::Random(16, 32), gw = Eigen::MatrixXf::Random(16, 32);
  Eigen::VectorXf b = Eigen::VectorXf::Zero(16), gb = Eigen::VectorXf::Ones(16);
  muon::Muon<muon::backend::Eigen<float>> opt({.lr = 0.02, .fallback = {.lr = 1e-3}});
  opt.add("w", w, gw);
  opt.add("b", b, gb, {.role = muon::Role::bias});
  const Eigen::MatrixXf w0 = w;
  const auto result = opt.step();
  std::cout << "muon " << muon::version_string << ": step " << result.step << ", |dW| = " << (w - w0).norm()
            << "\n"
            << opt.routing_report();
  return result.all_applied() && (w - w0).norm() > 0 && b(0) < 0 ? 0 : 1;
}
