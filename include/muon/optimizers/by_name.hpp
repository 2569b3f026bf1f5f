#pragma once
// A run-time handle for trainers that choose the optimizer from a config file:
//
//   auto opt = muon::make_optimizer<muon::backend::Eigen<float>>(
//       "muon_grokfast", muon::parse_config("lr=0.01, filter.lamb=0.05, fallback.lr=1e-4"));
//   opt->add("fc1.weight", w, gw);
//   opt->step();
//
// Names: adamw, sgd, lion (one optimizer for every tensor), grokfast (Grokfast EMA + AdamW for
// every tensor), muon, muon_sgd, muon_lion, muon_grokfast, muon_clip, muon_grokfast_clip,
// stiefel_muon, hypersphere_muon. Fields are the composition's Options,
// dotted for the policies: lr, momentum, nesterov, weight_decay, lr_adjust, non_finite,
// enable_filter, enable_muon, enable_constraint, router.min_dim, router.max_aspect_ratio,
// orthogonalizer.steps / .eps / .eps_mode / .a / .b / .c, filter.alpha / .lamb (Grokfast),
// constraint.mode / .tau / .max_head_norm / .alpha (QK-Clip), constraint.dual_steps / .dual_lr /
// .tol / .retract_every / .polish_steps / .warm_start / .tangent_eps (Stiefel), constraint.retraction /
// .tangent_eps (hypersphere), orthogonalizer.safety / .norm_scale (Polar Express),
// fallback.lr / .beta1 / .beta2 / .eps / .weight_decay (AdamW), .momentum / .dampening /
// .nesterov (SGD), schedule = constant | warmup_cosine with schedule.warmup_steps /
// .total_steps / .min_lr_ratio, loss_scaling, threads, orthogonalizer.precision = full | bf16,
// modular.depth / .shape, and the state formats (core/state_format.hpp): momentum_state.format
// = full | bf16 and .rounding = nearest_even | stochastic, filter.state.format / .rounding
// (Grokfast EMA), fallback.state.format = full | bf16 | q8 / .rounding / .block (AdamW, Lion).
// For the one-optimizer names (adamw, sgd, lion, grokfast) the fallback's fields are accepted
// without the prefix too (lr=1e-3). An unknown name or field, or a value that does not parse,
// throws muon::Error that says which, and lists what is accepted.
//
// muon_clip and muon_grokfast_clip take each step's per-head max logits through the handle,
// opt->set_max_logits("layer0.q", "layer0.k", s_max), as the typed muon::set_max_logits.
//
// The handle is an abstract class (one virtual call per step); the compositions behind it are
// the same templates a compile-time user names.
#include <charconv>
#include <concepts>
#include <functional>
#include <istream>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "muon/core/optimizer.hpp"
#include "muon/optimizers/fallback_alone.hpp"
#include "muon/optimizers/grokfast.hpp"
#include "muon/optimizers/manifold.hpp"
#include "muon/optimizers/muon.hpp"
#include "muon/optimizers/presets.hpp"
#include "muon/policy/constraint/qk_clip.hpp"
#include "muon/policy/fallback/lion.hpp"
#include "muon/policy/fallback/sgd.hpp"

namespace muon {

// Option values by field name, as text (what a config file holds).
using Config = std::map<std::string, std::string, std::less<>>;

namespace detail {

}  // namespace detail

// "a=1, b.c = x" (commas or newlines between entries; spaces around names and values ignored).
[[nodiscard]] inline Config parse_config(std::string_view text) {
  Config out;
  auto trim = [](std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
  };
  while (!text.empty()) {
    const auto cut = text.find_first_of(",\n");
    const std::string_view entry = trim(text.substr(0, cut));
    text = cut == std::string_view::npos ? std::string_view{} : text.substr(cut + 1);
    if (entry.empty()) continue;
    const auto eq = entry.find('=');
    if (eq == std::string_view::npos) detail::fail("config: " + detail::shown_value(std::string(entry)) + " is not name=value");
    const std::string name(trim(entry.substr(0, eq)));
    if (name.empty()) detail::fail("config: " + detail::shown_value(std::string(entry)) + " has no name");
    if (!out.emplace(name, std::string(trim(entry.substr(eq + 1)))).second)
      detail::fail("config: option " + detail::shown_value(name) + " is given twice");
  }
  return out;
}

template <backend::Backend B>
class AnyOptimizer {
 public:
  using value_type = typename B::value_type;
  virtual ~AnyOptimizer() = default;

