#pragma once
// NewtonSchulz: approximate polar factor (msign) of each matrix by an odd quintic iteration.
//
//   X <- G / (||G||_F * norm_scale + eps)        per matrix (eps_mode add; clamp: max(., eps))
//   repeat steps:  A = X X^T;  B = b A + c A A;  X = a X + B X
//
// A tall matrix is handled as its transpose (A = X^T X, X = a X + X B, the same iteration
// without moving data), so A is always min(rows, cols) square. A batch (3-D tensor) is
// orthogonalised per slice. Defaults: Keller Jordan's (3.4445, -4.7750, 2.0315) x 5 steps,
// eps 1e-7 added to the norm (github.com/KellerJordan/Muon, zeropower_via_newtonschulz5;
// torch.optim.Muon clamps instead: eps_mode clamp). These coefficients do not converge to the
// polar factor: they push singular values quickly into a band around 1 (about [0.7, 1.2]), which
// is what Muon needs. A per-iteration schedule (Options::schedule) replaces the fixed
// coefficients; iteration k uses schedule[min(k, size - 1)]. polar_express.hpp ships the Polar
// Express schedule.
#include <algorithm>
#include <cmath>
#include <vector>

#include "muon/backend/concept.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/validate.hpp"
#include "muon/core/workspace.hpp"

namespace muon::policy {

struct QuinticCoefficients {
  double a = 0, b = 0, c = 0;
};

enum class EpsMode {
  add,    // X / (||X|| + eps)        Keller Jordan's Muon, the golden references
  clamp,  // X / max(||X||, eps)      torch.optim.Muon
};

namespace ns_detail {

// x / (norm_s * scale + eps) (or max(norm_s * scale, eps)), in double so that a norm beyond the
// parameter type's range still gives a finite quotient.
template <class T>
struct Normalize {
  const double* norms;
  double scale;
  double eps;
  bool clamp;
  MUON_HOST_DEVICE T operator()(index_t s, T x) const {
    const double n = norms[s] * scale;
    const double denom = clamp ? (n > eps ? n : eps) : n + eps;
    return static_cast<T>(static_cast<double>(x) / denom);
  }
};

}  // namespace ns_detail

class NewtonSchulz {
 public:
  struct Options {
    int steps = 5;
    QuinticCoefficients coefficients{3.4445, -4.7750, 2.0315};
    std::vector<QuinticCoefficients> schedule{};  // per iteration; empty = `coefficients` every time
    double norm_scale = 1.0;                      // Polar Express divides by 1.01 ||X||
    double eps = 1e-7;
    EpsMode eps_mode = EpsMode::add;
  };

  NewtonSchulz() : NewtonSchulz(Options{}) {}
  explicit NewtonSchulz(Options options) : options_(std::move(options)) {
    if (options_.steps < 0) detail::fail("NewtonSchulz: option 'steps' must be >= 0");
    auto check = [](const QuinticCoefficients& q) {
      detail::require_finite("NewtonSchulz", "coefficients.a", q.a);
      detail::require_finite("NewtonSchulz", "coefficients.b", q.b);
      detail::require_finite("NewtonSchulz", "coefficients.c", q.c);
    };
    check(options_.coefficients);
    for (const auto& q : options_.schedule) check(q);
    detail::require_positive("NewtonSchulz", "norm_scale", options_.norm_scale);
    detail::require_positive("NewtonSchulz", "eps", options_.eps);
  }

  [[nodiscard]] const Options& options() const { return options_; }

  [[nodiscard]] QuinticCoefficients coefficients_at(int k) const {
    if (options_.schedule.empty()) return options_.coefficients;
    const auto last = static_cast<int>(options_.schedule.size()) - 1;
    return options_.schedule[static_cast<std::size_t>(std::min(k, last))];
  }

  template <backend::Backend B>
  [[nodiscard]] WorkspaceNeed plan(B& b, index_t batch, index_t rows, index_t cols) const {
    const index_t n = std::min(rows, cols);
    const index_t m = std::max(rows, cols);
    b.reserve_gemm(n, n, m);  // A = X X^T
    b.reserve_gemm(n, n, n);  // B += c A A
    b.reserve_gemm(n, m, n);  // Y = B X
    b.reserve_gemm(m, n, n);  // Y = X B (tall)
    return WorkspaceNeed{}
        .add_accums(batch)
        .add_matrix(batch, n, n)
        .add_matrix(batch, n, n)
        .add_matrix(batch, rows, cols);
  }

  template <backend::Backend B>
  void apply(B& b, backend::MatrixView<typename B::value_type> x, Workspace<B>& ws) const {
    using T = typename B::value_type;
    using backend::Trans;
    if (x.empty()) return;
    const bool wide = x.rows <= x.cols;
    const index_t n = std::min(x.rows, x.cols);

    double* norms = ws.take_accums(x.batch);
    b.frobenius_norms(x, norms);
    b.transform_slices(x, ns_detail::Normalize<T>{norms, options_.norm_scale, options_.eps,
                                                  options_.eps_mode == EpsMode::clamp},
                       x);

    auto a_mat = ws.take(x.batch, n, n);
    auto b_mat = ws.take(x.batch, n, n);
    auto y = ws.take(x.batch, x.rows, x.cols);
    for (int k = 0; k < options_.steps; ++k) {
      const auto q = coefficients_at(k);
      if (wide)
        b.gemm(Trans::no, Trans::yes, T(1), x, x, T(0), a_mat);  // A = X X^T
      else
        b.gemm(Trans::yes, Trans::no, T(1), x, x, T(0), a_mat);  // A = X^T X
      b.transform(b_mat, fn::Scale<T>{static_cast<T>(q.b)}, a_mat);
      b.gemm(Trans::no, Trans::no, static_cast<T>(q.c), a_mat, a_mat, T(1), b_mat);  // B = bA + cAA
      if (wide)
        b.gemm(Trans::no, Trans::no, T(1), b_mat, x, T(0), y);  // Y = B X
      else
        b.gemm(Trans::no, Trans::no, T(1), x, b_mat, T(0), y);  // Y = X B
      b.transform(x, fn::Axpy<T>{static_cast<T>(q.a)}, x, y);   // X = a X + Y
    }
  }

 private:
  Options options_;
};

}  // namespace muon::policy
