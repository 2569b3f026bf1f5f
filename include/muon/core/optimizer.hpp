#pragma once
// The composition: muon::Optimizer<Backend, Filter, Router, Orthogonalizer, Constraint, Fallback>.
//
// step(), for every registered tensor:
//   0. gradient check      count NaN/Inf per gradient (one host read of the flags per step)
//   1. GradientFilter      g <- filter(g)
//   2. Router              path chosen once, at registration (routing_report())
//   matrix path:
//   3. momentum            m <- lerp(m, g, 1 - beta);  u <- nesterov ? lerp(g, m, beta) : m
//   4-5. Constraint        O <- direction(u)  (NoConstraint: the Orthogonalizer's orth(u))
//   6. apply               W <- W (1 - lr wd) - lr_adj O;  then Constraint::retract(W)
//   fallback path:
//   3'. Fallback           W <- fallback(W, g)  (its own lr and weight decay)
// This is torch.optim.Muon's step (momentum as an EMA, Nesterov as a lerp, decoupled weight
// decay with the plain lr, lr_adj from the shape) with the other stages around it.
//
// Memory: one momentum buffer per matrix tensor, the fallback's state per other tensor, and one
// workspace shared by all tensors, sized at the first step to the largest single need. After
// the first step, step() allocates nothing.
#include <algorithm>
#include <array>
#include <istream>
#include <limits>
#include <ostream>
#include <cmath>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "muon/backend/concept.hpp"
#include "muon/core/checkpoint.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/error.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/low_precision.hpp"
#include "muon/core/lr_adjust.hpp"
#include "muon/core/master_weights.hpp"
#include "muon/core/normuon.hpp"
#include "muon/core/param.hpp"
#include "muon/core/registration.hpp"
#include "muon/core/report.hpp"
#include "muon/core/schedule.hpp"
#include "muon/core/state_format.hpp"
#include "muon/core/telemetry.hpp"
#include "muon/core/thread_pool.hpp"
#include "muon/core/tensor.hpp"
#include "muon/core/validate.hpp"
#include "muon/core/workspace.hpp"

namespace muon {

// What step() does with a gradient that holds NaN or Inf.
enum class NonFinitePolicy {
  skip_parameter,  // leave that tensor and its state as they are; list it in StepResult::skipped
  skip_step,       // leave every tensor as it is (mixed-precision loss-scale overflow style)
  throw_error,     // throw muon::Error naming the tensor, before anything changes
};

// Modular learning-rate scaling of the matrix path (the manifold guide's
// lr_eff = lr * (layer / depth) * sqrt(fan_out / fan_in)), each factor switchable. fan_out and
// fan_in are the logical rows and columns (nn.Linear's [out, in]); layer and depth come from
// ParamOptions at registration. The shape factor replaces lr_adjust (set it to none).
struct ModularScaling {
  bool depth = false;  // x layer / depth (needs layer and depth at registration)
  bool shape = false;  // x sqrt(fan_out / fan_in)
};

[[nodiscard]] inline double modular_factor(const ModularScaling& m, index_t layer, index_t depth, index_t rows,
                                           index_t cols) {
  double f = 1.0;
  if (m.depth) f *= static_cast<double>(layer) / static_cast<double>(depth);
  if (m.shape) f *= std::sqrt(static_cast<double>(rows) / static_cast<double>(cols));
  return f;
}

namespace detail {

// W <- W (1 - lr wd) - lr_adj O, as torch's param.mul_(1 - lr wd).add_(O, alpha=-lr_adj),
// saturated (fn::saturate) so that a finite W near the float maximum stays finite.
template <class T>
struct ApplyUpdate {
  T decay, step;
  T max = fn::k_largest<T>;
  MUON_HOST_DEVICE T operator()(T w, T o) const { return fn::saturate(w * decay - step * o, max); }
};

// Sums the bytes of every buffer a policy state holds.
// Muon's momentum kept in bf16 (Options::momentum_state): m <- lerp(m, g, 1 - beta) in T, stored
// rounded; the returned u uses the stored value, as a torch run with a bf16 buffer would.
// Stochastic rounding is a template argument, so that the nearest-even loop carries no hashing.
template <class T, bool Stochastic>
struct MomentumBf16 {
  std::uint16_t* m;
  T one_minus_beta, beta;
  bool nesterov;
  std::uint64_t stream;
  MUON_HOST_DEVICE T operator()(index_t k, T g) const {
    const T next = fn::Lerp<T>{one_minus_beta}(static_cast<T>(bf16_to_float(m[k])), g);
    const std::uint16_t bits = encode_state_bf16(next, Stochastic, stream, static_cast<std::uint64_t>(k));
    m[k] = bits;
    const T stored = static_cast<T>(bf16_to_float(bits));
    const T ahead = fn::Lerp<T>{beta}(g, stored);  // computed either way: no arithmetic under a condition
    return fn::pick(nesterov, ahead, stored);
  }
};

struct StateBytes {
  std::size_t bytes = 0;
  template <class Buffer>
  void operator()(std::string_view, Buffer& b) {
    if constexpr (requires { b.size(); *b.data(); }) bytes += b.size() * sizeof(*b.data());
  }
};

}  // namespace detail

namespace detail {
template <class Opt>
struct OptimizerCheckpoint;  // save / load (core/optimizer_checkpoint.hpp)
}  // namespace detail

template <class B, class Filter, class RouterT, class Orth, class Constr, class Fb>
class Optimizer {
  static_assert(backend::Backend<B>,
                "muon::Optimizer: the 1st template argument must satisfy muon::backend::Backend");
  static_assert(GradientFilter<Filter, B>,
                "muon::Optimizer: the 2nd template argument must satisfy muon::GradientFilter");
  static_assert(Router<RouterT>, "muon::Optimizer: the 3rd template argument must satisfy muon::Router");
  static_assert(Orthogonalizer<Orth, B>,
                "muon::Optimizer: the 4th template argument must satisfy muon::Orthogonalizer");
  static_assert(Constraint<Constr, B, Orth>,
                "muon::Optimizer: the 5th template argument must satisfy muon::Constraint");
  static_assert(Fallback<Fb, B>, "muon::Optimizer: the 6th template argument must satisfy muon::Fallback");

 public:
  using backend_type = B;
  using value_type = typename B::value_type;
  using filter_type = Filter;
  using router_type = RouterT;
  using orthogonalizer_type = Orth;
  using constraint_type = Constr;
  using fallback_type = Fb;

