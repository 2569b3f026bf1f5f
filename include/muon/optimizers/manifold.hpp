#pragma once
// Manifold-constrained compositions: the matrix path keeps each tensor on a manifold.
//   HypersphereMuon  every logical row at unit norm (embeddings, router gates, stacks); the
//                    RankRouter sends embeddings and output heads to the matrix path too.
//   muon::HypersphereMuon<muon::backend::Eigen<float>> opt({.lr = 0.05, .lr_adjust = muon::LrAdjust::none});
// Jianlin Su (kexue.fm), hyperspherical steepest descent; Jeremy Bernstein, "Modular Manifolds"
// (Thinking Machines Lab, 2025). See docs/hypersphere.md.
#include "muon/core/optimizer.hpp"
#include "muon/policy/constraint/hypersphere.hpp"
#include "muon/policy/fallback/adamw.hpp"
#include "muon/policy/filter/none.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"
#include "muon/policy/router/rank.hpp"

namespace muon {

// Hyperspherical descent on every matrix row (policy::Hypersphere), AdamW for norms, biases and
// vectors. The orthogonalizer is not used by the constraint; it is the one that runs when the
// constraint is switched off (Options::enable_constraint = false). Use LrAdjust::none: the step
// of each row is then lr (radians, to first order), whatever the matrix shape.
template <class B>
using HypersphereMuon = Optimizer<B, policy::NoFilter, policy::RankRouter, policy::NewtonSchulz, policy::Hypersphere,
                                  policy::AdamW>;

}  // namespace muon
