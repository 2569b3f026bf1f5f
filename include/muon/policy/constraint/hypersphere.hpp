#pragma once
// Hypersphere: every logical row of a matrix-path tensor stays at unit Euclidean norm (rows of
// an embedding table, of an MoE router gate, of each slice of a 3-D stack). The orthogonalizer
// is not used: per row w and its momentum update u,
//
//   direction   t = u - w (w . u) / (w . w)          the tangent part of u at w / ||w||
//               a = t / ||t||                         a unit tangent step (a = 0, see below)
//   apply       w <- w (1 - lr wd) - lr a             (the optimizer's step, lr = MatrixParam::lr)
//   retract     renormalize (default):  w <- w / ||w||
//               analytic:               w <- w / sqrt(1 + lr^2)   (rows with a != 0 only)
//
// This is steepest descent on the sphere under the Euclidean norm: Jianlin Su, "约束优化与最速
// 下降：从SGD到超球面上的优化" (kexue.fm), eqs. (12)-(13), phi = (g - <g,w> w) / ||g - <g,w> w||,
// w <- (w - lr phi) / sqrt(1 + lr^2); the hypersphere of Jeremy Bernstein's "Modular Manifolds"
// (Thinking Machines Lab, 2025). Defaults: renormalize, tangent_eps 1e-6.
//
// renormalize divides by the measured norm: rows stay unit to rounding for any number of steps,
// rows registered off the sphere land on it at the first step, and weight decay's shrink
// W (1 - lr wd) is undone at once (its only effect left is a step of lr / (1 - lr wd)).
//
// analytic is Su's eqs. (12)-(13) as written, what the golden reference does: t = u - w (w . u)
// (no w . w pass) and the division by sqrt(1 + lr^2). Both assume ||w|| = 1 and nothing pulls a
// row back: a norm error e leaks into the direction as a radial part 2 e / tan(theta), theta the
// angle between w and -u, so near a row's optimum (theta < 2 lr) the error grows by about
// 2 lr / theta a step. Measured: rows pulled to fixed targets at lr 0.05 are 3e-6 off the
// sphere at step 40 and 5% off at step 60 in double (float: 0.5% at step 30), where renormalize
// stays at 2e-16 (float 3e-8). It reproduces the reference and suits short runs away from
// optima; train with renormalize. Weight decay is not undone in this mode.
//
// Rows without a direction. When ||t|| = 0 or ||t|| <= tangent_eps |w . u| / ||w|| (u radial to
// that relative precision: a critical point on the sphere, where t is rounding noise whose
// normalisation would be a random step) the row gets a = 0: no NaN, and the row stays where it
// is (renormalize divides it by its own norm, 1 to rounding; analytic does not divide it, the
// reference's choice). The default 1e-6 sits above float32 rounding of a unit row (a few 1e-7).
// A zero row has no norm to divide by: it stays zero until it gets a gradient.
//
// What is reported: after the retraction the row norms are measured again and
// State::sphere_error() / ConstraintStats::max_sphere_error hold max_r | ||w_r|| - 1 |, the error
// the next step starts from (a zero row counts 1). That costs one reduction over W, a pass over
// the per-row numbers and one host read of one value per tensor and step.
//
// Layouts. Row-major storage: logical rows are contiguous, so the backend's per-slice reductions
// on the view {data, batch * rows, 1, cols} give per-row numbers in accum memory. Transposed
// storage (a column-major Eigen matrix): logical rows are physical columns; a functor per column
// sums down it (in double) into value_type workspace.
//
// Cost per tensor and step: about ten elementwise passes over W / u (reductions included), no
// GEMM; workspace for a few numbers per row.
#include <cmath>
#include <cstddef>
#include <span>
#include <string>

#include "muon/backend/concept.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/param.hpp"
#include "muon/core/report.hpp"
#include "muon/core/validate.hpp"
#include "muon/core/workspace.hpp"

namespace muon::policy {

enum class SphereRetraction {
  renormalize,  // w <- w / ||w|| (default): unit to rounding, whatever came before
  analytic,     // Su's eqs. (12)-(13) as written (the golden reference): exact only while rows are unit
};

class Hypersphere {
 public:
  struct Options {
    SphereRetraction retraction = SphereRetraction::renormalize;
    // A row whose tangent part is at most this fraction of its radial part gets no direction
    // (a = 0); >= 0. 0: only rows with t exactly 0.
    double tangent_eps = 1e-6;
  };

