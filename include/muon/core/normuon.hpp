#pragma once
// NorMuon's row normalisation (Optimizer::Options::normuon), kept out of the composition so the
// step reads as the data flow. After orthogonalisation, each logical row of the update u is
// divided by the root of an EMA of its mean squared entry, then every slice is rescaled to the
// Frobenius norm it had before: rows end up with comparable update sizes.
//   v_r <- lerp(v_r, mean_j u_rj^2, 1 - beta2);  u_rj <- u_rj / (sqrt(v_r) + eps);
//   u <- u * ||u_before||_F / ||u||_F
// Per-row means come from a GEMM with a ones vector (rows are physical columns when the storage
// is transposed), so the work stays on the backend on either layout.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

#include "muon/backend/concept.hpp"
#include "muon/core/config.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/workspace.hpp"

namespace muon::detail {

template <class B>
class RowNormalizer {
  using T = typename B::value_type;
  using A = typename B::accum_type;

 public:
  // Workspace for a batch x prow x pcol physical update whose logical rows number `rows`.
  static WorkspaceNeed plan(index_t batch, index_t prow, index_t pcol, index_t rows) {
    WorkspaceNeed need;
    need.add_accums(batch).add_accums(batch).add_matrix(batch, prow, pcol).add_matrix(batch, rows, 1);
    return need;
  }

  // Makes sure the ones vector covers a dimension of n (called at registration).
  void reserve(B& b, index_t n) {
    if (static_cast<std::size_t>(n) <= ones_.size()) return;
    auto fresh = b.template allocate<T>(static_cast<std::size_t>(n));
    b.copy_from_host(std::vector<T>(static_cast<std::size_t>(n), T(1)), backend::MatrixView<T>{fresh.data(), 1, 1, n});
    ones_ = std::move(fresh);
  }
  [[nodiscard]] std::size_t bytes() const { return ones_.size() * sizeof(T); }

  // u (physical, in place); row_moment holds batch x logical-rows EMA values.
  void apply(B& b, Workspace<B>& ws, T* row_moment, backend::MatrixView<T> u, bool transposed, double beta2,
             double eps) {
    const index_t lrows = transposed ? u.cols : u.rows, lcols = transposed ? u.rows : u.cols;
    A* before = ws.take_accums(u.batch);
    A* after = ws.take_accums(u.batch);
    b.frobenius_norms(u, before);
    auto sq = ws.take(u.batch, u.rows, u.cols);
    b.transform(sq, Square{}, u);
    const T inv = static_cast<T>(1.0 / static_cast<double>(lcols));
    backend::MatrixView<T> means = transposed ? ws.take(u.batch, 1, u.cols) : ws.take(u.batch, u.rows, 1);
    if (!transposed)
      b.gemm(backend::Trans::no, backend::Trans::no, inv, sq, backend::MatrixView<const T>{ones_.data(), 1, u.cols, 1},
             T(0), means);
    else
      b.gemm(backend::Trans::no, backend::Trans::no, inv, backend::MatrixView<const T>{ones_.data(), 1, 1, u.rows}, sq,
             T(0), means);
    backend::MatrixView<T> v{row_moment, 1, 1, means.size()};
    b.transform(v, fn::Lerp<T>{static_cast<T>(1.0 - beta2)}, v, means.flat());
    b.transform_indexed(u, DivideByRowRms{row_moment, u.rows, u.cols, lrows, transposed, static_cast<T>(eps)}, u);
    b.frobenius_norms(u, after);
    b.transform_slices(u, RescaleTo{before, after}, u);
  }

 public:
  // Elementwise functors are public: nvcc cannot instantiate a kernel on a private nested type.
  struct Square {
    MUON_HOST_DEVICE T operator()(T x) const { return x * x; }
  };
  struct DivideByRowRms {
    const T* v;
    index_t rows, cols, lrows;  // physical rows / cols of a slice; logical rows
    bool transposed;
    T eps;
    MUON_HOST_DEVICE T operator()(index_t k, T x) const {
      const index_t slice = k / (rows * cols), within = k % (rows * cols);
      const index_t row = transposed ? within % cols : within / cols;
      return x / (std::sqrt(v[slice * lrows + row]) + eps);
    }
  };
  struct RescaleTo {
    const A* target;
    const A* current;
    MUON_HOST_DEVICE T operator()(index_t s, T x) const {
      return current[s] > 0 ? static_cast<T>(static_cast<double>(x) * (target[s] / current[s])) : x;
    }
  };

 private:
  typename B::template Buffer<T> ones_{};
};

}  // namespace muon::detail
