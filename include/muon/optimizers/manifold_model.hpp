#pragma once
// ManifoldModel: one optimizer object for a whole MoE transformer, after the manifold Muon
// guide's table. It routes every tensor by its role to a group, and steps, saves and loads the
// groups together:
//
//   role                                   group          update
//   embedding, output_head (tied or not)   embeddings     HypersphereMuon: unit-norm rows
//   router_gate                            router_gates   HypersphereMuon: unit-norm rows (one per expert)
//   norm, bias, and any rank < 2 tensor    norms          AdamW, lr x norm_lr_scale (10: the guide's)
//   everything else (QKV, attention        stiefel        StiefelMuon: W^T W = I (W W^T for wide),
//   output, expert up / down, 3-D stacks)                  per slice for stacks
//
// Each group is an ordinary composition (optimizers/manifold.hpp, core/optimizer.hpp) whose
// options are set from these: one base lr times a per-group scale, one schedule, one NaN/Inf
// policy. A step decides about non-finite gradients for all groups at once (so skip_step and
// loss-scale overflow skip every group, and throw_error throws before any group moved), then
// steps each group. save() writes every group's checkpoint into one stream; load() checks all
// of them before it loads any.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <istream>
#include <iterator>
#include <map>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "muon/core/checkpoint.hpp"
#include "muon/core/error.hpp"
#include "muon/core/optimizer.hpp"
#include "muon/core/validate.hpp"
#include "muon/optimizers/manifold.hpp"
#include "muon/policy/constraint/none.hpp"
#include "muon/policy/fallback/adamw.hpp"
#include "muon/policy/filter/none.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"
#include "muon/policy/router/fallback_only.hpp"

namespace muon {

// What one ManifoldModel step did, over all groups.
struct ModelStepResult {
  std::uint64_t step = 0;             // steps taken, this one included
  std::vector<std::string> skipped;   // tensors left alone (non-finite gradients, or the whole step)
  bool overflow = false;              // a loss-scaled step met NaN/Inf and skipped every group
  ConstraintStats constraint{};       // Stiefel and sphere numbers, merged over the groups
  double lr = 0;                      // the base lr times the schedule (each group scales it)
  [[nodiscard]] bool all_applied() const { return skipped.empty(); }
};

template <class B>
class ManifoldModel {
 public:
  using Stiefel = StiefelMuon<B>;
  using Sphere = HypersphereMuon<B>;
  using Norms = Optimizer<B, policy::NoFilter, policy::FallbackOnlyRouter, policy::NewtonSchulz, policy::NoConstraint,
                         policy::AdamW>;

  struct Options {
    double lr = 0.02;                   // base lr (the guide's); each group gets lr x its scale
    double stiefel_lr_scale = 1.0;      // projections
    double embedding_lr_scale = 1.0;    // embeddings / output heads
    double router_gate_lr_scale = 1.0;  // MoE router gates
    double norm_lr_scale = 10.0;        // norms and biases (AdamW): "lr x 10"
    Schedule schedule{};                // shared by every group
    NonFinitePolicy non_finite = NonFinitePolicy::skip_parameter;
    bool loss_scaling = false;          // lets step({.inv_scale}) unscale fp32 gradients
    int threads = 0;                    // every group's step threads (0 = every available core)
    // The groups' own options; their lr, schedule, non_finite, loss_scaling and threads are set from
    // the fields above (whatever is written there).
    typename Stiefel::Options stiefel{.lr_adjust = LrAdjust::none};
    typename Sphere::Options embeddings{.lr_adjust = LrAdjust::none};
    typename Sphere::Options router_gates{.lr_adjust = LrAdjust::none};
    typename Norms::Options norms{.fallback = {.weight_decay = 0.01}};
  };

