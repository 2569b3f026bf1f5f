#pragma once
// What every CPU backend shares, whatever container library it adapts (Eigen, xtensor): the
// whole Backend concept over raw host pointers. Buffers are 64-byte aligned and zeroed; products
// go through cpu::Products (oneDNN / OpenBLAS when configured, else the backend's own kernel),
// split over the optimizer's pool; elementwise functors run as plain loops the compiler
// vectorises; reductions accumulate in double; host transfers are memcpy.
//
// A backend derives from HostBackend<T, Kernel> and adds only what is its own: the built-in
// product kernel and optional capabilities (Eigen's polar_factor). Kernel is a type with
//   static void gemm(const cpu::GemmCall<T, T>&)   thread-safe, used without a product library;
//   static std::size_t reserve(index_t m, index_t n, index_t k)
//       makes the calling thread's scratch big enough for an m x n x k product before the first
//       step and returns its size in elements (0 for a kernel that needs none).
#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <span>
#include <string>
#include <type_traits>

#include "muon/backend/concept.hpp"
#include "muon/backend/cpu/products.hpp"
#include "muon/core/config.hpp"
#include "muon/core/low_precision.hpp"

namespace muon::backend::cpu {

inline constexpr std::size_t k_alignment = 64;

// The exact polar factor's rule (polar_factor of the CPU backends, msign semantics): singular
// values at or below this are treated as zero and their directions dropped, so a zero matrix
// maps to zero, not to an arbitrary orthogonal matrix.
[[nodiscard]] inline double singular_value_cutoff(double largest, index_t rows, index_t cols) {
  return largest * static_cast<double>(std::max(rows, cols)) * std::numeric_limits<double>::epsilon();
}

struct AlignedFree {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t{k_alignment}); }
};

