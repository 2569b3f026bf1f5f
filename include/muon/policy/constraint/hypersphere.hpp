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
// Rows without a direction. When ||t|| <= tangent_eps |w . u| / ||w|| (u radial to that
// relative precision: a critical point on the sphere, where t is rounding noise whose
// normalisation would be a random step), or ||t|| is 0 or below the smallest normal number of
// the parameter type (rounding residue, and 1 / ||t|| would overflow), the row gets a = 0: no
// NaN, and the row stays where it is (renormalize divides it by its own norm, 1 to rounding;
// analytic does not divide it, the reference's choice). The default 1e-6 sits above float32
// rounding of a unit row (a few 1e-7). A zero row has no norm to divide by: it stays zero until
// it gets a gradient.
//
// What is reported: after the retraction the row norms are measured again and
// State::sphere_error() / ConstraintStats::max_sphere_error hold max_r | ||w_r|| - 1 |, the error
// the next step starts from (a zero row counts 1). That costs one reduction over W, a pass over
// the per-row numbers and one host read of one value per tensor and step.
//
// Layouts. Row-major storage: logical rows are contiguous, so the backend's per-slice reductions
// and transform_slices on the view {data, batch * rows, 1, cols} work row by row. Transposed
// storage (a column-major Eigen matrix): logical rows are physical columns; functors sum down
// them in double (partial sums over blocks of rows, then each column's total) and write the sums
// into accum memory through the pointer they carry; elementwise functors find their column from
// the flat index. Per-row numbers live in accum memory in both layouts: a float sum of squares
// overflows for entries above ~1e19 where a double one does not.
//
// Cost per tensor and step: renormalize streams through the tensor 13 times (W read 6 times and
// written once, u read 4 times and written twice, reductions included; analytic 11), plus O(rows)
// work on per-row numbers; no GEMM. Workspace: a few numbers per row, plus for the column sums
// of transposed storage 1/16 of the tensor's element count in accum_type and as much in value_type.
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <string>