  explicit ManifoldModel(Options options = {}, B backend = B{})
      : options_(validated(std::move(options))),
        stiefel_(group_options(options_.stiefel, options_.stiefel_lr_scale), backend),
        embeddings_(group_options(options_.embeddings, options_.embedding_lr_scale), backend),
        router_gates_(group_options(options_.router_gates, options_.router_gate_lr_scale), backend),
        norms_(norms_options(options_), std::move(backend)) {}

  // Registers a tensor with the group its role (and rank) selects; returns the group's name.
  template <TensorLike P, TensorLike G>
  std::string add(std::string name, P&& param, G&& grad, ParamOptions options = {}) {
    if (groups_.count(name)) detail::fail_param(name, "a parameter with this name is already registered");
    const Shape shape = as_tensor(param).shape;
    const std::string group = group_for(options.role, shape);
    ParamOptions o = options;
    if (group != "norms") o.path = Path::matrix;  // the group's router must not send it elsewhere
    if (group == "stiefel")
      stiefel_.add(name, std::forward<P>(param), std::forward<G>(grad), o);
    else if (group == "embeddings")
      embeddings_.add(name, std::forward<P>(param), std::forward<G>(grad), o);
    else if (group == "router_gates")
      router_gates_.add(name, std::forward<P>(param), std::forward<G>(grad), o);
    else
      norms_.add(name, std::forward<P>(param), std::forward<G>(grad), o);
    groups_.emplace(std::move(name), group);
    return group;
  }

  ModelStepResult step(StepOptions step_options = {}) {
    // Every check before any group moves.
    if (step_options.inv_scale) {
      const double v = *step_options.inv_scale;
      if (!std::isfinite(v) || !(v > 0))
        detail::fail("ManifoldModel::step: inv_scale must be finite and > 0, got " + detail::format_value(v));
      if (!options_.loss_scaling)
        detail::fail("ManifoldModel::step: inv_scale given; construct with Options::loss_scaling = true");
    }
    const double multiplier = options_.schedule(steps_taken_ + 1);
    std::vector<std::string> bad;
    for_each_group([&](auto& g) {
      for (auto& n : g.non_finite_gradients(step_options.inv_scale)) bad.push_back(std::move(n));
    });
    ModelStepResult result;
    result.lr = options_.lr * multiplier;
    const bool skip_all =
        !bad.empty() && (options_.non_finite == NonFinitePolicy::skip_step || step_options.inv_scale.has_value());
    if (!bad.empty() && options_.non_finite == NonFinitePolicy::throw_error)
      detail::fail_param(bad.front(), "gradient has non-finite (NaN/Inf) values; nothing was updated");
    if (skip_all) {
      for_each_group([&](auto& g) {
        g.skip();
        for (std::size_t i = 0; i < g.size(); ++i) result.skipped.push_back(g.name(i));
      });
      result.overflow = step_options.inv_scale.has_value();
    } else {
      for_each_group([&](auto& g) {
        const StepResult r = g.step(step_options);
        for (ParamId id : r.skipped) result.skipped.push_back(g.name(id));
        merge(result.constraint, r.constraint);
      });
    }
    result.step = ++steps_taken_;
    return result;
  }

  // ---- reports ----
  [[nodiscard]] RoutingReport routing_report() const {
    RoutingReport r;
    for_each_group_const([&](const auto& g, const char* group) {
      for (auto e : g.routing_report().entries) {
        e.rule = std::string(group) + ": " + e.rule;
        r.entries.push_back(std::move(e));
      }
    });
    return r;
  }
  [[nodiscard]] MemoryReport memory_report() {
    MemoryReport m;
    for_each_group([&](auto& g) {
      const MemoryReport x = g.memory_report();
      m.matrix_state_bytes += x.matrix_state_bytes;
      m.fallback_state_bytes += x.fallback_state_bytes;
      m.filter_state_bytes += x.filter_state_bytes;
      m.master_weight_bytes += x.master_weight_bytes;
      m.workspace_bytes += x.workspace_bytes;  // each group holds its own
      m.backend_scratch_bytes += x.backend_scratch_bytes;
    });
    return m;
  }
  // The group a registered tensor went to ("stiefel", "embeddings", "router_gates", "norms").
  [[nodiscard]] const std::string& group(const std::string& name) const {
    auto it = groups_.find(name);
    if (it == groups_.end()) detail::fail("ManifoldModel: no parameter named '" + name + "'");
    return it->second;
  }