  template <TensorLike P, TensorLike G>
  ParamId add(std::string name, P&& param, G&& grad, ParamOptions options = {}) {
    auto [p, g] = detail::registration_refs<value_type>(name, std::forward<P>(param), std::forward<G>(grad));
    return add_tensor(std::move(name), p, g, options);
  }

  virtual ParamId add_tensor(std::string name, detail::ParamBinding param, detail::GradBinding grad,
                             ParamOptions options) = 0;
  virtual StepResult step(StepOptions options = {}) = 0;
  [[nodiscard]] virtual RoutingReport routing_report() const = 0;
  [[nodiscard]] virtual MemoryReport memory_report() = 0;
  [[nodiscard]] virtual double lr() const = 0;
  virtual void set_lr(double lr) = 0;
  [[nodiscard]] virtual double fallback_lr() const = 0;
  virtual void set_fallback_lr(double lr) = 0;
  [[nodiscard]] virtual std::uint64_t steps_taken() const = 0;
  virtual void save(std::ostream& os, bool parameters = false) = 0;
  virtual void load(std::istream& is) = 0;
  [[nodiscard]] virtual std::map<std::string, std::vector<double>> state_snapshot() = 0;
  // QK-Clip (muon_clip, muon_grokfast_clip; logit mode): each head's largest attention logit for
  // the coming step, as muon::set_max_logits does on the typed optimizer (the pair form checks
  // both tensors before setting either). Throws muon::Error naming the tensor, and changes
  // nothing, when the composition has no QK-Clip, and as the typed call does: the tensor is
  // unknown, takes the fallback path or is not tagged query / key with heads, the values are bad
  // (count != heads, negative, NaN / Inf), weight_norm mode, or the pair is one tensor.
  virtual void set_max_logits(const std::string& name, std::span<const value_type> max_logits) = 0;
  virtual void set_max_logits(const std::string& query, const std::string& key,
                              std::span<const value_type> max_logits) = 0;
  // A tensor's parameter group (ParamOptions::lr_scale / weight_decay), as on the typed optimizer.
  virtual void set_param_group(const std::string& name, double lr_scale, std::optional<double> weight_decay = std::nullopt) = 0;
  // The name it was made from ("muon_grokfast", ...).
  [[nodiscard]] virtual const std::string& kind() const = 0;
};

namespace by_name_detail {

// Binds field names to members of an Options struct, with a parser per type. Two names may bind
// one member (the one-optimizer names take their fallback's fields with and without the
// "fallback." prefix); a config that sets one member under both names is an error.
class Fields {
 public:
  void add(std::string name, double& v) {
    bind(std::move(name), &v, [&v](const std::string& f, const std::string& text) { v = parse_double(f, text); });
  }
  void add(std::string name, int& v) {
    bind(std::move(name), &v, [&v](const std::string& f, const std::string& text) {
      const index_t x = parse_integer(f, text);
      if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
        detail::fail("option '" + f + "': " + detail::shown_value(text) + " is out of range for this field (at most " +
                     std::to_string(std::numeric_limits<int>::max()) + " in magnitude)");
      v = static_cast<int>(x);
    });
  }
  void add(std::string name, index_t& v) {
    bind(std::move(name), &v, [&v](const std::string& f, const std::string& text) { v = parse_integer(f, text); });
  }
  void add(std::string name, std::size_t& v) {
    bind(std::move(name), &v, [&v](const std::string& f, const std::string& text) {
      const index_t x = parse_integer(f, text);
      if (x < 0) detail::fail("option '" + f + "': " + detail::shown_value(text) + " must be >= 0");
      v = static_cast<std::size_t>(x);
    });
  }
  void add(std::string name, bool& v) {
    bind(std::move(name), &v, [&v](const std::string& f, const std::string& text) {
      if (text == "true" || text == "1" || text == "on") v = true;
      else if (text == "false" || text == "0" || text == "off") v = false;
      else detail::fail("option '" + f + "': " + detail::shown_value(text) + " is not a boolean (true/false)");
    });
  }
  template <class E>
  void add_enum(std::string name, E& v, std::vector<std::pair<std::string, E>> choices) {
    bind(std::move(name), &v, [&v, choices = std::move(choices)](const std::string& f, const std::string& text) {
      std::string known;
      for (const auto& [n, e] : choices) {
        if (n == text) {
          v = e;
          return;
        }
        known += (known.empty() ? "" : ", ") + n;
      }
      detail::fail("option '" + f + "': " + detail::shown_value(text) + " is not one of " + known);
    });
  }

