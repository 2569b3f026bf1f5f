#pragma once
// The Backend concept: everything a policy may ask of a tensor backend. Policies speak only
// through it, so a new backend (xtensor, CUDA) is one header plus the conformance tests.
//
// Three rules keep the concept open to device backends:
//  * memory: Buffer storage and MatrixView data may live where the host cannot touch them; the
//    host moves data only through copy_to_host / copy_from_host / read, never in the step path;
//  * ordering: every operation may be enqueued asynchronously (on a stream) and runs in issue
//    order; synchronize() waits for all of it;
//  * reductions write their results into backend memory (an accum_type buffer), where later
//    operations (elementwise functors given that pointer) consume them without a host round trip.
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <type_traits>

#include "muon/core/config.hpp"
#include "muon/core/low_precision.hpp"

namespace muon {
class ThreadPool;
}

namespace muon::backend {

enum class Trans { no, yes };

// A batch of row-major, contiguous matrices: element (s, i, j) is data[(s*rows + i)*cols + j].
// A plain matrix has batch 1; a vector is a 1 x n matrix. The pointer lives in the backend's
// memory space.
template <class T>
struct MatrixView {
  T* data = nullptr;
  index_t batch = 1;
  index_t rows = 0;
  index_t cols = 0;

  [[nodiscard]] constexpr index_t slice_size() const { return rows * cols; }
  [[nodiscard]] constexpr index_t size() const { return batch * rows * cols; }
  [[nodiscard]] constexpr bool empty() const { return size() == 0; }
  [[nodiscard]] constexpr MatrixView<const T> as_const() const { return {data, batch, rows, cols}; }
  constexpr operator MatrixView<const T>() const
    requires(!std::is_const_v<T>)
  {
    return as_const();
  }
  // The same elements seen as one flat 1 x size row (for elementwise work and whole-tensor
  // reductions).
  [[nodiscard]] constexpr MatrixView flat() const { return {data, 1, 1, size()}; }
};

// What a backend must provide. B::value_type is the parameter scalar (float or double);
// B::accum_type is the type reductions produce (at least as wide as value_type).
namespace detail {
// Stand-ins used only to check that transform / transform_slices exist.
struct ProbeUnary {
  template <class T>
  MUON_HOST_DEVICE T operator()(T x) const { return x; }
};
struct ProbeSliced {
  template <class T>
  MUON_HOST_DEVICE T operator()(index_t, T x) const { return x; }
};
struct ProbeIndexed {
  template <class T>
  MUON_HOST_DEVICE T operator()(index_t, T x) const { return x; }
};
}  // namespace detail

template <class B>
concept Backend =
    std::floating_point<typename B::value_type> && std::floating_point<typename B::accum_type> &&
    requires(B& b, const B& cb, std::size_t n, typename B::template Buffer<typename B::value_type>& buf,
             typename B::template Buffer<typename B::accum_type>& acc_buf,
             MatrixView<typename B::value_type> v, MatrixView<const typename B::value_type> cv,
             typename B::value_type alpha, typename B::accum_type* acc_out,
             std::span<typename B::value_type> host, std::span<const typename B::value_type> chost,
             std::span<typename B::accum_type> host_acc, index_t m) {
      // State storage and workspaces: zero-initialised, owning, movable buffers.
      { b.template allocate<typename B::value_type>(n) } -> std::same_as<typename B::template Buffer<typename B::value_type>>;
      { b.template allocate<typename B::accum_type>(n) } -> std::same_as<typename B::template Buffer<typename B::accum_type>>;
      { buf.data() } -> std::same_as<typename B::value_type*>;
      { buf.size() } -> std::same_as<std::size_t>;
      { acc_buf.data() } -> std::same_as<typename B::accum_type*>;

      // C = alpha * op(A) * op(B) + beta * C, batched over the leading dimension (an operand
      // with batch 1 is shared by every slice of C). beta == 0 ignores C's old contents.
      b.gemm(Trans::no, Trans::yes, alpha, cv, cv, alpha, v);
      // Tells the backend the largest GEMM it will run, so scratch is sized before the first step.
      b.reserve_gemm(m, m, m);
      // Adds alpha to the diagonal of every slice (Newton-Schulz folds a X into B X this way).
      b.add_to_diagonal(v, alpha);

      // Elementwise transforms, written once as functors:
      //   transform(out, f, in...)         out[k] = f(in[k]...)           (views of equal size)
      //   transform_slices(out, f, in...)  out[s][k] = f(s, in[s][k]...)  (f knows the slice)
      //   transform_indexed(out, f, in...) out[k] = f(k, in[k]...)        (f knows the flat index)
      // A functor is a small copyable struct with a MUON_HOST_DEVICE call operator; pointers it
      // carries (to reduction results) point into backend memory. A transform_indexed functor
      // may also read or write element k of another buffer it carries while it computes
      // out[k] (each index is visited exactly once): that is how 16-bit copies of parameters
      // are decoded and refreshed (core/master_weights.hpp).
      b.transform(v, detail::ProbeUnary{}, cv);
      b.transform_slices(v, detail::ProbeSliced{}, cv);
      b.transform_indexed(v, detail::ProbeIndexed{}, cv);

      // Reductions, one result per slice, written to backend memory (acc_out[0 .. batch)).
      b.frobenius_norms(cv, acc_out);
      b.dots(cv, cv, acc_out);
      b.max_abs(cv, acc_out);
      b.count_non_finite(cv, acc_out);

      // Host transfers: outside the step path, or once per step for a handful of flags.
      b.copy_to_host(cv, host);
      b.copy_from_host(chost, v);
      b.read(acc_out, host_acc);
      b.synchronize();
      { cb.scratch_bytes() } -> std::convertible_to<std::size_t>;
    };

// Optional capabilities. Policies use them when a backend has them and fall back to the plain
// concept otherwise, so a new backend can start without them.

// C = alpha op(A) op(A)^T + beta C with C exactly symmetric, for about half a product's flops
// (Trans::no: A A^T; Trans::yes: A^T A).
template <class B>
concept SymmetricProducts = requires(B& b, MatrixView<const typename B::value_type> a,
                                     MatrixView<typename B::value_type> c, typename B::value_type alpha) {
  b.syrk(Trans::no, alpha, a, alpha, c);
};

// Products of bfloat16 operands accumulated in float (float backends): gemm and syrk overloads
// on bfloat16 views, convert() to round into a bfloat16 view, and bf16_unavailable_reason(),
// empty where the products can run (a CPU without bf16 instructions says why not).
template <class B>
concept Bf16Products =
    std::same_as<typename B::value_type, float> &&
    requires(B& b, const B& cb, MatrixView<const bfloat16> a, MatrixView<bfloat16> a16, MatrixView<const float> x,
             MatrixView<float> c, float alpha) {
      b.gemm(Trans::no, Trans::yes, alpha, a, a, alpha, c);
      b.syrk(Trans::no, alpha, a, alpha, c);
      b.convert(x, a16);
      { cb.bf16_unavailable_reason() } -> std::convertible_to<std::string>;
    };

// Runs its products on a thread pool the optimizer gives it (nullptr: the calling thread).
template <class B>
concept Threaded = requires(B& b, ThreadPool* pool) { b.set_pool(pool); };

// Enqueues its work on a device queue (a CUDA stream) instead of running it on the calling
// thread: `static constexpr bool enqueues_on_device = true;`. The optimizer then runs every
// tensor on one lane whatever Options::threads says, since host threads would only race to
// enqueue onto the same queue.
template <class B>
concept DeviceQueue = requires { requires B::enqueues_on_device; };

}  // namespace muon::backend
