// Manifold Muon on problems whose answer is known: StiefelMuon and HypersphereMuon find the
// nearest point of their manifold to a fixed target while every step stays on the manifold.
//
//   Stiefel:      minimise 1/2 ||W - T||_F^2 subject to W^T W = I (W W^T = I if wide). The
//                 answer is T's polar factor msign(T) (orthogonal Procrustes), per slice of a
//                 3-D expert stack.
//   Hypersphere:  the same loss with every row at unit norm. The answer is T's rows normalised.
//
// The gradient is W - T (written out here, as a trainer's backprop would give it). The table
// shows the distance to the answer falling while the constraint errors stay at rounding level.
// The program exits 1 if either does not hold. Run it with:
//   bash scripts/test.sh && build/examples/03_manifold/manifold
#include <muon/muon.hpp>

#include <Eigen/Dense>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using MatrixD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

Matrix randn(Eigen::Index rows, Eigen::Index cols, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  Matrix m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = normal(rng);
  return m;
}

// The answers, computed in double by SVD.
Matrix polar(const Matrix& t) {
  Eigen::JacobiSVD<MatrixD> svd(t.cast<double>(), Eigen::ComputeThinU | Eigen::ComputeThinV);
  return (svd.matrixU() * svd.matrixV().transpose()).cast<float>();
}
Matrix unit_rows(const Matrix& t) { return t.rowwise().normalized(); }

// One weight, its gradient, its target and the answer. Stacks are `slices` matrices on top of
// each other (rows = slices * slice_rows), registered as 3-D tensors.
struct Problem {
  const char* name;
  Eigen::Index slices, slice_rows, cols;
  Matrix w, g, target, answer;
  void gradient() { g = w - target; }
  [[nodiscard]] double distance() const { return (w - answer).norm(); }
};

// A target with singular values in [1, 3]: a Gaussian one has some near 0, and the loss is then
// nearly flat along their directions (its curvature there is the sum of two singular values),
// which only makes the demo slow.
Matrix well_conditioned(Eigen::Index rows, Eigen::Index cols, std::mt19937& rng) {
  const Eigen::Index m = std::min(rows, cols);
  std::uniform_real_distribution<float> uniform(1.0f, 3.0f);
  Eigen::VectorXf s(m);
  for (Eigen::Index i = 0; i < m; ++i) s[i] = uniform(rng);
  const Matrix u = polar(randn(rows, m, rng)), v = polar(randn(cols, m, rng));
  return u * s.asDiagonal() * v.transpose();
}

Problem make(const char* name, Eigen::Index slices, Eigen::Index rows, Eigen::Index cols, bool sphere,
             std::mt19937& rng) {
  Problem p{name, slices, rows, cols, randn(slices * rows, cols, rng), Matrix::Zero(slices * rows, cols),
            Matrix(slices * rows, cols), Matrix()};
  for (Eigen::Index s = 0; s < slices; ++s)
    p.target.middleRows(s * rows, rows) = sphere ? randn(rows, cols, rng) : well_conditioned(rows, cols, rng);
  p.answer = Matrix(slices * rows, cols);
  for (Eigen::Index s = 0; s < slices; ++s) {
    // A square W stays in its component of the orthogonal group: det(W) = +1 or -1 is fixed by
    // the first retraction (det of the initial W's polar factor) and no continuous path changes
    // it. A target whose polar factor has the other sign would be out of reach (the descent stops
    // at the nearest point of the right sign), so flip one of its rows to match.
    if (!sphere && rows == cols) {
      // Start within a right angle of the answer in every plane of rotation: from a random
      // start, the descent can pass next to a saddle (a half turn in one plane, distance
      // 2 sqrt(2) from the answer), where the gradient vanishes and only rounding noise moves W
      // off it; how long that takes depends on the last bits of every product.
      p.w.middleRows(s * rows, rows) = p.target.middleRows(s * rows, rows) + 0.5f * randn(rows, cols, rng);
      const double sign_w = p.w.middleRows(s * rows, rows).cast<double>().determinant();
      const double sign_t = p.target.middleRows(s * rows, rows).cast<double>().determinant();
      if (sign_w * sign_t < 0) p.target.row(s * rows) *= -1.0f;
    }
    const Matrix t = p.target.middleRows(s * rows, rows);
    p.answer.middleRows(s * rows, rows) = sphere ? unit_rows(t) : polar(t);
  }
  return p;
}