  struct Options {
    // Matrix path (defaults: Keller Jordan's Muon; torch.optim.Muon defaults to lr 1e-3, wd 0.1).
    double lr = 0.02;
    double momentum = 0.95;
    bool nesterov = true;
    double weight_decay = 0.0;
    LrAdjust lr_adjust = detail::default_lr_adjust<Constr>();  // original; none for Stiefel / Hypersphere
    // NorMuon: after orthogonalisation, divide each (logical) row by the root of an EMA of its
    // mean squared entry, then rescale the update to its Frobenius norm before that step. Rows
    // end up with comparable update sizes (a stable variant for small models).
    bool normuon = false;
    double normuon_beta2 = 0.95;
    double normuon_eps = 1e-8;
    // How the momentum buffers are stored (core/state_format.hpp): full (value_type, the
    // default) or bf16 (half the bytes of float state), rounded to nearest even or
    // stochastically. Fixed at registration.
    StateStorage momentum_state{};
    NonFinitePolicy non_finite = NonFinitePolicy::skip_parameter;
    // Ablation switches: one composition, stages turned off at run time (sweeps without
    // recompiling). enable_muon is read at registration (a tensor's path and state are fixed
    // then); the other two can be changed between steps with set_enable_*.
    bool enable_filter = true;      // false: gradients pass unfiltered (filter state untouched)
    bool enable_muon = true;        // false: every tensor takes the fallback path
    bool enable_constraint = true;  // false: direction = orth(u), no retraction
    // Mixed precision: plan room to unscale value_type gradients, so that step({.inv_scale})
    // can be used (16-bit gradients always have it). Costs one tensor's worth of workspace.
    bool loss_scaling = false;
    // Opt-in per-step numbers (StepResult::telemetry): costs a few reductions per tensor, one
    // n x n GEMM per matrix (the orthogonality error) and host reads of those scalars.
    bool telemetry = false;
    // Threads for the step: products are split across them and independent tensors run side by
    // side, on one pool shared by every optimizer of the process (core/thread_pool.hpp).
    // 0 = every core this process may run on. Results are deterministic for a given count.
    int threads = 0;
    // Learning-rate schedule: a multiplier of both base rates (lr and the fallback's) per step.
    Schedule schedule{};
    // Modular lr scaling of the matrix path (off by default; see ModularScaling).
    ModularScaling modular{};
    // Policies.
    typename Filter::Options filter{};
    typename RouterT::Options router{};
    typename Orth::Options orthogonalizer{};
    typename Constr::Options constraint{};
    typename Fb::Options fallback{};  // the fallback group's own lr and weight decay
  };

  explicit Optimizer(Options options = {}, B backend = B{})
      : options_(validated(std::move(options))),
        backend_(std::move(backend)),
        filter_(options_.filter),
        router_(options_.router),
        orth_(options_.orthogonalizer),
        constraint_(options_.constraint),
        fallback_(options_.fallback),
        fallback_base_lr_(fallback_.lr()),
        pool_(shared_thread_pool(options_.threads)) {
    if constexpr (backend::Threaded<B>) backend_.set_pool(pool_.get());
  }

  // Registers a tensor and its gradient (both stay owned by the caller; the optimizer reads the
  // gradient and writes the parameter at every step). Returns the tensor's id. Registering the
  // same tensor again under another name (a tied embedding / output head) records an alias and
  // returns the first id: the tensor is updated once per step.
  template <TensorLike P, TensorLike G>
  ParamId add(std::string name, P&& param, G&& grad, ParamOptions options = {}) {
    auto [p, g] = detail::registration_refs<value_type>(name, std::forward<P>(param), std::forward<G>(grad));
    return add_ref(std::move(name), p, g, options);
  }
  // The same, for tensors already type-erased to their storage format (AnyOptimizer uses it).
  ParamId add_binding(std::string name, detail::ParamBinding param, detail::GradBinding grad, ParamOptions options = {}) {
    return add_ref(std::move(name), param, grad, options);
  }

  StepResult step(StepOptions step_options = {}) {
    // Everything that may throw comes first: nothing has changed yet.
    check_step_options(step_options);
    // The last result's skipped list views skipped_: only a step may move it (add() must not).
    if (skipped_.capacity() < entries_.size()) skipped_.reserve(entries_.size());
    const double multiplier = options_.schedule(steps_taken_ + 1);
    if (options_.lr * multiplier > detail::k_max_option_value || fallback_base_lr_ * multiplier > detail::k_max_option_value)
      detail::fail("Optimizer::step: the schedule's multiplier " + detail::format_value(multiplier) +
                   " at step " + std::to_string(steps_taken_ + 1) + " takes a learning rate beyond the float range");
    ensure_workspace();
    check_gradients(step_options.inv_scale);  // throws under NonFinitePolicy::throw_error
    inv_scale_ = step_options.inv_scale;
    lr_now_ = options_.lr * multiplier;
    const double fallback_lr = fallback_base_lr_ * multiplier;
    if (fallback_.lr() != fallback_lr) fallback_.set_lr(fallback_lr);

    // A loss-scaled step with a non-finite gradient overflowed: every gradient is suspect.
    const bool overflow = inv_scale_.has_value() && !skipped_.empty();
    const bool skip_all = (options_.non_finite == NonFinitePolicy::skip_step || overflow) && !skipped_.empty();
    if (skip_all) {
      skipped_.clear();
      for (ParamId i = 0; i < entries_.size(); ++i) skipped_.push_back(i);
    }
    ConstraintStats stats{};
    if (options_.telemetry) telemetry_.begin(lr_now_, fallback_lr);
    if (!skip_all) step_all(stats);
    ++steps_taken_;
    const Telemetry* telemetry = nullptr;
    if (options_.telemetry) {
      for (ParamId i : skipped_) telemetry_.add_skipped(entries_[i].info.name);
      telemetry = telemetry_.finish(steps_taken_, stats);
    }
    return {steps_taken_, std::span<const ParamId>(skipped_), overflow, stats, lr_now_, fallback_lr, telemetry};
  }

  // ---- Reports ---------------------------------------------------------------------------------
  [[nodiscard]] RoutingReport routing_report() const {
    RoutingReport r;
    r.entries.reserve(entries_.size());
    for (const auto& e : entries_)
      r.entries.push_back({e.info.name, e.aliases, e.info.shape, e.info.role, e.path, e.rule,
                           e.path == Path::matrix ? matrix_slots_[e.slot].lr_factor : 1.0, e.options.lr_scale,
                           e.options.weight_decay, e.state_format});
    return r;
  }

  [[nodiscard]] MemoryReport memory_report() {
    MemoryReport m;
    for (auto& s : matrix_slots_) {
      m.matrix_state_bytes += (s.momentum.size() + s.row_second_moment.size()) * sizeof(value_type) + bytes_of(s.constraint);
      m.filter_state_bytes += bytes_of(s.filter);
      m.master_weight_bytes += s.master.size() * sizeof(value_type);
    }
    for (auto& s : fallback_slots_) {
      m.fallback_state_bytes += bytes_of(s.fallback);
      m.filter_state_bytes += bytes_of(s.filter);
      m.master_weight_bytes += s.master.size() * sizeof(value_type);
    }
    const std::size_t lane_bytes =
        std::max(workspace_.bytes(), need_.values * sizeof(value_type) + need_.accums * sizeof(typename B::accum_type));
    m.workspace_copies = static_cast<std::size_t>(planned_lanes());
    m.workspace_bytes = lane_bytes * m.workspace_copies;
    m.backend_scratch_bytes = backend_.scratch_bytes();
    return m;
  }

