#pragma once
// QKClip: per-head QK-Clip for attention projections (Kimi K2's MuonClip), as a Constraint.
// The step direction is plain Muon's, orth(u); the clip runs in retract(), after
// W <- W (1 - lr wd) - lr_adj O, on tensors registered with role query / key and heads > 0
// (nn.Linear layout [heads * head_dim, d_model]: head h owns logical rows h*head_dim ..
// (h+1)*head_dim - 1; with rotary_rows = r the last r rows of each block are rotary, MLA's q^R).
// Every other tensor is left alone and gets an empty state.
//
//   logit mode (default): the trainer reports each head's largest attention logit S_h of the
//     step (set_max_logits, below) for both W_q and W_k of a layer; then
//       gamma_h = min(1, tau / S_h)
//       W_q non-rotary rows of h *= gamma_h^alpha,  W_q rotary rows of h *= gamma_h,
//       W_k rows of h           *= gamma_h^(1 - alpha)
//     so every q.k logit of head h scales by gamma_h (the rotary part pairs with MLA's shared
//     rotary key, which is not tagged and stays untouched). A report is used by one step and
//     then cleared: a step without a report clips nothing, and says so (the tensor's
//     State::stepped_without_logits(), ConstraintStats::tensors_without_logits), since a trainer
//     that forgot to report would otherwise never clip without noticing.
//   weight_norm mode (no logits available): every head's block of W_q / W_k (all its rows) is
//     rescaled by max_head_norm / ||block||_F when its Frobenius norm exceeds max_head_norm.
//
// Kimi Team, "Kimi K2: Open Agentic Intelligence" (arXiv:2507.20534), section 2.1 and
// Algorithm 1. Defaults: tau 100 (Kimi K2's threshold), alpha 0.5, max_head_norm 30.
//
// Cost per tagged tensor and step: one elementwise pass over W when a head is clipped (none
// otherwise), plus reading `heads` values back to the host (the reported logits, or the head
// norms) so the step can say which heads were clipped; the scaling itself is computed on the
// backend from backend memory. Weight mode on a column-major tensor gathers W into workspace
// once (head blocks are not contiguous there), so it plans one copy of W of extra workspace.
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "muon/backend/concept.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"
#include "muon/core/param.hpp"
#include "muon/core/report.hpp"
#include "muon/core/validate.hpp"
#include "muon/core/workspace.hpp"

namespace muon::policy {

enum class QKClipMode {
  logit,        // clip by the max logits the trainer reports (Kimi K2 MuonClip)
  weight_norm,  // cap each head's Frobenius norm (when no logits are available)
};

class QKClip {
 public:
  struct Options {
    QKClipMode mode = QKClipMode::logit;
    double tau = 100.0;           // logit threshold (Kimi K2's value), > 0
    double max_head_norm = 30.0;  // weight_norm mode: largest Frobenius norm of a head's block, > 0
    double alpha = 0.5;           // share of the logit scale given to W_q, in [0, 1]
  };

  // Per-tensor state. Empty (no buffers) for tensors the clip does not act on.
  template <class B>
  class State {
   public:
    using value_type = typename B::value_type;

    // Whether the clip acts on this tensor (role query / key with heads > 0).
    [[nodiscard]] bool applies() const { return applies_; }
    [[nodiscard]] index_t heads() const { return heads_; }
    // Whether max logits are waiting for the next step (logit mode).
    [[nodiscard]] bool reported() const { return reported_ != 0; }
    // Logit mode: whether the last step that updated this tensor found no max logits reported
    // for it (so it clipped nothing). Counted in ConstraintStats::tensors_without_logits.
    [[nodiscard]] bool stepped_without_logits() const { return without_logits_; }