  // Per-tensor state: nothing to save (direction and retraction depend only on W and u), only
  // what the last step measured.
  template <class B>
  class State {
   public:
    using value_type = typename B::value_type;

    // Logical rows kept on the sphere (batch * rows).
    [[nodiscard]] index_t rows() const { return rows_; }
    // Whether a step has run (and measured) since registration.
    [[nodiscard]] bool measured() const { return measured_; }
    // max over rows of | ||w_r|| - 1 | after the last step's retraction (0 before any step).
    [[nodiscard]] double sphere_error() const { return error_; }

    template <class V>
    void visit(V&&) {}

   private:
    friend class Hypersphere;
    index_t rows_ = 0;
    bool measured_ = false;
    double error_ = 0;
    // Analytic mode: per-row 1 / 0 (the row got a direction), written by direction() into the
    // workspace and read by retract() of the same tensor and step (the workspace is reset only
    // between tensors). Empty when direction() did not run before retract().
    backend::MatrixView<value_type> moved_{};
  };

  Hypersphere() : Hypersphere(Options{}) {}
  explicit Hypersphere(const Options& options) : options_(options) {
    if (options_.retraction != SphereRetraction::renormalize && options_.retraction != SphereRetraction::analytic)
      detail::fail("Hypersphere: option 'retraction' must be SphereRetraction::renormalize or SphereRetraction::analytic");
    detail::require_non_negative("Hypersphere", "tangent_eps", options_.tangent_eps);
  }
  [[nodiscard]] const Options& options() const { return options_; }

  template <class B>
  [[nodiscard]] State<B> make_state(B&, const ParamInfo& info) {
    State<B> s;
    s.rows_ = logical_rows(info);
    return s;
  }

  // Per-row arrays (n = batch * rows), the largest of the four cases. Row-major: w . u, w . w,
  // ||t||, the norms before dividing and after in accum memory (renormalize; analytic needs three
  // of them), plus the analytic flags and the deviations in value memory. Transposed: the same
  // per-row numbers live in value memory, at most six arrays (renormalize: five and the
  // deviations; analytic: w . u, ||t||, flags, norms after, deviations). ParamInfo does not carry
  // the layout, so the plan covers both; one accum holds the max deviation. The orthogonalizer
  // is not used.
  template <class B, class O>
  [[nodiscard]] WorkspaceNeed plan(B&, const O&, const ParamInfo& info) const {
    const index_t n = logical_rows(info);
    WorkspaceNeed need;
    for (int k = 0; k < 5; ++k) need.add_accums(n);
    for (int k = 0; k < 6; ++k) need.add_matrix(1, 1, n);
    need.add_accums(1);
    return need;
  }

  template <class B, class O>
  void direction(B& b, State<B>& s, O&, const MatrixParam<typename B::value_type>& p,
                 backend::MatrixView<typename B::value_type> u, Workspace<B>& ws) {
    if (p.transposed)
      direction_with(b, s, p, u, ws, ColumnRows<B>{p.w.batch, p.w.rows, p.w.cols});
    else
      direction_with(b, s, p, u, ws, ContiguousRows<B>{p.w.batch * p.w.rows, p.w.cols});
  }

  template <class B, class O>
  void retract(B& b, State<B>& s, O&, const MatrixParam<typename B::value_type>& p, Workspace<B>& ws) {
    if (p.transposed)
      retract_with(b, s, p, ws, ColumnRows<B>{p.w.batch, p.w.rows, p.w.cols});
    else
      retract_with(b, s, p, ws, ContiguousRows<B>{p.w.batch * p.w.rows, p.w.cols});
  }

  // Adds this tensor's last step to the step result (the max over tensors).
  template <class B>
  void report(const State<B>& s, ConstraintStats& stats) const {
    if (s.measured_ && s.error_ > stats.max_sphere_error) stats.max_sphere_error = s.error_;
  }

 private:
  static index_t logical_rows(const ParamInfo& info) { return info.shape.batch() * info.shape.rows(); }

  // ---- per-row reductions in the two layouts --------------------------------------------------
  // Row-major: logical rows are contiguous; the view {data, rows, 1, cols} makes each a slice of
  // the backend's reductions.
  template <class B>
  struct ContiguousRows {
    using T = typename B::value_type;
    using R = typename B::accum_type;
    index_t rows, cols;  // all logical rows (every slice), row length

