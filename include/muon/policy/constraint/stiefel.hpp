#pragma once
// Stiefel: manifold Muon. Keeps every matrix on the Stiefel manifold (orthonormal columns for a
// tall W, W^T W = I; orthonormal rows for a wide one, W W^T = I) and steps along it in the
// steepest direction under the spectral norm among the tangent directions.
//
//   Lambda = -1/4 (W^T G + G^T W)         m x m; G + 2 W Lambda is G's tangent projection P
//   G, Lambda <- c G, c Lambda            c = sqrt(m) / ||P||_F (m = short side; c = 0 when
//                                         ||P|| <= tangent_eps ||G||, rounding noise): P gets RMS
//                                         singular value 1. Scale invariance (the direction of
//                                         c G is that of G), and dual_lr is relative to the part
//                                         of G the direction is made of: the normal part of G
//                                         (W times a symmetric matrix), which Lambda cancels,
//                                         can be far larger (near an optimum it is all of G)
//   warm_start (option): Lambda += D, D = the last step's Lambda_end - Lambda_0 (scaled units)
//   for k = 0 .. K-1:
//     A = msign(G + 2 W Lambda);   H = W^T A + A^T W
//     stop if max over slices ||H||_F / m < tol
//     Lambda -= alpha (1 - k / K) H       (dual ascent; after the last iteration H only measures)
//   direction = A;   the optimizer applies W <- W (1 - lr wd) - lr A, then
//   retract:   W <- msign(W)
//
// A wide W is worked on as its transpose (Lambda = -1/4 (W G^T + G W^T), A = msign(G + 2 Lambda W),
// H = W A^T + A W^T) through GEMM transpose flags, without moving data; since the constraint is
// the same for W and W^T, a column-major (transposed) parameter is worked on in its physical
// layout. A 3-D tensor (a stack of expert matrices) is constrained slice by slice: the dual loop
// runs on all slices at once and stops when the worst slice meets the tolerance.
//
// Jeremy Bernstein, "Modular Manifolds" (Thinking Machines Lab, 2025): manifold Muon, dual
// ascent on Lambda and the msign retraction. Defaults: dual_steps 10, dual_lr 0.1, tol 1e-4,
// retract_every 1, polish_steps 8 (at most; 3-6 run), tangent_eps 1e-6, warm_start off.
//
// msign is the composition's orthogonalizer in the dual loop, where an approximate msign is fine
// (H is measured on the A it produced). The retraction needs it accurate, and Newton-Schulz
// iterations are not: Keller Jordan's NS5 leaves singular values in about [0.7, 1.2], Polar
// Express (5 steps) within about 0.1 of 1, either of which would move W off the manifold by that
// much at every step. So the retraction finishes with the cubic Newton-Schulz polish
//   E = W^T W - I;   W <- W - 1/2 W E          (2 GEMMs; ||E|| -> 3/4 ||E||^2)
// repeated until the rounding floor of the scalar type (about 1e-15 in double, 1e-6 in float for
// the shapes of the tests), which shows as a step that no longer halves a small error. The
// polish alone is msign for any W with every singular value in [0.7, 1.2] (||E||_F <= 1/2
// guarantees that), which is where W - lr A lands from a point on the manifold; the
// orthogonalizer runs only when W is farther away (a large step, or a W not yet on it).
//
// W need not be on the manifold at registration: its first step retracts it before computing
// the direction. A zero W becomes -lr msign(G) after its first update and is retracted from
// there; a W whose rank stays deficient cannot be retracted (msign maps zero singular values to
// zero), and the Stiefel error it reports shows that. Weight decay only shrinks W before the
// retraction, which undoes the shrink.
//
// Cost per step: at most dual_steps + 1 orthogonalizer calls (dual_steps + 2 on a tensor's first
// step); 2 GEMMs of m x m x n per dual iteration and 1 more per step besides msign; 1 + 2 per
// polish step in the retraction. Host reads: one value per slice per dual iteration (for the
// early stop) and per Gram matrix of the retraction; the numbers the step reports come from
// those reads. A square W converges in one dual iteration (the msign of a tangent W S, S skew,
// is W msign(S), itself tangent), so tol sits well above float32 rounding of H (~1e-6) to catch
// that, and well below the residual of a non-square W after 10 iterations (~5e-3).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "muon/backend/concept.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/error.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/lr_adjust.hpp"
#include "muon/core/param.hpp"
#include "muon/core/report.hpp"
#include "muon/core/validate.hpp"
#include "muon/core/workspace.hpp"

