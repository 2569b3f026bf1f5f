// A temporary matrix would dangle after registration: rejected at compile time.
#include <muon/muon.hpp>

void f(Eigen::MatrixXf& g) {
  muon::Muon<muon::backend::Eigen<float>> opt;
  opt.add("w", Eigen::MatrixXf(g.rows(), g.cols()), g);
}