template <class T, class Kernel>
class HostBackend {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "muon: a CPU backend's value_type must be float or double");

 public:
  using value_type = T;
  using accum_type = double;

  // Owning, zero-initialised, 64-byte aligned storage.
  template <class U>
  class Buffer {
   public:
    Buffer() = default;
    explicit Buffer(std::size_t n) : size_(n) {
      if (n == 0) return;
      void* p = ::operator new(n * sizeof(U), std::align_val_t{k_alignment});
      std::memset(p, 0, n * sizeof(U));
      data_.reset(static_cast<U*>(p));
    }
    [[nodiscard]] U* data() { return data_.get(); }
    [[nodiscard]] const U* data() const { return data_.get(); }
    [[nodiscard]] std::size_t size() const { return size_; }

   private:
    std::unique_ptr<U, AlignedFree> data_;
    std::size_t size_ = 0;
  };

  template <class U>
  [[nodiscard]] Buffer<U> allocate(std::size_t n) {
    return Buffer<U>(n);
  }

  // ---- Products (cpu::Products: library, symmetric products, bf16, threads) ----------------
  // The library that runs this backend's products, chosen when muon was configured.
  static constexpr Library product_library = Products<T, Kernel>::library;

  // Products are split over `pool` (nullptr: the calling thread only). The optimizer sets it.
  void set_pool(ThreadPool* pool) { products_.set_pool(pool); }
  [[nodiscard]] int threads() const { return products_.threads(); }

  // Reserves the built-in kernel's scratch for the calling thread (a library needs none).
  void reserve_gemm(index_t m, index_t n, index_t k) {
    if constexpr (product_library == Library::builtin) reserved_ = std::max(reserved_, Kernel::reserve(m, n, k));
  }

  void gemm(Trans ta, Trans tb, T alpha, MatrixView<const T> a, MatrixView<const T> b, T beta, MatrixView<T> c) {
    check_gemm(ta, tb, a, b, c);
    products_.gemm(ta, tb, alpha, a, b, beta, c);
  }
  // C = alpha op(A) op(A)^T + beta C, exactly symmetric (about half a product's flops).
  void syrk([[maybe_unused]] Trans t, T alpha, MatrixView<const T> a, T beta, MatrixView<T> c) {
    assert(c.rows == c.cols && c.rows == (t == Trans::no ? a.rows : a.cols));
    products_.syrk(t, alpha, a, beta, c);
  }
  // Adds alpha to the diagonal of every slice.
  void add_to_diagonal(MatrixView<T> c, T alpha) {
    const index_t d = std::min(c.rows, c.cols);
    for (index_t s = 0; s < c.batch; ++s)
      for (index_t i = 0; i < d; ++i) c.data[s * c.slice_size() + i * c.cols + i] += alpha;
  }

  // bf16 products (float backends): bf16 operands, float accumulation and results.
  [[nodiscard]] std::string bf16_unavailable_reason() const {
    if constexpr (!std::is_same_v<T, float>)
      return "bf16 products run on float backends (value_type float), this one's value_type is double";
    else
      return cpu::bf16_unavailable_reason();
  }
  void gemm(Trans ta, Trans tb, float alpha, MatrixView<const bfloat16> a, MatrixView<const bfloat16> b, float beta,
            MatrixView<float> c)
    requires std::is_same_v<T, float>
  {
    check_gemm(ta, tb, a, b, c);
    products_.gemm(ta, tb, alpha, a, b, beta, c);
  }
  void syrk([[maybe_unused]] Trans t, float alpha, MatrixView<const bfloat16> a, float beta, MatrixView<float> c)
    requires std::is_same_v<T, float>
  {
    assert(c.rows == c.cols && c.rows == (t == Trans::no ? a.rows : a.cols));
    products_.syrk(t, alpha, a, beta, c);
  }
  // dst = src rounded to bf16 (nearest even; NaN stays NaN).
  void convert(MatrixView<const T> src, MatrixView<bfloat16> dst) {
    assert(src.size() == dst.size());
    const index_t n = src.size();
    for (index_t i = 0; i < n; ++i) dst.data[i].bits = muon::detail::float_to_bf16(static_cast<float>(src.data[i]));
  }

  // ---- Elementwise --------------------------------------------------------------------------
  template <class F, class... In>
  void transform(MatrixView<T> out, F f, In... in) {
    static_assert((std::is_convertible_v<In, MatrixView<const T>> && ...),
                  "muon::backend::transform: inputs must be matrix views of value_type");
    assert(((MatrixView<const T>(in).size() == out.size()) && ...));
    apply_loop(out.data, out.size(), f, MatrixView<const T>(in).data...);
  }

  template <class F, class... In>
  void transform_slices(MatrixView<T> out, F f, In... in) {
    static_assert((std::is_convertible_v<In, MatrixView<const T>> && ...),
                  "muon::backend::transform_slices: inputs must be matrix views of value_type");
    assert(((MatrixView<const T>(in).size() == out.size()) && ...));
    const index_t len = out.slice_size();
    for (index_t s = 0; s < out.batch; ++s) {
      auto sliced = [f, s](auto... x) { return f(s, x...); };
      apply_loop(out.data + s * len, len, sliced, (MatrixView<const T>(in).data + s * len)...);
    }
  }

  template <class F, class... In>
  void transform_indexed(MatrixView<T> out, F f, In... in) {
    static_assert((std::is_convertible_v<In, MatrixView<const T>> && ...),
                  "muon::backend::transform_indexed: inputs must be matrix views of value_type");
    assert(((MatrixView<const T>(in).size() == out.size()) && ...));
    T* o = out.data;
    const index_t n = out.size();
    auto run = [&](auto... p) {
      // Each index is visited once and a functor touches only element i of what it carries
      // (the Backend concept's rule), so the iterations are independent.
      MUON_INDEPENDENT_ITERATIONS
      for (index_t i = 0; i < n; ++i) o[i] = static_cast<T>(f(i, p[i]...));
    };
    run(MatrixView<const T>(in).data...);
  }

  // ---- Reductions (per slice, accumulated in double) ----------------------------------------
  void frobenius_norms(MatrixView<const T> x, double* out) {
    for (index_t s = 0; s < x.batch; ++s) {
      const T* p = x.data + s * x.slice_size();
      const index_t n = x.slice_size();
      double sum = 0.0;
      for (index_t i = 0; i < n; ++i) sum += static_cast<double>(p[i]) * static_cast<double>(p[i]);
      double norm = std::sqrt(sum);
      if (std::isinf(norm)) norm = scaled_norm(p, n);  // only doubles near DBL_MAX get here
      out[s] = norm;
    }
  }

  void dots(MatrixView<const T> x, MatrixView<const T> y, double* out) {
    assert(x.size() == y.size());
    for (index_t s = 0; s < x.batch; ++s) {
      const T* p = x.data + s * x.slice_size();
      const T* q = y.data + s * x.slice_size();
      double sum = 0.0;
      for (index_t i = 0; i < x.slice_size(); ++i) sum += static_cast<double>(p[i]) * static_cast<double>(q[i]);
      out[s] = sum;
    }
  }

  void max_abs(MatrixView<const T> x, double* out) {
    for (index_t s = 0; s < x.batch; ++s) {
      const T* p = x.data + s * x.slice_size();
      double m = 0.0;
      for (index_t i = 0; i < x.slice_size(); ++i) m = std::max(m, static_cast<double>(std::abs(p[i])));
      out[s] = m;
    }
  }

  void count_non_finite(MatrixView<const T> x, double* out) {
    for (index_t s = 0; s < x.batch; ++s) {
      const T* p = x.data + s * x.slice_size();
      index_t bad = 0;
      for (index_t i = 0; i < x.slice_size(); ++i) bad += std::isfinite(p[i]) ? 0 : 1;
      out[s] = static_cast<double>(bad);
    }
  }

  // ---- Host transfers -----------------------------------------------------------------------
  void copy_to_host(MatrixView<const T> src, std::span<T> dst) {
    assert(static_cast<index_t>(dst.size()) == src.size());
    if (src.size() > 0) std::memcpy(dst.data(), src.data, static_cast<std::size_t>(src.size()) * sizeof(T));
  }
  void copy_from_host(std::span<const T> src, MatrixView<T> dst) {
    assert(static_cast<index_t>(src.size()) == dst.size());
    if (dst.size() > 0) std::memcpy(dst.data, src.data(), static_cast<std::size_t>(dst.size()) * sizeof(T));
  }
  void read(const double* src, std::span<double> dst) {
    if (!dst.empty()) std::memcpy(dst.data(), src, dst.size() * sizeof(double));
  }
  void synchronize() {}  // everything ran when it was called

  // The built-in kernel's scratch reserved per thread (0 with a product library).
  [[nodiscard]] std::size_t scratch_bytes() const { return reserved_ * sizeof(T); }

 private:
  template <class F, class... P>
  static void apply_loop(T* out, index_t n, F f, const P*... in) {
    for (index_t i = 0; i < n; ++i) out[i] = static_cast<T>(f(in[i]...));
  }

  static double scaled_norm(const T* p, index_t n) {
    double scale = 0.0;
    for (index_t i = 0; i < n; ++i) scale = std::max(scale, static_cast<double>(std::abs(p[i])));
    if (scale == 0.0 || !std::isfinite(scale)) return scale;
    double sum = 0.0;
    for (index_t i = 0; i < n; ++i) {
      const double r = static_cast<double>(p[i]) / scale;
      sum += r * r;
    }
    return scale * std::sqrt(sum);
  }

  template <class In, class Out>
  static void check_gemm([[maybe_unused]] Trans ta, [[maybe_unused]] Trans tb, [[maybe_unused]] MatrixView<const In> a,
                         [[maybe_unused]] MatrixView<const In> b, [[maybe_unused]] MatrixView<Out> c) {
    [[maybe_unused]] const index_t k = ta == Trans::no ? a.cols : a.rows;
    assert((ta == Trans::no ? a.rows : a.cols) == c.rows);
    assert((tb == Trans::no ? b.rows : b.cols) == k);
    assert((tb == Trans::no ? b.cols : b.rows) == c.cols);
    assert(a.batch == c.batch || a.batch == 1);
    assert(b.batch == c.batch || b.batch == 1);
  }

  Products<T, Kernel> products_;
  std::size_t reserved_ = 0;
};

}  // namespace muon::backend::cpu