namespace muon::policy {

class Stiefel {
 public:
  // The step is lr * A with ||A||_op <= 1, as in the formula: compositions default to no shape
  // factor (LrAdjust::none; a composition's lr_adjust can still set one).
  static constexpr LrAdjust default_lr_adjust = LrAdjust::none;

  struct Options {
    int dual_steps = 10;    // K: dual-ascent iterations (= msign calls) at most, >= 1
    double dual_lr = 0.1;   // alpha: dual step size, relative to the tangent projection's RMS singular value, > 0
    double tol = 1e-4;      // stop when ||H||_F / m < tol for every slice, >= 0 (0: always K iterations)
    int retract_every = 1;  // N: retract on steps 0, N, 2N, ... of this tensor, >= 1
    int polish_steps = 8;   // cubic Newton-Schulz steps at most per retraction, >= 0
    // A slice whose tangent projection is at most tangent_eps ||G||_F has no direction (A = 0):
    // there it is rounding noise (float32: 1e-7 .. 5e-7 of G for m = 16 .. 512), and scaling it
    // up would be a random step of length lr. >= 0 (0: only an exactly zero projection).
    double tangent_eps = 1e-6;
    // Start each step's dual ascent from the last step's correction (Lambda_end - Lambda_0, in
    // the scaled units) added to Lambda_0: with momentum, consecutive gradients are close, so the
    // ascent continues instead of restarting. Measured: 5 iterations warm reach the residual of 10
    // cold. State: one m x m matrix per slice (checkpointed). Off: the formula's Lambda_0 each step.
    bool warm_start = false;
  };

  template <class B>
  class State {
   public:
    // Steps this tensor has taken under the constraint (retract_every counts them).
    [[nodiscard]] std::uint64_t steps() const { return steps_; }
    // What the last step did: dual iterations run (msign calls of the direction), the tangent
    // residual ||W^T A + A^T W||_F / m of its direction (worst slice), whether it retracted, and
    // ||W^T W - I||_F after it (W W^T for a wide W; worst slice).
    [[nodiscard]] int last_dual_iterations() const { return iterations_; }
    [[nodiscard]] double last_residual() const { return residual_; }
    [[nodiscard]] bool last_retracted() const { return retracted_; }
    // Of the last retraction: whether it needed the orthogonalizer (W outside the polish's
    // basin), and the polish steps it ran.
    [[nodiscard]] bool last_used_orthogonalizer() const { return used_orth_; }
    [[nodiscard]] int last_polish_steps() const { return polishes_; }
    [[nodiscard]] double last_stiefel_error() const { return stiefel_error_; }

    template <class V>
    void visit(V&& v) {
      v("steps", steps_);
      v("dual_correction", correction_);
    }

   private:
    friend class Stiefel;
    std::uint64_t steps_ = 0;
    // warm_start: Lambda_end - Lambda_0 of the last step, m x m per slice (empty otherwise).
    typename B::template Buffer<typename B::value_type> correction_;
    std::vector<typename B::accum_type> host_;  // one value per slice, sized at registration
    int iterations_ = 0;
    double residual_ = 0;
    bool retracted_ = false;
    bool used_orth_ = false;
    int polishes_ = 0;
    double stiefel_error_ = 0;
  };

  Stiefel() : Stiefel(Options{}) {}
  explicit Stiefel(const Options& options) : options_(options) {
    // Upper bounds: each iteration is a full orthogonalisation (dual) or a product (polish); a
    // count beyond these is a mistake, not a setting.
    if (options_.dual_steps < 1 || options_.dual_steps > 1000)
      detail::fail("Stiefel: option 'dual_steps' must be in [1, 1000], got " + std::to_string(options_.dual_steps));
    detail::require_positive("Stiefel", "dual_lr", options_.dual_lr);
    detail::require_non_negative("Stiefel", "tol", options_.tol);
    if (options_.retract_every < 1)
      detail::fail("Stiefel: option 'retract_every' must be >= 1, got " + std::to_string(options_.retract_every));
    if (options_.polish_steps < 0 || options_.polish_steps > 1000)
      detail::fail("Stiefel: option 'polish_steps' must be in [0, 1000], got " + std::to_string(options_.polish_steps));
    detail::require_non_negative("Stiefel", "tangent_eps", options_.tangent_eps);
  }
  [[nodiscard]] const Options& options() const { return options_; }