  void apply(const Config& config, const std::string& kind) const {
    std::map<const void*, std::string> set;  // member -> the name that set it
    for (const auto& [name, text] : config) {
      auto it = setters_.find(name);
      if (it == setters_.end()) {
        std::string known;
        for (const auto& [n, _] : setters_) known += (known.empty() ? "" : ", ") + n;
        detail::fail("optimizer '" + kind + "' has no option " + detail::shown_value(name) + " (options: " + known + ")");
      }
      const auto [at, fresh] = set.emplace(it->second.target, name);
      if (!fresh)
        detail::fail("optimizer '" + kind + "': options '" + at->second + "' and '" + name +
                     "' are two names of one setting; give it once");
      it->second.set(name, text);
    }
  }

 private:
  struct Setter {
    const void* target;
    std::function<void(const std::string&, const std::string&)> set;
  };
  template <class F>
  void bind(std::string name, const void* target, F set) {
    setters_[std::move(name)] = Setter{target, std::move(set)};
  }

  static double parse_double(const std::string& f, const std::string& text) {
    double v = 0;
    const auto* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data(), end, v);
    if (ec != std::errc{} || ptr != end || text.empty()) detail::fail("option '" + f + "': " + detail::shown_value(text) + " is not a number");
    return v;
  }
  static index_t parse_integer(const std::string& f, const std::string& text) {
    long long v = 0;
    const auto* end = text.data() + text.size();
    const auto [ptr, ec] = std::from_chars(text.data(), end, v);
    if (ec == std::errc::result_out_of_range)
      detail::fail("option '" + f + "': " + detail::shown_value(text) + " is out of range for an integer");
    if (ec != std::errc{} || ptr != end || text.empty()) detail::fail("option '" + f + "': " + detail::shown_value(text) + " is not an integer");
    return static_cast<index_t>(v);
  }

