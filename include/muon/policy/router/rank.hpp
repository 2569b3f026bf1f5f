#pragma once
// RankRouter: the matrix path for every rank-2 or rank-3 tensor that is not a gain or a bias,
// embeddings, output heads and router gates included. It is the router for constraints that act
// on the rows of any matrix (policy::Hypersphere keeps embedding rows at unit norm), where
// ShapeRoleRouter's Muon-specific rules (embeddings and heads to the fallback, skinny matrices
// to the fallback) would keep the constraint away from exactly the tensors it is for.
//
// Rules, first match wins (the routing report names the rule):
//   1. an explicit override (ParamOptions::path, or Options::overrides by name);
//   2. role norm / bias        -> fallback  (gains and offsets are not rows of a matrix);
//   3. rank < 2                -> fallback;
//   4. rank > 3                -> fallback  (register a 2-D view to put it on the matrix path);
//   5. otherwise               -> matrix    (rank 2, or rank 3 = a stack of matrices).
// No options beyond the overrides.
#include <string>
#include <utility>
#include <vector>

#include "muon/core/concepts.hpp"
#include "muon/core/param.hpp"

namespace muon::policy {

class RankRouter {
 public:
  struct Options {
    std::vector<std::pair<std::string, Path>> overrides{};  // by parameter name
  };

  RankRouter() = default;
  explicit RankRouter(Options options) : options_(std::move(options)) {}
  [[nodiscard]] const Options& options() const { return options_; }

  [[nodiscard]] Route route(const ParamInfo& info) const {
    if (info.path_override) return {*info.path_override, "override (registration)"};
    for (const auto& [name, path] : options_.overrides)
      if (name == info.name) return {path, "override (router options)"};
    if (info.role == Role::norm || info.role == Role::bias)
      return {Path::fallback, "role " + std::string(to_string(info.role))};
    const std::size_t rank = info.shape.rank();
    if (rank < 2) return {Path::fallback, "rank " + std::to_string(rank) + " < 2"};
    if (rank > 3) return {Path::fallback, "rank " + std::to_string(rank) + " > 3 (use a 2-D view)"};
    std::string rule = rank == 3 ? "rank 3 (per-slice matrices)" : "rank 2";
    if (info.role != Role::none) rule += " (role " + std::string(to_string(info.role)) + ")";
    return {Path::matrix, std::move(rule)};
  }

 private:
  Options options_{};
};

static_assert(Router<RankRouter>, "muon::policy::RankRouter must satisfy muon::Router");

}  // namespace muon::policy
