#pragma once
// FallbackOnlyRouter: every tensor takes the fallback path. It makes a composition that is "the
// fallback optimizer, with the other stages in front" (muon::Grokfast<B> = Grokfast + AdamW for
// everything) a type of its own rather than a runtime switch.
#include "muon/core/param.hpp"

namespace muon::policy {

class FallbackOnlyRouter {
 public:
  struct Options {};

  FallbackOnlyRouter() = default;
  explicit FallbackOnlyRouter(const Options&) {}
  [[nodiscard]] const Options& options() const { return options_; }

  [[nodiscard]] Route route(const ParamInfo& info) const {
    if (info.path_override == Path::matrix) return {Path::matrix, "override (registration)"};
    return {Path::fallback, "fallback-only composition"};
  }

 private:
  Options options_{};
};

}  // namespace muon::policy