  std::map<std::string, Setter, std::less<>> setters_;
};

// A state item's storage (core/state_format.hpp): <prefix>format = full | bf16 (| q8 where the
// item takes it), <prefix>rounding = nearest_even | stochastic, and <prefix>block for q8.
inline void bind_state(Fields& f, const std::string& prefix, StateStorage& s, bool allow_q8) {
  std::vector<std::pair<std::string, StateFormat>> formats{{"full", StateFormat::full}, {"bf16", StateFormat::bf16}};
  if (allow_q8) formats.emplace_back("q8", StateFormat::q8);
  f.add_enum(prefix + "format", s.format, std::move(formats));
  f.add_enum(prefix + "rounding", s.rounding,
             {{"nearest_even", StateRounding::nearest_even}, {"stochastic", StateRounding::stochastic}});
  if (allow_q8) f.add(prefix + "block", s.block);
}

inline void bind(Fields&, policy::NoFilter::Options&) {}
inline void bind(Fields& f, policy::GrokfastEMA::Options& o) {
  f.add("filter.alpha", o.alpha);
  f.add("filter.lamb", o.lamb);
  bind_state(f, "filter.state.", o.state, false);
}
inline void bind(Fields& f, policy::ShapeRoleRouter::Options& o) {
  f.add("router.min_dim", o.min_dim);
  f.add("router.max_aspect_ratio", o.max_aspect_ratio);
}
inline void bind(Fields&, policy::FallbackOnlyRouter::Options&) {}
inline void bind(Fields&, policy::RankRouter::Options&) {}
inline void bind(Fields& f, policy::NewtonSchulz::Options& o) {
  f.add("orthogonalizer.steps", o.steps);
  f.add_enum("orthogonalizer.precision", o.precision, {{"full", Precision::full}, {"bf16", Precision::bf16}});
  f.add("orthogonalizer.eps", o.eps);
  f.add("orthogonalizer.a", o.coefficients.a);
  f.add("orthogonalizer.b", o.coefficients.b);
  f.add("orthogonalizer.c", o.coefficients.c);
  f.add_enum("orthogonalizer.eps_mode", o.eps_mode,
             {{"add", policy::EpsMode::add}, {"clamp", policy::EpsMode::clamp}});
}
inline void bind(Fields& f, policy::PolarExpress::Options& o) {
  f.add("orthogonalizer.steps", o.steps);
  f.add_enum("orthogonalizer.precision", o.precision, {{"full", Precision::full}, {"bf16", Precision::bf16}});
  f.add("orthogonalizer.safety", o.safety);
  f.add("orthogonalizer.norm_scale", o.norm_scale);
  f.add("orthogonalizer.eps", o.eps);
  f.add_enum("orthogonalizer.eps_mode", o.eps_mode,
             {{"add", policy::EpsMode::add}, {"clamp", policy::EpsMode::clamp}});
}
inline void bind(Fields&, policy::NoConstraint::Options&) {}
inline void bind(Fields& f, policy::Stiefel::Options& o) {
  f.add("constraint.dual_steps", o.dual_steps);
  f.add("constraint.dual_lr", o.dual_lr);
  f.add("constraint.tol", o.tol);
  f.add("constraint.retract_every", o.retract_every);
  f.add("constraint.polish_steps", o.polish_steps);
  f.add("constraint.warm_start", o.warm_start);
  f.add("constraint.tangent_eps", o.tangent_eps);
}
inline void bind(Fields& f, policy::Hypersphere::Options& o) {
  f.add_enum("constraint.retraction", o.retraction,
             {{"renormalize", policy::SphereRetraction::renormalize}, {"analytic", policy::SphereRetraction::analytic}});
  f.add("constraint.tangent_eps", o.tangent_eps);
}
inline void bind(Fields& f, policy::QKClip::Options& o) {
  f.add_enum("constraint.mode", o.mode,
             {{"logit", policy::QKClipMode::logit}, {"weight_norm", policy::QKClipMode::weight_norm}});
  f.add("constraint.tau", o.tau);
  f.add("constraint.max_head_norm", o.max_head_norm);
  f.add("constraint.alpha", o.alpha);
}
inline void bind(Fields& f, policy::AdamW::Options& o, const std::string& p = "fallback.") {
  f.add(p + "lr", o.lr);
  f.add(p + "beta1", o.beta1);
  f.add(p + "beta2", o.beta2);
  f.add(p + "eps", o.eps);
  f.add(p + "weight_decay", o.weight_decay);
  bind_state(f, p + "state.", o.state, true);
}
inline void bind(Fields& f, policy::SGD::Options& o, const std::string& p = "fallback.") {
  f.add(p + "lr", o.lr);
  f.add(p + "momentum", o.momentum);
  f.add(p + "dampening", o.dampening);
  f.add(p + "nesterov", o.nesterov);
  f.add(p + "weight_decay", o.weight_decay);
}
inline void bind(Fields& f, policy::Lion::Options& o, const std::string& p = "fallback.") {
  f.add(p + "lr", o.lr);
  f.add(p + "beta1", o.beta1);
  f.add(p + "beta2", o.beta2);
  f.add(p + "weight_decay", o.weight_decay);
  bind_state(f, p + "state.", o.state, true);
}

enum class ScheduleKind { constant, warmup_cosine };

template <class Opt>
typename Opt::Options options_from(const Config& config, const std::string& kind, bool matrix_path) {
  typename Opt::Options o;
  Fields f;
  ScheduleKind schedule = ScheduleKind::constant;
  index_t warmup_steps = 0, total_steps = 0;
  double min_lr_ratio = Schedule::WarmupCosine{}.min_lr_ratio;
  f.add_enum("schedule", schedule, {{"constant", ScheduleKind::constant}, {"warmup_cosine", ScheduleKind::warmup_cosine}});
  f.add("schedule.warmup_steps", warmup_steps);
  f.add("schedule.total_steps", total_steps);
  f.add("schedule.min_lr_ratio", min_lr_ratio);
  f.add("loss_scaling", o.loss_scaling);
  f.add("threads", o.threads);
  if (matrix_path) {
    f.add("lr", o.lr);
    f.add("momentum", o.momentum);
    f.add("nesterov", o.nesterov);
    f.add("weight_decay", o.weight_decay);
    f.add_enum("lr_adjust", o.lr_adjust,
               {{"none", LrAdjust::none}, {"original", LrAdjust::original}, {"match_rms_adamw", LrAdjust::match_rms_adamw}});
    f.add("enable_muon", o.enable_muon);
    f.add("enable_constraint", o.enable_constraint);
    f.add("modular.depth", o.modular.depth);
    f.add("modular.shape", o.modular.shape);
    bind_state(f, "momentum_state.", o.momentum_state, false);
    bind(f, o.router);
    bind(f, o.orthogonalizer);
    bind(f, o.constraint);
  }
  f.add_enum("non_finite", o.non_finite,
             {{"skip_parameter", NonFinitePolicy::skip_parameter},
              {"skip_step", NonFinitePolicy::skip_step},
              {"throw", NonFinitePolicy::throw_error}});
  f.add("enable_filter", o.enable_filter);
  bind(f, o.filter);
  bind(f, o.fallback);
  // One optimizer for every tensor: its options also go without the "fallback." prefix.
  if (!matrix_path) bind(f, o.fallback, "");
  f.apply(config, kind);
  if (schedule == ScheduleKind::warmup_cosine) {
    if (warmup_steps < 0 || total_steps < 0) detail::fail("config '" + kind + "': schedule steps must be >= 0");
    o.schedule = Schedule::warmup_cosine({.warmup_steps = static_cast<std::uint64_t>(warmup_steps),
                                          .total_steps = static_cast<std::uint64_t>(total_steps),
                                          .min_lr_ratio = min_lr_ratio});
  } else if (warmup_steps != 0 || total_steps != 0 || config.count("schedule.min_lr_ratio")) {
    detail::fail("config '" + kind + "': schedule.* options need schedule = warmup_cosine");
  }
  return o;
}

template <class Opt>
class Handle final : public AnyOptimizer<typename Opt::backend_type> {
 public:
  using T = typename Opt::value_type;
  Handle(std::string kind, typename Opt::Options options, typename Opt::backend_type backend)
      : kind_(std::move(kind)), opt_(std::move(options), std::move(backend)) {}

