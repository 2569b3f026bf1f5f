#pragma once
// Tensor-agnostic registration. Anything the optimizer updates is seen as a TensorRef: a pointer,
// a logical shape (outermost dimension first) and a memory layout. Users plug their own tensor
// types in by specialising muon::tensor_adapter; Eigen types are adapted in backend/eigen.hpp and
// raw buffers by muon::raw().
#include <algorithm>
#include <array>
#include <concepts>
#include <cstddef>
#include <initializer_list>
#include <string>
#include <type_traits>

#include "muon/core/config.hpp"
#include "muon/core/error.hpp"

namespace muon {

// Logical shape of a parameter, outermost first (PyTorch order): a Linear weight is
// {out_features, in_features}; a stack of experts is {experts, rows, cols}.
class Shape {
 public:
  static constexpr std::size_t max_rank = 6;

  constexpr Shape() = default;
  constexpr Shape(std::initializer_list<index_t> dims) {
    if (dims.size() > max_rank) detail::fail("shape rank above 6 is not supported");
    for (index_t d : dims) dims_[rank_++] = d;
  }

  [[nodiscard]] constexpr std::size_t rank() const { return rank_; }
  [[nodiscard]] constexpr index_t operator[](std::size_t i) const { return dims_[i]; }
  [[nodiscard]] constexpr index_t numel() const {
    index_t n = 1;
    for (std::size_t i = 0; i < rank_; ++i) n *= dims_[i];
    return n;
  }
  // The matrix a rank >= 2 shape describes: its last two dimensions; leading ones are a batch.
  [[nodiscard]] constexpr index_t rows() const { return rank_ >= 2 ? dims_[rank_ - 2] : 1; }
  [[nodiscard]] constexpr index_t cols() const { return rank_ >= 1 ? dims_[rank_ - 1] : 1; }
  [[nodiscard]] constexpr index_t batch() const { return rank_ >= 2 ? numel() / std::max<index_t>(rows() * cols(), 1) : 1; }

  friend constexpr bool operator==(const Shape& a, const Shape& b) {
    if (a.rank_ != b.rank_) return false;
    for (std::size_t i = 0; i < a.rank_; ++i)
      if (a.dims_[i] != b.dims_[i]) return false;
    return true;
  }

  [[nodiscard]] std::string to_string() const {
    std::string s = "(";
    for (std::size_t i = 0; i < rank_; ++i) {
      if (i) s += ", ";
      s += std::to_string(dims_[i]);
    }
    if (rank_ == 1) s += ",";
    return s + ")";
  }

 private:
  std::array<index_t, max_rank> dims_{};
  std::size_t rank_ = 0;
};

// How the elements of a rank-2 tensor lie in memory. A column-major rows x cols matrix is the
// same bytes as a row-major cols x rows one; the optimizer works on that physical view and keeps
// the logical shape for learning-rate scaling and reports (orthogonalisation commutes with
// transposition, so the result is the same).
enum class Layout { row_major, col_major };

template <class T>
struct TensorRef {
  T* data = nullptr;
  Shape shape{};
  Layout layout = Layout::row_major;
};

// A raw buffer: pointer plus a row-major (C order) shape, e.g. muon::raw(ptr, {out, in}).
template <class T>
[[nodiscard]] constexpr TensorRef<T> raw(T* data, Shape shape) {
  return {data, shape, Layout::row_major};
}

// Customisation point: specialise for a tensor type X with
//   static TensorRef<S> ref(X&);   // S = scalar type, const-qualified for read-only tensors
template <class X>
struct tensor_adapter;

template <class T>
struct tensor_adapter<TensorRef<T>> {
  static TensorRef<T> ref(const TensorRef<T>& t) { return t; }
};

template <class X>
concept TensorLike = requires(X& x) {
  { tensor_adapter<std::remove_cvref_t<X>>::ref(x) };
};

template <TensorLike X>
[[nodiscard]] auto as_tensor(X& x) {
  return tensor_adapter<std::remove_cvref_t<X>>::ref(x);
}

// The scalar type of a tensor-like object, without const.
template <TensorLike X>
using tensor_scalar_t =
    std::remove_const_t<std::remove_pointer_t<decltype(as_tensor(std::declval<X&>()).data)>>;

}  // namespace muon
