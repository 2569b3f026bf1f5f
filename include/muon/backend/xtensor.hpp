#pragma once
// CPU backend for programs whose tensors are xtensor containers, for float and double parameters.
//
// The backend is the shared CPU backend (backend/cpu/host_backend.hpp): buffers, elementwise
// loops, reductions in double, and products through cpu::Products, so with oneDNN or OpenBLAS
// configured its products run exactly as the Eigen backend's do. Without a product library the
// built-in kernel is xtensor-blas's BLAS binding (cxxblas, called on raw pointers, no
// allocation), which reaches the BLAS that xtensor-blas links. polar_factor (for SvdPolar) uses
// xtensor-blas's SVD (LAPACK).
//
// This header also adapts xtensor containers for registration (muon::tensor_adapter):
// xt::xtensor, xt::xarray, xt::xtensor_fixed, xt::adapt(...) and strided views, row- or
// column-major, as long as their elements are contiguous.
#include <xtensor-blas/xblas.hpp>
#include <xtensor-blas/xlinalg.hpp>
#include <xtensor/xadapt.hpp>
#include <xtensor/xarray.hpp>
#include <xtensor/xfixed.hpp>
#include <xtensor/xtensor.hpp>
#include <xtensor/xview.hpp>

#include <algorithm>
#include <array>
#include <cstddef>
#include <span>
#include <string>
#include <type_traits>

#include "muon/backend/concept.hpp"
#include "muon/backend/cpu/host_backend.hpp"
#include "muon/backend/cpu/products.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/tensor.hpp"

namespace muon::backend {

namespace xtensor_detail {

// xtensor-blas's BLAS binding: the built-in kernel of cpu::Products for builds without oneDNN
// or OpenBLAS configured (it calls the BLAS xtensor-blas itself links).
template <class T>
struct Kernel {
  static std::size_t reserve(index_t, index_t, index_t) { return 0; }  // BLAS packs internally
  static void gemm(const cpu::GemmCall<T, T>& g) {
    const auto op = [](Trans t) { return t == Trans::yes ? cxxblas::Trans : cxxblas::NoTrans; };
    cxxblas::gemm(cxxblas::RowMajor, op(g.ta), op(g.tb), static_cast<int>(g.m), static_cast<int>(g.n),
                  static_cast<int>(g.k), g.alpha, g.a, static_cast<int>(g.lda), g.b, static_cast<int>(g.ldb), g.beta,
                  g.c, static_cast<int>(g.ldc));
  }
};

}  // namespace xtensor_detail

template <class T>
class Xtensor : public cpu::HostBackend<T, xtensor_detail::Kernel<T>> {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "muon::backend::Xtensor: value_type must be float or double");

 public:
  Xtensor() = default;

  // ---- Capability beyond the concept: the exact polar factor (used by SvdPolar) ---------------
  // U V^T of each slice via a thin SVD computed in double by LAPACK (zero singular values
  // dropped, as the Eigen backend does). A reference path: it allocates.
  void polar_factor(MatrixView<T> x) {
    const auto rows = static_cast<std::size_t>(x.rows), cols = static_cast<std::size_t>(x.cols);
    for (index_t s = 0; s < x.batch; ++s) {
      auto slice = xt::adapt(x.data + s * x.slice_size(), rows * cols, xt::no_ownership(),
                             std::array<std::size_t, 2>{rows, cols});
      const xt::xtensor<double, 2> g = xt::cast<double>(slice);
      const auto [u, sv, vt] = xt::linalg::svd(g, false);
      const double tol = cpu::singular_value_cutoff(sv.size() ? sv(0) : 0.0, x.rows, x.cols);
      std::size_t r = 0;
      while (r < sv.size() && sv(r) > tol) ++r;
      if (r == 0) {
        slice.fill(T(0));
        continue;
      }
      const xt::xtensor<double, 2> q = xt::linalg::dot(xt::view(u, xt::all(), xt::range(0, r)),
                                                       xt::view(vt, xt::range(0, r), xt::all()));
      slice = xt::cast<T>(q);
    }
  }
};

