#pragma once
// What fills Telemetry (core/report.hpp) during a step when Options::telemetry is on, kept out
// of the composition so the step reads as the data flow. Each call reads its scalars back to
// the host (opt-in numbers are allowed to cost a sync).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "muon/backend/concept.hpp"
#include "muon/core/config.hpp"
#include "muon/core/report.hpp"
#include "muon/core/tensor.hpp"
#include "muon/core/workspace.hpp"

namespace muon::detail {

template <class B>
class TelemetryRecorder {
  using T = typename B::value_type;
  using A = typename B::accum_type;

 public:
  // Workspace for one tensor of this shape: 3 norms and a difference for the gradients, and
  // O O^T per slice for the orthogonality error.
  static WorkspaceNeed plan(const Shape& shape) {
    const index_t lo = std::min(shape.rows(), shape.cols());
    WorkspaceNeed need;
    need.add_accums(3).add_accums(shape.batch()).add_matrix(1, 1, shape.numel()).add_matrix(shape.batch(), lo, lo);
    return need;
  }

  void begin(double lr, double fallback_lr) {
    std::vector<std::string> names = std::move(t_.skipped);  // keeps its capacity
    names.clear();
    const std::uint64_t step = t_.step;
    t_ = Telemetry{};
    t_.step = step;
    t_.skipped = std::move(names);
    t_.lr = lr;
    t_.fallback_lr = fallback_lr;
    grad_sq_ = filtered_sq_ = delta_sq_ = 0;
  }

  // Adds one tensor's raw and filtered gradient to the step's norms.
  void gradients(B& b, Workspace<B>& ws, backend::MatrixView<const T> raw, backend::MatrixView<const T> filtered) {
    A* acc = ws.take_accums(3);
    auto diff = ws.take(1, 1, raw.size());
    b.frobenius_norms(raw.flat(), acc);
    b.frobenius_norms(filtered.flat(), acc + 1);
    b.transform(diff, Difference{}, filtered.flat(), raw.flat());
    b.frobenius_norms(diff, acc + 2);
    std::array<A, 3> host{};
    b.read(acc, host);
    grad_sq_ += static_cast<double>(host[0]) * static_cast<double>(host[0]);
    filtered_sq_ += static_cast<double>(host[1]) * static_cast<double>(host[1]);
    delta_sq_ += static_cast<double>(host[2]) * static_cast<double>(host[2]);
    t_.grad_norm = std::sqrt(grad_sq_);
    t_.filtered_grad_norm = std::sqrt(filtered_sq_);
    t_.filter_delta_norm = std::sqrt(delta_sq_);
  }

  // ||O O^T - I||_F / sqrt(n) per slice (O^T O for a tall slice), the worst kept.
  void orthogonality(B& b, Workspace<B>& ws, backend::MatrixView<const T> o) {
    const index_t n = std::min(o.rows, o.cols);
    auto gram = ws.take(o.batch, n, n);
    if (o.rows <= o.cols)
      b.gemm(backend::Trans::no, backend::Trans::yes, T(1), o, o, T(0), gram);
    else
      b.gemm(backend::Trans::yes, backend::Trans::no, T(1), o, o, T(0), gram);
    b.transform_indexed(gram, MinusIdentity{n}, gram);
    A* acc = ws.take_accums(o.batch);
    b.frobenius_norms(gram, acc);
    for (index_t k = 0; k < o.batch; ++k) {
      A value{};
      b.read(acc + k, std::span<A>(&value, 1));
      t_.orthogonality_error =
          std::max(t_.orthogonality_error, static_cast<double>(value) / std::sqrt(static_cast<double>(n)));
    }
  }

  // Completes the record of the step; the pointer stays valid until the next begin().
  void add_skipped(const std::string& name) { t_.skipped.push_back(name); }
  [[nodiscard]] const Telemetry* finish(std::uint64_t step, const ConstraintStats& stats) {
    t_.step = step;
    t_.constraint = stats;
    return &t_;
  }

 public:
  // Elementwise functors are public: nvcc cannot instantiate a kernel on a private nested type.
  struct Difference {
    MUON_HOST_DEVICE T operator()(T a, T b) const { return a - b; }
  };
  struct MinusIdentity {
    index_t n;
    MUON_HOST_DEVICE T operator()(index_t k, T x) const { return (k % (n * n)) % (n + 1) == 0 ? x - T(1) : x; }
  };

 private:
  Telemetry t_{};
  double grad_sq_ = 0, filtered_sq_ = 0, delta_sq_ = 0;
};

}  // namespace muon::detail