  ParamId add_tensor(std::string name, detail::ParamBinding p, detail::GradBinding g, ParamOptions o) override {
    return opt_.add_binding(std::move(name), p, g, o);
  }
  StepResult step(StepOptions options = {}) override { return opt_.step(options); }
  RoutingReport routing_report() const override { return opt_.routing_report(); }
  MemoryReport memory_report() override { return opt_.memory_report(); }
  double lr() const override { return opt_.lr(); }
  void set_lr(double lr) override { opt_.set_lr(lr); }
  double fallback_lr() const override { return opt_.fallback_lr(); }
  void set_fallback_lr(double lr) override { opt_.set_fallback_lr(lr); }
  void set_param_group(const std::string& name, double lr_scale, std::optional<double> weight_decay) override {
    opt_.set_param_group(opt_.id(name), lr_scale, weight_decay);
  }
  std::uint64_t steps_taken() const override { return opt_.steps_taken(); }
  void save(std::ostream& os, bool parameters) override { opt_.save(os, {.parameters = parameters}); }
  void load(std::istream& is) override { opt_.load(is); }
  std::map<std::string, std::vector<double>> state_snapshot() override { return opt_.state_snapshot(); }
  const std::string& kind() const override { return kind_; }
  void set_max_logits(const std::string& name, std::span<const T> s) override {
    if constexpr (has_qk_clip)
      muon::set_max_logits(opt_, name, s);
    else
      no_qk_clip(name);
  }
  void set_max_logits(const std::string& query, const std::string& key, std::span<const T> s) override {
    if constexpr (has_qk_clip)
      muon::set_max_logits(opt_, query, key, s);
    else
      no_qk_clip(query);
  }

