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
//
// Precision::bf16 rounds every product's operands to bf16 and accumulates in float (as
// torch.optim.Muon's default, which also keeps its intermediates in bf16); it needs a backend
// with bf16 products and refuses at registration otherwise.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "muon/backend/concept.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/precision.hpp"
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
    Precision precision = Precision::full;  // bf16: bf16 product inputs, float accumulation
  };

  static constexpr int k_max_steps = 100;

  NewtonSchulz() : NewtonSchulz(Options{}) {}
  explicit NewtonSchulz(Options options) : options_(std::move(options)) {
    // More than k_max_steps iterations is a mistake, not a setting (Polar Express converges in
    // about 8; a count from a wrapped integer would run for hours).
    if (options_.steps < 0 || options_.steps > k_max_steps)
      detail::fail("NewtonSchulz: option 'steps' must be in [0, " + std::to_string(k_max_steps) + "], got " +
                   std::to_string(options_.steps));
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
    if (options_.precision == Precision::bf16) require_bf16(b);
    b.reserve_gemm(n, n, m);  // A = X X^T
    b.reserve_gemm(n, n, n);  // B += c A A
    b.reserve_gemm(n, m, n);  // Y = B X
    b.reserve_gemm(m, n, n);  // Y = X B (tall)
    WorkspaceNeed need = WorkspaceNeed{}
                             .add_accums(batch)
                             .add_matrix(batch, n, n)
                             .add_matrix(batch, n, n)
                             .add_matrix(batch, rows, cols);
    if (options_.precision == Precision::bf16)
      need.template add_bf16_matrix<typename B::value_type>(batch, rows, cols)
          .template add_bf16_matrix<typename B::value_type>(batch, n, n);
    return need;
  }

  // Each iteration, with X wide (a tall X is worked on as its transpose through the products'
  // transpose flags, so the small side n is always the Gram side):
  //   A = X X^T                 symmetric product where the backend has one (half the flops)
  //   B = a I + b A + c A A     A A = A A^T: symmetric again; a I folds a X into the next product
  //   X <- B X                  into the other buffer; the two swap roles every iteration
  // In bf16 precision each product's operands are rounded to bf16 first; accumulation, results
  // and X between iterations stay in float.
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
    if (options_.steps == 0) return;

    auto a_mat = ws.take(x.batch, n, n);
    auto b_mat = ws.take(x.batch, n, n);
    auto other = ws.take(x.batch, x.rows, x.cols);
    [[maybe_unused]] backend::MatrixView<bfloat16> x16{}, s16{};
    if (options_.precision == Precision::bf16) {
      x16 = ws.take_bf16(x.batch, x.rows, x.cols);
      s16 = ws.take_bf16(x.batch, n, n);
    }
    // Small slices run together (a batched product per stage: fewer library calls); large ones
    // one after another through every iteration, so each slice's operands stay in cache.
    // Measured on one thread against separate calls per slice: 256 x 32 x 32 takes 0.65 of the
    // time, 64 x 64 x 64 0.92; 12 x 768 x 768 1.00 (stage by stage over all slices: 1.08).
    const bool by_slice = x.batch > 1 && x.slice_size() > k_batched_slice_size;
    if (!by_slice) {
      iterate(b, x, other, a_mat, b_mat, x16, s16, wide);
      return;
    }
    for (index_t s = 0; s < x.batch; ++s) {
      auto one = [s](auto v) {
        return decltype(v){v.data + s * v.slice_size(), 1, v.rows, v.cols};
      };
      iterate(b, one(x), one(other), one(a_mat), one(b_mat), x16.data ? one(x16) : x16, s16.data ? one(s16) : s16, wide);
    }
  }

 private:
  // Slices above this many elements are iterated one at a time (see apply).
  static constexpr index_t k_batched_slice_size = 128 * 512;

  // The iterations on x (normalised), with `other` as the second X buffer; the result ends in x.
  template <backend::Backend B>
  void iterate(B& b, backend::MatrixView<typename B::value_type> x, backend::MatrixView<typename B::value_type> other,
               backend::MatrixView<typename B::value_type> a_mat, backend::MatrixView<typename B::value_type> b_mat,
               [[maybe_unused]] backend::MatrixView<bfloat16> x16, [[maybe_unused]] backend::MatrixView<bfloat16> s16,
               bool wide) const {
    using T = typename B::value_type;
    using backend::Trans;
    backend::MatrixView<T> cur = x, next = other;
    for (int k = 0; k < options_.steps; ++k) {
      const auto q = coefficients_at(k);
      if (options_.precision == Precision::bf16) {
        if constexpr (backend::Bf16Products<B>) {
          b.convert(cur, x16);
          b.syrk(wide ? Trans::no : Trans::yes, 1.0f, x16.as_const(), 0.0f, a_mat);  // A
          b.transform(b_mat, fn::Scale<T>{static_cast<T>(q.b)}, a_mat);
          b.add_to_diagonal(b_mat, static_cast<T>(q.a));
          b.convert(a_mat, s16);
          b.syrk(Trans::no, static_cast<T>(q.c), s16.as_const(), 1.0f, b_mat);  // B += c A A
          b.convert(b_mat, s16);
          if (wide)
            b.gemm(Trans::no, Trans::no, 1.0f, s16.as_const(), x16.as_const(), 0.0f, next);  // X' = B X
          else
            b.gemm(Trans::no, Trans::no, 1.0f, x16.as_const(), s16.as_const(), 0.0f, next);  // X' = X B
        } else {
          require_bf16(b);  // throws: this backend has no bf16 products
        }
      } else {
        symmetric_product(b, wide ? Trans::no : Trans::yes, T(1), cur, T(0), a_mat);  // A
        b.transform(b_mat, fn::Scale<T>{static_cast<T>(q.b)}, a_mat);
        b.add_to_diagonal(b_mat, static_cast<T>(q.a));
        symmetric_product(b, Trans::no, static_cast<T>(q.c), a_mat, T(1), b_mat);  // B += c A A
        if (wide)
          b.gemm(Trans::no, Trans::no, T(1), b_mat, cur, T(0), next);  // X' = B X
        else
          b.gemm(Trans::no, Trans::no, T(1), cur, b_mat, T(0), next);  // X' = X B
      }
      std::swap(cur, next);
    }
    if (cur.data != x.data) b.transform(x, fn::Copy{}, cur);
  }

  // C = alpha op(A) op(A)^T + beta C: the backend's symmetric product, or a plain one.
  template <backend::Backend B, class T>
  static void symmetric_product(B& b, backend::Trans t, T alpha, backend::MatrixView<T> a, T beta,
                                backend::MatrixView<T> c) {
    using backend::Trans;
    if constexpr (backend::SymmetricProducts<B>)
      b.syrk(t, alpha, a.as_const(), beta, c);
    else
      b.gemm(t, t == Trans::no ? Trans::yes : Trans::no, alpha, a, a, beta, c);
  }

  template <backend::Backend B>
  static void require_bf16(B& b) {
    if constexpr (!backend::Bf16Products<B>) {
      detail::fail("NewtonSchulz: precision bf16 needs a backend with bf16 products (muon::backend::Eigen<float> "
                   "with oneDNN); this backend has none");
    } else {
      const std::string why = b.bf16_unavailable_reason();
      if (!why.empty()) detail::fail("NewtonSchulz: precision bf16 is not available: " + why);
    }
  }

  Options options_;
};

}  // namespace muon::policy