    [[nodiscard]] index_t count() const { return rows; }
    [[nodiscard]] backend::MatrixView<const T> as_rows(backend::MatrixView<const T> x) const {
      return {x.data, rows, 1, cols};
    }
    R* take(Workspace<B>& ws) const { return ws.take_accums(rows); }
    void dots(B& b, backend::MatrixView<const T> x, backend::MatrixView<const T> y, R* out) const {
      b.dots(as_rows(x), as_rows(y), out);
    }
    void norms(B& b, backend::MatrixView<const T> x, R* out) const { b.frobenius_norms(as_rows(x), out); }
  };

  // Transposed: logical rows are physical columns; one functor call per column sums down it.
  template <class T>
  struct ColumnDot {
    const T* x;
    const T* y;
    index_t rows, cols;  // physical, per slice
    bool root;           // sqrt of the sum (a norm, when x == y)
    MUON_HOST_DEVICE T operator()(index_t k, T) const {
      const index_t slice = k / cols, c = k - slice * cols;
      const T* px = x + slice * rows * cols + c;
      const T* py = y + slice * rows * cols + c;
      double sum = 0;
      for (index_t i = 0; i < rows; ++i) sum += static_cast<double>(px[i * cols]) * static_cast<double>(py[i * cols]);
      return static_cast<T>(root ? std::sqrt(sum) : sum);
    }
  };

  template <class B>
  struct ColumnRows {
    using T = typename B::value_type;
    using R = T;
    index_t batch, rows, cols;  // physical

    [[nodiscard]] index_t count() const { return batch * cols; }
    R* take(Workspace<B>& ws) const { return ws.take(1, 1, count()).data; }
    void dots(B& b, backend::MatrixView<const T> x, backend::MatrixView<const T> y, R* out) const {
      backend::MatrixView<T> o{out, 1, 1, count()};
      b.transform_indexed(o, ColumnDot<T>{x.data, y.data, rows, cols, false}, o);
    }
    void norms(B& b, backend::MatrixView<const T> x, R* out) const {
      backend::MatrixView<T> o{out, 1, 1, count()};
      b.transform_indexed(o, ColumnDot<T>{x.data, x.data, rows, cols, true}, o);
    }
  };

  // Which logical row the flat physical index k belongs to, as an index into per-row arrays.
  struct RowIndex {
    index_t rows, cols;  // physical, per slice
    bool transposed;
    MUON_HOST_DEVICE index_t operator()(index_t k) const {
      if (!transposed) return k / cols;
      const index_t slice = k / (rows * cols);
      return slice * cols + (k - slice * rows * cols) % cols;
    }
  };

  // ---- functors -----------------------------------------------------------------------------
  // The projection coefficient (w . u) / (w . w); w . w is taken as 1 when not measured
  // (analytic mode), and a zero row projects nothing.
  template <class R>
  static MUON_HOST_DEVICE double coefficient(const R* wu, const R* ww, index_t r) {
    const double d = static_cast<double>(wu[r]);
    if (ww == nullptr) return d;
    const double n2 = static_cast<double>(ww[r]);
    return n2 > 0 ? d / n2 : 0.0;
  }
  // Whether row r has a direction: ||t|| > 0 and ||t|| > eps |w . u| / ||w||.
  template <class R>
  static MUON_HOST_DEVICE bool moves(const R* wu, const R* ww, const R* tn, double eps, index_t r) {
    const double t = static_cast<double>(tn[r]);
    double radial = std::abs(static_cast<double>(wu[r]));
    if (ww != nullptr) {
      const double n2 = static_cast<double>(ww[r]);
      radial = n2 > 0 ? radial / std::sqrt(n2) : 0.0;
    }
    return t > 0 && t > eps * radial;
  }

  // t = u - w coefficient(row), in double.
  template <class T, class R>
  struct Tangent {
    const R* wu;
    const R* ww;
    RowIndex row;
    MUON_HOST_DEVICE T operator()(index_t k, T u, T w) const {
      return static_cast<T>(static_cast<double>(u) - static_cast<double>(w) * coefficient(wu, ww, row(k)));
    }
  };

  // a = t / ||t|| for rows that move, 0 otherwise (a division, not a multiply by 1 / ||t||,
  // which overflows for a subnormal norm).
  template <class T, class R>
  struct UnitOrZero {
    const R* wu;
    const R* ww;
    const R* tn;
    double eps;
    RowIndex row;
    MUON_HOST_DEVICE T operator()(index_t k, T t) const {
      const index_t r = row(k);
      return moves(wu, ww, tn, eps, r) ? static_cast<T>(static_cast<double>(t) / static_cast<double>(tn[r])) : T(0);
    }
  };