    // Logit mode: the largest attention logit of each head for this step, one value per head,
    // finite and >= 0, copied to backend memory and used by the next step only. Report the
    // same values for the W_q and the W_k of a layer. Throws muon::Error naming the tensor
    // (and changes nothing) on a tensor the clip does not act on, in weight_norm mode, or on
    // a bad value.
    void set_max_logits(B& b, std::span<const value_type> s) {
      check_max_logits(s);
      b.copy_from_host(s, backend::MatrixView<value_type>{max_logits_.data(), 1, 1, heads_});
      reported_ = 1;
    }
    // The checks of set_max_logits alone (to validate a q / k pair before setting either).
    void check_max_logits(std::span<const value_type> s) const {
      if (!applies_)
        detail::fail_param(name_, "QKClip: max logits given for a tensor the clip does not act on (register it "
                                  "with role query or key and heads > 0)");
      if (mode_ != QKClipMode::logit)
        detail::fail_param(name_, "QKClip: max logits given in weight_norm mode (they are used in logit mode only)");
      if (static_cast<index_t>(s.size()) != heads_)
        detail::fail_param(name_, "QKClip: got " + std::to_string(s.size()) + " max logits for " +
                                      std::to_string(heads_) + " heads");
      for (std::size_t h = 0; h < s.size(); ++h) {
        const double v = static_cast<double>(s[h]);
        if (!std::isfinite(v) || v < 0)
          detail::fail_param(name_, "QKClip: max logit of head " + std::to_string(h) +
                                        " must be finite and >= 0, got " + detail::format_value(v));
      }
    }

    // What the last step that looked at this tensor found (host memory, sized at registration):
    // the heads it clipped, each head's value (max logit, or Frobenius norm before clipping) and
    // each head's scale (gamma_h in logit mode, max_head_norm / norm in weight mode; 1 for a
    // head left alone). Empty values and no clipped heads after a logit-mode step without a report.
    [[nodiscard]] std::span<const index_t> clipped_heads() const { return clipped_; }
    [[nodiscard]] std::span<const double> head_values() const {
      return {values_.data(), seen_ ? values_.size() : 0};
    }
    [[nodiscard]] std::span<const double> head_scales() const {
      return {scales_.data(), seen_ ? scales_.size() : 0};
    }

    template <class V>
    void visit(V&& v) {
      if (applies_ && mode_ == QKClipMode::logit) {
        v("max_logits", max_logits_);
        v("reported", reported_);
      }
    }

   private:
    friend class QKClip;
    using accum_type = typename B::accum_type;

    std::string name_;
    bool applies_ = false;
    QKClipMode mode_ = QKClipMode::logit;
    Role role_ = Role::none;
    index_t heads_ = 0;
    index_t head_dim_ = 0;
    index_t rotary_rows_ = 0;
    typename B::template Buffer<value_type> max_logits_{};  // logit mode: heads values
    std::uint64_t reported_ = 0;                            // 1 between set_max_logits and the step
    // Host side, sized at registration so that a step allocates nothing.
    std::vector<value_type> host_logits_;
    std::vector<accum_type> host_norms_;
    std::vector<double> values_;
    std::vector<double> scales_;
    std::vector<index_t> clipped_;  // capacity heads
    bool seen_ = false;             // the last step looked at this tensor's heads
    bool without_logits_ = false;   // the last step found no report (logit mode)
    double step_max_ = 0;           // largest value seen by the last step
  };

  QKClip() : QKClip(Options{}) {}
  explicit QKClip(const Options& options) : options_(options) {
    if (options_.mode != QKClipMode::logit && options_.mode != QKClipMode::weight_norm)
      detail::fail("QKClip: option 'mode' must be QKClipMode::logit or QKClipMode::weight_norm");
    detail::require_positive("QKClip", "tau", options_.tau);
    detail::require_positive("QKClip", "max_head_norm", options_.max_head_norm);
    detail::require_finite("QKClip", "alpha", options_.alpha);
    if (options_.alpha < 0 || options_.alpha > 1)
      detail::fail("QKClip: option 'alpha' must be in [0, 1], got " + detail::format_value(options_.alpha));
  }
  [[nodiscard]] const Options& options() const { return options_; }
  // What load() accepts: max logits >= 0 (as set_max_logits requires) and a 0 / 1 flag.
  [[nodiscard]] static detail::StateLimits limits(std::string_view key) {
    if (key == "reported") return {.max_counter = 1};
    return {.non_negative = key == "max_logits"};
  }

