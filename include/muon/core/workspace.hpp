#pragma once
// Scratch memory shared by every parameter. Policies say at registration how much they need
// (plan); the optimizer allocates the largest need once, and during a step each policy carves
// views out of it with take(), from the start again for every parameter. That keeps workspace
// at a few copies of the largest matrix, whatever the number of parameters.
#include <algorithm>
#include <cstddef>

#include "muon/backend/concept.hpp"
#include "muon/core/error.hpp"
#include "muon/core/low_precision.hpp"

namespace muon {

// How many elements of value_type and accum_type a piece of work needs.
struct WorkspaceNeed {
  std::size_t values = 0;
  std::size_t accums = 0;

  // Space for a batch x rows x cols view (rounded up so that every view stays 64-byte aligned).
  static constexpr std::size_t rounded(std::size_t n) { return (n + 15) / 16 * 16; }
  constexpr WorkspaceNeed& add_matrix(index_t batch, index_t rows, index_t cols) {
    values += rounded(static_cast<std::size_t>(batch * rows * cols));
    return *this;
  }
  // Space for a batch x rows x cols view of bfloat16 (taken from the value_type storage).
  template <class T>
  constexpr WorkspaceNeed& add_bf16_matrix(index_t batch, index_t rows, index_t cols) {
    values += rounded(bf16_values<T>(batch * rows * cols));
    return *this;
  }
  template <class T>
  static constexpr std::size_t bf16_values(index_t n) {
    return (static_cast<std::size_t>(n) * sizeof(bfloat16) + sizeof(T) - 1) / sizeof(T);
  }
  constexpr WorkspaceNeed& add_accums(index_t n) {
    accums += rounded(static_cast<std::size_t>(n));
    return *this;
  }
  constexpr WorkspaceNeed& add(const WorkspaceNeed& other) {
    values += other.values;
    accums += other.accums;
    return *this;
  }
  constexpr void raise_to(const WorkspaceNeed& other) {
    values = std::max(values, other.values);
    accums = std::max(accums, other.accums);
  }
};

template <backend::Backend B>
class Workspace {
 public:
  using T = typename B::value_type;
  using A = typename B::accum_type;

  void allocate(B& b, const WorkspaceNeed& need) {
    if (need.values > values_.size()) values_ = b.template allocate<T>(need.values);
    if (need.accums > accums_.size()) accums_ = b.template allocate<A>(need.accums);
    reset();
  }
  void reset() { value_top_ = accum_top_ = 0; }

  [[nodiscard]] backend::MatrixView<T> take(index_t batch, index_t rows, index_t cols) {
    const std::size_t n = WorkspaceNeed::rounded(static_cast<std::size_t>(batch * rows * cols));
    if (value_top_ + n > values_.size()) overflow();
    backend::MatrixView<T> v{values_.data() + value_top_, batch, rows, cols};
    value_top_ += n;
    return v;
  }
  // A bfloat16 view carved from the value_type storage (planned with add_bf16_matrix<T>).
  [[nodiscard]] backend::MatrixView<bfloat16> take_bf16(index_t batch, index_t rows, index_t cols) {
    const std::size_t n = WorkspaceNeed::rounded(WorkspaceNeed::bf16_values<T>(batch * rows * cols));
    if (value_top_ + n > values_.size()) overflow();
    backend::MatrixView<bfloat16> v{reinterpret_cast<bfloat16*>(values_.data() + value_top_), batch, rows, cols};
    value_top_ += n;
    return v;
  }
  [[nodiscard]] A* take_accums(index_t n) {
    const std::size_t k = WorkspaceNeed::rounded(static_cast<std::size_t>(n));
    if (accum_top_ + k > accums_.size()) overflow();
    A* p = accums_.data() + accum_top_;
    accum_top_ += k;
    return p;
  }

  // A point to come back to: rewind(mark) gives back every view taken after mark(). A policy
  // that calls another stage several times within one call (the Stiefel constraint runs the
  // orthogonalizer once per dual iteration) rewinds after each, so its plan() counts that
  // stage's need once.
  struct Mark {
    std::size_t values = 0;
    std::size_t accums = 0;
  };
  [[nodiscard]] Mark mark() const { return {value_top_, accum_top_}; }
  void rewind(Mark m) {
    value_top_ = m.values;
    accum_top_ = m.accums;
  }

  [[nodiscard]] std::size_t bytes() const { return values_.size() * sizeof(T) + accums_.size() * sizeof(A); }

 private:
  // A policy used more than its plan() reported: a bug in that policy, caught before it writes
  // out of bounds (checked in every build; it is two comparisons per view).
  [[noreturn]] static void overflow() {
    detail::fail("workspace overflow: a policy took more workspace than its plan() reported");
  }

  typename B::template Buffer<T> values_{};
  typename B::template Buffer<A> accums_{};
  std::size_t value_top_ = 0;
  std::size_t accum_top_ = 0;
};

}  // namespace muon