  template <class T, class R>
  struct MovedFlag {
    const R* wu;
    const R* ww;
    const R* tn;
    double eps;
    MUON_HOST_DEVICE T operator()(index_t r, T) const { return moves(wu, ww, tn, eps, r) ? T(1) : T(0); }
  };

  // w / ||w|| (a zero row stays zero).
  template <class T, class R>
  struct DivideByNorm {
    const R* norms;
    RowIndex row;
    MUON_HOST_DEVICE T operator()(index_t k, T w) const {
      const double n = static_cast<double>(norms[row(k)]);
      return n > 0 ? static_cast<T>(static_cast<double>(w) / n) : w;
    }
  };

  // w / sqrt(1 + lr^2) on rows that moved (every row when flags is null). The factor stays in
  // double: rounded to float it would bias every step the same way, and the analytic retraction
  // amplifies a steady bias by 1 / lr^2.
  template <class T>
  struct ScaleMoved {
    const T* flags;
    double factor;
    RowIndex row;
    MUON_HOST_DEVICE T operator()(index_t k, T w) const {
      const bool moved = flags == nullptr || flags[row(k)] != T(0);
      return moved ? static_cast<T>(static_cast<double>(w) * factor) : w;
    }
  };

  template <class T, class R>
  struct Deviation {
    const R* norms;
    MUON_HOST_DEVICE T operator()(index_t r, T) const { return static_cast<T>(static_cast<double>(norms[r]) - 1.0); }
  };

  // ---- the two steps --------------------------------------------------------------------------
  template <class B, class Rows>
  void direction_with(B& b, State<B>& s, const MatrixParam<typename B::value_type>& p,
                      backend::MatrixView<typename B::value_type> u, Workspace<B>& ws, const Rows& rows) {
    using T = typename B::value_type;
    using R = typename Rows::R;
    const bool analytic = options_.retraction == SphereRetraction::analytic;
    const RowIndex row{p.w.rows, p.w.cols, p.transposed};
    R* wu = rows.take(ws);
    R* ww = analytic ? nullptr : rows.take(ws);
    R* tn = rows.take(ws);
    rows.dots(b, p.w, u, wu);
    if (!analytic) rows.dots(b, p.w, p.w, ww);
    b.transform_indexed(u, Tangent<T, R>{wu, ww, row}, u, p.w);
    rows.norms(b, u, tn);
    b.transform_indexed(u, UnitOrZero<T, R>{wu, ww, tn, options_.tangent_eps, row}, u);
    s.moved_ = {};
    if (analytic) {
      auto flags = ws.take(1, 1, rows.count());
      b.transform_indexed(flags, MovedFlag<T, R>{wu, ww, tn, options_.tangent_eps}, flags);
      s.moved_ = flags;
    }
  }

  template <class B, class Rows>
  void retract_with(B& b, State<B>& s, const MatrixParam<typename B::value_type>& p, Workspace<B>& ws,
                    const Rows& rows) {
    using T = typename B::value_type;
    using R = typename Rows::R;
    using A = typename B::accum_type;
    const RowIndex row{p.w.rows, p.w.cols, p.transposed};
    if (options_.retraction == SphereRetraction::renormalize) {
      R* norms = rows.take(ws);
      rows.norms(b, p.w, norms);
      b.transform_indexed(p.w, DivideByNorm<T, R>{norms, row}, p.w);
    } else {
      const T* flags = s.moved_.empty() ? nullptr : s.moved_.data;
      b.transform_indexed(p.w, ScaleMoved<T>{flags, 1.0 / std::sqrt(1.0 + p.lr * p.lr), row}, p.w);
    }
    s.moved_ = {};
    // The error the next step starts from.
    R* after = rows.take(ws);
    rows.norms(b, p.w, after);
    auto deviations = ws.take(1, 1, rows.count());
    b.transform_indexed(deviations, Deviation<T, R>{after}, deviations);
    A* worst = ws.take_accums(1);
    b.max_abs(deviations, worst);
    A host{};
    b.read(worst, std::span<A>(&host, 1));
    s.error_ = static_cast<double>(host);
    s.measured_ = true;
  }

  Options options_;
};

}  // namespace muon::policy
