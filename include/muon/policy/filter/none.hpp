#pragma once
// NoFilter: the gradient passes unchanged (no state, no copy).
#include "muon/backend/concept.hpp"
#include "muon/core/param.hpp"
#include "muon/core/workspace.hpp"

namespace muon::policy {

class NoFilter {
 public:
  struct Options {};
  template <class B>
  struct State {
    template <class V>
    void visit(V&&) {}
  };

  NoFilter() = default;
  explicit NoFilter(const Options&) {}
  [[nodiscard]] const Options& options() const { return options_; }

  template <class B>
  [[nodiscard]] State<B> make_state(B&, const ParamInfo&) {
    return {};
  }
  [[nodiscard]] WorkspaceNeed plan(const ParamInfo&) const { return {}; }

  template <class B>
  backend::MatrixView<const typename B::value_type> apply(B&, State<B>&,
                                                          backend::MatrixView<const typename B::value_type> g,
                                                          Workspace<B>&) {
    return g;
  }

 private:
  Options options_{};
};

}  // namespace muon::policy