#include "muon/backend/concept.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/lr_adjust.hpp"
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
  // The step is lr along a unit tangent vector per row, as in the formula: compositions default
  // to no shape factor (LrAdjust::none; a composition's lr_adjust can still set one).
  static constexpr LrAdjust default_lr_adjust = LrAdjust::none;
  // direction() never calls the orthogonalizer: the optimizer plans none of its workspace.
  static constexpr bool uses_orthogonalizer = false;

  struct Options {
    SphereRetraction retraction = SphereRetraction::renormalize;
    // A row whose tangent part is at most this fraction of its radial part gets no direction
    // (a = 0); >= 0. 0: any tangent part above the smallest normal number counts.
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
    // Analytic mode: the per-row direction scales (0: the row got no direction), written by
    // direction() into the workspace and read by retract() of the same tensor and step (the
    // workspace is reset only between tensors). Empty when direction() did not run first.
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

  // Per-row arrays (n = batch * rows). The reductions (w . u, w . w, ||t||, the norms before
  // dividing and after) go to accum memory in both layouts. Transposed storage also needs the
  // column sums' partials (one per block of k_block logical columns, in accum memory, plus as
  // many values for the transform that writes them; taken by direction and by retract);
  // ParamInfo does not carry the layout, so they are always planned. Three value arrays (the
  // projection coefficients, the direction scales, which double as the analytic flags, and the
  // deviations) and one accum (the max deviation). The orthogonalizer is not used.
  template <class B, class O>
  [[nodiscard]] WorkspaceNeed plan(B&, const O&, const ParamInfo& info) const {
    const index_t n = logical_rows(info);
    const index_t partials = info.shape.batch() * ColumnRows<B>::blocks(info.shape.cols()) * info.shape.rows();
    WorkspaceNeed need;
    for (int k = 0; k < 5; ++k) need.add_accums(n);
    for (int k = 0; k < 3; ++k) need.add_matrix(1, 1, n);
    for (int k = 0; k < 2; ++k) need.add_matrix(1, 1, partials).add_accums(partials);
    need.add_accums(1);
    return need;
  }

  template <class B, class O>
  void direction(B& b, State<B>& s, O&, const MatrixParam<typename B::value_type>& p,
                 backend::MatrixView<typename B::value_type> u, Workspace<B>& ws) {
    if (p.transposed)
      direction_with(b, s, p, u, ws, column_rows(p, ws));
    else
      direction_with(b, s, p, u, ws, ContiguousRows<B>{p.w.batch * p.w.rows, p.w.cols});
  }

  template <class B, class O>
  void retract(B& b, State<B>& s, O&, const MatrixParam<typename B::value_type>& p, Workspace<B>& ws) {
    if (p.transposed)
      retract_with(b, s, p, ws, column_rows(p, ws));
    else
      retract_with(b, s, p, ws, ContiguousRows<B>{p.w.batch * p.w.rows, p.w.cols});
  }

  // Adds this tensor's last step to the step result (the max over tensors).
  template <class B>
  void report(const State<B>& s, ConstraintStats& stats) const {
    if (s.measured_ && s.error_ > stats.max_sphere_error) stats.max_sphere_error = s.error_;
  }

 public:
  // Layout helpers and elementwise functors are public: nvcc cannot instantiate a kernel on a
  // private nested type.
  static index_t logical_rows(const ParamInfo& info) { return info.shape.batch() * info.shape.rows(); }

  // ---- the two layouts ----------------------------------------------------------------------
  // Each gives per-logical-row reductions (into R memory) and runs elementwise functors
  // f(r, x...) that know the logical row r of their element.
  //
  // Row-major: logical rows are contiguous; the view {data, rows, 1, cols} makes each a slice
  // of the backend's reductions and of transform_slices.
  template <class B>
  struct ContiguousRows {
    using T = typename B::value_type;
    using R = typename B::accum_type;
    index_t rows, cols;  // all logical rows (every slice), row length

    [[nodiscard]] index_t count() const { return rows; }
    template <class V>
    [[nodiscard]] V as_rows(V x) const {
      return {x.data, rows, 1, cols};
    }
    R* take(Workspace<B>& ws) const { return ws.take_accums(rows); }
    void dots(B& b, backend::MatrixView<const T> x, backend::MatrixView<const T> y, R* out) const {
      b.dots(as_rows(x), as_rows(y), out);
    }
    void norms(B& b, backend::MatrixView<const T> x, R* out) const { b.frobenius_norms(as_rows(x), out); }
    template <class F, class... In>
    void each(B& b, backend::MatrixView<T> out, F f, In... in) const {
      b.transform_slices(as_rows(out), f, as_rows(backend::MatrixView<const T>(in))...);
    }
  };

  // Transposed: logical rows are physical columns, and a column sum reads with a stride of a
  // whole row. Summing a column in one functor call would touch a new cache line (and page) per
  // element, so the sum runs in two passes: partial sums over blocks of k_block physical rows
  // (consecutive calls read neighbouring columns of the same few lines), then the total of each
  // column's partials. Both accumulate in double and store into accum memory (element k of
  // the buffer the functor carries; the value_type output is scratch): stored as value_type, a
  // float sum of squares overflows where the double one does not. Elementwise functors find
  // their column from the flat index.
  static constexpr index_t k_block = 32;

  template <class T, class A>
  struct ColumnPartial {
    const T* x;
    const T* y;
    A* partials;                 // written at k
    index_t rows, cols, blocks;  // physical rows and cols per slice; row blocks per slice
    MUON_HOST_DEVICE T operator()(index_t k, T) const {
      const index_t c = k % cols, q = k / cols;  // q = slice * blocks + block
      const index_t slice = q / blocks, first = (q - slice * blocks) * k_block;
      const index_t last = first + k_block < rows ? first + k_block : rows;
      const T* px = x + slice * rows * cols + c;
      const T* py = y + slice * rows * cols + c;
      double sum = 0;
      for (index_t i = first; i < last; ++i) sum += static_cast<double>(px[i * cols]) * static_cast<double>(py[i * cols]);
      partials[k] = static_cast<A>(sum);
      return T(0);
    }
  };
  template <class T, class A>
  struct ColumnTotal {
    const A* partials;
    A* out;  // written at r
    index_t cols, blocks;
    bool root;  // sqrt of the sum (a norm)
    MUON_HOST_DEVICE T operator()(index_t r, T) const {
      const index_t slice = r / cols, c = r - slice * cols;
      const A* p = partials + slice * blocks * cols + c;
      double sum = 0;
      for (index_t q = 0; q < blocks; ++q) sum += static_cast<double>(p[q * cols]);
      out[r] = static_cast<A>(root ? std::sqrt(sum) : sum);
      return T(0);
    }
  };
  template <class F>
  struct ByColumn {
    F f;
    index_t rows, cols;  // physical, per slice
    template <class... X>
    MUON_HOST_DEVICE auto operator()(index_t k, X... x) const {
      if (k < rows * cols) return f(k % cols, x...);  // one division for the usual single slice
      const index_t slice = k / (rows * cols);
      return f(slice * cols + (k - slice * rows * cols) % cols, x...);
    }
  };

  template <class B>
  struct ColumnRows {
    using T = typename B::value_type;
    using R = typename B::accum_type;
    index_t batch, rows, cols;  // physical
    R* partials;                // batch * blocks() * cols accums of workspace
    T* scratch;                 // as many values: the transforms' discarded output

    [[nodiscard]] static index_t blocks(index_t rows) { return (rows + k_block - 1) / k_block; }
    [[nodiscard]] index_t count() const { return batch * cols; }
    R* take(Workspace<B>& ws) const { return ws.take_accums(count()); }
    void sum(B& b, backend::MatrixView<const T> x, backend::MatrixView<const T> y, R* out, bool root) const {
      const index_t nb = blocks(rows);
      backend::MatrixView<T> part{scratch, 1, 1, batch * nb * cols};
      b.transform_indexed(part, ColumnPartial<T, R>{x.data, y.data, partials, rows, cols, nb}, part);
      backend::MatrixView<T> o{scratch, 1, 1, count()};  // count() <= the partials' count
      b.transform_indexed(o, ColumnTotal<T, R>{partials, out, cols, nb, root}, o);
    }
    void dots(B& b, backend::MatrixView<const T> x, backend::MatrixView<const T> y, R* out) const {
      sum(b, x, y, out, false);
    }
    void norms(B& b, backend::MatrixView<const T> x, R* out) const { sum(b, x, x, out, true); }
    template <class F, class... In>
    void each(B& b, backend::MatrixView<T> out, F f, In... in) const {
      b.transform_indexed(out, ByColumn<F>{f, rows, cols}, in...);
    }
  };
  template <class B>
  static ColumnRows<B> column_rows(const MatrixParam<typename B::value_type>& p, Workspace<B>& ws) {
    const index_t n = p.w.batch * ColumnRows<B>::blocks(p.w.rows) * p.w.cols;
    return {p.w.batch, p.w.rows, p.w.cols, ws.take_accums(n), ws.take(1, 1, n).data};
  }

  // ---- functors -----------------------------------------------------------------------------
  // Per row r (run once per row, over a 1 x n view): the projection coefficient
  // (w . u) / (w . w), or w . u when w . w is not measured (analytic mode); a zero row projects
  // nothing.
  template <class T, class R>
  struct Coefficient {
    const R* wu;
    const R* ww;
    MUON_HOST_DEVICE T operator()(index_t r, T) const {
      const double d = static_cast<double>(wu[r]);
      if (ww == nullptr) return static_cast<T>(d);
      const double n2 = static_cast<double>(ww[r]);
      return n2 > 0 ? static_cast<T>(d / n2) : T(0);
    }
  };
  // Per row r: 1 / ||t|| if the row has a direction, else 0. It has one when ||t|| is a normal
  // number of T (a subnormal tangent part is rounding residue, and 1 / ||t|| must not overflow)
  // and ||t|| > eps |w . u| / ||w||.
  template <class T, class R>
  struct DirectionScale {
    const R* wu;
    const R* ww;
    const R* tn;
    double eps;
    MUON_HOST_DEVICE T operator()(index_t r, T) const {
      const double t = static_cast<double>(tn[r]);
      double radial = std::abs(static_cast<double>(wu[r]));
      if (ww != nullptr) {
        const double n2 = static_cast<double>(ww[r]);
        radial = n2 > 0 ? radial / std::sqrt(n2) : 0.0;
      }
      const bool moves = t >= static_cast<double>(std::numeric_limits<T>::min()) && t > eps * radial;
      return moves ? static_cast<T>(1.0 / t) : T(0);
    }
  };

  // Elementwise, f(r, ...) with r the logical row: t = u - w c_r, then a = t s_r.
  template <class T>
  struct Tangent {
    const T* coefficients;
    MUON_HOST_DEVICE T operator()(index_t r, T u, T w) const { return u - w * coefficients[r]; }
  };
  template <class T>
  struct ScaleRow {
    const T* scales;
    MUON_HOST_DEVICE T operator()(index_t r, T x) const { return x * scales[r]; }
  };

  // w / ||w|| in double (a zero row stays zero).
  template <class T, class R>
  struct DivideByNorm {
    const R* norms;
    MUON_HOST_DEVICE T operator()(index_t r, T w) const {
      const double n = static_cast<double>(norms[r]);
      return n > 0 ? static_cast<T>(static_cast<double>(w) / n) : w;
    }
  };

  // w / sqrt(1 + lr^2) on rows that moved (scale != 0; every row without scales). The factor
  // stays in double: rounded to float it would bias every step the same way, and the analytic
  // retraction amplifies a steady bias by 1 / lr^2.
  template <class T>
  struct ScaleMoved {
    const T* scales;
    double factor;
    MUON_HOST_DEVICE T operator()(index_t r, T w) const {
      const bool moved = scales == nullptr || scales[r] != T(0);
      return moved ? static_cast<T>(static_cast<double>(w) * factor) : w;
    }
  };

  template <class T, class R>
  struct Deviation {
    const R* norms;
    MUON_HOST_DEVICE T operator()(index_t r, T) const { return static_cast<T>(static_cast<double>(norms[r]) - 1.0); }
  };

 private:
  // ---- the two steps --------------------------------------------------------------------------
  template <class B, class Rows>
  void direction_with(B& b, State<B>& s, const MatrixParam<typename B::value_type>& p,
                      backend::MatrixView<typename B::value_type> u, Workspace<B>& ws, const Rows& rows) {
    using T = typename B::value_type;
    using R = typename Rows::R;
    const bool analytic = options_.retraction == SphereRetraction::analytic;
    const index_t n = rows.count();
    R* wu = rows.take(ws);
    R* ww = analytic ? nullptr : rows.take(ws);
    R* tn = rows.take(ws);
    auto coefficients = ws.take(1, 1, n);
    auto scales = ws.take(1, 1, n);
    rows.dots(b, p.w, u, wu);
    if (!analytic) rows.dots(b, p.w, p.w, ww);
    b.transform_indexed(coefficients, Coefficient<T, R>{wu, ww}, coefficients);
    rows.each(b, u, Tangent<T>{coefficients.data}, u, p.w);
    rows.norms(b, u, tn);
    b.transform_indexed(scales, DirectionScale<T, R>{wu, ww, tn, options_.tangent_eps}, scales);
    rows.each(b, u, ScaleRow<T>{scales.data}, u);
    s.moved_ = analytic ? scales : backend::MatrixView<T>{};
  }

  template <class B, class Rows>
  void retract_with(B& b, State<B>& s, const MatrixParam<typename B::value_type>& p, Workspace<B>& ws,
                    const Rows& rows) {
    using T = typename B::value_type;
    using R = typename Rows::R;
    using A = typename B::accum_type;
    if (options_.retraction == SphereRetraction::renormalize) {
      R* norms = rows.take(ws);
      rows.norms(b, p.w, norms);
      rows.each(b, p.w, DivideByNorm<T, R>{norms}, p.w);
    } else {
      const T* scales = s.moved_.empty() ? nullptr : s.moved_.data;
      rows.each(b, p.w, ScaleMoved<T>{scales, 1.0 / std::sqrt(1.0 + p.lr * p.lr)}, p.w);
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