  template <class B>
  [[nodiscard]] State<B> make_state(B& b, const ParamInfo& info) {
    State<B> s;
    s.host_.assign(static_cast<std::size_t>(info.shape.batch()), typename B::accum_type(0));
    // A square W converges in one iteration from Lambda_0: it has no correction to carry.
    if (options_.warm_start && info.shape.rows() != info.shape.cols()) {
      const index_t m = std::min(info.shape.rows(), info.shape.cols());
      s.correction_ = b.template allocate<typename B::value_type>(static_cast<std::size_t>(info.shape.batch() * m * m));
    }
    return s;
  }

  template <class B, class O>
  [[nodiscard]] WorkspaceNeed plan(B& b, const O& orth, const ParamInfo& info) const {
    const index_t batch = info.shape.batch(), rows = info.shape.rows(), cols = info.shape.cols();
    const index_t m = std::min(rows, cols), n = std::max(rows, cols);
    // ParamInfo does not say whether the storage is transposed: plan both orientations.
    b.reserve_gemm(m, m, n);  // W^T X / W X^T, the Gram matrices
    b.reserve_gemm(n, m, m);  // W Lambda, W E (tall)
    b.reserve_gemm(m, n, m);  // Lambda W, E W (wide)
    WorkspaceNeed orth_need = orth.plan(b, batch, rows, cols);
    orth_need.raise_to(orth.plan(b, batch, cols, rows));
    // direction: A, Lambda, the cross product, H, one norm per slice; then the orthogonalizer
    // (rewound after every call, so counted once).
    WorkspaceNeed dir;
    dir.add_matrix(batch, rows, cols).add_matrix(batch, m, m).add_matrix(batch, m, m).add_matrix(batch, m, m);
    dir.add_accums(batch).add_accums(batch).add(orth_need);
    // retract: the orthogonalizer first (rewound), then a Gram matrix, W E, one norm per slice.
    WorkspaceNeed ret;
    ret.add_matrix(batch, m, m).add_matrix(batch, rows, cols).add_accums(batch);
    ret.raise_to(orth_need);
    dir.raise_to(ret);
    return dir;
  }

  template <class B, class O>
  void direction(B& b, State<B>& s, O& orth, const MatrixParam<typename B::value_type>& p,
                 backend::MatrixView<typename B::value_type> u, Workspace<B>& ws) {
    using T = typename B::value_type;
    using A = typename B::accum_type;
    using backend::Trans;
    // A W that is not on the manifold yet (its first step) is put there before the direction
    // is computed at it: the dual problem assumes W^T W = I.
    if (s.steps_ == 0) retract_now(b, s, orth, p.w, ws);
    const auto start = ws.mark();
    const bool tall = u.rows >= u.cols;
    const index_t m = tall ? u.cols : u.rows;
    const backend::MatrixView<const T> w = p.w;
    auto a = ws.take(u.batch, u.rows, u.cols);
    auto lambda = ws.take(u.batch, m, m);
    auto cross = ws.take(u.batch, m, m);
    auto h = ws.take(u.batch, m, m);
    A* norms = ws.take_accums(u.batch);
    A* g_norms = ws.take_accums(u.batch);
    // warm_start: the correction continues from the last step's (zero before the first step).
    const bool carries = options_.warm_start && u.rows != u.cols;  // see make_state
    const backend::MatrixView<T> correction{s.correction_.data(), carries ? u.batch : 0, m, m};
    const bool warm = carries && s.steps_ > 0;
    if (carries && !warm) b.transform(correction, fn::Scale<T>{T(0)}, correction);

    short_side_product(b, tall, w, u, cross);
    b.transform_indexed(lambda, Symmetrize<T>{cross.data, m, T(-0.25)}, lambda);

    const int steps = options_.dual_steps;
    s.iterations_ = 0;
    for (int k = 0; k < steps; ++k) {
      b.transform(a, fn::Copy{}, u);
      if (tall)
        b.gemm(Trans::no, Trans::no, T(2), w, lambda, T(1), a);  // A = G + 2 W Lambda
      else
        b.gemm(Trans::no, Trans::no, T(2), lambda, w, T(1), a);  // A = G + 2 Lambda W
      if (k == 0) {
        // G + 2 W Lambda_0 is G's tangent projection: scale G and Lambda so that it has RMS
        // singular value 1 (see the header comment). A slice whose projection is within
        // tangent_eps of zero (relative to G) gets the zero direction.
        b.frobenius_norms(a, norms);
        b.frobenius_norms(u, g_norms);
        const TangentScale<T, A> unit{norms, g_norms, std::sqrt(static_cast<double>(m)), options_.tangent_eps};
        b.transform_slices(a, unit, a);
        b.transform_slices(u, unit, u);
        b.transform_slices(lambda, unit, lambda);
        if (warm) {
          // Lambda = Lambda_0 + the last step's correction, and A with it. A slice without a
          // direction has nothing to correct: its correction is dropped.
          b.transform_slices(correction, KeepIfDirection<T, A>{unit}, correction);
          if (tall)
            b.gemm(Trans::no, Trans::no, T(2), w, correction, T(1), a);
          else
            b.gemm(Trans::no, Trans::no, T(2), correction, w, T(1), a);
          b.transform(lambda, fn::Axpy<T>{T(1)}, correction, lambda);
        }
      }
      const auto before = ws.mark();
      orth.apply(b, a, ws);
      ws.rewind(before);
      short_side_product(b, tall, w, a, cross);
      b.transform_indexed(h, Symmetrize<T>{cross.data, m, T(1)}, h);
      b.frobenius_norms(h, norms);
      s.iterations_ = k + 1;
      s.residual_ = worst(b, s, norms) / static_cast<double>(m);
      if (s.residual_ < options_.tol || k + 1 == steps) break;
      const double step = options_.dual_lr * (1.0 - static_cast<double>(k) / steps);
      b.transform(lambda, fn::Axpy<T>{static_cast<T>(-step)}, h, lambda);
      if (carries) b.transform(correction, fn::Axpy<T>{static_cast<T>(-step)}, h, correction);
    }
    b.transform(u, fn::Copy{}, a);
    ws.rewind(start);
  }