  // ---- Hyperparameters -----------------------------------------------------------------------
  [[nodiscard]] const Options& options() const { return options_; }
  [[nodiscard]] double lr() const { return options_.lr; }
  void set_lr(double lr) {
    detail::require_non_negative("Optimizer", "lr", lr);
    options_.lr = lr;
  }
  void set_enable_filter(bool on) { options_.enable_filter = on; }
  // Switching the constraint off can grow the workspace (a constraint that does not use the
  // orthogonalizer plans none of its workspace): the next step allocates it, once.
  void set_enable_constraint(bool on) {
    options_.enable_constraint = on;
    schedule_dirty_ = true;  // buckets depend on whether the direction is plain orth(u)
    if (!on) need_.raise_to(unconstrained_need_);
  }
  // The fallback group's base lr (the schedule multiplies it at each step).
  [[nodiscard]] double fallback_lr() const { return fallback_base_lr_; }
  void set_fallback_lr(double lr) {
    fallback_.set_lr(lr);  // validates
    fallback_base_lr_ = lr;
  }
  // Replaces the schedule (its position is the step count: steps_taken() + 1 next).
  void set_schedule(Schedule schedule) { options_.schedule = std::move(schedule); }

  // ---- Introspection ---------------------------------------------------------------------------
  [[nodiscard]] std::size_t size() const { return entries_.size(); }
  [[nodiscard]] const std::string& name(ParamId id) const { return entry(id).info.name; }
  [[nodiscard]] Path path(ParamId id) const { return entry(id).path; }
  [[nodiscard]] ParamId id(const std::string& name) const {
    for (ParamId i = 0; i < entries_.size(); ++i) {
      if (entries_[i].info.name == name) return i;
      for (const auto& a : entries_[i].aliases)
        if (a == name) return i;
    }
    detail::fail("no parameter named '" + name + "'");
  }
  [[nodiscard]] std::uint64_t steps_taken() const { return steps_taken_; }
  // The threads a step runs on (Options::threads, 0 resolved to the available cores).
  [[nodiscard]] int threads() const { return pool_->size(); }

  // The constraint's state of a matrix-path tensor, for constraints that take input from the
  // trainer (QK-Clip's max logits) or report detail (which heads were clipped).
  [[nodiscard]] typename Constr::template State<B>& constraint_state(ParamId id) {
    return matrix_slots_[matrix_slot_of(id)].constraint;
  }
  [[nodiscard]] const typename Constr::template State<B>& constraint_state(ParamId id) const {
    return matrix_slots_[matrix_slot_of(id)].constraint;
  }

  // A tensor's parameter group (ParamOptions::lr_scale / weight_decay), changed between steps.
  // Checked as at registration; the tensor's state is kept.
  void set_param_group(ParamId id, double lr_scale, std::optional<double> weight_decay = std::nullopt) {
    Entry& e = entries_[entry_index(id)];
    ParamOptions changed = e.options;
    changed.lr_scale = lr_scale;
    changed.weight_decay = weight_decay;
    detail::check_group(e.info.name, changed);
    if constexpr (!FallbackWithRates<Fb, B>)
      if (e.path == Path::fallback && (lr_scale != 1.0 || weight_decay))
        detail::fail_param(e.info.name, "takes the fallback path, whose policy has no per-tensor lr / weight decay");
    e.options = changed;
  }
  [[nodiscard]] B& backend() { return backend_; }

 private:
  std::size_t entry_index(ParamId id) const {
    if (id >= entries_.size())
      detail::fail("no parameter with id " + std::to_string(id) + " (" + std::to_string(entries_.size()) + " registered)");
    return id;
  }
  const detail::RegisteredTensor& entry(ParamId id) const { return entries_[entry_index(id)]; }
  std::size_t matrix_slot_of(ParamId id) const {
    const Entry& e = entry(id);
    if (e.path != Path::matrix) detail::fail_param(e.info.name, "takes the fallback path and has no constraint state");
    return e.slot;
  }

 public:

  // Every state buffer and counter, copied to the host, keyed "<parameter>/<state>". For tests,
  // debugging and comparing runs; not for the training loop (it copies).
  [[nodiscard]] std::map<std::string, std::vector<double>> state_snapshot() {
    std::map<std::string, std::vector<double>> out;
    for_each_state([&](ParamId id, const std::string& key, auto& item) {
      std::vector<double>& dst = out[entries_[id].info.name + "/" + key];
      if constexpr (std::is_integral_v<std::remove_cvref_t<decltype(item)>>) {
        dst = {static_cast<double>(item)};
      } else if constexpr (detail::is_state_buffer_v<std::remove_cvref_t<decltype(item)>>) {
        const auto host = download(item);  // the values, decoded when kept in bf16 or q8
        if (item.format() == StateFormat::bf16) {
          const auto* bits = reinterpret_cast<const std::uint16_t*>(host.data());
          dst.resize(item.count());
          for (std::size_t i = 0; i < item.count(); ++i) dst[i] = detail::bf16_to_float(bits[i]);
        } else if (item.format() == StateFormat::q8) {
          std::vector<T> values(item.count());
          detail::q8_decode_host(reinterpret_cast<const std::uint8_t*>(host.data()), host.data() + (item.scales() - item.data()),
                                 item.count(), item.block(), item.non_negative(), values.data());
          dst.assign(values.begin(), values.end());
        } else {
          dst.assign(host.begin(), host.end());
        }
      } else {
        const auto host = download(item);
        dst.assign(host.begin(), host.end());
      }
    });
    return out;
  }

  // ---- Checkpoints (format: core/checkpoint.hpp) -----------------------------------------------
  struct SaveOptions {
    bool parameters = false;  // also store the parameter values (a self-contained resume point)
  };

  // Writes every tensor's state (and, if asked, its values), the step count, the learning rates
  // and the other hyperparameters, keyed by parameter name, with a checksum.
  void save(std::ostream& os, SaveOptions save_options = {}) {
    detail::OptimizerCheckpoint<Optimizer>::save(*this, os, save_options.parameters);
  }

  // Restores what save() wrote, all or nothing: the file is read and checked completely (format,
  // checksum, every registered tensor present with the same shape, path and state layout, no
  // unknown tensors) before anything changes; on any mismatch it throws muon::Error and the
  // optimizer (and the parameters) stay exactly as they were. Restores the step count and both
  // learning rates (a schedule's current values); other hyperparameters stay as constructed.
  // A state item stored in another format than this optimizer keeps it in (Options::
  // momentum_state, a fallback's state format) is refused unless options.convert_state_formats
  // is set; the report lists what was converted.
  LoadReport load(std::istream& is, const LoadOptions& options = {}) {
    return detail::OptimizerCheckpoint<Optimizer>::load(*this, is, true, options);
  }

  // Every check load() makes, without loading: throws muon::Error where load() would, changes
  // nothing. (Model-level optimizers check every group's checkpoint before loading any.)
  LoadReport validate_checkpoint(std::istream& is, const LoadOptions& options = {}) {
    return detail::OptimizerCheckpoint<Optimizer>::load(*this, is, false, options);
  }

  // More bytes than any checkpoint of this optimizer can hold: load() reads no further (a
  // stream that does not end is refused, not read until memory runs out).
  std::size_t checkpoint_size_bound() { return detail::OptimizerCheckpoint<Optimizer>::size_bound(*this); }