  // Whether the clip acts on a tensor registered with this info.
  [[nodiscard]] static bool acts_on(const ParamInfo& info) {
    return info.heads > 0 && (info.role == Role::query || info.role == Role::key);
  }

  template <class B>
  [[nodiscard]] State<B> make_state(B& b, const ParamInfo& info) {
    State<B> s;
    s.name_ = info.name;
    s.mode_ = options_.mode;
    if (!acts_on(info)) return s;
    if (info.role == Role::key && info.rotary_rows > 0)
      detail::fail_param(info.name, "QKClip: rotary_rows on a key projection is not supported (MLA's shared rotary "
                                    "key is left untagged; per-head rotary keys scale like the other key rows, so "
                                    "register the key, and its query, without rotary_rows)");
    const auto h = static_cast<std::size_t>(info.heads);
    s.applies_ = true;
    s.role_ = info.role;
    s.heads_ = info.heads;
    s.head_dim_ = info.head_dim();
    s.rotary_rows_ = info.rotary_rows;
    if (options_.mode == QKClipMode::logit) {
      s.max_logits_ = b.template allocate<typename B::value_type>(h);
      s.host_logits_.assign(h, typename B::value_type(0));
    } else {
      s.host_norms_.assign(h, typename B::accum_type(0));
    }
    s.values_.assign(h, 0.0);
    s.scales_.assign(h, 1.0);
    s.clipped_.reserve(h);
    return s;
  }

  template <class B, class O>
  [[nodiscard]] WorkspaceNeed plan(B& b, const O& orth, const ParamInfo& info) const {
    WorkspaceNeed need = orth.plan(b, info.shape.batch(), info.shape.rows(), info.shape.cols());
    if (!acts_on(info)) return need;
    need.add_matrix(1, 2, info.heads);  // per-head factors: non-rotary rows, rotary rows
    if (options_.mode == QKClipMode::weight_norm) {
      need.add_accums(info.heads);
      // The gather a column-major tensor needs (ParamInfo does not carry the layout).
      need.add_matrix(1, info.shape.rows(), info.shape.cols());
    }
    return need;
  }

  // direction() is orth(u): tensors of one shape may be orthogonalised as one batch.
  static constexpr bool direction_is_orthogonalizer = true;
  template <class B, class O>
  void direction(B& b, State<B>&, O& orth, const MatrixParam<typename B::value_type>&,
                 backend::MatrixView<typename B::value_type> u, Workspace<B>& ws) {
    orth.apply(b, u, ws);
  }

  template <class B, class O>
  void retract(B& b, State<B>& s, O&, const MatrixParam<typename B::value_type>& p, Workspace<B>& ws) {
    s.clipped_.clear();
    s.seen_ = false;
    s.without_logits_ = false;
    s.step_max_ = 0;
    if (!s.applies_) return;
    if (options_.mode == QKClipMode::logit)
      retract_logit(b, s, p, ws);
    else
      retract_weight_norm(b, s, p, ws);
  }

  // Adds this tensor's last step to the step result.
  template <class B>
  void report(const State<B>& s, ConstraintStats& stats) const {
    stats.tensors_without_logits += s.without_logits_ ? 1 : 0;
    if (!s.seen_) return;
    stats.clipped_heads += s.clipped_.size();
    stats.max_head_value = std::max(stats.max_head_value, s.step_max_);
  }

 public:
  // Elementwise functors are public: nvcc cannot instantiate a kernel on a private nested type.
  template <class T>
  static MUON_HOST_DEVICE T power(double g, double e) {
    if (g == 1.0 || e == 0.0) return T(1);
    if (e == 1.0) return static_cast<T>(g);
    if (e == 0.5) return static_cast<T>(std::sqrt(g));
    return static_cast<T>(std::pow(g, e));
  }