template <class Opt>
void add(Opt& opt, Problem& p, muon::Role role = muon::Role::none) {
  if (p.slices == 1) {
    opt.add(p.name, p.w, p.g, {.role = role});
  } else {
    const muon::Shape shape{p.slices, p.slice_rows, p.cols};
    opt.add(p.name, muon::raw(p.w.data(), shape), muon::raw(static_cast<const float*>(p.g.data()), shape), {.role = role});
  }
}

}  // namespace

int main() {
  using B = muon::backend::Eigen<float>;
  constexpr int steps = 400;
  std::mt19937 rng(2026);
  const auto schedule = muon::Schedule::warmup_cosine({.warmup_steps = 20, .total_steps = steps, .min_lr_ratio = 0.01});

  // Attention-like projections and an expert stack on the Stiefel manifold.
  std::vector<Problem> stiefel;
  stiefel.push_back(make("attn.qkv (tall 96x32)", 1, 96, 32, false, rng));
  stiefel.push_back(make("attn.out (square 32x32)", 1, 32, 32, false, rng));
  stiefel.push_back(make("mlp.down (wide 32x80)", 1, 32, 80, false, rng));
  stiefel.push_back(make("moe.up (4 x 48x16)", 4, 48, 16, false, rng));
  muon::StiefelMuon<B> stiefel_opt({.lr = 0.1, .schedule = schedule});
  for (auto& p : stiefel) add(stiefel_opt, p);

  // An embedding table and a router gate with unit-norm rows.
  std::vector<Problem> sphere;
  sphere.push_back(make("tok_embed (1000x64)", 1, 1000, 64, true, rng));
  sphere.push_back(make("moe.gate (8x64)", 1, 8, 64, true, rng));
  muon::HypersphereMuon<B> sphere_opt({.lr = 0.1, .schedule = schedule});
  add(sphere_opt, sphere[0], muon::Role::embedding);
  add(sphere_opt, sphere[1], muon::Role::router_gate);

  std::printf("%5s  %8s  %-26s %10s   %-22s %10s   %12s  %12s\n", "step", "lr", "", "", "", "", "max Stiefel", "max sphere");
  std::printf("%5s  %8s  %-26s %10s   %-22s %10s   %12s  %12s\n", "", "", "Stiefel tensor (worst)", "distance", "sphere tensor (worst)",
              "distance", "error", "error");
  double worst_stiefel = 0, worst_sphere = 0;
  auto worst = [](const std::vector<Problem>& ps) {
    return *std::max_element(ps.begin(), ps.end(), [](const Problem& a, const Problem& b) { return a.distance() < b.distance(); });
  };
  std::vector<double> start;
  for (auto* ps : {&stiefel, &sphere})
    for (auto& p : *ps) start.push_back(p.distance());
  for (int t = 0; t < steps; ++t) {
    for (auto* ps : {&stiefel, &sphere})
      for (auto& p : *ps) p.gradient();
    const auto rs = stiefel_opt.step();
    const auto rh = sphere_opt.step();
    worst_stiefel = std::max(worst_stiefel, rs.constraint.max_stiefel_error);
    worst_sphere = std::max(worst_sphere, rh.constraint.max_sphere_error);
    if (t % 50 == 0 || t == steps - 1) {
      const Problem& a = worst(stiefel);
      const Problem& b = worst(sphere);
      std::printf("%5d  %8.5f  %-26s %10.2e   %-22s %10.2e   %12.2e  %12.2e\n", t + 1, rs.lr, a.name, a.distance(), b.name,
                  b.distance(), rs.constraint.max_stiefel_error, rh.constraint.max_sphere_error);
    }
  }

  std::printf("\n%-26s %12s %12s\n", "tensor", "distance 0", "distance end");
  bool ok = true;
  std::size_t k = 0;
  for (auto* ps : {&stiefel, &sphere})
    for (auto& p : *ps) {
      const double end = p.distance();
      std::printf("%-26s %12.3e %12.3e\n", p.name, start[k], end);
      ok = ok && end < 1e-3 * start[k];  // reached, to about the final step size (measured 5e-5 .. 9e-5 of the start)
      ++k;
    }
  std::printf("\nworst constraint error over all steps: Stiefel ||W^T W - I||_F %.2e, sphere | ||w|| - 1 | %.2e\n",
              worst_stiefel, worst_sphere);
  // float32 rounding: a few 1e-7 for W^T W summed over up to 96 terms; 1e-7 for a row norm.
  ok = ok && worst_stiefel < 1e-5 && worst_sphere < 1e-6;
  std::printf("%s\n", ok ? "OK: every tensor reached its answer and stayed on its manifold"
                         : "FAILED: a tensor did not reach its answer, or left its manifold");
  return ok ? 0 : 1;
}
