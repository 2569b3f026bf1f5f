#pragma once
// SvdPolar: the exact polar factor U V^T of each matrix (thin SVD G = U S V^T), the reference
// every iterative orthogonalizer is measured against. Slow and allocating (it is a reference):
// the backend must offer polar_factor(view); the Eigen backend computes the SVD in double.
// Rank-deficient inputs get U V^T of the SVD the backend computes (zero singular values map to
// whatever singular vectors it picks).
#include <concepts>

#include "muon/backend/concept.hpp"
#include "muon/core/workspace.hpp"

namespace muon::policy {

template <class B>
concept PolarFactorBackend = backend::Backend<B> && requires(B& b, backend::MatrixView<typename B::value_type> x) {
  b.polar_factor(x);
};

class SvdPolar {
 public:
  struct Options {};

  SvdPolar() = default;
  explicit SvdPolar(const Options&) {}
  [[nodiscard]] const Options& options() const { return options_; }

  template <backend::Backend B>
  [[nodiscard]] WorkspaceNeed plan(B&, index_t, index_t, index_t) const {
    static_assert(PolarFactorBackend<B>, "muon::policy::SvdPolar needs a backend with polar_factor(view)");
    return {};
  }

  template <backend::Backend B>
  void apply(B& b, backend::MatrixView<typename B::value_type> x, Workspace<B>&) const {
    static_assert(PolarFactorBackend<B>, "muon::policy::SvdPolar needs a backend with polar_factor(view)");
    if (!x.empty()) b.polar_factor(x);
  }

 private:
  Options options_{};
};

}  // namespace muon::policy