  // The names of the tensors whose gradient now holds NaN or Inf (one pass over the gradients
  // and one host read; nothing changes). Model-level optimizers use it to decide for all their
  // groups at once.
  [[nodiscard]] std::vector<std::string> non_finite_gradients(std::optional<double> inv_scale = std::nullopt) {
    ensure_workspace();
    check_step_options({inv_scale});
    check_gradients_counts(inv_scale);
    std::vector<std::string> names;
    for (ParamId i = 0; i < entries_.size(); ++i)
      if (flags_host_[i] != 0) names.push_back(entries_[i].info.name);
    return names;
  }

  // Counts a step without touching any tensor or state (every tensor is listed as skipped), so
  // the step count and the schedule stay in line with optimizers that skipped the same step.
  StepResult skip() {
    skipped_.clear();
    skipped_.reserve(entries_.size());
    for (ParamId i = 0; i < entries_.size(); ++i) skipped_.push_back(i);
    ++steps_taken_;
    return {steps_taken_, std::span<const ParamId>(skipped_), false, {}, 0.0, 0.0, nullptr};
  }

 private:
  friend struct detail::OptimizerCheckpoint<Optimizer>;
  using T = value_type;
  using Buffer = typename B::template Buffer<T>;

  using Entry = detail::RegisteredTensor;

  struct MatrixSlot {
    ParamId id;
    backend::MatrixView<T> w;        // physical, row-major (the master copy when there is one)
    backend::MatrixView<const T> g;  // same layout as w (data null when the gradient is 16-bit)
    bool transposed;                 // w holds the logical matrix transposed
    double lr_factor;                // adjusted_lr(1, ...) for the logical shape
    StateBuffer<B> momentum;  // in options_.momentum_state.format
    typename Filter::template State<B> filter;
    typename Constr::template State<B> constraint;
    Buffer row_second_moment;  // NorMuon: batch x logical rows (empty when off)
    detail::GradSource grad;
    detail::ParamTarget target;  // the registered tensor, when w is a master copy
    Buffer master;               // empty without master weights
  };

  struct FallbackSlot {
    ParamId id;
    backend::MatrixView<T> w;  // flat (the master copy when there is one)
    backend::MatrixView<const T> g;
    typename Filter::template State<B> filter;
    typename Fb::template State<B> fallback;
    detail::GradSource grad;
    detail::ParamTarget target;
    Buffer master;
  };

  // Calls f(key, item) for every buffer (item.data(), item.size()) and counter (an integer) of
  // one tensor's state, in a fixed order; keys are "momentum", "filter/<k>", "constraint/<k>",
  // "fallback/<k>".
  template <class F>
  void for_each_state_of(ParamId id, F&& f) {
    const Entry& e = entries_[id];
    auto with_prefix = [&f](std::string prefix) {
      return [&f, prefix = std::move(prefix)](std::string_view key, auto& item) { f(prefix + std::string(key), item); };
    };
    if (e.path == Path::matrix) {
      MatrixSlot& s = matrix_slots_[e.slot];
      if (s.master.size() > 0) f(std::string("master"), s.master);
      f(std::string("momentum"), s.momentum);
      if (options_.normuon) f(std::string("normuon/row_second_moment"), s.row_second_moment);
      s.filter.visit(with_prefix("filter/"));
      s.constraint.visit(with_prefix("constraint/"));
    } else {
      FallbackSlot& s = fallback_slots_[e.slot];
      if (s.master.size() > 0) f(std::string("master"), s.master);
      s.filter.visit(with_prefix("filter/"));
      s.fallback.visit(with_prefix("fallback/"));
    }
  }
  template <class F>
  void for_each_state(F&& f) {
    for (ParamId id = 0; id < entries_.size(); ++id)
      for_each_state_of(id, [&](const std::string& key, auto& item) { f(id, key, item); });
  }

  // Host copies of backend buffers (checkpoints and snapshots; never in the step path).
  template <class Buf>
  auto download(Buf& buf) {
    using U = std::remove_cvref_t<decltype(*buf.data())>;
    std::vector<U> host(buf.size());
    if constexpr (std::is_same_v<U, T>) {
      backend_.copy_to_host(backend::MatrixView<const T>{buf.data(), 1, 1, static_cast<index_t>(buf.size())}, host);
    } else {
      static_assert(std::is_same_v<U, typename B::accum_type>, "muon: state buffers hold value_type or accum_type");
      backend_.read(buf.data(), host);
    }
    backend_.synchronize();
    return host;
  }
  template <class Buf, class U>
  void upload(Buf& buf, const std::vector<U>& host) {
    static_assert(std::is_same_v<U, T>, "muon: only value_type state buffers can be restored");
    backend_.copy_from_host(host, backend::MatrixView<T>{buf.data(), 1, 1, static_cast<index_t>(buf.size())});
  }
  [[nodiscard]] backend::MatrixView<T> param_view(ParamId id) {
    const Entry& e = entries_[id];
    return e.path == Path::matrix ? matrix_slots_[e.slot].w.flat() : fallback_slots_[e.slot].w;
  }
  std::vector<T> download_param(ParamId id) {
    const auto v = param_view(id);
    std::vector<T> host(static_cast<std::size_t>(v.size()));
    backend_.copy_to_host(v, host);
    backend_.synchronize();
    return host;
  }
  void upload_param(ParamId id, const std::vector<T>& host) { backend_.copy_from_host(host, param_view(id)); }

  static Options validated(Options o) {
    detail::require_non_negative("Optimizer", "lr", o.lr);
    detail::require_unit_interval("Optimizer", "momentum", o.momentum);
    detail::require_non_negative("Optimizer", "weight_decay", o.weight_decay);
    detail::require_unit_interval("Optimizer", "normuon_beta2", o.normuon_beta2);
    detail::require_positive("Optimizer", "normuon_eps", o.normuon_eps);
    detail::require_state_storage("Optimizer", "momentum_state", o.momentum_state, false);
    if (o.threads < 0 || o.threads > ThreadPool::k_max_threads)
      detail::fail("Optimizer: option 'threads' must be in [0, " + std::to_string(ThreadPool::k_max_threads) +
                   "] (0 = every available core), got " + std::to_string(o.threads));
    if (o.modular.shape && o.lr_adjust != LrAdjust::none)
      detail::fail("Optimizer: options 'modular.shape' and 'lr_adjust' both scale the lr by the shape; set "
                   "lr_adjust = LrAdjust::none to use the modular shape factor");
    return o;
  }

  template <class S>
  static std::size_t bytes_of(S& state) {
    detail::StateBytes counter;
    state.visit(counter);
    return counter.bytes;
  }

