// A double matrix cannot be registered with a float backend.
#include <muon/muon.hpp>

void f(Eigen::MatrixXd& w, Eigen::MatrixXd& g) {
  muon::Muon<muon::backend::Eigen<float>> opt;
  opt.add("w", w, g);
}
