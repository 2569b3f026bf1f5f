#pragma once
// NoConstraint: plain Muon. The step direction is the orthogonalised momentum, and W is left
// where the update puts it.
#include "muon/backend/concept.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/param.hpp"
#include "muon/core/workspace.hpp"

namespace muon::policy {

class NoConstraint {
 public:
  struct Options {};
  template <class B>
  struct State {
    template <class V>
    void visit(V&&) {}
  };

  NoConstraint() = default;
  explicit NoConstraint(const Options&) {}
  [[nodiscard]] const Options& options() const { return options_; }

  template <class B>
  [[nodiscard]] State<B> make_state(B&, const ParamInfo&) {
    return {};
  }

  template <class B, class O>
  [[nodiscard]] WorkspaceNeed plan(B& b, const O& orth, const ParamInfo& info) const {
    return orth.plan(b, info.shape.batch(), info.shape.rows(), info.shape.cols());
  }

  // direction() is orth(u): tensors of one shape may be orthogonalised as one batch.
  static constexpr bool direction_is_orthogonalizer = true;
  template <class B, class O>
  void direction(B& b, State<B>&, O& orth, const MatrixParam<typename B::value_type>&,
                 backend::MatrixView<typename B::value_type> u, Workspace<B>& ws) {
    orth.apply(b, u, ws);
  }

  template <class B, class O>
  void retract(B&, State<B>&, O&, const MatrixParam<typename B::value_type>&, Workspace<B>&) {}

 private:
  Options options_{};
};

}  // namespace muon::policy