  ParamId add_ref(std::string name, const detail::ParamBinding& p, const detail::GradBinding& g,
                  const ParamOptions& options) {
    // ---- every check first: a rejected registration changes nothing ----
    detail::Candidate c = detail::check_candidate(entries_, name, p, g, options, sizeof(T));
    const index_t n = c.numel;
    ParamInfo& info = c.info;
    Route route = router_.route(info);
    if (!options_.enable_muon && route.path == Path::matrix)
      route = {Path::fallback, "enable_muon off (router: " + route.rule + ")"};
    if (route.path == Path::matrix && (p.shape.rank() < 2 || p.shape.rank() > 3))
      detail::fail_param(name, "the matrix path needs a rank-2 or rank-3 tensor, got shape " + p.shape.to_string());
    if (route.path == Path::matrix && options_.modular.depth && options.depth == 0)
      detail::fail_param(name, "modular depth scaling is on: register this matrix with layer and depth "
                               "(ParamOptions{.layer = l, .depth = L}, 1 <= l <= L)");
    if constexpr (!FallbackWithRates<Fb, B>)
      if (route.path == Path::fallback && (options.lr_scale != 1.0 || options.weight_decay))
        detail::fail_param(name, "takes the fallback path, whose policy has no per-tensor lr / weight decay "
                                 "(apply with FallbackRates): lr_scale and weight_decay cannot be set");
    if (const auto tie = detail::find_tie(entries_, c, p, g, options, route)) {
      entries_[*tie].aliases.push_back(std::move(name));
      return *tie;
    }

    // ---- build everything new first, then commit with operations that cannot throw ----
    const ParamId id = entries_.size();
    WorkspaceNeed need;
    WorkspaceNeed unconstrained;  // the need with enable_constraint off (matrix path)
    // Gradient staging: a 16-bit gradient is decoded, a loss-scaled one unscaled, into workspace.
    if (g.format != ElementFormat::value || options_.loss_scaling) need.add_matrix(1, 1, n);
    need.add(filter_.plan(info));
    if (options_.telemetry) need.add(detail::TelemetryRecorder<B>::plan(p.shape));
    // A master copy (16-bit storage or a quantized view): one accum for the absmax.
    const bool has_master = p.format != ElementFormat::value || options.fake_quant_bits > 0;
    if (has_master) need.add_accums(1);
    const detail::GradSource grad{g.data, g.format};
    const detail::ParamTarget target =
        has_master ? detail::ParamTarget{p.data, p.format,
                                         options.fake_quant_bits > 0 ? (index_t{1} << (options.fake_quant_bits - 1)) - 1 : 0}
                   : detail::ParamTarget{};
    Buffer master = backend_.template allocate<T>(has_master ? static_cast<std::size_t>(n) : 0);
    if (has_master) load_master(master, p, n);
    T* const w_data = has_master ? master.data() : static_cast<T*>(p.data);
    const T* const g_data = g.format == ElementFormat::value ? static_cast<const T*>(g.data) : nullptr;

    auto flags = backend_.template allocate<typename B::accum_type>(entries_.size() + 1);
    entries_.reserve(entries_.size() + 1);
    flags_host_.reserve(entries_.size() + 1);
    bad_.reserve(entries_.size() + 1);
    if (route.path == Path::matrix) {
      const bool transposed = p.shape.rank() == 2 && p.layout == Layout::col_major;
      const index_t rows = p.shape.rows(), cols = p.shape.cols();
      const index_t prow = transposed ? cols : rows, pcol = transposed ? rows : cols;
      const index_t batch = p.shape.batch();
      need.add_matrix(batch, prow, pcol);  // u
      if (options_.normuon) {
        need.add(detail::RowNormalizer<B>::plan(batch, prow, pcol, rows));
        row_normalizer_.reserve(backend_, std::max(prow, pcol));
        row_normalizer_capacity_ = std::max(row_normalizer_capacity_, std::max(prow, pcol));
      }
      // The direction: the constraint's plan covers its own use of the orthogonalizer; the
      // orthogonalizer alone is what runs when the constraint is switched off. A constraint
      // that never calls it (Hypersphere) does not pay for its workspace until then.
      const WorkspaceNeed orth_alone = orth_.plan(backend_, batch, prow, pcol);
      WorkspaceNeed direction = constraint_.plan(backend_, orth_, info);
      if (detail::uses_orthogonalizer<Constr>()) direction.raise_to(orth_alone);
      unconstrained = need;
      unconstrained.add(orth_alone);
      need.add(direction);
      if (!options_.enable_constraint) need.raise_to(unconstrained);
      matrix_slots_.reserve(matrix_slots_.size() + 1);
      matrix_slots_.push_back(MatrixSlot{id,
                                         {w_data, batch, prow, pcol},
                                         {g_data, batch, prow, pcol},
                                         transposed,
                                         adjusted_lr(1.0, options_.lr_adjust, rows, cols) *
                                             modular_factor(options_.modular, options.layer, options.depth, rows, cols),
                                         StateBuffer<B>(backend_, static_cast<std::size_t>(n), options_.momentum_state),
                                         filter_.template make_state<B>(backend_, info),
                                         constraint_.template make_state<B>(backend_, info),
                                         backend_.template allocate<T>(options_.normuon ? static_cast<std::size_t>(batch * rows) : 0),
                                         grad,
                                         target,
                                         std::move(master)});
    } else {
      fallback_slots_.reserve(fallback_slots_.size() + 1);
      fallback_slots_.push_back(FallbackSlot{id,
                                             {w_data, 1, 1, n},
                                             {g_data, 1, 1, n},
                                             filter_.template make_state<B>(backend_, info),
                                             fallback_.template make_state<B>(backend_, info),
                                             grad,
                                             target,
                                             std::move(master)});
    }
    std::string state_format = route.path == Path::matrix ? describe_state(matrix_slots_.back())
                                                          : describe_state(fallback_slots_.back());
    // Nothing below throws (capacity reserved above).
    need_.raise_to(need);
    unconstrained_need_.raise_to(unconstrained);
    schedule_dirty_ = true;
    const std::size_t slot = route.path == Path::matrix ? matrix_slots_.size() - 1 : fallback_slots_.size() - 1;
    entries_.push_back(Entry{std::move(info), {}, route.path, std::move(route.rule), options, p.data, g.data,
                             c.param_bytes, c.grad_bytes, p.layout, p.format, slot, std::move(state_format)});
    flags_ = std::move(flags);
    flags_host_.push_back(0.0);
    bad_.push_back(0);
    return id;
  }

  // "momentum bf16, filter/ema bf16": a slot's state items not kept in value_type (routing report).
  template <class Slot>
  static std::string describe_state(Slot& s) {
    std::string out;
    auto note = [&out](std::string_view prefix) {
      return [&out, prefix](std::string_view key, auto& item) {
        if constexpr (detail::is_state_buffer_v<std::remove_cvref_t<decltype(item)>>) {
          if (item.format() == StateFormat::full) return;
          out += (out.empty() ? "" : ", ") + std::string(prefix) + std::string(key) + " " + to_string(item.format());
          if (item.format() == StateFormat::q8) out += "/" + std::to_string(item.block());
        }
      };
    };
    if constexpr (requires { s.momentum; }) {
      note("")("momentum", s.momentum);
      s.constraint.visit(note("constraint/"));
    } else {
      s.fallback.visit(note("fallback/"));
    }
    s.filter.visit(note("filter/"));
    return out;
  }

  // The master copy starts as the registered tensor's values (decoded from 16 bits).
  void load_master(Buffer& master, const detail::ParamBinding& p, index_t n) {
    backend::MatrixView<T> m{master.data(), 1, 1, n};
    if (p.format == ElementFormat::value)
      backend_.transform(m, fn::Copy{}, backend::MatrixView<const T>{static_cast<const T*>(p.data), 1, 1, n});
    else
      backend_.transform_indexed(m, detail::DecodeScaled<T>{static_cast<const std::uint16_t*>(p.data), p.format, T(1)}, m);
  }