  // factors[h] (non-rotary rows) and factors[heads + h] (rotary rows) from the reported logits.
  template <class T>
  struct LogitFactors {
    const T* max_logits;
    index_t heads;
    double tau, exponent, rotary_exponent;
    MUON_HOST_DEVICE T operator()(index_t k, T) const {
      const bool rotary = k >= heads;
      const double s = static_cast<double>(max_logits[rotary ? k - heads : k]);
      const double gamma = s > tau ? tau / s : 1.0;
      return power<T>(gamma, rotary ? rotary_exponent : exponent);
    }
  };

  // factors[h] = factors[heads + h] = min(1, limit / norm_h).
  template <class T, class A>
  struct NormFactors {
    const A* norms;
    index_t heads;
    double limit;
    MUON_HOST_DEVICE T operator()(index_t k, T) const {
      const double n = static_cast<double>(norms[k >= heads ? k - heads : k]);
      return n > limit ? static_cast<T>(limit / n) : T(1);
    }
  };

  // Element k of the physical matrix times its logical row's factor. Row-major: logical row =
  // k / cols; transposed (column-major tensor): logical row = physical column = k % cols.
  template <class T>
  struct ScaleRows {
    const T* factors;
    index_t cols;  // physical
    bool transposed;
    index_t heads, head_dim, rotary_start;  // rows j >= rotary_start of a head are rotary
    MUON_HOST_DEVICE T operator()(index_t k, T w) const {
      const index_t row = transposed ? k % cols : k / cols;
      const index_t h = row / head_dim;
      return w * factors[row - h * head_dim >= rotary_start ? heads + h : h];
    }
  };

  // Gathers a column-major tensor's head blocks into a heads x (d_model * head_dim) row-major
  // workspace: out[h][i * head_dim + j] = logical W[h * head_dim + j][i] = physical w[i][h * head_dim + j].
  template <class T>
  struct GatherHeads {
    const T* w;
    index_t cols, head_dim, block;  // physical cols (heads * head_dim), block = d_model * head_dim
    MUON_HOST_DEVICE T operator()(index_t k, T) const {
      const index_t h = k / block, r = k - h * block;
      const index_t i = r / head_dim, j = r - i * head_dim;
      return w[i * cols + h * head_dim + j];
    }
  };

 private:
  template <class B>
  void scale_rows(B& b, State<B>& s, const MatrixParam<typename B::value_type>& p,
                  backend::MatrixView<typename B::value_type> factors) const {
    using T = typename B::value_type;
    b.transform_indexed(p.w, ScaleRows<T>{factors.data, p.w.cols, p.transposed, s.heads_, s.head_dim_,
                                          s.head_dim_ - s.rotary_rows_},
                        p.w);
  }

  template <class B>
  void retract_logit(B& b, State<B>& s, const MatrixParam<typename B::value_type>& p, Workspace<B>& ws) {
    using T = typename B::value_type;
    if (!s.reported_) {
      s.without_logits_ = true;
      return;
    }
    s.reported_ = 0;
    b.copy_to_host(backend::MatrixView<const T>{s.max_logits_.data(), 1, 1, s.heads_}, s.host_logits_);
    b.synchronize();
    s.seen_ = true;
    for (index_t h = 0; h < s.heads_; ++h) {
      const double v = static_cast<double>(s.host_logits_[static_cast<std::size_t>(h)]);
      const bool clip = v > options_.tau;
      s.values_[static_cast<std::size_t>(h)] = v;
      s.scales_[static_cast<std::size_t>(h)] = clip ? options_.tau / v : 1.0;
      s.step_max_ = std::max(s.step_max_, v);
      if (clip) s.clipped_.push_back(h);
    }
    if (s.clipped_.empty()) return;
    const bool query = s.role_ == Role::query;
    const double exponent = query ? options_.alpha : 1.0 - options_.alpha;
    auto factors = ws.take(1, 2, s.heads_);
    b.transform_indexed(factors,
                        LogitFactors<T>{s.max_logits_.data(), s.heads_, options_.tau, exponent, query ? 1.0 : exponent},
                        factors);
    scale_rows(b, s, p, factors);
  }

