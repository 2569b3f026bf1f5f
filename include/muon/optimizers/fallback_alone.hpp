#pragma once
// The fallback optimizers alone: every tensor takes the fallback path (FallbackOnlyRouter) and
// no filter runs, so each alias is plain AdamW, Lion or SGD with the library's registration,
// checkpoints, reports, schedules and master weights around it:
//   muon::AdamW<muon::backend::Eigen<float>> opt({.fallback = {.lr = 3e-4, .weight_decay = 0.1}});
// Hyperparameters live in Options::fallback; the matrix-path fields (lr, momentum, ...) act only
// on a tensor registered with .path = muon::Path::matrix. The orthogonalizer is named because a
// composition must name one; it plans no workspace unless such a tensor is registered.
// Defaults (the policies'):
//   AdamW  torch.optim.AdamW: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01
//   Lion   lion-pytorch: lr 1e-4, betas (0.9, 0.99), weight_decay 0
//   SGD    torch.optim.SGD: lr 1e-3, momentum 0, dampening 0, nesterov false, weight_decay 0
// muon::policy has policies of the same names (policy::AdamW is the update these run); code in
// namespace muon that brings policy in with a using-directive must qualify them.
#include "muon/core/optimizer.hpp"
#include "muon/policy/constraint/none.hpp"
#include "muon/policy/fallback/adamw.hpp"
#include "muon/policy/fallback/lion.hpp"
#include "muon/policy/fallback/sgd.hpp"
#include "muon/policy/filter/none.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"
#include "muon/policy/router/fallback_only.hpp"

namespace muon {

template <class B>
using AdamW = Optimizer<B, policy::NoFilter, policy::FallbackOnlyRouter, policy::NewtonSchulz, policy::NoConstraint,
                        policy::AdamW>;

template <class B>
using Lion = Optimizer<B, policy::NoFilter, policy::FallbackOnlyRouter, policy::NewtonSchulz, policy::NoConstraint,
                       policy::Lion>;

template <class B>
using SGD = Optimizer<B, policy::NoFilter, policy::FallbackOnlyRouter, policy::NewtonSchulz, policy::NoConstraint,
                      policy::SGD>;

}  // namespace muon
