// A read-only parameter cannot be registered.
#include <muon/muon.hpp>

void f(const Eigen::MatrixXf& w, const Eigen::MatrixXf& g) {
  muon::Muon<muon::backend::Eigen<float>> opt;
  opt.add("w", w, g);
}