  // ---- hyperparameters ----
  [[nodiscard]] double lr() const { return options_.lr; }
  // Sets the base lr: every group gets lr x its scale.
  void set_lr(double lr) {
    detail::require_non_negative("ManifoldModel", "lr", lr);
    options_.lr = lr;
    stiefel_.set_lr(lr * options_.stiefel_lr_scale);
    embeddings_.set_lr(lr * options_.embedding_lr_scale);
    router_gates_.set_lr(lr * options_.router_gate_lr_scale);
    norms_.set_fallback_lr(lr * options_.norm_lr_scale);
  }
  [[nodiscard]] std::uint64_t steps_taken() const { return steps_taken_; }
  [[nodiscard]] const Options& options() const { return options_; }

  // The groups, for what this object does not forward (constraint state, snapshots).
  [[nodiscard]] Stiefel& stiefel() { return stiefel_; }
  [[nodiscard]] Sphere& embeddings() { return embeddings_; }
  [[nodiscard]] Sphere& router_gates() { return router_gates_; }
  [[nodiscard]] Norms& norms() { return norms_; }

  // ---- checkpoints ----
  // Layout (little-endian): "MUONMODL" u32 version (2) u64 steps u32 groups, per group: str
  // name, u64 size, the group's checkpoint (core/checkpoint.hpp); then u64 FNV-1a 64 of every
  // byte before it (str = u32 length + bytes). Version 1 (no checksum) is refused.
  void save(std::ostream& os, typename Stiefel::SaveOptions save_options = {}) {
    detail::CheckpointWriter w;
    w.put_raw(k_magic, sizeof(k_magic));
    w.put(k_version);
    w.put(steps_taken_);
    w.put(std::uint32_t{4});
    for_each_group_named([&](auto& g, const char* group) {
      std::ostringstream blob;
      g.save(blob, {.parameters = save_options.parameters});
      const std::string bytes = blob.str();
      w.put_string(group);
      w.put(static_cast<std::uint64_t>(bytes.size()));
      w.put_raw(bytes.data(), bytes.size());
    });
    w.finish(os, "ManifoldModel checkpoint");
  }

  // All or nothing: the container (checksum, group names, step count) and every group's
  // checkpoint are checked against this model before any group is loaded.
  void load(std::istream& is) { load_checkpoint(is, true); }
  // Every check load() makes, without loading.
  void validate_checkpoint(std::istream& is) { load_checkpoint(is, false); }

 private:
  static constexpr char k_magic[8] = {'M', 'U', 'O', 'N', 'M', 'O', 'D', 'L'};
  static constexpr std::uint32_t k_version = 2;

