#pragma once
// Umbrella header: the only include a user needs. The Eigen backend comes with it whenever
// Eigen is on the include path (link muon::eigen); other backends bring their own dependency and
// have their own header.
#include "muon/version.hpp"

#include "muon/backend/concept.hpp"
#include "muon/core/archetypes.hpp"
#include "muon/core/concepts.hpp"
#include "muon/core/error.hpp"
#include "muon/core/optimizer.hpp"
#include "muon/core/param.hpp"
#include "muon/core/report.hpp"
#include "muon/core/tensor.hpp"

#include "muon/policy/constraint/hypersphere.hpp"
#include "muon/policy/constraint/none.hpp"
#include "muon/policy/constraint/qk_clip.hpp"
#include "muon/policy/constraint/stiefel.hpp"
#include "muon/policy/fallback/adamw.hpp"
#include "muon/policy/fallback/lion.hpp"
#include "muon/policy/fallback/sgd.hpp"
#include "muon/policy/filter/grokfast_ema.hpp"
#include "muon/policy/filter/grokfast_ma.hpp"
#include "muon/policy/filter/none.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"
#include "muon/policy/orthogonalizer/polar_express.hpp"
#include "muon/policy/orthogonalizer/svd_polar.hpp"
#include "muon/policy/router/fallback_only.hpp"
#include "muon/policy/router/rank.hpp"
#include "muon/policy/router/shape_role.hpp"

#include "muon/optimizers/by_name.hpp"
#include "muon/optimizers/fallback_alone.hpp"
#include "muon/optimizers/grokfast.hpp"
#include "muon/optimizers/manifold.hpp"
#include "muon/optimizers/manifold_model.hpp"
#include "muon/optimizers/muon.hpp"
#include "muon/optimizers/presets.hpp"

#include "muon/ops/orthogonalize.hpp"
#include "muon/ops/qk_clip.hpp"

#if __has_include(<Eigen/Core>)
#include "muon/backend/eigen.hpp"
#endif
