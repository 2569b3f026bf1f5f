#pragma once
// qk_clip: one call that QK-Clips an attention layer's W_q / W_k pair from each head's largest
// attention logit S_h of the step (Kimi K2's MuonClip, for trainers that run another optimizer):
//   gamma_h = min(1, tau / S_h)
//   W_q non-rotary rows of head h *= gamma_h^alpha,  W_q rotary rows of h *= gamma_h,
//   W_k rows of head h             *= gamma_h^(1 - alpha)
// so every q.k logit of head h scales by gamma_h. Same math as the QKClip constraint in logit
// mode (policy/constraint/qk_clip.hpp), which this call runs: nn.Linear layout
// [heads * head_dim, d_model], rotary_rows = the last rows of each W_q head block (MLA's q^R).
//
//   auto r = muon::qk_clip(w_q, w_k, max_logits, {.heads = 8});   // r.clipped_heads: {2, 5}
//
// w_q / w_k: anything muon::as_tensor takes (Eigen matrices of either layout, muon::raw). The
// returned clipped_heads lists the heads with S_h > tau; scales holds gamma_h per head.
// Errors (muon::Error, nothing changed): a tensor not rank 2, empty or null; rows not a
// multiple of heads; rotary_rows not below W_q's head dimension; w_q and w_k sharing memory;
// a logit count other than heads, or a NaN / Inf / negative logit; bad tau or alpha.
// Defaults: tau 100 (Kimi K2), alpha 0.5.
#include <cmath>
#include <cstddef>
#include <functional>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "muon/backend/concept.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/param.hpp"
#include "muon/core/tensor.hpp"
#include "muon/core/validate.hpp"
#include "muon/core/workspace.hpp"
#include "muon/policy/constraint/qk_clip.hpp"

#if __has_include(<Eigen/Core>)
#include "muon/backend/eigen.hpp"
#endif

