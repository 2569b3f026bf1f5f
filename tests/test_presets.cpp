// The phase presets: their values (as documented in optimizers/presets.hpp and docs/presets.md),
// field-by-field overrides, and that each builds a working optimizer.
#include <catch2/catch.hpp>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

namespace {
using B = muon::backend::Eigen<float>;
}

TEST_CASE("preset values", "[presets]") {
  const auto p1 = muon::presets::pretraining<B>();
  CHECK(p1.metadata.phase == 1);
  CHECK(p1.options.lr == 0.01);
  CHECK(p1.options.momentum == 0.95);
  CHECK(p1.options.filter.alpha == 0.98);
  CHECK(p1.options.filter.lamb == 0.05);
  CHECK(p1.options.constraint.mode == muon::policy::QKClipMode::weight_norm);
  CHECK(p1.options.constraint.max_head_norm == 30.0);
  CHECK(p1.options.fallback.lr == 1e-4);
  CHECK(p1.options.fallback.weight_decay == 0.01);
  CHECK(p1.options.enable_muon);
  CHECK_FALSE(p1.metadata.kl_coefficient.has_value());

  const auto p3 = muon::presets::rl<B>();
  CHECK(p3.metadata.phase == 3);
  CHECK(p3.options.lr == 5e-4);
  CHECK(p3.options.filter.lamb == 0.1);
  CHECK(p3.options.constraint.max_head_norm == 25.0);
  CHECK(p3.metadata.kl_coefficient == 0.1);

  const auto p5 = muon::presets::quantized<B>();
  CHECK(p5.options.filter.lamb == 2.0);
  CHECK(p5.metadata.master_weights);
  CHECK(p5.options.loss_scaling);
  CHECK_FALSE(muon::presets::pretraining<B>().options.loss_scaling);

  const auto p6 = muon::presets::prompt_baking<B>();
  CHECK_FALSE(p6.options.enable_muon);

  const auto p7 = muon::presets::svf<B>();
  CHECK_FALSE(p7.options.enable_muon);
  CHECK(p7.metadata.kl_coefficient == 0.2);

  for (int phase : {1, 3, 5, 6, 7}) CHECK(muon::presets::phase<B>(phase).metadata.phase == phase);
  CHECK_THROWS_WITH(muon::presets::phase<B>(2), Catch::Contains("no preset for phase 2"));
}

TEST_CASE("presets build working optimizers and override field by field", "[presets]") {
  for (int phase : {1, 3, 5, 6, 7}) {
    auto preset = muon::presets::phase<B>(phase);
    preset.options.fallback.lr = 3e-4;  // override one field
    muon::MuonGrokfastClip<B> opt(preset.options);
    Eigen::MatrixXf wq = Eigen::MatrixXf::Random(16, 32), gq = Eigen::MatrixXf::Random(16, 32);
    Eigen::VectorXf b = Eigen::VectorXf::Random(16), gb = Eigen::VectorXf::Random(16);
    opt.add("attn.q", wq, gq, {.role = muon::Role::query, .heads = 4});
    opt.add("attn.q.bias", b, gb, {.role = muon::Role::bias});
    INFO("phase " << phase);
    CHECK(opt.fallback_lr() == 3e-4);
    CHECK(opt.path(0) == (preset.options.enable_muon ? muon::Path::matrix : muon::Path::fallback));
    CHECK(opt.step().all_applied());
    CHECK(wq.allFinite());
  }
}

TEST_CASE("make_optimizer knows the clip compositions and their fields", "[presets][by_name]") {
  auto opt = muon::make_optimizer<B>("muon_grokfast_clip",
                                     muon::parse_config("constraint.mode=weight_norm, constraint.max_head_norm=0.5"));
  Eigen::MatrixXf wq = Eigen::MatrixXf::Random(16, 32) * 10, gq = Eigen::MatrixXf::Random(16, 32);
  opt->add("q", wq, gq, {.role = muon::Role::query, .heads = 4});
  const auto r = opt->step();
  CHECK(r.constraint.clipped_heads == 4);
  for (int h = 0; h < 4; ++h) CHECK(wq.middleRows(4 * h, 4).norm() <= 0.5f * (1 + 1e-5f));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon_clip", muon::parse_config("constraint.mode=soft")),
                    Catch::Contains("'soft' is not one of logit, weight_norm"));
}

TEST_CASE("the quantized preset trains bf16 weights through master copies with a loss scale", "[presets][master_weights]") {
  using B = muon::backend::Eigen<float>;
  Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, Eigen::Dynamic> w(16, 16);
  Eigen::MatrixXf g(16, 16);
  for (Eigen::Index i = 0; i < w.size(); ++i) w.data()[i] = Eigen::bfloat16(0.1f * std::sin(0.3f * static_cast<float>(i)));
  const auto w0 = w;
  auto preset = muon::presets::quantized<B>();
  muon::MuonGrokfastClip<B> opt(preset.options);
  opt.add("w", w, g);
  for (int t = 0; t < 3; ++t) {
    for (Eigen::Index i = 0; i < g.size(); ++i) g.data()[i] = 256.0f * std::cos(0.7f * static_cast<float>(t + i));
    const auto r = opt.step({.inv_scale = 1.0 / 256.0});
    REQUIRE(r.all_applied());
    REQUIRE_FALSE(r.overflow);
  }
  CHECK(opt.memory_report().master_weight_bytes == 16 * 16 * sizeof(float));
  CHECK(w != w0);
}