  void ensure_workspace() {
    if (schedule_dirty_) plan_schedule();  // buckets may raise the need
    if (need_.values > planned_.values || need_.accums > planned_.accums) {
      workspace_.allocate(backend_, need_);
      planned_ = need_;
    }
  }

  void check_step_options(const StepOptions& o) const {
    if (!o.inv_scale) return;
    const double v = *o.inv_scale;
    if (!std::isfinite(v) || !(v > 0))
      detail::fail("Optimizer::step: inv_scale must be finite and > 0, got " + detail::format_value(v));
    // Used in value_type: it must not become Inf or 0 there.
    if (v > static_cast<double>(std::numeric_limits<T>::max()) || v < static_cast<double>(std::numeric_limits<T>::min()))
      detail::fail("Optimizer::step: inv_scale " + detail::format_value(v) + " is outside the range of the value type (" +
                   detail::format_value(static_cast<double>(std::numeric_limits<T>::min())) + " .. " +
                   detail::format_value(static_cast<double>(std::numeric_limits<T>::max())) + ")");
    if (!options_.loss_scaling)
      for (const auto& e : entries_)
        if (entries_slot_grad_format(e) == ElementFormat::value)
          detail::fail_param(e.info.name, "step was given inv_scale, but this value_type gradient has no room to be "
                                          "unscaled: construct the optimizer with Options::loss_scaling = true");
  }
  ElementFormat entries_slot_grad_format(const Entry& e) const {
    return e.path == Path::matrix ? matrix_slots_[e.slot].grad.format : fallback_slots_[e.slot].grad.format;
  }

  // The gradient as value_type: the registered buffer itself, or decoded / unscaled into workspace.
  backend::MatrixView<const T> gradient(const detail::GradSource& src, backend::MatrixView<const T> shape,
                                        std::optional<double> inv_scale) {
    return gradient(backend_, workspace_, src, shape, inv_scale);
  }
  static backend::MatrixView<const T> gradient(B& b, Workspace<B>& ws, const detail::GradSource& src,
                                               backend::MatrixView<const T> shape, std::optional<double> inv_scale) {
    if (src.format == ElementFormat::value && !inv_scale) return {static_cast<const T*>(src.data), shape.batch, shape.rows, shape.cols};
    auto out = ws.take(shape.batch, shape.rows, shape.cols);
    const T scale = static_cast<T>(inv_scale.value_or(1.0));
    if (src.format == ElementFormat::value)
      b.transform(out, fn::Scale<T>{scale},
                  backend::MatrixView<const T>{static_cast<const T*>(src.data), shape.batch, shape.rows, shape.cols});
    else
      b.transform_indexed(out, detail::DecodeScaled<T>{static_cast<const std::uint16_t*>(src.data), src.format, scale}, out);
    return out;
  }

  // Counts non-finite entries of every gradient on the backend and reads the per-tensor flags
  // once. Fills bad_ and skipped_; under throw_error, throws before any state changes. What the
  // step will use is checked: a loss-scaled gradient after unscaling (a finite gradient times
  // inv_scale > 1 can overflow to Inf).
  void check_gradients_counts(std::optional<double> inv_scale) {
    auto* flags = flags_.data();
    auto count = [&](const detail::GradSource& src, backend::MatrixView<const T> shape, ParamId id) {
      workspace_.reset();
      backend_.count_non_finite(gradient(src, shape, inv_scale).flat(), flags + id);
    };
    for (const auto& s : matrix_slots_) count(s.grad, s.g, s.id);
    for (const auto& s : fallback_slots_) count(s.grad, s.g, s.id);
    backend_.read(flags, std::span<typename B::accum_type>(flags_host_));
  }
  void check_gradients(std::optional<double> inv_scale) {
    skipped_.clear();
    check_gradients_counts(inv_scale);
    for (ParamId i = 0; i < entries_.size(); ++i) {
      bad_[i] = flags_host_[i] != 0;
      if (bad_[i]) skipped_.push_back(i);
    }
    if (options_.non_finite == NonFinitePolicy::throw_error && !skipped_.empty()) {
      const ParamId i = skipped_.front();
      const auto count_bad = static_cast<long long>(flags_host_[i]);
      skipped_.clear();
      detail::fail_param(entries_[i].info.name,
                         "gradient has " + std::to_string(count_bad) + " non-finite (NaN/Inf) values; nothing was updated");
    }
  }

  // What one thread of the step works with: a backend (its products on the shared pool, or on
  // its own thread inside a task), a workspace, NorMuon's scratch and its share of the stats.
  // Lane 0 is the optimizer's own backend_ / workspace_ / row_normalizer_.
  struct Lane {
    B backend;
    Workspace<B> workspace{};
    detail::RowNormalizer<B> row_normalizer{};
    ConstraintStats stats{};
  };
  struct LaneRef {
    B& b;
    Workspace<B>& ws;
    detail::RowNormalizer<B>& row_normalizer;
    ConstraintStats& stats;
  };
  [[nodiscard]] int lane_count() const { return 1 + static_cast<int>(lanes_.size()); }
  // The lanes a step will use (planning the schedule if registrations changed it).
  [[nodiscard]] int planned_lanes() {
    if (schedule_dirty_) plan_schedule();
    return schedule_lanes_;
  }
  LaneRef lane(int i, ConstraintStats& main_stats) {
    if (i == 0) return {backend_, workspace_, row_normalizer_, main_stats};
    Lane& l = lanes_[static_cast<std::size_t>(i - 1)];
    return {l.backend, l.workspace, l.row_normalizer, l.stats};
  }

  // Who runs what, fixed by the shapes and the thread count (so results are deterministic for a
  // given count):
  //  * buckets: small matrix tensors of one shape whose direction is plain orth(u) are
  //    orthogonalised as one batch (up to k_bucket_tensors; formed the same on every thread
  //    count, so they give the same bits on every count);
  //  * a tensor whose cost exceeds one thread's share runs alone with its products split over
  //    every thread;
  //  * the rest (tensors and buckets) are spread over the threads, largest first, each to the
  //    least loaded thread, and each runs whole on its thread.
  static constexpr index_t k_bucket_elements = 128 * 512;  // a slice this small gains from batching
  static constexpr std::size_t k_bucket_tensors = 16;

  struct Job {
    enum Kind { matrix, fallback, bucket } kind;
    std::size_t index;  // into matrix_slots_, fallback_slots_ or buckets_
  };

