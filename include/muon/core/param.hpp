#pragma once
// What the optimizer knows about a registered parameter: its name, logical shape, role tag and
// the path the router chose.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "muon/core/tensor.hpp"

namespace muon {

// What a tensor is for in the model. The router sends embeddings, output heads, norms and biases
// to the fallback optimizer whatever their shape; `query` and `key` mark attention projections
// for constraints that act on them; `router_gate` marks an MoE router's gate matrix (one row
// per expert), which model-level manifold optimizers keep on per-row spheres.
enum class Role { none, embedding, output_head, norm, bias, query, key, router_gate };

// The two ways a parameter is updated.
enum class Path {
  matrix,    // momentum, orthogonalisation, constraint
  fallback,  // the composition's Fallback (AdamW, SGD, ...)
};

[[nodiscard]] constexpr std::string_view to_string(Role r) {
  switch (r) {
    case Role::none: return "none";
    case Role::embedding: return "embedding";
    case Role::output_head: return "output_head";
    case Role::norm: return "norm";
    case Role::bias: return "bias";
    case Role::query: return "query";
    case Role::key: return "key";
    case Role::router_gate: return "router_gate";
  }
  return "?";
}

[[nodiscard]] constexpr std::string_view to_string(Path p) { return p == Path::matrix ? "matrix" : "fallback"; }

// Per-parameter options given at registration.
struct ParamOptions {
  Role role = Role::none;
  std::optional<Path> path{};  // explicit override of the router's decision
  // Attention projections (role query / key, nn.Linear layout [heads * head_dim, d_model]):
  // the number of heads, and how many rows at the end of each head's block are rotary
  // (MLA-style q^R). 0 = not split into heads.
  index_t heads = 0;
  index_t rotary_rows = 0;
  // Modular learning-rate scaling (Optimizer::Options::modular): this tensor's layer index
  // (1-based: 1 .. depth) and the model's depth. 0 = not given.
  index_t layer = 0;
  index_t depth = 0;
  // Quantized view (straight-through training, core/master_weights.hpp): the registered tensor
  // receives the master weights fake-quantized to this many bits (symmetric, one absmax scale
  // per tensor) after every step, and the optimizer keeps the value_type master. 0 = off;
  // otherwise 2 .. 16.
  index_t fake_quant_bits = 0;
  // Parameter groups (torch's param_groups, one tensor at a time): this tensor's learning rate
  // is its path's lr (matrix or fallback, after the schedule) times lr_scale, and weight_decay,
  // when set, replaces its path's weight decay (e.g. 0 for embeddings and norms). Reuse one
  // ParamOptions value for every tensor of a group. Shown in the routing report, stored in
  // checkpoints and restored by load(); change them later with Optimizer::set_param_group.
  double lr_scale = 1.0;
  std::optional<double> weight_decay{};
};

struct ParamInfo {
  std::string name;
  Shape shape;  // logical, outermost first
  Role role = Role::none;
  std::optional<Path> path_override{};
  index_t heads = 0;        // see ParamOptions
  index_t rotary_rows = 0;  // see ParamOptions
  index_t layer = 0;        // see ParamOptions
  index_t depth = 0;        // see ParamOptions

  // Rows of one head's block (rows / heads), or 0 when not split into heads.
  [[nodiscard]] index_t head_dim() const { return heads > 0 ? shape.rows() / heads : 0; }
};

// The learning rate and weight decay of one fallback update: the fallback's own (after the
// schedule), or a tensor's group overrides (ParamOptions::lr_scale / weight_decay).
struct FallbackRates {
  double lr = 0;
  double weight_decay = 0;
};

// The router's verdict, with the rule that produced it (shown in the routing report).
struct Route {
  Path path = Path::fallback;
  std::string rule;
};

}  // namespace muon
