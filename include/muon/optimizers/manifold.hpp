#pragma once
// Manifold-constrained compositions: the matrix path keeps each tensor on a manifold.
//   HypersphereMuon  every logical row at unit norm (embeddings, router gates, stacks); the
//                    RankRouter sends embeddings and output heads to the matrix path too.
//   muon::HypersphereMuon<muon::backend::Eigen<float>> opt({.lr = 0.05});
//   StiefelMuon      manifold Muon: every matrix (slice) on the Stiefel manifold, W^T W = I
//                    (W W^T = I for a wide one).
//   muon::StiefelMuon<muon::backend::Eigen<float>> opt({.lr = 0.02});
// Both default to lr_adjust = none (their constraints ask for it): the step is lr along a unit
// direction, whatever the shape.
// Jianlin Su (kexue.fm), hyperspherical steepest descent; Jeremy Bernstein, "Modular Manifolds"
// (Thinking Machines Lab, 2025). See docs/hypersphere.md and docs/stiefel.md.
#include "muon/core/optimizer.hpp"
#include "muon/policy/constraint/hypersphere.hpp"
#include "muon/policy/constraint/stiefel.hpp"
#include "muon/policy/fallback/adamw.hpp"
#include "muon/policy/filter/none.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"
#include "muon/policy/orthogonalizer/polar_express.hpp"
#include "muon/policy/router/rank.hpp"
#include "muon/policy/router/shape_role.hpp"

namespace muon {

// Hyperspherical descent on every matrix row (policy::Hypersphere), AdamW for norms, biases and
// vectors. The orthogonalizer is not used by the constraint; it is the one that runs when the
// constraint is switched off (Options::enable_constraint = false). Use LrAdjust::none: the step
// of each row is then lr (radians, to first order), whatever the matrix shape.
template <class B>
using HypersphereMuon = Optimizer<B, policy::NoFilter, policy::RankRouter, policy::NewtonSchulz, policy::Hypersphere,
                                  policy::AdamW>;

// Manifold Muon (policy::Stiefel): the steepest tangent direction under the spectral norm by
// dual ascent, then the retraction W <- msign(W). Polar Express computes msign: its singular
// values land within about 0.1 of 1 (Keller Jordan's NS5 coefficients leave [0.7, 1.2]), which
// keeps the direction close to the exact dual solution and lets the retraction's polish reach
// the rounding floor in a few steps. Any orthogonalizer works (the polish repeats until the
// error stops halving); AdamW takes the tensors the ShapeRoleRouter keeps off the matrix path.
template <class B>
using StiefelMuon = Optimizer<B, policy::NoFilter, policy::ShapeRoleRouter, policy::PolarExpress, policy::Stiefel,
                              policy::AdamW>;

}  // namespace muon
