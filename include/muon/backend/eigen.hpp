#pragma once
// CPU backend on Eigen, for float and double parameters.
//
// Products go through cpu::Products (backend/cpu/products.hpp): oneDNN or OpenBLAS when muon was
// configured with them (kernels chosen at run time, whatever flags the user compiles with),
// else Eigen's own blocked kernel (general_matrix_matrix_product) with packing buffers kept per
// thread: Eigen's public product allocates those buffers on every call for large matrices, and
// step() must not allocate once it has run once. Products are split over the optimizer's thread
// pool. Reductions accumulate in double. Elementwise functors run as plain loops the compiler
// vectorises.
//
// This header also adapts Eigen matrices, Maps and Refs for registration (muon::tensor_adapter).
#include <Eigen/Core>
#include <Eigen/SVD>
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
#include "muon/core/error.hpp"
#include "muon/core/low_precision.hpp"
#include "muon/core/tensor.hpp"

namespace muon::backend {

namespace eigen_detail {

inline constexpr std::size_t k_alignment = 64;

struct AlignedFree {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t{k_alignment}); }
};

// Packing buffers for Eigen's GEMM kernel, sized by Eigen's own blocking heuristic.
template <class T>
class GemmBlocking : public ::Eigen::internal::level3_blocking<T, T> {
 public:
  // Returns the number of elements of packing space the product m x n x k needs.
  static std::size_t required_elements(index_t m, index_t n, index_t k) {
    const Panels p = panels(m, n, k);
    return p.size_a + p.size_b;
  }

  void configure(index_t m, index_t n, index_t k, T* scratch) {
    const Panels p = panels(m, n, k);
    this->m_kc = p.kc;
    this->m_mc = p.mc;
    this->m_nc = p.nc;
    this->m_blockA = scratch;
    this->m_blockB = scratch + p.size_a;
  }

 private:
  struct Panels {
    index_t kc, mc, nc;
    std::size_t size_a, size_b;  // each rounded up to a whole alignment unit
  };
  static Panels panels(index_t m, index_t n, index_t k) {
    index_t kc = k, mc = m, nc = n;
    ::Eigen::internal::computeProductBlockingSizes<T, T, 1>(kc, mc, nc, index_t{1});
    constexpr std::size_t unit = k_alignment / sizeof(T);
    auto round_up = [](std::size_t x) { return (x + unit - 1) / unit * unit; };
    return {kc, mc, nc, round_up(static_cast<std::size_t>(kc * mc)), round_up(static_cast<std::size_t>(kc * nc))};
  }
};

template <int LhsOrder, int RhsOrder, class T>
void gemm_kernel(index_t m, index_t n, index_t k, const T* lhs, index_t lhs_stride, const T* rhs,
                 index_t rhs_stride, T* res, index_t res_stride, T alpha, GemmBlocking<T>& blocking) {
  // Row-major result: Eigen's RowMajor specialisation transposes the problem internally, so the
  // blocking is computed for (n, m, k).
  ::Eigen::internal::general_matrix_matrix_product<::Eigen::Index, T, LhsOrder, false, T, RhsOrder, false,
                                                 ::Eigen::RowMajor, 1>::run(m, n, k, lhs, lhs_stride, rhs,
                                                                          rhs_stride, res, 1, res_stride,
                                                                          alpha, blocking, nullptr);
}

// Packing space for Eigen's kernel, one per thread (products run on several threads at once),
// grown to the largest product a thread has run (registration reserves the caller's).
template <class T>
struct KernelScratch {
  std::unique_ptr<T, AlignedFree> data;
  std::size_t size = 0;
  T* reserve(std::size_t n) {
    if (n > size) {
      data.reset(static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t{k_alignment})));
      size = n;
    }
    return data.get();
  }
};
template <class T>
KernelScratch<T>& kernel_scratch() {
  thread_local KernelScratch<T> scratch;
  return scratch;
}

