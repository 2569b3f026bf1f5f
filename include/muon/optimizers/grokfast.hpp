#pragma once
// Grokfast compositions: the Grokfast EMA filter (slow-gradient amplification) in front of
//   Grokfast<B>      AdamW for every tensor (the official Grokfast + AdamW setup);
//   MuonGrokfast<B>  Muon for matrices, AdamW for the rest;
//   MuonGrokfastClip<B>  MuonGrokfast with per-head QK-Clip on tensors registered as query / key
//                    with heads (the full MuonGrokfast system; presets in optimizers/presets.hpp).
// and the moving-average filter (the official gradfilter_ma: window 100, lamb 5, mean, warm-up)
// in front of
//   GrokfastMA<B>      AdamW for every tensor;
//   MuonGrokfastMA<B>  Muon for matrices, AdamW for the rest.
// Filter options go in Options::filter, AdamW's in Options::fallback. GrokfastMA<B> is also the
// name of the filter policy, muon::policy::GrokfastMA.
// Lee et al., "Grokfast: Accelerated Grokking by Amplifying Slow Gradients" (arXiv:2405.20233).
#include "muon/core/optimizer.hpp"
#include "muon/policy/constraint/none.hpp"
#include "muon/policy/constraint/qk_clip.hpp"
#include "muon/policy/fallback/adamw.hpp"
#include "muon/policy/filter/grokfast_ema.hpp"
#include "muon/policy/filter/grokfast_ma.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"
#include "muon/policy/router/fallback_only.hpp"
#include "muon/policy/router/shape_role.hpp"

namespace muon {

template <class B>
using Grokfast = Optimizer<B, policy::GrokfastEMA, policy::FallbackOnlyRouter, policy::NewtonSchulz,
                           policy::NoConstraint, policy::AdamW>;

template <class B>
using MuonGrokfast = Optimizer<B, policy::GrokfastEMA, policy::ShapeRoleRouter, policy::NewtonSchulz,
                               policy::NoConstraint, policy::AdamW>;

template <class B>
using MuonGrokfastClip = Optimizer<B, policy::GrokfastEMA, policy::ShapeRoleRouter, policy::NewtonSchulz,
                                   policy::QKClip, policy::AdamW>;

template <class B>
using GrokfastMA = Optimizer<B, policy::GrokfastMA, policy::FallbackOnlyRouter, policy::NewtonSchulz,
                             policy::NoConstraint, policy::AdamW>;

template <class B>
using MuonGrokfastMA = Optimizer<B, policy::GrokfastMA, policy::ShapeRoleRouter, policy::NewtonSchulz,
                                 policy::NoConstraint, policy::AdamW>;

}  // namespace muon