  template <class B, class O>
  void retract(B& b, State<B>& s, O& orth, const MatrixParam<typename B::value_type>& p, Workspace<B>& ws) {
    s.retracted_ = s.steps_ % static_cast<std::uint64_t>(options_.retract_every) == 0;
    ++s.steps_;
    if (s.retracted_) {
      s.stiefel_error_ = retract_now(b, s, orth, p.w, ws);
    } else {
      const auto start = ws.mark();
      s.stiefel_error_ = stiefel_error(b, s, p.w, ws.take(p.w.batch, short_side(p.w), short_side(p.w)),
                                       ws.take_accums(p.w.batch));
      ws.rewind(start);
    }
  }

  // Adds this tensor's last step to the step result (a NaN is kept, not hidden by max).
  template <class B>
  void report(const State<B>& s, ConstraintStats& stats) const {
    stats.dual_iterations += static_cast<std::size_t>(s.iterations_);
    if (!(s.residual_ <= stats.max_residual)) stats.max_residual = s.residual_;
    if (!(s.stiefel_error_ <= stats.max_stiefel_error)) stats.max_stiefel_error = s.stiefel_error_;
  }

 public:
  // Elementwise functors are public: nvcc cannot instantiate a kernel on a private nested type.
  // x * sqrt(m) / ||P_s||_F per slice s, in double (P = the tangent projection, whose norms are
  // `p`; those of G are `g`); 0 for a slice whose projection is at most tangent_eps ||G_s||_F
  // (rounding noise, or exactly zero) or not finite.
  template <class T, class A>
  struct TangentScale {
    const A* p;
    const A* g;
    double sqrt_m;
    double eps;
    MUON_HOST_DEVICE double factor(index_t s) const {
      const double pn = static_cast<double>(p[s]);
      return pn > eps * static_cast<double>(g[s]) && pn > 0 ? sqrt_m / pn : 0.0;
    }
    MUON_HOST_DEVICE T operator()(index_t s, T x) const { return static_cast<T>(static_cast<double>(x) * factor(s)); }
  };

  // x where the slice has a direction (TangentScale's factor is not 0), 0 elsewhere.
  template <class T, class A>
  struct KeepIfDirection {
    TangentScale<T, A> scale;
    MUON_HOST_DEVICE T operator()(index_t s, T x) const { return scale.factor(s) > 0 ? x : T(0); }
  };

  // out = c (S + S^T) for each m x m slice of S.
  template <class T>
  struct Symmetrize {
    const T* s;
    index_t m;
    T c;
    MUON_HOST_DEVICE T operator()(index_t k, T) const {
      const index_t mm = m * m, base = k / mm * mm, r = k - base, i = r / m, j = r - i * m;
      return c * (s[k] + s[base + j * m + i]);
    }
  };

  // x - I for each m x m slice.
  template <class T>
  struct MinusIdentity {
    index_t m;
    MUON_HOST_DEVICE T operator()(index_t k, T x) const { return (k % (m * m)) % (m + 1) == 0 ? x - T(1) : x; }
  };

