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
#include <ranges>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "muon/core/config.hpp"
#include "muon/core/error.hpp"

namespace muon {

namespace detail {
// Integers a shape dimension may come from: not bool or a character type.
template <class I>
concept dimension_integer =
    std::integral<I> && !std::same_as<I, bool> && !std::same_as<I, char> && !std::same_as<I, signed char> &&
    !std::same_as<I, unsigned char> && !std::same_as<I, wchar_t> && !std::same_as<I, char8_t> &&
    !std::same_as<I, char16_t> && !std::same_as<I, char32_t>;
}  // namespace detail

// Logical shape of a parameter, outermost first (PyTorch order): a Linear weight is
// {out_features, in_features}; a stack of experts is {experts, rows, cols}.
class Shape {
 public:
  static constexpr std::size_t max_rank = 6;

  constexpr Shape() = default;
  constexpr Shape(std::initializer_list<index_t> dims) : Shape(std::span<const index_t>(dims.begin(), dims.size())) {}
  // From dimensions known only at run time (a trainer's tensor.sizes()). Like the list form it
  // accepts negative dimensions: registration rejects them, naming the tensor.
  constexpr Shape(std::span<const index_t> dims) {
    if (dims.size() > max_rank) fail_rank(dims.size());
    for (index_t d : dims) dims_[rank_++] = d;
  }
  // Any other sized range of integers, e.g. std::vector<std::int64_t> (not index_t on every
  // platform) or std::vector<int>; implicit, so muon::raw(ptr, sizes) takes one. A value index_t
  // cannot hold throws instead of wrapping.
  template <std::ranges::sized_range R>
    requires std::ranges::input_range<const R> && detail::dimension_integer<std::ranges::range_value_t<const R>> &&
             (!std::same_as<std::remove_cvref_t<R>, Shape>)
  constexpr Shape(const R& dims) {
    if (std::ranges::size(dims) > max_rank) fail_rank(static_cast<std::size_t>(std::ranges::size(dims)));
    for (auto d : dims) {
      if (!std::in_range<index_t>(d)) detail::fail("shape dimension " + std::to_string(d) + " does not fit in index_t");
      dims_[rank_++] = static_cast<index_t>(d);
    }
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
  [[noreturn]] static void fail_rank(std::size_t rank) {
    detail::fail("shape rank " + std::to_string(rank) + " is above " + std::to_string(max_rank) + ", which is not supported");
  }

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
