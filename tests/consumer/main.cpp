// Shared by tests/consumer (find_package) and tests/consumer_subdir (add_subdirectory).
#include <muon/muon.hpp>

#include <Eigen/Core>  // reachable only through muon::eigen's usage requirements

#include <iostream>

int main() {
  const Eigen::Matrix2d identity = Eigen::Matrix2d::Identity();
  std::cout << "muon " << muon::version_string << " (Eigen trace " << identity.trace() << ")\n";
  return identity.trace() == 2.0 ? 0 : 1;
}