 private:
  static constexpr bool has_qk_clip = std::same_as<typename Opt::constraint_type, policy::QKClip>;
  [[noreturn]] void no_qk_clip(const std::string& name) const {
    detail::fail_param(name, "optimizer '" + kind_ + "' has no QK-Clip to take max logits (muon_clip and "
                                                     "muon_grokfast_clip do)");
  }

  std::string kind_;
  Opt opt_;
};

}  // namespace by_name_detail

// The names make_optimizer accepts.
[[nodiscard]] inline std::vector<std::string> optimizer_names() {
  return {"adamw",     "sgd",       "lion",          "grokfast",  "muon",         "muon_sgd",
          "muon_lion", "muon_grokfast", "muon_clip", "muon_grokfast_clip", "stiefel_muon", "hypersphere_muon"};
}

template <backend::Backend B>
[[nodiscard]] std::unique_ptr<AnyOptimizer<B>> make_optimizer(std::string_view name, const Config& config = {},
                                                              B backend = B{}) {
  const std::string kind(name);
  auto make = [&]<class Opt>(bool matrix_path) -> std::unique_ptr<AnyOptimizer<B>> {
    return std::make_unique<by_name_detail::Handle<Opt>>(
        kind, by_name_detail::options_from<Opt>(config, kind, matrix_path), std::move(backend));
  };
  if (name == "adamw")
    return make.template operator()<AdamW<B>>(false);
  if (name == "sgd")
    return make.template operator()<SGD<B>>(false);
  if (name == "lion")
    return make.template operator()<Lion<B>>(false);
  if (name == "grokfast") return make.template operator()<Grokfast<B>>(false);
  if (name == "muon") return make.template operator()<Muon<B>>(true);
  if (name == "muon_sgd") return make.template operator()<MuonSGD<B>>(true);
  if (name == "muon_lion") return make.template operator()<MuonLion<B>>(true);
  if (name == "muon_grokfast") return make.template operator()<MuonGrokfast<B>>(true);
  if (name == "muon_clip") return make.template operator()<MuonClip<B>>(true);
  if (name == "muon_grokfast_clip") return make.template operator()<MuonGrokfastClip<B>>(true);
  if (name == "stiefel_muon") return make.template operator()<StiefelMuon<B>>(true);
  if (name == "hypersphere_muon") return make.template operator()<HypersphereMuon<B>>(true);
  std::string known;
  for (const auto& n : optimizer_names()) known += (known.empty() ? "" : ", ") + n;
  detail::fail("unknown optimizer '" + kind + "' (known: " + known + ")");
}

}  // namespace muon
