#pragma once
// Registration: what Optimizer::add (and AnyOptimizer::add) checks before a tensor is accepted,
// and the record it keeps of each registered tensor. Every check here runs before anything is
// built, so a rejected registration changes nothing.
//
// A tensor is accepted when
//   * its name is new (not a registered name or alias),
//   * its shape is non-empty with non-negative dimensions whose element count (in bytes, too)
//     fits in index_t, and the gradient has the same shape and layout,
//   * neither buffer is null, and its memory overlaps no other registered buffer that the step
//     writes or reads: its gradient and its parameter, its parameter and any other parameter or
//     gradient, its gradient and any other parameter (gradients may share memory: they are only
//     read),
//   * its per-tensor options are consistent (heads / rotary rows, layer / depth, quantized view,
//     group overrides).
// Registering the same tensor again (same memory, shape, layout, format and gradient) under a
// new name records an alias (a tied embedding / output head); the second registration must ask
// for the same path and per-tensor options as the first (see same_param_options).
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "muon/core/concepts.hpp"
#include "muon/core/error.hpp"
#include "muon/core/low_precision.hpp"
#include "muon/core/param.hpp"
#include "muon/core/report.hpp"
#include "muon/core/tensor.hpp"
#include "muon/core/validate.hpp"

namespace muon::detail {

// Whether a tensor type owns its elements (so that a temporary of it would dangle once
// registered). Adapters say so with `static constexpr bool owns_storage`; views need not.
template <class X>
inline constexpr bool owns_storage_v = [] {
  if constexpr (requires { tensor_adapter<std::remove_cvref_t<X>>::owns_storage; })
    return static_cast<bool>(tensor_adapter<std::remove_cvref_t<X>>::owns_storage);
  else
    return false;
}();

// A registered tensor, type-erased to its storage format (what AnyOptimizer passes through).
struct ParamBinding {
  void* data = nullptr;
  Shape shape{};
  Layout layout = Layout::row_major;
  ElementFormat format = ElementFormat::value;
};
struct GradBinding {
  const void* data = nullptr;
  Shape shape{};
  Layout layout = Layout::row_major;
  ElementFormat format = ElementFormat::value;
};

template <class S, class T>
inline constexpr bool registrable_scalar_v = std::is_same_v<S, T> || Storage16<S>;

template <class S, class T>
constexpr ElementFormat format_of() {
  if constexpr (std::is_same_v<S, T>)
    return ElementFormat::value;
  else
    return element_format<S>::value;
}

// What registration checks at compile time, shared by Optimizer::add and AnyOptimizer::add:
// a temporary that owns its storage would dangle, the scalar must be the backend's (or a 16-bit
// storage type, for master weights), and the parameter must be writable. An adapter that
// refuses the tensor at run time (a non-contiguous Eigen block) gets its message prefixed with
// the parameter's name.
template <class T, TensorLike P, TensorLike G>
std::pair<ParamBinding, GradBinding> registration_refs(const std::string& name, P&& param, G&& grad) {
  static_assert(!(std::is_rvalue_reference_v<P&&> && owns_storage_v<P>),
                "muon::Optimizer::add: the parameter is a temporary that owns its storage; pass an lvalue");
  static_assert(!(std::is_rvalue_reference_v<G&&> && owns_storage_v<G>),
                "muon::Optimizer::add: the gradient is a temporary that owns its storage; pass an lvalue");
  using PS = tensor_scalar_t<P>;
  using GS = tensor_scalar_t<G>;
  static_assert(registrable_scalar_v<PS, T> && registrable_scalar_v<GS, T>,
                "muon::Optimizer::add: tensor scalar type must be the backend's value_type, or a 16-bit storage type "
                "(muon::bfloat16, muon::float16, Eigen::bfloat16, Eigen::half) for master weights");
  auto adapted = [&name](auto& x, const char* what) {
    try {
      return as_tensor(x);
    } catch (const Error& e) {
      std::string why = e.what();
      if (why.rfind("muon: ", 0) == 0) why.erase(0, 6);
      fail_param(name, std::string(what) + ": " + why);
    }
  };
  const auto p = adapted(param, "parameter");
  static_assert(!std::is_const_v<std::remove_pointer_t<decltype(p.data)>>,
                "muon::Optimizer::add: the parameter must be writable (not const)");
  const auto g = adapted(grad, "gradient");
  return {ParamBinding{static_cast<void*>(p.data), p.shape, p.layout, format_of<PS, T>()},
          GradBinding{static_cast<const void*>(g.data), g.shape, g.layout, format_of<GS, T>()}};
}

// The element count of a shape, or an error naming the parameter when a dimension is negative
// or the count (or its size in bytes) does not fit in index_t.
inline index_t checked_numel(const std::string& name, const Shape& shape, std::size_t element_bytes) {
  const index_t limit = std::numeric_limits<index_t>::max() / static_cast<index_t>(element_bytes);
  index_t n = 1;
  for (std::size_t i = 0; i < shape.rank(); ++i) {
    const index_t d = shape[i];
    if (d < 0) fail_param(name, "negative dimension in shape " + shape.to_string());
    if (d != 0 && n > limit / d) fail_param(name, "shape " + shape.to_string() + " has too many elements to address");
    n *= d;
  }
  return n;
}

// What the optimizer records of a registered tensor.
struct RegisteredTensor {
  ParamInfo info;
  std::vector<std::string> aliases;
  Path path = Path::fallback;
  std::string rule;
  ParamOptions options;  // as given at registration (ties must match them)
  const void* param_data = nullptr;
  const void* grad_data = nullptr;
  std::size_t param_bytes = 0, grad_bytes = 0;
  Layout layout = Layout::row_major;
  ElementFormat format = ElementFormat::value;
  std::size_t slot = 0;  // index into the optimizer's matrix or fallback slots (by path)
  std::string state_format;  // state not kept in value_type, e.g. "momentum bf16" ("" when none)