namespace muon {

struct QKClipOptions {
  index_t heads = 0;        // attention heads of the pair, > 0 (required)
  double tau = 100.0;       // logit threshold, > 0
  double alpha = 0.5;       // share of the logit scale given to W_q, in [0, 1]
  index_t rotary_rows = 0;  // rotary rows at the end of each W_q head block, < W_q's head dimension
};

struct QKClipResult {
  std::vector<index_t> clipped_heads;  // heads with max logit > tau, ascending
  std::vector<double> scales;          // gamma_h = min(1, tau / S_h), one per head
};

namespace detail {

// QKClip::plan asks the orthogonalizer for its workspace; retract never calls it.
struct NoOrthogonalizer {
  template <class B>
  [[nodiscard]] WorkspaceNeed plan(B&, index_t, index_t, index_t) const {
    return {};
  }
};

// The physical view of one projection after the checks of its shape and data.
template <class T, class S>
backend::MatrixView<T> qk_clip_view(const TensorRef<S>& t, const char* what, index_t heads) {
  const std::string who = std::string("qk_clip: ") + what + " ";
  const Shape& s = t.shape;
  if (s.rank() != 2) detail::fail(who + "has shape " + s.to_string() + "; expected a matrix [heads * head_dim, d_model]");
  if (s[0] <= 0 || s[1] <= 0) detail::fail(who + "has shape " + s.to_string() + "; every dimension must be > 0");
  if (t.data == nullptr) detail::fail(who + "has null data");
  if (s.rows() % heads != 0)
    detail::fail(who + "has " + std::to_string(s.rows()) + " rows, not a multiple of heads = " + std::to_string(heads));
  const bool transposed = t.layout == Layout::col_major;
  return {t.data, 1, transposed ? s.cols() : s.rows(), transposed ? s.rows() : s.cols()};
}

}  // namespace detail

// QK-Clip on backend b (memory of w_q / w_k must be the backend's).
template <backend::Backend B, TensorLike Q, TensorLike K>
QKClipResult qk_clip(B& b, Q&& w_q, K&& w_k, std::span<const typename B::value_type> max_logits,
                     const QKClipOptions& options) {
  using T = typename B::value_type;
  static_assert(std::is_same_v<tensor_scalar_t<Q>, T> && std::is_same_v<tensor_scalar_t<K>, T>,
                "muon::qk_clip: w_q and w_k must have the backend's value_type");
  const auto tq = as_tensor(w_q);
  const auto tk = as_tensor(w_k);
  static_assert(!std::is_const_v<std::remove_pointer_t<decltype(tq.data)>> &&
                    !std::is_const_v<std::remove_pointer_t<decltype(tk.data)>>,
                "muon::qk_clip: w_q and w_k must be writable (not const)");

  // Every check before anything is written.
  const index_t heads = options.heads;
  if (heads <= 0) detail::fail("qk_clip: option 'heads' must be > 0, got " + std::to_string(heads));
  const auto vq = detail::qk_clip_view<T>(tq, "w_q", heads);
  const auto vk = detail::qk_clip_view<T>(tk, "w_k", heads);
  const index_t head_dim = tq.shape.rows() / heads;
  if (options.rotary_rows < 0 || options.rotary_rows >= head_dim)
    detail::fail("qk_clip: option 'rotary_rows' must be in [0, " + std::to_string(head_dim) + ") (W_q's head dimension), got " +
                 std::to_string(options.rotary_rows));
  const std::less<const T*> less;
  if (less(vq.data, vk.data + vk.size()) && less(vk.data, vq.data + vq.size()))
    detail::fail("qk_clip: w_q and w_k share memory; they must be two separate tensors");
  if (static_cast<index_t>(max_logits.size()) != heads)
    detail::fail("qk_clip: got " + std::to_string(max_logits.size()) + " max logits for " + std::to_string(heads) +
                 " heads");
  for (std::size_t h = 0; h < max_logits.size(); ++h) {
    const double v = static_cast<double>(max_logits[h]);
    if (!std::isfinite(v) || v < 0)
      detail::fail("qk_clip: max logit of head " + std::to_string(h) + " must be finite and >= 0, got " +
                   detail::format_value(v));
  }
  policy::QKClip clip({.mode = policy::QKClipMode::logit, .tau = options.tau, .alpha = options.alpha});

  const ParamInfo qi{.name = "w_q", .shape = tq.shape, .role = Role::query, .heads = heads,
                     .rotary_rows = options.rotary_rows};
  const ParamInfo ki{.name = "w_k", .shape = tk.shape, .role = Role::key, .heads = heads};
  auto sq = clip.template make_state<B>(b, qi);
  auto sk = clip.template make_state<B>(b, ki);
  detail::NoOrthogonalizer none;
  WorkspaceNeed need = clip.plan(b, none, qi);
  need.raise_to(clip.plan(b, none, ki));
  Workspace<B> ws;
  ws.allocate(b, need);
  sq.set_max_logits(b, max_logits);
  sk.set_max_logits(b, max_logits);

  clip.retract(b, sq, none, MatrixParam<T>{vq, tq.layout == Layout::col_major, &qi, 0.0}, ws);
  ws.reset();
  clip.retract(b, sk, none, MatrixParam<T>{vk, tk.layout == Layout::col_major, &ki, 0.0}, ws);
  b.synchronize();

  QKClipResult result;
  result.clipped_heads.assign(sq.clipped_heads().begin(), sq.clipped_heads().end());
  result.scales.assign(sq.head_scales().begin(), sq.head_scales().end());
  return result;
}

#if __has_include(<Eigen/Core>)

// QK-Clip on the Eigen backend (float or double tensors; max_logits of the same type).
template <TensorLike Q, TensorLike K>
QKClipResult qk_clip(Q&& w_q, K&& w_k, std::span<const tensor_scalar_t<Q>> max_logits, const QKClipOptions& options) {
  backend::Eigen<tensor_scalar_t<Q>> b;
  return qk_clip(b, std::forward<Q>(w_q), std::forward<K>(w_k), max_logits, options);
}

#endif

}  // namespace muon
