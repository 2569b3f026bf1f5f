#pragma once
// Muon: momentum + Newton-Schulz orthogonalisation for matrices, AdamW for everything else
// (embeddings, output heads, norms, biases, vectors, very skinny matrices).
//   muon::Muon<muon::backend::Eigen<float>> opt({.lr = 0.02, .fallback = {.lr = 3e-4}});
// Keller Jordan, "Muon: An optimizer for hidden layers in neural networks" (2024),
// github.com/KellerJordan/Muon; the step is torch.optim.Muon's (see core/optimizer.hpp).
#include "muon/core/optimizer.hpp"
#include "muon/policy/constraint/none.hpp"
#include "muon/policy/constraint/qk_clip.hpp"
#include "muon/policy/fallback/adamw.hpp"
#include "muon/policy/fallback/lion.hpp"
#include "muon/policy/fallback/sgd.hpp"
#include "muon/policy/filter/none.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"
#include "muon/policy/router/shape_role.hpp"

namespace muon {

template <class B>
using Muon = Optimizer<B, policy::NoFilter, policy::ShapeRoleRouter, policy::NewtonSchulz, policy::NoConstraint,
                       policy::AdamW>;

// Muon with SGD for the fallback group (e.g. to reproduce SGD-based baselines).
template <class B>
using MuonSGD = Optimizer<B, policy::NoFilter, policy::ShapeRoleRouter, policy::NewtonSchulz, policy::NoConstraint,
                          policy::SGD>;

// Muon with Lion for the fallback group (sign updates for embeddings, heads, norms, biases).
template <class B>
using MuonLion = Optimizer<B, policy::NoFilter, policy::ShapeRoleRouter, policy::NewtonSchulz, policy::NoConstraint,
                           policy::Lion>;

// MuonClip (Kimi K2): Muon with per-head QK-Clip on the tensors registered as query / key
// projections with heads (policy/constraint/qk_clip.hpp; logits reported by muon::set_max_logits).
template <class B>
using MuonClip = Optimizer<B, policy::NoFilter, policy::ShapeRoleRouter, policy::NewtonSchulz, policy::QKClip,
                           policy::AdamW>;

}  // namespace muon