  [[nodiscard]] bool named(const std::string& n) const {
    if (info.name == n) return true;
    for (const auto& a : aliases)
      if (a == n) return true;
    return false;
  }
};

inline bool memory_overlaps(const void* a, std::size_t abytes, const void* b, std::size_t bbytes) {
  const auto a0 = reinterpret_cast<std::uintptr_t>(a), b0 = reinterpret_cast<std::uintptr_t>(b);
  return a0 < b0 + bbytes && b0 < a0 + abytes;
}

// Whether a second registration of a tensor asks for what the first one did. Roles may differ
// (a tied embedding is also the output head) unless one is a role a constraint acts on: one
// tensor cannot be both query and key.
inline bool same_param_options(const ParamOptions& a, const ParamOptions& b) {
  auto acted_on = [](Role r) { return r == Role::query || r == Role::key || r == Role::router_gate; };
  const bool roles_agree = a.role == b.role || (!acted_on(a.role) && !acted_on(b.role));
  return roles_agree && a.path == b.path && a.heads == b.heads && a.rotary_rows == b.rotary_rows &&
         a.layer == b.layer && a.depth == b.depth && a.fake_quant_bits == b.fake_quant_bits &&
         a.lr_scale == b.lr_scale && a.weight_decay == b.weight_decay;
}

// A parameter group's overrides: finite, >= 0, within the float range.
inline void check_group(const std::string& name, const ParamOptions& options) {
  auto ok = [](double v) { return std::isfinite(v) && v >= 0 && v <= k_max_option_value; };
  if (!ok(options.lr_scale))
    fail_param(name, "lr_scale must be finite and in [0, " + format_value(k_max_option_value) + "], got " +
                         format_value(options.lr_scale));
  if (options.weight_decay && !ok(*options.weight_decay))
    fail_param(name, "weight_decay must be finite and in [0, " + format_value(k_max_option_value) + "], got " +
                         format_value(*options.weight_decay));
}

// A candidate registration, checked on its own (nothing about other tensors yet).
struct Candidate {
  ParamInfo info;
  index_t numel = 0;
  std::size_t param_bytes = 0, grad_bytes = 0;
};

// Every check of one tensor that needs no other tensor. value_bytes: sizeof(value_type).
inline Candidate check_candidate(const std::vector<RegisteredTensor>& registered, const std::string& name,
                                 const ParamBinding& p, const GradBinding& g, const ParamOptions& options,
                                 std::size_t value_bytes) {
  if (name.empty()) fail("a parameter needs a non-empty name");
  for (const auto& e : registered)
    if (e.named(name)) fail_param(name, "a parameter with this name is already registered");
  auto bytes_of = [value_bytes](ElementFormat f) { return f == ElementFormat::value ? value_bytes : std::size_t{2}; };
  const index_t n = checked_numel(name, p.shape, std::max(bytes_of(p.format), value_bytes));
  if (n == 0) fail_param(name, "empty tensor " + p.shape.to_string() + " (nothing to optimise)");
  if (p.data == nullptr) fail_param(name, "parameter data is null");
  if (g.data == nullptr) fail_param(name, "gradient data is null");
  if (!(g.shape == p.shape))
    fail_param(name, "gradient shape " + g.shape.to_string() + " does not match parameter shape " + p.shape.to_string());
  if (p.shape.rank() == 2 && p.layout != g.layout && p.shape.rows() > 1 && p.shape.cols() > 1)
    fail_param(name, "gradient and parameter have different memory layouts (row- vs column-major)");
  const std::size_t pbytes = static_cast<std::size_t>(n) * bytes_of(p.format);
  const std::size_t gbytes = static_cast<std::size_t>(n) * bytes_of(g.format);
  if (memory_overlaps(p.data, pbytes, g.data, gbytes)) fail_param(name, "gradient memory overlaps the parameter");

  if (options.heads < 0 || options.rotary_rows < 0) fail_param(name, "heads and rotary_rows must be >= 0");
  if (options.heads > 0) {
    if (p.shape.rank() != 2 || p.shape.rows() % options.heads != 0)
      fail_param(name, "heads = " + std::to_string(options.heads) + " needs a rank-2 tensor whose rows (" +
                           std::to_string(p.shape.rows()) + ") are a multiple of it");
    if (options.rotary_rows >= p.shape.rows() / options.heads)
      fail_param(name, "rotary_rows must be smaller than the head dimension " + std::to_string(p.shape.rows() / options.heads));
  } else if (options.rotary_rows != 0) {
    fail_param(name, "rotary_rows needs heads > 0");
  }
  if (options.layer < 0 || options.depth < 0 || options.layer > options.depth || (options.layer == 0) != (options.depth == 0))
    fail_param(name, "layer (" + std::to_string(options.layer) + ") and depth (" + std::to_string(options.depth) +
                         ") must be given together with 1 <= layer <= depth");
  if (options.fake_quant_bits != 0 && (options.fake_quant_bits < 2 || options.fake_quant_bits > 16))
    fail_param(name, "fake_quant_bits must be 0 (off) or in [2, 16], got " + std::to_string(options.fake_quant_bits));
  check_group(name, options);
  return {ParamInfo{name, p.shape, options.role, options.path, options.heads, options.rotary_rows, options.layer,
                    options.depth},
          n, pbytes, gbytes};
}

// The registered tensor this candidate is (a tie: same memory, shape, layout and format), or
// none. Checks the candidate's memory against every other registered tensor, and that a tie
// has the same gradient, path and per-tensor options as the first registration.
inline std::optional<std::size_t> find_tie(const std::vector<RegisteredTensor>& registered, const Candidate& c,
                                           const ParamBinding& p, const GradBinding& g, const ParamOptions& options,
                                           const Route& route) {
  const std::string& name = c.info.name;
  for (std::size_t i = 0; i < registered.size(); ++i) {
    const RegisteredTensor& e = registered[i];
    if (e.param_data == p.data && e.info.shape == p.shape && e.layout == p.layout && e.format == p.format) {
      if (e.grad_data != g.data)
        fail_param(name, "is the same tensor as '" + e.info.name +
                             "' but was given a different gradient buffer; a tied tensor has one gradient");
      if (e.path != route.path)
        fail_param(name, "is the same tensor as '" + e.info.name + "', which takes the " + std::string(to_string(e.path)) +
                             " path, but this registration routes to the " + std::string(to_string(route.path)) +
                             " path (" + route.rule + "); tag both registrations alike");
      if (!same_param_options(e.options, options))
        fail_param(name, "is the same tensor as '" + e.info.name +
                             "' but was registered with other per-tensor options (role " +
                             std::string(to_string(options.role)) + " vs " + std::string(to_string(e.options.role)) +
                             ", heads, layer, group...); one tensor cannot be two things (e.g. both query and key)");
      return i;
    }
    if (memory_overlaps(e.param_data, e.param_bytes, p.data, c.param_bytes))
      fail_param(name, "parameter memory overlaps parameter '" + e.info.name + "'");
    if (memory_overlaps(e.grad_data, e.grad_bytes, p.data, c.param_bytes))
      fail_param(name, "parameter memory overlaps the gradient of '" + e.info.name + "'");
    if (memory_overlaps(e.param_data, e.param_bytes, g.data, c.grad_bytes))
      fail_param(name, "gradient memory overlaps parameter '" + e.info.name + "'");
  }
  return std::nullopt;
}

}  // namespace muon::detail
