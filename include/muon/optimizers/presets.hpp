#pragma once
// The phase presets of the MuonGrokfast guide, for MuonGrokfastClip<B> (optimizers/grokfast.hpp).
//
// A preset is a starting point: a full Options value (override any field afterwards) plus the
// metadata the guide attaches to the phase. Values (the guide's MuGrokConfig defaults, then each
// phase's changes):
//   common      Muon lr 0.01, momentum 0.95, NS5 x 5; Grokfast alpha 0.98; QK-Clip in
//               weight_norm mode (no logits needed) with max_head_norm 30; AdamW lr 1e-4,
//               betas (0.9, 0.999), weight decay 0.01
//   pretraining (phase 1)  lamb 0.05
//   rl          (phase 3)  Muon lr 5e-4, lamb 0.1, max_head_norm 25, KL coefficient 0.1
//   quantized   (phase 5)  lamb 2.0, master weights (see below), loss_scaling on
//   prompt_baking (phase 6) lamb 0.05, Muon off (enable_muon = false)
//   svf         (phase 7)  lamb 0.05, Muon off, KL coefficient 0.2
// The KL coefficient is the trainer's (a loss term), carried as metadata. master_weights says
// how the phase registers its tensors: the 16-bit weights themselves (bf16 / fp16) or quantized
// views (ParamOptions::fake_quant_bits); the optimizer then keeps the fp32 master copy
// (core/master_weights.hpp). loss_scaling lets steps take an inverse loss scale.
#include <optional>
#include <string_view>

#include "muon/core/error.hpp"
#include "muon/core/optimizer.hpp"
#include "muon/optimizers/grokfast.hpp"
#include "muon/policy/constraint/qk_clip.hpp"
#include "muon/policy/fallback/adamw.hpp"
#include "muon/policy/filter/grokfast_ema.hpp"
#include "muon/policy/orthogonalizer/newton_schulz.hpp"
#include "muon/policy/router/shape_role.hpp"

namespace muon {

struct PresetMetadata {
  std::string_view name;
  int phase = 0;
  std::optional<double> kl_coefficient{};  // for the trainer's loss, not used by the optimizer
  bool master_weights = false;             // register 16-bit tensors / quantized views (master kept by the optimizer)
};

template <class B>
struct Preset {
  typename MuonGrokfastClip<B>::Options options;
  PresetMetadata metadata;
};

namespace presets {

template <class B>
[[nodiscard]] typename MuonGrokfastClip<B>::Options common() {
  typename MuonGrokfastClip<B>::Options o;
  o.lr = 0.01;
  o.momentum = 0.95;
  o.filter = {.alpha = 0.98, .lamb = 0.05};
  o.constraint = {.mode = policy::QKClipMode::weight_norm, .max_head_norm = 30.0};
  o.fallback = {.lr = 1e-4, .beta1 = 0.9, .beta2 = 0.999, .weight_decay = 0.01};
  return o;
}

template <class B>
[[nodiscard]] Preset<B> pretraining() {
  return {common<B>(), {"pretraining", 1, std::nullopt, false}};
}

template <class B>
[[nodiscard]] Preset<B> rl() {
  auto o = common<B>();
  o.lr = 5e-4;
  o.filter.lamb = 0.1;
  o.constraint.max_head_norm = 25.0;
  return {o, {"rl", 3, 0.1, false}};
}

template <class B>
[[nodiscard]] Preset<B> quantized() {
  auto o = common<B>();
  o.filter.lamb = 2.0;
  o.loss_scaling = true;
  return {o, {"quantized", 5, std::nullopt, true}};
}

template <class B>
[[nodiscard]] Preset<B> prompt_baking() {
  auto o = common<B>();
  o.enable_muon = false;
  return {o, {"prompt_baking", 6, std::nullopt, false}};
}

template <class B>
[[nodiscard]] Preset<B> svf() {
  auto o = common<B>();
  o.enable_muon = false;
  return {o, {"svf", 7, 0.2, false}};
}

// By the guide's phase number (1, 3, 5, 6, 7).
template <class B>
[[nodiscard]] Preset<B> phase(int number) {
  switch (number) {
    case 1: return pretraining<B>();
    case 3: return rl<B>();
    case 5: return quantized<B>();
    case 6: return prompt_baking<B>();
    case 7: return svf<B>();
    default:
      detail::fail("presets::phase: no preset for phase " + std::to_string(number) + " (phases: 1, 3, 5, 6, 7)");
  }
}

}  // namespace presets
}  // namespace muon
