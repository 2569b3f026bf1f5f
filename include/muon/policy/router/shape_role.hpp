#pragma once
// ShapeRoleRouter: which parameters take the matrix (Muon) path.
//
// Rules, first match wins (the routing report names the rule):
//   1. an explicit override (ParamOptions::path, or Options::overrides by name);
//   2. role embedding / output_head / norm / bias           -> fallback  (Muon's own guidance:
//      orthogonalised updates suit hidden linear maps, not lookups, logits or gains);
//   3. rank < 2                                              -> fallback;
//   4. rank > 3                                              -> fallback  (reshape conv filters
//      to a 2-D view, e.g. (out, in*kh*kw), to put them on the matrix path);
//   5. min(rows, cols) < min_dim                             -> fallback;
//   6. max(rows, cols) / min(rows, cols) > max_aspect_ratio  -> fallback  (very skinny matrices
//      gain little from orthogonalisation; the MuonFast routing audit's 32:1 rule);
//   7. otherwise (rank 2, or rank 3 = a stack of matrices)   -> matrix.
// rows and cols are the last two dimensions of the logical shape.
#include <algorithm>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "muon/core/error.hpp"
#include "muon/core/param.hpp"
#include "muon/core/validate.hpp"

namespace muon::policy {

class ShapeRoleRouter {
 public:
  struct Options {
    index_t min_dim = 2;             // smallest matrix dimension allowed on the matrix path
    double max_aspect_ratio = 32.0;  // larger ratios go to the fallback
    std::vector<std::pair<std::string, Path>> overrides{};  // by parameter name
  };

  ShapeRoleRouter() = default;
  explicit ShapeRoleRouter(Options options) : options_(std::move(options)) {
    if (options_.min_dim < 1) detail::fail("ShapeRoleRouter: option 'min_dim' must be >= 1");
    detail::require_finite("ShapeRoleRouter", "max_aspect_ratio", options_.max_aspect_ratio);
    if (options_.max_aspect_ratio < 1) detail::fail("ShapeRoleRouter: option 'max_aspect_ratio' must be >= 1");
  }
  [[nodiscard]] const Options& options() const { return options_; }

  [[nodiscard]] Route route(const ParamInfo& info) const {
    if (info.path_override) return {*info.path_override, "override (registration)"};
    for (const auto& [name, path] : options_.overrides)
      if (name == info.name) return {path, "override (router options)"};
    switch (info.role) {
      case Role::embedding:
      case Role::output_head:
      case Role::norm:
      case Role::bias: return {Path::fallback, "role " + std::string(to_string(info.role))};
      default: break;
    }
    const std::size_t rank = info.shape.rank();
    if (rank < 2) return {Path::fallback, "rank " + std::to_string(rank) + " < 2"};
    if (rank > 3) return {Path::fallback, "rank " + std::to_string(rank) + " > 3 (use a 2-D view)"};
    const index_t lo = std::min(info.shape.rows(), info.shape.cols());
    const index_t hi = std::max(info.shape.rows(), info.shape.cols());
    if (lo < options_.min_dim)
      return {Path::fallback, "min dim " + std::to_string(lo) + " < " + std::to_string(options_.min_dim)};
    const double aspect = static_cast<double>(hi) / static_cast<double>(lo);
    if (aspect > options_.max_aspect_ratio) {
      std::ostringstream os;
      os << "aspect " << aspect << ":1 > " << options_.max_aspect_ratio << ":1";
      return {Path::fallback, os.str()};
    }
    return {Path::matrix, rank == 3 ? "rank 3 (per-slice matrices)" : "rank 2"};
  }

 private:
  Options options_{};
};

}  // namespace muon::policy