  template <class B>
  void retract_weight_norm(B& b, State<B>& s, const MatrixParam<typename B::value_type>& p, Workspace<B>& ws) {
    using T = typename B::value_type;
    using A = typename B::accum_type;
    auto factors = ws.take(1, 2, s.heads_);
    A* norms = ws.take_accums(s.heads_);
    const index_t block = p.w.size() / s.heads_;
    if (!p.transposed) {
      b.frobenius_norms(backend::MatrixView<const T>{p.w.data, s.heads_, s.head_dim_, p.w.cols}, norms);
    } else {
      auto gathered = ws.take(s.heads_, 1, block);
      b.transform_indexed(gathered, GatherHeads<T>{p.w.data, p.w.cols, s.head_dim_, block}, gathered);
      b.frobenius_norms(gathered, norms);
    }
    b.read(norms, std::span<A>(s.host_norms_));
    s.seen_ = true;
    for (index_t h = 0; h < s.heads_; ++h) {
      const double v = static_cast<double>(s.host_norms_[static_cast<std::size_t>(h)]);
      const bool clip = v > options_.max_head_norm;
      s.values_[static_cast<std::size_t>(h)] = v;
      s.scales_[static_cast<std::size_t>(h)] = clip ? options_.max_head_norm / v : 1.0;
      s.step_max_ = std::max(s.step_max_, v);
      if (clip) s.clipped_.push_back(h);
    }
    if (s.clipped_.empty()) return;
    b.transform_indexed(factors, NormFactors<T, A>{norms, s.heads_, options_.max_head_norm}, factors);
    scale_rows(b, s, p, factors);
  }

  Options options_;
};

}  // namespace muon::policy

namespace muon {

// Reports the largest attention logit of each head for the coming step to a QK-Clip optimizer
// (logit mode): call it for the W_q and the W_k of a layer with the same values, or use the
// pair overloads, which check both tensors before changing either. Throws muon::Error naming
// the tensor when it is unknown, takes the fallback path, is not tagged query / key with heads,
// or the values are bad (count != heads, negative, NaN / Inf), and, for a pair, when the query
// and the key are one tensor (the same name, or two names of one tied tensor).
template <class Opt>
  requires std::same_as<typename Opt::constraint_type, policy::QKClip>
void set_max_logits(Opt& opt, ParamId id, std::span<const typename Opt::value_type> s) {
  opt.constraint_state(id).set_max_logits(opt.backend(), s);
}
template <class Opt>
  requires std::same_as<typename Opt::constraint_type, policy::QKClip>
void set_max_logits(Opt& opt, const std::string& name, std::span<const typename Opt::value_type> s) {
  set_max_logits(opt, opt.id(name), s);
}
template <class Opt>
  requires std::same_as<typename Opt::constraint_type, policy::QKClip>
void set_max_logits(Opt& opt, ParamId query, ParamId key, std::span<const typename Opt::value_type> s) {
  if (query == key)
    detail::fail_param(opt.name(query), "QKClip: given as both the query and the key of a pair; they must be two "
                                        "tensors");
  auto& q = opt.constraint_state(query);
  auto& k = opt.constraint_state(key);
  q.check_max_logits(s);
  k.check_max_logits(s);
  q.set_max_logits(opt.backend(), s);
  k.set_max_logits(opt.backend(), s);
}
template <class Opt>
  requires std::same_as<typename Opt::constraint_type, policy::QKClip>
void set_max_logits(Opt& opt, const std::string& query, const std::string& key,
                    std::span<const typename Opt::value_type> s) {
  const ParamId q = opt.id(query), k = opt.id(key);
  if (q == k)  // named here as the caller wrote it (the id overload knows the first name only)
    detail::fail_param(query, (query == key ? std::string("QKClip: given as both the query and the key of a pair")
                                            : "QKClip: given as the query of a pair whose key '" + key +
                                                  "' is the same (tied) tensor") +
                                  "; they must be two tensors");
  set_max_logits(opt, q, k, s);
}

}  // namespace muon