  void plan_schedule() {
    const int t = pool_->size();
    // Telemetry's recorder is one per optimizer; a device backend runs one lane (DeviceQueue).
    const bool parallel = t > 1 && !options_.telemetry && !backend::DeviceQueue<B>;
    split_slots_.clear();
    buckets_.clear();
    lane_jobs_.clear();
    schedule_dirty_ = false;
    schedule_lanes_ = 1;
    // Costs in flop-equivalents: Newton-Schulz products, plus elementwise passes (memory-bound:
    // a few hundred flops' time per element).
    auto matrix_cost = [](const MatrixSlot& s) {
      const double n = static_cast<double>(std::min(s.w.rows, s.w.cols)), m = static_cast<double>(std::max(s.w.rows, s.w.cols));
      return static_cast<double>(s.w.batch) * (4 * n * n * m + 2 * n * n * n + 200 * n * m);
    };
    auto fallback_cost = [](const FallbackSlot& s) { return 400.0 * static_cast<double>(s.w.size()); };

    // Buckets, in registration order.
    std::vector<char> bucketed(matrix_slots_.size(), 0);
    if (detail::direction_is_orthogonalizer<Constr>() || !options_.enable_constraint) {
      for (std::size_t i = 0; i < matrix_slots_.size(); ++i) {
        const MatrixSlot& s = matrix_slots_[i];
        if (bucketed[i] || s.w.batch != 1 || s.w.size() > k_bucket_elements) continue;
        std::vector<std::size_t> members{i};
        for (std::size_t j = i + 1; j < matrix_slots_.size() && members.size() < k_bucket_tensors; ++j) {
          const MatrixSlot& o = matrix_slots_[j];
          if (!bucketed[j] && o.w.batch == 1 && o.w.rows == s.w.rows && o.w.cols == s.w.cols) members.push_back(j);
        }
        if (members.size() < 2) continue;
        for (std::size_t m : members) bucketed[m] = 1;
        WorkspaceNeed need = need_;
        need.add_matrix(static_cast<index_t>(members.size()), s.w.rows, s.w.cols);
        need.add(orth_.plan(backend_, static_cast<index_t>(members.size()), s.w.rows, s.w.cols));
        need_.raise_to(need);
        buckets_.push_back(std::move(members));
      }
    }

    struct Costed {
      double cost;
      Job job;
    };
    std::vector<Costed> jobs;
    double total = 0;
    for (const auto& s : matrix_slots_) total += matrix_cost(s);
    for (const auto& s : fallback_slots_) total += fallback_cost(s);
    const double share = total / t;
    for (std::size_t i = 0; i < matrix_slots_.size(); ++i) {
      if (bucketed[i]) {
        // A bucket is scheduled where its first member is.
        for (std::size_t k = 0; k < buckets_.size(); ++k)
          if (buckets_[k].front() == i) {
            double c = 0;
            for (std::size_t m : buckets_[k]) c += matrix_cost(matrix_slots_[m]);
            jobs.push_back({c, {Job::bucket, k}});
          }
        continue;
      }
      const double c = matrix_cost(matrix_slots_[i]);
      if (parallel && c > share)
        split_slots_.push_back(i);
      else
        jobs.push_back({c, {Job::matrix, i}});
    }
    for (std::size_t i = 0; i < fallback_slots_.size(); ++i) jobs.push_back({fallback_cost(fallback_slots_[i]), {Job::fallback, i}});
    if (!parallel) {
      lane_jobs_.emplace_back();
      for (const Costed& j : jobs) lane_jobs_[0].push_back(j.job);
      return;
    }
    std::stable_sort(jobs.begin(), jobs.end(), [](const Costed& x, const Costed& y) { return x.cost > y.cost; });
    // The first min(t, jobs) jobs land on lanes 0, 1, ... (empty lanes are the least loaded).
    schedule_lanes_ = std::max(1, std::min(t, static_cast<int>(jobs.size())));
    lane_jobs_.resize(static_cast<std::size_t>(schedule_lanes_));
    std::vector<double> load(static_cast<std::size_t>(schedule_lanes_), 0.0);
    for (const Costed& j : jobs) {
      const auto best = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
      load[best] += j.cost;
      lane_jobs_[best].push_back(j.job);
    }
  }

  // Lanes 1.. with their workspaces, as the schedule needs (the first step allocates them).
  void ensure_lanes() {
    const auto extra = static_cast<std::size_t>(schedule_lanes_ - 1);
    const bool same = lanes_.size() == extra && lanes_need_.values == planned_.values && lanes_need_.accums == planned_.accums;
    if (same) return;
    while (lanes_.size() < extra) lanes_.push_back(Lane{backend_});
    while (lanes_.size() > extra) lanes_.pop_back();
    for (auto& l : lanes_) {
      if constexpr (backend::Threaded<B>) l.backend.set_pool(pool_.get());  // inside a task: its own thread
      l.workspace.allocate(l.backend, planned_);
      if (options_.normuon) l.row_normalizer.reserve(l.backend, row_normalizer_capacity_);
    }
    lanes_need_ = planned_;
  }

  // step() has called ensure_workspace(), which planned the schedule (and any buckets' workspace).
  void step_all(ConstraintStats& stats) {
    ensure_lanes();
    LaneRef main = lane(0, stats);
    for (std::size_t i : split_slots_)  // products split over every thread
      if (!bad_[matrix_slots_[i].id]) step_matrix(main, matrix_slots_[i]);
    if (lanes_.empty()) {
      for (const Job& j : lane_jobs_[0]) run_job(main, j);
      return;
    }
    for (auto& l : lanes_) l.stats = {};
    pool_->run(lane_count(), [&](int w) {
      LaneRef l = lane(w, stats);
      for (const Job& j : lane_jobs_[static_cast<std::size_t>(w)]) run_job(l, j);
    });
    for (auto& l : lanes_) merge_constraint_stats(stats, l.stats);
  }

  void run_job(LaneRef l, const Job& j) {
    switch (j.kind) {
      case Job::matrix:
        if (!bad_[matrix_slots_[j.index].id]) step_matrix(l, matrix_slots_[j.index]);
        break;
      case Job::fallback:
        if (!bad_[fallback_slots_[j.index].id]) step_fallback(l, fallback_slots_[j.index]);
        break;
      case Job::bucket:
        step_bucket(l, buckets_[j.index]);
        break;
    }
  }

  [[nodiscard]] MatrixParam<T> matrix_param(const MatrixSlot& s) const {
    return {s.w, s.transposed, &entries_[s.id].info, lr_now_ * entries_[s.id].options.lr_scale * s.lr_factor};
  }

  void step_matrix(LaneRef l, MatrixSlot& s) {
    l.ws.reset();
    auto u = l.ws.take(s.w.batch, s.w.rows, s.w.cols);
    begin_matrix(l, s, u);
    const MatrixParam<T> param = matrix_param(s);
    if (options_.enable_constraint)
      constraint_.direction(l.b, s.constraint, orth_, param, u, l.ws);
    else
      orth_.apply(l.b, u, l.ws);
    finish_matrix(l, s, u);
  }