static_assert(Backend<Xtensor<float>>, "muon::backend::Xtensor<float> must satisfy muon::backend::Backend");
static_assert(Backend<Xtensor<double>>, "muon::backend::Xtensor<double> must satisfy muon::backend::Backend");

}  // namespace muon::backend

namespace muon {

namespace xtensor_detail {

// Containers own their elements (registering a temporary one would dangle); adaptors and views
// do not.
template <class X>
struct owns_storage : std::false_type {};
template <class EC, std::size_t N, xt::layout_type L, class Tag>
struct owns_storage<xt::xtensor_container<EC, N, L, Tag>> : std::true_type {};
template <class EC, xt::layout_type L, class SC, class Tag>
struct owns_storage<xt::xarray_container<EC, L, SC, Tag>> : std::true_type {};
template <class ET, class S, xt::layout_type L, bool SH, class Tag>
struct owns_storage<xt::xfixed_container<ET, S, L, SH, Tag>> : std::true_type {};

// Whether the strides (xtensor's: in elements, 0 for a dimension of size 1) describe densely
// packed elements in C (row-major) or Fortran (column-major) order.
template <class Shape, class Strides>
bool packed(const Shape& shape, const Strides& strides, bool row_major) {
  const std::size_t rank = shape.size();
  std::ptrdiff_t expected = 1;
  for (std::size_t k = 0; k < rank; ++k) {
    const std::size_t d = row_major ? rank - 1 - k : k;
    if (shape[d] > 1 && static_cast<std::ptrdiff_t>(strides[d]) != expected) return false;
    expected *= static_cast<std::ptrdiff_t>(shape[d]);
  }
  return true;
}

template <class Seq>
std::string to_string(const Seq& s) {
  std::string out = "(";
  for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(static_cast<long long>(s[i]));
  return out + ")";
}

}  // namespace xtensor_detail

// Registration of xtensor containers, adaptors (xt::adapt) and strided views: anything with
// direct access to its elements. Elements must be contiguous: row-major at any rank, or a
// column-major matrix, which is used as its row-major transpose without copying (its logical
// shape stays (rows, cols)), as for Eigen.
template <class X>
  requires std::is_base_of_v<xt::xexpression<X>, X> && requires(const X& x) {
    x.data();
    x.data_offset();
    x.shape();
    x.strides();
  }
struct tensor_adapter<X> {
  static constexpr bool owns_storage = xtensor_detail::owns_storage<X>::value;

  template <class Y>
  static auto ref(Y& x) {
    using S = std::remove_reference_t<decltype(*x.data())>;
    const auto& shape = x.shape();
    const auto& strides = x.strides();
    if (shape.size() > Shape::max_rank)
      detail::fail("xtensor tensor of rank " + std::to_string(shape.size()) + " is above the supported rank " +
                   std::to_string(Shape::max_rank));
    std::array<index_t, Shape::max_rank> dims{};
    for (std::size_t i = 0; i < shape.size(); ++i) dims[i] = static_cast<index_t>(shape[i]);
    const Shape logical(std::span<const index_t>(dims.data(), shape.size()));
    S* data = x.data() + x.data_offset();
    if (xtensor_detail::packed(shape, strides, true)) return TensorRef<S>{data, logical, Layout::row_major};
    if (shape.size() == 2 && xtensor_detail::packed(shape, strides, false))
      return TensorRef<S>{data, logical, Layout::col_major};
    detail::fail("xtensor tensor of shape " + xtensor_detail::to_string(shape) + " with strides " +
                 xtensor_detail::to_string(strides) +
                 " is not contiguous: register a densely packed tensor, row-major at any rank or a column-major "
                 "matrix (a strided slice is not; copy it into an xt::xtensor)");
  }
};

}  // namespace muon