// Eigen's own blocked product: the built-in kernel of cpu::Products, for builds without a
// product library (and with only the instructions the user's flags allow).
template <class T>
struct Kernel {
  static void gemm(const cpu::GemmCall<T, T>& g) {
    if (g.beta != T(1)) {
      for (index_t i = 0; i < g.m; ++i) {
        T* row = g.c + i * g.ldc;
        if (g.beta == T(0))
          std::fill(row, row + g.n, T(0));
        else
          for (index_t j = 0; j < g.n; ++j) row[j] *= g.beta;
      }
    }
    GemmBlocking<T> blocking;
    blocking.configure(g.n, g.m, g.k, kernel_scratch<T>().reserve(GemmBlocking<T>::required_elements(g.n, g.m, g.k)));
    using ::Eigen::ColMajor, ::Eigen::RowMajor;
    // A row-major operand with Trans::yes is its transpose stored column-major; the stride is
    // the stored row length either way.
    if (g.ta == Trans::no && g.tb == Trans::no)
      gemm_kernel<RowMajor, RowMajor>(g.m, g.n, g.k, g.a, g.lda, g.b, g.ldb, g.c, g.ldc, g.alpha, blocking);
    else if (g.ta == Trans::no)
      gemm_kernel<RowMajor, ColMajor>(g.m, g.n, g.k, g.a, g.lda, g.b, g.ldb, g.c, g.ldc, g.alpha, blocking);
    else if (g.tb == Trans::no)
      gemm_kernel<ColMajor, RowMajor>(g.m, g.n, g.k, g.a, g.lda, g.b, g.ldb, g.c, g.ldc, g.alpha, blocking);
    else
      gemm_kernel<ColMajor, ColMajor>(g.m, g.n, g.k, g.a, g.lda, g.b, g.ldb, g.c, g.ldc, g.alpha, blocking);
  }
};

}  // namespace eigen_detail

template <class T>
class Eigen {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "muon::backend::Eigen: value_type must be float or double");

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
      void* p = ::operator new(n * sizeof(U), std::align_val_t{eigen_detail::k_alignment});
      std::memset(p, 0, n * sizeof(U));
      data_.reset(static_cast<U*>(p));
    }
    [[nodiscard]] U* data() { return data_.get(); }
    [[nodiscard]] const U* data() const { return data_.get(); }
    [[nodiscard]] std::size_t size() const { return size_; }

   private:
    std::unique_ptr<U, eigen_detail::AlignedFree> data_;
    std::size_t size_ = 0;
  };

  Eigen() = default;

  template <class U>
  [[nodiscard]] Buffer<U> allocate(std::size_t n) {
    return Buffer<U>(n);
  }

  // ---- Products (cpu::Products: library, symmetric products, bf16, threads) ----------------
  // The library that runs this backend's products, chosen when muon was configured.
  static constexpr cpu::Library product_library = cpu::Products<T, eigen_detail::Kernel<T>>::library;

  // Products are split over `pool` (nullptr: the calling thread only). The optimizer sets it.
  void set_pool(ThreadPool* pool) { products_.set_pool(pool); }
  [[nodiscard]] int threads() const { return products_.threads(); }

  // Reserves the built-in kernel's packing space for the calling thread (a library needs none).
  void reserve_gemm(index_t m, index_t n, index_t k) {
    if constexpr (product_library == cpu::Library::builtin) {
      const std::size_t need = eigen_detail::GemmBlocking<T>::required_elements(n, m, k);
      eigen_detail::kernel_scratch<T>().reserve(need);
      reserved_ = std::max(reserved_, need);
    }
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
      return "bf16 products run on float backends (Eigen<float>), this one is Eigen<double>";
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
                  "muon::backend::Eigen::transform: inputs must be matrix views of value_type");
    assert(((MatrixView<const T>(in).size() == out.size()) && ...));
    const index_t n = out.size();
    T* o = out.data;
    apply_loop(o, n, f, MatrixView<const T>(in).data...);
  }

  template <class F, class... In>
  void transform_slices(MatrixView<T> out, F f, In... in) {
    static_assert((std::is_convertible_v<In, MatrixView<const T>> && ...),
                  "muon::backend::Eigen::transform_slices: inputs must be matrix views of value_type");
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
                  "muon::backend::Eigen::transform_indexed: inputs must be matrix views of value_type");
    assert(((MatrixView<const T>(in).size() == out.size()) && ...));
    T* o = out.data;
    const index_t n = out.size();
    auto run = [&](auto... p) {
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

  // The built-in kernel's packing space reserved per thread (0 with a product library).
  [[nodiscard]] std::size_t scratch_bytes() const { return reserved_ * sizeof(T); }

  // ---- Capability beyond the concept: the exact polar factor (used by SvdPolar) ---------------
  // U V^T of each slice via a thin SVD computed in double (zero singular values dropped). A
  // reference path: it allocates.
  void polar_factor(MatrixView<T> x) {
    using MatD = ::Eigen::Matrix<double, ::Eigen::Dynamic, ::Eigen::Dynamic, ::Eigen::RowMajor>;
    for (index_t s = 0; s < x.batch; ++s) {
      ::Eigen::Map<::Eigen::Matrix<T, ::Eigen::Dynamic, ::Eigen::Dynamic, ::Eigen::RowMajor>> slice(
          x.data + s * x.slice_size(), x.rows, x.cols);
      MatD g = slice.template cast<double>();
      ::Eigen::JacobiSVD<MatD> svd(g, ::Eigen::ComputeThinU | ::Eigen::ComputeThinV);
      // msign semantics: directions with (numerically) zero singular value get 0, so a zero
      // matrix maps to zero, not to an arbitrary orthogonal matrix.
      const auto& sv = svd.singularValues();
      const double tol = (sv.size() ? sv(0) : 0.0) * static_cast<double>(std::max(x.rows, x.cols)) *
                         std::numeric_limits<double>::epsilon();
      index_t r = 0;
      while (r < sv.size() && sv(r) > tol) ++r;
      slice = (svd.matrixU().leftCols(r) * svd.matrixV().leftCols(r).transpose()).template cast<T>();
    }
  }

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

  cpu::Products<T, eigen_detail::Kernel<T>> products_;
  std::size_t reserved_ = 0;
};