  // Tensors of one shape, orthogonalised as one batch: each member's u goes into its slice, the
  // batch is orthogonalised, then each member is updated. A member skipped for a non-finite
  // gradient gets a zero slice (orth(0) = 0; the batch keeps its size, so no new kernels) and is
  // not updated.
  void step_bucket(LaneRef l, const std::vector<std::size_t>& members) {
    const MatrixSlot& first = matrix_slots_[members.front()];
    l.ws.reset();
    auto u = l.ws.take(static_cast<index_t>(members.size()), first.w.rows, first.w.cols);
    auto slice = [&u](std::size_t i) {
      return backend::MatrixView<T>{u.data + static_cast<index_t>(i) * u.slice_size(), 1, u.rows, u.cols};
    };
    for (std::size_t i = 0; i < members.size(); ++i) {
      MatrixSlot& s = matrix_slots_[members[i]];
      if (bad_[s.id]) {
        l.b.transform(slice(i), fn::Zero{}, slice(i));
        continue;
      }
      const auto mark = l.ws.mark();
      begin_matrix(l, s, slice(i));
      l.ws.rewind(mark);
    }
    {
      const auto mark = l.ws.mark();
      orth_.apply(l.b, u, l.ws);
      l.ws.rewind(mark);
    }
    for (std::size_t i = 0; i < members.size(); ++i) {
      MatrixSlot& s = matrix_slots_[members[i]];
      if (bad_[s.id]) continue;
      const auto mark = l.ws.mark();
      finish_matrix(l, s, slice(i));
      l.ws.rewind(mark);
    }
  }

  // Steps 0-3 of a matrix tensor: its gradient (filtered), the momentum, and u into `u`.
  void begin_matrix(LaneRef l, MatrixSlot& s, backend::MatrixView<T> u) {
    B& b = l.b;
    const auto graw = gradient(b, l.ws, s.grad, s.g, inv_scale_);
    const auto g = options_.enable_filter ? filter_.apply(b, s.filter, graw, l.ws) : graw;
    if (options_.telemetry) telemetry_.gradients(b, l.ws, graw, g);
    const T beta = static_cast<T>(options_.momentum);
    if (s.momentum.format() == StateFormat::bf16) {  // one pass: read, update, round, write back
      detail::with_rounding(options_.momentum_state.rounding, [&](auto stochastic_tag) {
        constexpr bool stochastic = decltype(stochastic_tag)::value;
        const std::uint64_t stream =
            stochastic ? detail::rounding_stream(entries_[s.id].info.name, "momentum", steps_taken_ + 1) : 0;
        b.transform_indexed(u,
                            detail::MomentumBf16<T, stochastic>{s.momentum.bits(), static_cast<T>(1.0 - options_.momentum),
                                                                beta, options_.nesterov, stream},
                            backend::MatrixView<const T>(g));
      });
      return;
    }
    backend::MatrixView<T> m{s.momentum.data(), s.w.batch, s.w.rows, s.w.cols};
    b.transform(m, fn::Lerp<T>{static_cast<T>(1.0 - options_.momentum)}, m, g);
    if (options_.nesterov)
      b.transform(u, fn::Lerp<T>{beta}, g, m);
    else
      b.transform(u, fn::Copy{}, m);
  }

  // Step 6 and after, given the direction in `u`: NorMuon, the update, the retraction and the
  // 16-bit copy.
  void finish_matrix(LaneRef l, MatrixSlot& s, backend::MatrixView<T> u) {
    B& b = l.b;
    const MatrixParam<T> param = matrix_param(s);
    if (options_.telemetry) telemetry_.orthogonality(b, l.ws, u);
    if (options_.normuon)
      l.row_normalizer.apply(b, l.ws, s.row_second_moment.data(), u, s.transposed, options_.normuon_beta2,
                             options_.normuon_eps);
    const ParamOptions& group = entries_[s.id].options;
    const double decay = 1.0 - lr_now_ * group.lr_scale * group.weight_decay.value_or(options_.weight_decay);
    b.transform(s.w, detail::ApplyUpdate<T>{fn::saturate_cast<T>(decay), fn::saturate_cast<T>(param.lr)}, s.w, u);
    if (options_.enable_constraint) {
      constraint_.retract(b, s.constraint, orth_, param, l.ws);
      // Optional: a constraint that reports adds its numbers to the step result.
      if constexpr (requires { constraint_.report(s.constraint, l.stats); }) constraint_.report(s.constraint, l.stats);
    }
    if (s.target.has_master()) detail::refresh_target(b, s.target, s.w, l.ws.take_accums(1));
  }

  void step_fallback(LaneRef l, FallbackSlot& s) {
    l.ws.reset();
    const auto graw = gradient(l.b, l.ws, s.grad, s.g, inv_scale_);
    const auto g = options_.enable_filter ? filter_.apply(l.b, s.filter, graw, l.ws) : graw;
    if (options_.telemetry) telemetry_.gradients(l.b, l.ws, graw, g);
    if constexpr (FallbackWithRates<Fb, B>) {
      const ParamOptions& group = entries_[s.id].options;
      fallback_.apply(l.b, s.fallback, s.w, g,
                      FallbackRates{fallback_.lr() * group.lr_scale,
                                    group.weight_decay.value_or(fallback_.options().weight_decay)});
    } else {
      fallback_.apply(l.b, s.fallback, s.w, g);
    }
    if (s.target.has_master()) detail::refresh_target(l.b, s.target, s.w, l.ws.take_accums(1));
  }

  // Rewrites every 16-bit tensor / quantized view from its master (after load()).
  void refresh_targets() {
    for (auto& s : matrix_slots_) {
      workspace_.reset();
      if (s.target.has_master()) detail::refresh_target(backend_, s.target, s.w, workspace_.take_accums(1));
    }
    for (auto& s : fallback_slots_) {
      workspace_.reset();
      if (s.target.has_master()) detail::refresh_target(backend_, s.target, s.w, workspace_.take_accums(1));
    }
  }

  Options options_;
  B backend_;
  Filter filter_;
  RouterT router_;
  Orth orth_;
  Constr constraint_;
  Fb fallback_;

  std::vector<Entry> entries_;
  std::vector<MatrixSlot> matrix_slots_;
  std::vector<FallbackSlot> fallback_slots_;
  Workspace<B> workspace_;
  WorkspaceNeed need_{};     // the largest need of any one tensor
  WorkspaceNeed unconstrained_need_{};  // the same with the constraint switched off
  WorkspaceNeed planned_{};  // what workspace_ holds
  typename B::template Buffer<typename B::accum_type> flags_{};
  std::vector<typename B::accum_type> flags_host_;
  std::vector<char> bad_;
  std::vector<ParamId> skipped_;
  std::uint64_t steps_taken_ = 0;
  double fallback_base_lr_ = 0;  // the fallback's lr before the schedule
  double lr_now_ = 0;            // the matrix lr of the step being taken (base x schedule)
  std::optional<double> inv_scale_{};  // the step's loss-scale inverse, if any
  detail::TelemetryRecorder<B> telemetry_{};
  detail::RowNormalizer<B> row_normalizer_{};
  index_t row_normalizer_capacity_ = 0;
  // Threads (plan_schedule): the shared pool, lanes 1.. (lane 0 is the members above), the
  // tensors whose products are split, and which lane runs each other tensor.
  std::shared_ptr<ThreadPool> pool_;
  std::vector<Lane> lanes_;
  std::vector<std::size_t> split_slots_;
  std::vector<std::vector<std::size_t>> buckets_;  // matrix slots orthogonalised as one batch
  std::vector<std::vector<Job>> lane_jobs_;       // what each lane runs, in order
  bool schedule_dirty_ = true;
  int schedule_lanes_ = 1;
  WorkspaceNeed lanes_need_{};
};

}  // namespace muon

#include "muon/core/optimizer_checkpoint.hpp"
