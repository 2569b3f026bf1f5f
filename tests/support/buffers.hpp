#pragma once
// Plain buffers for tests typed over MUON_TEST_BACKENDS: every backend registers a muon::TensorRef,
// so a test that needs a column-major matrix describes one here instead of reaching for an
// Eigen or xtensor container.
#include <muon/core/tensor.hpp>

#include <cstddef>
#include <vector>

namespace muon::test {

// A column-major rows x cols matrix stored at p (Fortran order: element (i, j) at p[i + j*rows]).
template <class T>
[[nodiscard]] TensorRef<T> raw_col_major(T* p, index_t rows, index_t cols) {
  return {p, Shape{rows, cols}, Layout::col_major};
}

// Reorders a row-major rows x cols matrix into column-major order (and back with the
// arguments swapped: the column-major rows x cols matrix is the row-major cols x rows one).
template <class T, class U>
[[nodiscard]] std::vector<T> transposed(const std::vector<U>& v, std::size_t rows, std::size_t cols) {
  std::vector<T> out(rows * cols);
  for (std::size_t i = 0; i < rows; ++i)
    for (std::size_t j = 0; j < cols; ++j) out[j * rows + i] = static_cast<T>(v[i * cols + j]);
  return out;
}

}  // namespace muon::test