  void load_checkpoint(std::istream& is, bool commit) {
    std::size_t bound = 1024;
    for_each_group_named([&](auto& g, const char* group) { bound += 64 + std::strlen(group) + g.checkpoint_size_bound(); });
    detail::CheckpointReader r(is, {k_magic, k_version, k_version, "ManifoldModel checkpoint"}, bound);
    const auto steps = r.template get<std::uint64_t>();
    if (steps >= detail::k_max_counter)
      detail::fail("ManifoldModel checkpoint: step count " + std::to_string(steps) + " is out of range (< 2^53)");
    const auto count = r.template get<std::uint32_t>();
    std::map<std::string, std::pair<std::size_t, std::size_t>> blobs;  // group -> (offset, size)
    for (std::uint32_t i = 0; i < count; ++i) {
      std::string group = r.get_string();
      const auto size = r.template get<std::uint64_t>();
      const std::size_t at = r.skip_array(size, 1);
      bool known = false;
      for_each_group_named([&](auto&, const char* name) { known = known || group == name; });
      if (!known) detail::fail("ManifoldModel checkpoint: unknown group '" + group.substr(0, 40) + (group.size() > 40 ? "...'" : "'"));
      if (!blobs.emplace(group, std::pair{at, static_cast<std::size_t>(size)}).second)
        detail::fail("ManifoldModel checkpoint: group '" + group + "' appears twice");
    }
    if (!r.at_end()) detail::fail("ManifoldModel checkpoint: unexpected bytes after the last group");
    auto blob_of = [&](const char* group) {
      auto it = blobs.find(group);
      if (it == blobs.end()) detail::fail(std::string("ManifoldModel checkpoint: group '") + group + "' is missing");
      std::string bytes(it->second.second, '\0');
      r.read_array(it->second.first, bytes.data(), bytes.size());
      return bytes;
    };
    for_each_group_named([&](auto& g, const char* group) {
      std::istringstream blob(blob_of(group));
      try {
        g.validate_checkpoint(blob);
      } catch (const Error& e) {
        detail::fail(std::string("ManifoldModel checkpoint, group '") + group + "': " + e.what());
      }
    });
    if (!commit) return;
    for_each_group_named([&](auto& g, const char* group) {
      std::istringstream blob(blob_of(group));
      g.load(blob);
    });
    steps_taken_ = steps;
  }

  static Options validated(Options o) {
    detail::require_non_negative("ManifoldModel", "lr", o.lr);
    detail::require_non_negative("ManifoldModel", "stiefel_lr_scale", o.stiefel_lr_scale);
    detail::require_non_negative("ManifoldModel", "embedding_lr_scale", o.embedding_lr_scale);
    detail::require_non_negative("ManifoldModel", "router_gate_lr_scale", o.router_gate_lr_scale);
    detail::require_non_negative("ManifoldModel", "norm_lr_scale", o.norm_lr_scale);
    return o;
  }
  template <class GroupOptions>
  GroupOptions group_options(GroupOptions g, double scale) const {
    g.lr = options_.lr * scale;
    g.schedule = options_.schedule;
    g.non_finite = options_.non_finite;
    g.loss_scaling = options_.loss_scaling;
    g.threads = options_.threads;
    return g;
  }
  static typename Norms::Options norms_options(const Options& o) {
    typename Norms::Options g = o.norms;
    g.fallback.lr = o.lr * o.norm_lr_scale;
    g.schedule = o.schedule;
    g.non_finite = o.non_finite;
    g.loss_scaling = o.loss_scaling;
    g.threads = o.threads;
    return g;
  }

  static std::string group_for(Role role, const Shape& shape) {
    switch (role) {
      case Role::embedding:
      case Role::output_head: return "embeddings";
      case Role::router_gate: return "router_gates";
      case Role::norm:
      case Role::bias: return "norms";
      default: break;
    }
    return shape.rank() < 2 ? "norms" : "stiefel";
  }

  static void merge(ConstraintStats& into, const ConstraintStats& s) { merge_constraint_stats(into, s); }

  template <class F>
  void for_each_group(F&& f) {
    f(stiefel_);
    f(embeddings_);
    f(router_gates_);
    f(norms_);
  }
  template <class F>
  void for_each_group_named(F&& f) {
    f(stiefel_, "stiefel");
    f(embeddings_, "embeddings");
    f(router_gates_, "router_gates");
    f(norms_, "norms");
  }
  template <class F>
  void for_each_group_const(F&& f) const {
    f(stiefel_, "stiefel");
    f(embeddings_, "embeddings");
    f(router_gates_, "router_gates");
    f(norms_, "norms");
  }

  Options options_;
  Stiefel stiefel_;
  Sphere embeddings_;
  Sphere router_gates_;
  Norms norms_;
  std::map<std::string, std::string> groups_;  // parameter name -> group
  std::uint64_t steps_taken_ = 0;
};

}  // namespace muon