 private:
  // out = W^T X (tall) or W X^T (wide): m x m per slice.
  template <class B>
  static void short_side_product(B& b, bool tall, backend::MatrixView<const typename B::value_type> w,
                                 backend::MatrixView<const typename B::value_type> x,
                                 backend::MatrixView<typename B::value_type> out) {
    using T = typename B::value_type;
    using backend::Trans;
    if (tall)
      b.gemm(Trans::yes, Trans::no, T(1), w, x, T(0), out);
    else
      b.gemm(Trans::no, Trans::yes, T(1), w, x, T(0), out);
  }

  // out = W^T W - I (tall) or W W^T - I (wide).
  template <class B>
  static void gram_minus_identity(B& b, bool tall, backend::MatrixView<const typename B::value_type> w,
                                  backend::MatrixView<typename B::value_type> out) {
    using T = typename B::value_type;
    short_side_product(b, tall, w, w, out);
    b.transform_indexed(out, MinusIdentity<T>{out.rows}, out);
  }

  template <class T>
  static index_t short_side(backend::MatrixView<T> w) {
    return std::min(w.rows, w.cols);
  }

  // ||W^T W - I||_F (W W^T for a wide slice), worst slice; leaves W^T W - I in `gram`.
  template <class B>
  static double stiefel_error(B& b, State<B>& s, backend::MatrixView<const typename B::value_type> w,
                              backend::MatrixView<typename B::value_type> gram, typename B::accum_type* norms) {
    gram_minus_identity(b, w.rows >= w.cols, w, gram);
    b.frobenius_norms(gram, norms);
    return worst(b, s, norms);
  }

  // W <- msign(W); returns ||W^T W - I||_F after it (worst slice). The orthogonalizer runs only
  // when W is outside the polish's basin; the polish then repeats until the rounding floor of T
  // (or polish_steps).
  template <class B, class O>
  double retract_now(B& b, State<B>& s, O& orth, backend::MatrixView<typename B::value_type> w,
                     Workspace<B>& ws) const {
    using T = typename B::value_type;
    using backend::Trans;
    const auto start = ws.mark();
    const bool tall = w.rows >= w.cols;
    const index_t m = short_side(w);
    auto gram = ws.take(w.batch, m, m);
    auto y = ws.take(w.batch, w.rows, w.cols);
    auto* norms = ws.take_accums(w.batch);
    double error = stiefel_error(b, s, w, gram, norms);
    s.used_orth_ = !(error <= k_polish_basin);
    s.polishes_ = 0;
    if (s.used_orth_) {
      const auto before = ws.mark();
      orth.apply(b, w, ws);
      ws.rewind(before);
      error = stiefel_error(b, s, w, gram, norms);
    }
    for (int i = 0; i < options_.polish_steps && error > 0; ++i) {
      if (tall)
        b.gemm(Trans::no, Trans::no, T(1), w, gram, T(0), y);  // W E
      else
        b.gemm(Trans::no, Trans::no, T(1), gram, w, T(0), y);  // E W
      b.transform(w, fn::Axpy<T>{T(-0.5)}, y, w);
      ++s.polishes_;
      const double next = stiefel_error(b, s, w, gram, norms);
      // Below k_quadratic every polish at least halves the error (it squares it), so one that
      // does not has hit the rounding floor; above it, progress can be slower (a singular value
      // far below 1 grows by 1.5x a step), and only a step that gains nothing ends the polish.
      const bool done = !(next < error) || (error < k_quadratic && !(next < 0.5 * error));
      error = next;
      if (done) break;
    }
    ws.rewind(start);
    return error;
  }

  // The largest of the per-slice values in `norms` (read to the host).
  template <class B>
  static double worst(B& b, State<B>& s, const typename B::accum_type* norms) {
    b.read(norms, std::span<typename B::accum_type>(s.host_));
    double out = 0;
    for (const auto v : s.host_)
      if (!(static_cast<double>(v) <= out)) out = static_cast<double>(v);  // NaN wins: it must show
    return out;
  }

  // ||W^T W - I||_F at or below which the cubic polish alone converges (every eigenvalue of
  // W^T W in [0.5, 1.5], inside its basin (0, 3)), so the orthogonalizer is not needed.
  static constexpr double k_polish_basin = 0.5;
  // ||W^T W - I||_F below which the polish is in its quadratic regime (error -> 3/4 error^2).
  static constexpr double k_quadratic = 0.1;

  Options options_;
};

}  // namespace muon::policy
