#pragma once
// The five policy concepts. Each lists what a policy must provide; core/archetypes.hpp holds a
// minimal model of each, the template for a user's own policy.
//
// Per-parameter policy state is a typed struct (State<B>) whose visit() names every buffer and
// counter it holds: memory reports and checkpoints walk state through it.
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "muon/backend/concept.hpp"
#include "muon/core/param.hpp"
#include "muon/core/workspace.hpp"

namespace muon {

// What a Constraint sees of the parameter it acts on. `w` is the physical (row-major) storage;
// when `transposed` is true it holds the transpose of the logical matrix (a column-major Eigen
// matrix), so a constraint that acts on logical rows acts on physical columns.
//
// `lr` is the step size the apply multiplies the direction by (the matrix lr, times the shape
// and modular factors and the schedule): W <- W (1 - lr wd) - param.lr O. Constraints whose
// retraction depends on it (the hypersphere's 1 / sqrt(1 + lr^2)) read it here.
template <class T>
struct MatrixParam {
  backend::MatrixView<T> w;
  bool transposed = false;
  const ParamInfo* info = nullptr;
  double lr = 0;
};

namespace detail {
// Accepts anything a State::visit may hand over; used only to check that visit() exists.
struct StateProbe {
  template <class Buffer>
  void operator()(std::string_view, Buffer&) const {}
};
}  // namespace detail

// Every policy is built from its Options (the composition does that from its own Options).
template <class P>
concept ConstructibleFromOptions = std::constructible_from<P, const typename P::Options&>;

template <class S>
concept PolicyState = std::movable<S> && requires(S& s) { s.visit(detail::StateProbe{}); };

// 1. GradientFilter: g <- filter(g), before either path. apply() returns the gradient to use:
//    the input itself, or a view into the workspace it planned.
template <class F, class B>
concept GradientFilter =
    backend::Backend<B> && ConstructibleFromOptions<F> && PolicyState<typename F::template State<B>> &&
    requires(F& f, const F& cf, B& b, const ParamInfo& info, typename F::template State<B>& s,
             backend::MatrixView<const typename B::value_type> g, Workspace<B>& ws) {
      typename F::Options;
      { cf.options() } -> std::same_as<const typename F::Options&>;
      { f.template make_state<B>(b, info) } -> std::same_as<typename F::template State<B>>;
      { cf.plan(info) } -> std::same_as<WorkspaceNeed>;
      { f.apply(b, s, g, ws) } -> std::same_as<backend::MatrixView<const typename B::value_type>>;
    };

// 2. Router: decides a parameter's path once, at registration, and says which rule decided.
template <class R>
concept Router = ConstructibleFromOptions<R> && requires(const R& r, const ParamInfo& info) {
  typename R::Options;
  { r.options() } -> std::same_as<const typename R::Options&>;
  { r.route(info) } -> std::same_as<Route>;
};

// 3. Orthogonalizer: x <- orth(x) in place, for every slice of a batch. plan() reports the
//    workspace a batch x rows x cols input needs and may reserve backend scratch.
template <class O, class B>
concept Orthogonalizer =
    backend::Backend<B> && ConstructibleFromOptions<O> &&
    requires(O& o, const O& co, B& b, backend::MatrixView<typename B::value_type> x, Workspace<B>& ws, index_t n) {
      typename O::Options;
      { co.options() } -> std::same_as<const typename O::Options&>;
      { co.plan(b, n, n, n) } -> std::same_as<WorkspaceNeed>;
      o.apply(b, x, ws);
    };

// 4. Constraint: owns the matrix path after momentum.
//    direction(): turns the momentum update u (in workspace, physical layout) into the step
//      direction in place; the unconstrained choice is orth(u).
//    retract(): runs after W <- W (1 - lr wd) - lr_eff O, to bring W back to its constraint set
//      (it gets the orthogonalizer too: the Stiefel retraction is W <- msign(W)).
template <class C, class B, class O>
concept Constraint =
    backend::Backend<B> && Orthogonalizer<O, B> && ConstructibleFromOptions<C> && PolicyState<typename C::template State<B>> &&
    requires(C& c, const C& cc, B& b, const ParamInfo& info, typename C::template State<B>& s, O& orth,
             MatrixParam<typename B::value_type> p, backend::MatrixView<typename B::value_type> u,
             Workspace<B>& ws) {
      typename C::Options;
      { cc.options() } -> std::same_as<const typename C::Options&>;
      { c.template make_state<B>(b, info) } -> std::same_as<typename C::template State<B>>;
      { cc.plan(b, orth, info) } -> std::same_as<WorkspaceNeed>;
      c.direction(b, s, orth, p, u, ws);
      c.retract(b, s, orth, p, ws);
    };

namespace detail {
// Whether a constraint's direction() calls the orthogonalizer. A constraint that never does
// (Hypersphere) says so with `static constexpr bool uses_orthogonalizer = false`, and the
// optimizer then plans the orthogonalizer's workspace only for when the constraint is switched
// off. Without the member: true.
template <class C>
[[nodiscard]] constexpr bool uses_orthogonalizer() {
  if constexpr (requires { { C::uses_orthogonalizer } -> std::convertible_to<bool>; })
    return C::uses_orthogonalizer;
  else
    return true;
}

// Whether a constraint's direction() is exactly the orthogonalizer's orth(u) (NoConstraint,
// QK-Clip: their work is in retract()). Such tensors of one shape can be orthogonalised as one
// batch. Says so with `static constexpr bool direction_is_orthogonalizer = true`; default false.
template <class C>
[[nodiscard]] constexpr bool direction_is_orthogonalizer() {
  if constexpr (requires { { C::direction_is_orthogonalizer } -> std::convertible_to<bool>; })
    return C::direction_is_orthogonalizer;
  else
    return false;
}
}  // namespace detail

// 5. Fallback: the whole update of a parameter the router did not send to the matrix path.
//    It owns its learning rate and weight decay (separate from the matrix path's).
template <class F, class B>
concept Fallback =
    backend::Backend<B> && ConstructibleFromOptions<F> && PolicyState<typename F::template State<B>> &&
    requires(F& f, const F& cf, B& b, const ParamInfo& info, typename F::template State<B>& s,
             backend::MatrixView<typename B::value_type> w, backend::MatrixView<const typename B::value_type> g,
             double lr) {
      typename F::Options;
      { cf.options() } -> std::same_as<const typename F::Options&>;
      { f.template make_state<B>(b, info) } -> std::same_as<typename F::template State<B>>;
      f.apply(b, s, w, g);
      { cf.lr() } -> std::convertible_to<double>;
      f.set_lr(lr);
    };

// Optional for a Fallback: an update with a given lr and weight decay (FallbackRates), the
// other options as set. Parameter groups (ParamOptions::lr_scale / weight_decay) need it on the
// fallback path; AdamW, Lion and SGD have it.
template <class F, class B>
concept FallbackWithRates =
    Fallback<F, B> &&
    requires(F& f, const F& cf, B& b, typename F::template State<B>& s, backend::MatrixView<typename B::value_type> w,
             backend::MatrixView<const typename B::value_type> g, const FallbackRates& rates) {
      f.apply(b, s, w, g, rates);
      { cf.options().weight_decay } -> std::convertible_to<double>;
    };

}  // namespace muon
