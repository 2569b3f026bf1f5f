#pragma once
// orthogonalize: one call that replaces a matrix, or each matrix of a rank-3 stack, by its
// orthogonalisation orth(X) (NewtonSchulz by default; PolarExpress, SvdPolar or any
// muon::Orthogonalizer), for trainers that run another optimizer and want Muon's building block.
//
//   muon::orthogonalize(x);                                   // x <- orth(x), NewtonSchulz defaults
//   muon::orthogonalize(x, {.steps = 6});                     // NewtonSchulz::Options
//   muon::orthogonalize<muon::policy::PolarExpress>(in, out); // out <- orth(in); in is left alone
//
// x is anything muon::as_tensor takes: an Eigen matrix, Map or Ref (row- or column-major),
// muon::raw(ptr, {rows, cols}) or muon::raw(ptr, {batch, rows, cols}). A column-major matrix is
// worked on as the row-major transpose it is in memory: orth(X^T) = orth(X)^T, so the result is
// the same. The free functions run on the Eigen backend (float, double) and build a workspace
// every call; muon::Orthogonalize<B, O> keeps backend and workspace between calls (the
// workspace grows to the largest shape seen; repeated shapes allocate nothing, except with
// SvdPolar, which allocates by design).
//
// Errors (muon::Error, before anything is written): rank other than 2 or 3, an empty or
// negative dimension, null data, a NaN or Inf in the input, in / out of different shapes or
// overlapping without being the same buffer.
#include <cstdint>
#include <functional>
#include <string>
#include <type_traits>
#include <utility>

#include "muon/backend/concept.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/registration.hpp"
#include "muon/core/tensor.hpp"
#include "muon/core/workspace.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"

#if __has_include(<Eigen/Core>)
#include "muon/backend/eigen.hpp"
#endif

namespace muon {

namespace detail {

// out[k] = in^T[k] for a row-major rows x cols `out` (in is cols x rows, row-major).
template <class T>
struct TransposeGather {
  const T* in;
  index_t rows, cols;  // of out
  MUON_HOST_DEVICE T operator()(index_t k, T) const {
    const index_t i = k / cols, j = k - i * cols;
    return in[j * rows + i];
  }
};

}  // namespace detail

template <backend::Backend B, class O = policy::NewtonSchulz>
class Orthogonalize {
  static_assert(Orthogonalizer<O, B>, "muon::Orthogonalize: the 2nd template argument must satisfy muon::Orthogonalizer");

 public:
  using backend_type = B;
  using orthogonalizer_type = O;
  using value_type = typename B::value_type;
  using Options = typename O::Options;

  Orthogonalize() : Orthogonalize(Options{}) {}
  explicit Orthogonalize(Options options, B backend = B{}) : backend_(std::move(backend)), orth_(std::move(options)) {}

  // x <- orth(x), per matrix of a rank-3 stack.
  template <TensorLike X>
  void operator()(X&& x) {
    static_assert(!(std::is_rvalue_reference_v<X&&> && detail::owns_storage_v<X>),
                  "muon::orthogonalize: the tensor is a temporary that owns its storage (the result would be "
                  "lost); pass an lvalue, or use the out-of-place form");
    const auto t = as_tensor(x);
    check_scalar<decltype(t)>();
    static_assert(!std::is_const_v<std::remove_pointer_t<decltype(t.data)>>,
                  "muon::orthogonalize: the tensor must be writable (not const); use the out-of-place form");
    const auto v = physical(t, "tensor");
    prepare(v);
    check_finite(v);
    orth_.apply(backend_, v, ws_);
  }

  // out <- orth(in); in is left alone (it may be out itself). Layouts may differ: a row-major
  // in and a column-major out of the same logical shape are fine.
  template <TensorLike In, TensorLike Out>
  void operator()(In&& in, Out&& out) {
    static_assert(!(std::is_rvalue_reference_v<Out&&> && detail::owns_storage_v<Out>),
                  "muon::orthogonalize: out is a temporary that owns its storage (the result would be lost); "
                  "pass an lvalue");
    const auto ti = as_tensor(in);
    const auto to = as_tensor(out);
    check_scalar<decltype(ti)>();
    check_scalar<decltype(to)>();
    static_assert(!std::is_const_v<std::remove_pointer_t<decltype(to.data)>>,
                  "muon::orthogonalize: out must be writable (not const)");
    const auto vi = physical(ti, "in");
    const auto vo = physical(to, "out");
    if (!(ti.shape == to.shape))
      detail::fail("orthogonalize: in has shape " + ti.shape.to_string() + " but out has shape " +
                   to.shape.to_string() + "; they must match");
    const bool same = static_cast<const void*>(vi.data) == static_cast<const void*>(vo.data);
    const bool transposed = ti.layout != to.layout && ti.shape.rank() == 2;
    if (same && transposed)
      detail::fail("orthogonalize: in and out are the same buffer but of different layouts");
    if (!same && overlap(vi.data, vo.data, vi.size()))
      detail::fail("orthogonalize: in and out overlap without being the same buffer");
    prepare(vo);
    check_finite(vi.as_const());
    if (transposed)
      backend_.transform_indexed(vo, detail::TransposeGather<value_type>{vi.data, vo.rows, vo.cols}, vo);
    else if (!same)
      backend_.transform(vo, fn::Copy{}, vi.as_const());
    orth_.apply(backend_, vo, ws_);
  }

