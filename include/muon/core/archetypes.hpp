#pragma once
// Minimal models of every concept: the smallest thing that satisfies it, checked by a
// static_assert. Copy one to start a backend or policy of your own. None of them does useful
// work (the backend archetype computes nothing).
#include <cstddef>
#include <cstdint>
#include <span>

#include "muon/backend/concept.hpp"
#include "muon/core/concepts.hpp"

namespace muon::archetype {

// A backend that satisfies the concept and does nothing.
struct Backend {
  using value_type = float;
  using accum_type = double;
  template <class U>
  struct Buffer {
    U* data() { return nullptr; }
    [[nodiscard]] std::size_t size() const { return 0; }
  };
  template <class U>
  Buffer<U> allocate(std::size_t) {
    return {};
  }
  void gemm(backend::Trans, backend::Trans, float, backend::MatrixView<const float>, backend::MatrixView<const float>,
            float, backend::MatrixView<float>) {}
  void reserve_gemm(index_t, index_t, index_t) {}
  void add_to_diagonal(backend::MatrixView<value_type>, value_type) {}
  template <class F, class... In>
  void transform(backend::MatrixView<float>, F, In...) {}
  template <class F, class... In>
  void transform_slices(backend::MatrixView<float>, F, In...) {}
  template <class F, class... In>
  void transform_indexed(backend::MatrixView<float>, F, In...) {}
  void frobenius_norms(backend::MatrixView<const float>, double*) {}
  void dots(backend::MatrixView<const float>, backend::MatrixView<const float>, double*) {}
  void max_abs(backend::MatrixView<const float>, double*) {}
  void count_non_finite(backend::MatrixView<const float>, double*) {}
  void copy_to_host(backend::MatrixView<const float>, std::span<float>) {}
  void copy_from_host(std::span<const float>, backend::MatrixView<float>) {}
  void read(const double*, std::span<double>) {}
  void synchronize() {}
  [[nodiscard]] std::size_t scratch_bytes() const { return 0; }
};
static_assert(backend::Backend<Backend>, "muon::archetype::Backend must satisfy muon::backend::Backend");

// Policy state with nothing in it.
template <class B>
struct EmptyState {
  template <class V>
  void visit(V&&) {}
};

struct GradientFilter {
  struct Options {};
  GradientFilter() = default;
  explicit GradientFilter(const Options& o) : options_(o) {}
  template <class B>
  using State = EmptyState<B>;
  [[nodiscard]] const Options& options() const { return options_; }
  template <class B>
  State<B> make_state(B&, const ParamInfo&) {
    return {};
  }
  [[nodiscard]] WorkspaceNeed plan(const ParamInfo&) const { return {}; }
  template <class B>
  backend::MatrixView<const typename B::value_type> apply(B&, State<B>&, backend::MatrixView<const typename B::value_type> g,
                                                          Workspace<B>&) {
    return g;
  }
  Options options_{};
};
static_assert(muon::GradientFilter<GradientFilter, Backend>, "muon::archetype::GradientFilter must satisfy muon::GradientFilter");

struct Router {
  struct Options {};
  Router() = default;
  explicit Router(const Options& o) : options_(o) {}
  [[nodiscard]] const Options& options() const { return options_; }
  [[nodiscard]] Route route(const ParamInfo&) const { return {Path::fallback, "archetype"}; }
  Options options_{};
};
static_assert(muon::Router<Router>, "muon::archetype::Router must satisfy muon::Router");

struct Orthogonalizer {
  struct Options {};
  Orthogonalizer() = default;
  explicit Orthogonalizer(const Options& o) : options_(o) {}
  [[nodiscard]] const Options& options() const { return options_; }
  template <class B>
  [[nodiscard]] WorkspaceNeed plan(B&, index_t, index_t, index_t) const {
    return {};
  }
  template <class B>
  void apply(B&, backend::MatrixView<typename B::value_type>, Workspace<B>&) {}
  Options options_{};
};
static_assert(muon::Orthogonalizer<Orthogonalizer, Backend>, "muon::archetype::Orthogonalizer must satisfy muon::Orthogonalizer");

struct Constraint {
  struct Options {};
  Constraint() = default;
  explicit Constraint(const Options& o) : options_(o) {}
  template <class B>
  using State = EmptyState<B>;
  [[nodiscard]] const Options& options() const { return options_; }
  template <class B>
  State<B> make_state(B&, const ParamInfo&) {
    return {};
  }
  template <class B, class O>
  [[nodiscard]] WorkspaceNeed plan(B&, const O&, const ParamInfo&) const {
    return {};
  }
  template <class B, class O>
  void direction(B&, State<B>&, O&, const MatrixParam<typename B::value_type>&, backend::MatrixView<typename B::value_type>,
                 Workspace<B>&) {}
  template <class B, class O>
  void retract(B&, State<B>&, O&, const MatrixParam<typename B::value_type>&, Workspace<B>&) {}
  Options options_{};
};
static_assert(muon::Constraint<Constraint, Backend, Orthogonalizer>, "muon::archetype::Constraint must satisfy muon::Constraint");

struct Fallback {
  struct Options {
    double lr = 0;
  };
  Fallback() = default;
  explicit Fallback(const Options& o) : options_(o) {}
  template <class B>
  using State = EmptyState<B>;
  [[nodiscard]] const Options& options() const { return options_; }
  template <class B>
  State<B> make_state(B&, const ParamInfo&) {
    return {};
  }
  template <class B>
  void apply(B&, State<B>&, backend::MatrixView<typename B::value_type>, backend::MatrixView<const typename B::value_type>) {}
  [[nodiscard]] double lr() const { return options_.lr; }
  void set_lr(double lr) { options_.lr = lr; }
  Options options_{};
};
static_assert(muon::Fallback<Fallback, Backend>, "muon::archetype::Fallback must satisfy muon::Fallback");

}  // namespace muon::archetype
