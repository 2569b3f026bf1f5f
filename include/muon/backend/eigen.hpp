#pragma once
// CPU backend on Eigen, for float and double parameters.
//
// The backend itself is the shared CPU backend (backend/cpu/host_backend.hpp: buffers,
// elementwise loops, reductions in double, products through cpu::Products with oneDNN or
// OpenBLAS when muon was configured with them). What is Eigen's own: the built-in product kernel
// for builds without a library, Eigen's blocked general_matrix_matrix_product with packing
// buffers kept per thread (Eigen's public product allocates those buffers on every call for
// large matrices, and step() must not allocate once it has run once), and polar_factor (SVD).
//
// This header also adapts Eigen matrices, Maps and Refs for registration (muon::tensor_adapter).
#include <Eigen/Core>
#include <Eigen/SVD>
#include <algorithm>
#include <cstddef>
#include <memory>
#include <new>
#include <type_traits>

#include "muon/backend/concept.hpp"
#include "muon/backend/cpu/host_backend.hpp"
#include "muon/backend/cpu/products.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/low_precision.hpp"
#include "muon/core/tensor.hpp"

namespace muon::backend {

namespace eigen_detail {

using cpu::AlignedFree;
using cpu::k_alignment;

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
  // Packing space for an m x n x k product on the calling thread, in elements.
  static std::size_t reserve(index_t m, index_t n, index_t k) {
    const std::size_t need = GemmBlocking<T>::required_elements(n, m, k);
    kernel_scratch<T>().reserve(need);
    return need;
  }
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
    using ::Eigen::ColMajor;  // two declarations: nvcc 13 crashes on a using-declarator list
    using ::Eigen::RowMajor;
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
class Eigen : public cpu::HostBackend<T, eigen_detail::Kernel<T>> {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "muon::backend::Eigen: value_type must be float or double");

 public:
  Eigen() = default;

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
      const auto& sv = svd.singularValues();
      const double tol = cpu::singular_value_cutoff(sv.size() ? sv(0) : 0.0, x.rows, x.cols);
      index_t r = 0;
      while (r < sv.size() && sv(r) > tol) ++r;
      slice = (svd.matrixU().leftCols(r) * svd.matrixV().leftCols(r).transpose()).template cast<T>();
    }
  }
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