  // Grows the workspace for a tensor of this shape and layout now, so that a later call of that
  // shape allocates nothing.
  void reserve(const Shape& shape, Layout layout = Layout::row_major) { prepare(view_of(shape, layout, nullptr, "shape")); }

  [[nodiscard]] B& backend() { return backend_; }
  [[nodiscard]] const O& orthogonalizer() const { return orth_; }
  [[nodiscard]] const Options& options() const { return orth_.options(); }
  [[nodiscard]] std::size_t workspace_bytes() const { return ws_.bytes(); }

 private:
  template <class Ref>
  static constexpr void check_scalar() {
    using S = std::remove_const_t<std::remove_pointer_t<decltype(std::declval<Ref>().data)>>;
    static_assert(std::is_same_v<S, value_type>,
                  "muon::orthogonalize: the tensor's scalar type must be the backend's value_type");
  }

  // The row-major batch x rows x cols view of a tensor, after the checks every call makes.
  template <class S>
  static backend::MatrixView<value_type> physical(const TensorRef<S>& t, const char* what) {
    if (t.data == nullptr) detail::fail(std::string("orthogonalize: ") + what + " has null data");
    return view_of(t.shape, t.layout, const_cast<value_type*>(t.data), what);  // an input is only read
  }
  static backend::MatrixView<value_type> view_of(const Shape& s, Layout layout, value_type* data, const char* what) {
    // Messages are built only on failure: a call with a good tensor allocates nothing.
    auto fail = [&](const std::string& why) {
      detail::fail(std::string("orthogonalize: ") + what + " has shape " + s.to_string() + "; " + why);
    };
    if (s.rank() != 2 && s.rank() != 3) fail("expected a matrix (rank 2) or a stack of matrices (rank 3)");
    for (std::size_t i = 0; i < s.rank(); ++i)
      if (s[i] <= 0) fail("every dimension must be > 0");
    if (s.rank() == 3 && layout == Layout::col_major)
      fail("a rank-3 stack marked column-major; a stack must be row-major (C order)");
    const bool transposed = layout == Layout::col_major;
    return {data, s.rank() == 3 ? s[0] : 1, transposed ? s.cols() : s.rows(), transposed ? s.rows() : s.cols()};
  }

  static bool overlap(const value_type* a, const value_type* b, index_t n) {
    const std::less<const value_type*> less;
    return less(a, b + n) && less(b, a + n);
  }

  void prepare(const backend::MatrixView<value_type>& v) {
    WorkspaceNeed need = orth_.plan(backend_, v.batch, v.rows, v.cols);
    need.add_accums(1);  // the non-finite count
    ws_.allocate(backend_, need);  // grows only; rewinds every call
  }

  // One host read: the count of NaN / Inf values, so that a bad input changes nothing.
  void check_finite(backend::MatrixView<const value_type> v) {
    auto* count = ws_.take_accums(1);
    backend_.count_non_finite(v.flat(), count);
    typename B::accum_type bad{};
    backend_.read(count, std::span<typename B::accum_type>(&bad, 1));
    if (bad != 0)
      detail::fail("orthogonalize: the input holds " + std::to_string(static_cast<std::int64_t>(bad)) +
                   " NaN or Inf value(s); nothing was changed");
  }

  B backend_;
  O orth_;
  Workspace<B> ws_{};
};

#if __has_include(<Eigen/Core>)

// x <- orth(x) on the Eigen backend, with the orthogonalizer O built from `options`.
template <class O = policy::NewtonSchulz, TensorLike X>
void orthogonalize(X&& x, const typename O::Options& options = {}) {
  Orthogonalize<backend::Eigen<tensor_scalar_t<X>>, O> op(options);
  op(std::forward<X>(x));
}

// out <- orth(in) on the Eigen backend; in is left alone.
template <class O = policy::NewtonSchulz, TensorLike In, TensorLike Out>
void orthogonalize(In&& in, Out&& out, const typename O::Options& options = {}) {
  Orthogonalize<backend::Eigen<tensor_scalar_t<Out>>, O> op(options);
  op(std::forward<In>(in), std::forward<Out>(out));
}

#endif

}  // namespace muon