static_assert(Backend<Eigen<float>>, "muon::backend::Eigen<float> must satisfy muon::backend::Backend");
static_assert(Backend<Eigen<double>>, "muon::backend::Eigen<double> must satisfy muon::backend::Backend");

}  // namespace muon::backend

namespace muon {

// Eigen's 16-bit types are storage for master-weight training (core/low_precision.hpp): both
// hold exactly the format's bits in a 2-byte struct.
template <>
struct element_format<::Eigen::bfloat16> {
  static constexpr ElementFormat value = ElementFormat::bf16;
};
template <>
struct element_format<::Eigen::half> {
  static constexpr ElementFormat value = ElementFormat::fp16;
};

// Registration of Eigen dense objects (Matrix, Array, Map, Ref, ...): they must expose their
// data directly and be contiguous (a Block of a larger matrix is not).
template <class X>
  requires std::is_base_of_v<::Eigen::DenseBase<X>, X> && ((X::Flags & ::Eigen::DirectAccessBit) != 0)
struct tensor_adapter<X> {
  // Matrix / Array own their elements (a temporary would dangle); Map / Ref do not.
  static constexpr bool owns_storage = std::is_base_of_v<::Eigen::PlainObjectBase<X>, X>;

  template <class Y>
  static auto ref(Y& x) {
    using S = std::conditional_t<std::is_const_v<std::remove_pointer_t<decltype(x.data())>>,
                                 const typename X::Scalar, typename X::Scalar>;
    const bool contiguous =
        x.size() == 0 || (x.innerStride() == 1 && (x.outerStride() == x.innerSize() || x.outerSize() == 1));
    if (!contiguous) detail::fail("Eigen tensor is not contiguous (inner stride 1, outer stride = inner size required)");
    const Layout layout = (X::Flags & ::Eigen::RowMajorBit) ? Layout::row_major : Layout::col_major;
    if constexpr (X::ColsAtCompileTime == 1 || X::RowsAtCompileTime == 1) {
      // A vector type is 1-D, like a PyTorch bias or norm scale.
      return TensorRef<S>{x.data(), Shape{static_cast<index_t>(x.size())}, Layout::row_major};
    } else {
      return TensorRef<S>{x.data(), Shape{static_cast<index_t>(x.rows()), static_cast<index_t>(x.cols())}, layout};
    }
  }
};

}  // namespace muon
