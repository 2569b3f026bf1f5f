// The run-time handle: make_optimizer(name, config) builds the same compositions a compile-time
// user names, and rejects unknown names, fields and values with a message that says which.
#include <catch2/catch.hpp>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>
#include <muon/optimizers/by_name.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {
using B = muon::backend::Eigen<float>;
}

TEST_CASE("parse_config reads name=value lists", "[by_name]") {
  const auto c = muon::parse_config(" lr = 0.01,fallback.lr=1e-4\n nesterov=false ,");
  CHECK(c.size() == 3);
  CHECK(c.at("lr") == "0.01");
  CHECK(c.at("fallback.lr") == "1e-4");
  CHECK(c.at("nesterov") == "false");
  CHECK_THROWS_WITH(muon::parse_config("lr"), Catch::Contains("'lr' is not name=value"));
  CHECK_THROWS_WITH(muon::parse_config("lr=1, lr=2"), Catch::Contains("option 'lr' is given twice"));
  CHECK_THROWS_WITH(muon::parse_config("=3"), Catch::Contains("has no name"));
}

TEST_CASE("every name builds, registers and steps", "[by_name]") {
  for (const auto& name : muon::optimizer_names()) {
    Eigen::MatrixXf w = Eigen::MatrixXf::Random(8, 16), g = Eigen::MatrixXf::Random(8, 16);
    Eigen::VectorXf b = Eigen::VectorXf::Random(8), gb = Eigen::VectorXf::Random(8);
    auto opt = muon::make_optimizer<B>(name);
    CHECK(opt->kind() == name);
    opt->add("w", w, g);
    opt->add("b", b, gb, {.role = muon::Role::bias});
    const Eigen::MatrixXf w0 = w;
    INFO(name);
    CHECK(opt->step().all_applied());
    CHECK(w != w0);
    const bool one_optimizer = name == "adamw" || name == "sgd" || name == "lion" || name == "grokfast";
    CHECK(opt->routing_report().count(muon::Path::matrix) == (one_optimizer ? 0u : 1u));
  }
}

TEST_CASE("a handle equals the compile-time composition with the same options", "[by_name]") {
  Eigen::MatrixXf w1 = Eigen::MatrixXf::Random(8, 16), g = Eigen::MatrixXf::Random(8, 16);
  Eigen::MatrixXf w2 = w1;
  auto handle = muon::make_optimizer<B>(
      "muon_grokfast", muon::parse_config("lr=0.01, filter.lamb=0.05, nesterov=off, lr_adjust=match_rms_adamw, "
                                          "orthogonalizer.steps=6, orthogonalizer.eps_mode=clamp"));
  muon::MuonGrokfast<B> direct({.lr = 0.01,
                                .nesterov = false,
                                .lr_adjust = muon::LrAdjust::match_rms_adamw,
                                .filter = {.lamb = 0.05},
                                .orthogonalizer = {.steps = 6, .eps_mode = muon::policy::EpsMode::clamp}});
  handle->add("w", w1, g);
  direct.add("w", w2, g);
  for (int i = 0; i < 3; ++i) {
    handle->step();
    direct.step();
  }
  CHECK(w1 == w2);
  // Checkpoints go through the handle too.
  std::stringstream file;
  handle->save(file);
  handle->load(file);
  CHECK(handle->steps_taken() == 3);
}

TEST_CASE("one-optimizer names take their options with or without the prefix", "[by_name]") {
  auto a = muon::make_optimizer<B>("adamw", muon::parse_config("lr=0.5, weight_decay=0"));
  CHECK(a->fallback_lr() == 0.5);
  auto s = muon::make_optimizer<B>("sgd", muon::parse_config("fallback.lr=0.25, momentum=0.9, nesterov=true"));
  CHECK(s->fallback_lr() == 0.25);
}

TEST_CASE("unknown names, fields and bad values are clear errors", "[by_name][bad_input]") {
  CHECK_THROWS_WITH(muon::make_optimizer<B>("adam"), Catch::Contains("unknown optimizer 'adam' (known: adamw"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("fallback.lrr=1")),
                    Catch::Contains("optimizer 'muon' has no option 'fallback.lrr' (options:") &&
                        Catch::Contains("fallback.lr,"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("lr=fast")),
                    Catch::Contains("option 'lr': 'fast' is not a number"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("lr=1e-3x")),
                    Catch::Contains("'1e-3x' is not a number"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("nesterov=maybe")),
                    Catch::Contains("'maybe' is not a boolean"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("lr_adjust=sqrt")),
                    Catch::Contains("'sqrt' is not one of none, original, match_rms_adamw"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("orthogonalizer.steps=2.5")),
                    Catch::Contains("is not an integer"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon_grokfast", muon::parse_config("filter.alpha=1.5")),
                    Catch::Contains("alpha"));  // the policy's own validation
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("filter.lamb=1")),
                    Catch::Contains("has no option 'filter.lamb'"));  // muon has no filter
}

TEST_CASE("schedules, loss scaling and modular scaling by name", "[by_name][schedule]") {
  using B = muon::backend::Eigen<double>;
  auto opt = muon::make_optimizer<B>(
      "muon", muon::parse_config("lr=0.1, schedule=warmup_cosine, schedule.warmup_steps=2, schedule.total_steps=10, "
                                 "schedule.min_lr_ratio=0.5, loss_scaling=true, fallback.lr=0.01"));
  Eigen::MatrixXd w = Eigen::MatrixXd::Ones(4, 6), g = Eigen::MatrixXd::Constant(4, 6, 2.0);
  opt->add("w", w, g);
  const auto r1 = opt->step({.inv_scale = 0.5});
  CHECK(r1.lr == Approx(0.05));  // warmup: 1/2 of 0.1
  CHECK(r1.fallback_lr == Approx(0.005));
  CHECK(opt->step().lr == Approx(0.1));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("schedule.total_steps=10")),
                    Catch::Contains("schedule = warmup_cosine"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("schedule=warmup_cosine")),
                    Catch::Contains("total_steps"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("modular.shape=true")), Catch::Contains("lr_adjust"));
  CHECK_NOTHROW(muon::make_optimizer<B>("muon", muon::parse_config("modular.shape=true, lr_adjust=none")));
}

TEST_CASE("manifold compositions by name take their constraint options", "[by_name][manifold]") {
  using B = muon::backend::Eigen<double>;
  auto stiefel = muon::make_optimizer<B>(
      "stiefel_muon", muon::parse_config("lr=0.05, lr_adjust=none, constraint.dual_steps=4, constraint.polish_steps=3, "
                                         "orthogonalizer.steps=6"));
  Eigen::MatrixXd w = Eigen::MatrixXd::Random(12, 6), g = Eigen::MatrixXd::Random(12, 6);
  stiefel->add("w", w, g);
  for (int t = 0; t < 5; ++t) stiefel->step();
  CHECK((w.transpose() * w - Eigen::MatrixXd::Identity(6, 6)).norm() < 1e-6);

  auto sphere = muon::make_optimizer<B>("hypersphere_muon",
                                        muon::parse_config("lr=0.1, lr_adjust=none, constraint.retraction=analytic"));
  Eigen::MatrixXd e = Eigen::MatrixXd::Random(10, 4), ge = Eigen::MatrixXd::Random(10, 4);
  e.rowwise().normalize();
  sphere->add("embed", e, ge, {.role = muon::Role::embedding});
  CHECK(sphere->routing_report().count(muon::Path::matrix) == 1);  // the RankRouter keeps embeddings
  sphere->step();
  CHECK((e.rowwise().norm().array() - 1.0).abs().maxCoeff() < 1e-12);
  CHECK_THROWS_WITH(muon::make_optimizer<B>("stiefel_muon", muon::parse_config("constraint.tau=3")),
                    Catch::Contains("constraint.tau"));
}

TEST_CASE("threads and bf16 precision by name", "[by_name][threads][bf16]") {
  using B = muon::backend::Eigen<float>;
  Eigen::MatrixXf w = Eigen::MatrixXf::Random(48, 32), g = Eigen::MatrixXf::Random(48, 32);
  Eigen::MatrixXf w1 = w;
  auto one = muon::make_optimizer<B>("muon", muon::parse_config("threads=1"));
  auto three = muon::make_optimizer<B>("muon_sgd", muon::parse_config("threads=3"));
  one->add("w", w, g);
  three->add("w", w1, g);
  one->step();
  three->step();
  CHECK(w == w1);  // a lone small tensor runs whole on one thread either way
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("threads=-2")), Catch::Contains("threads"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("orthogonalizer.precision=fp8")),
                    Catch::Contains("orthogonalizer.precision"));
  auto bf16 = muon::make_optimizer<B>("stiefel_muon", muon::parse_config("orthogonalizer.precision=bf16"));
  Eigen::MatrixXf w2 = w;
  if (B{}.bf16_unavailable_reason().empty())
    CHECK_NOTHROW(bf16->add("w", w2, g));
  else
    CHECK_THROWS_WITH(bf16->add("w", w2, g), Catch::Contains("bf16"));
}

TEST_CASE("by name: integers in range, sane iteration counts, one spelling per setting, short quotes", "[by_name]") {
  using B = muon::backend::Eigen<float>;
  // 2^32 used to wrap to 0 iterations: nothing was orthogonalised.
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("orthogonalizer.steps=4294967296")),
                    Catch::Contains("orthogonalizer.steps") && Catch::Contains("out of range"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("orthogonalizer.steps=99999999999999999999999")),
                    Catch::Contains("out of range for an integer"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("orthogonalizer.steps=101")),
                    Catch::Contains("'steps' must be in [0, 100]"));
  CHECK_NOTHROW(muon::make_optimizer<B>("muon", muon::parse_config("orthogonalizer.steps=100")));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("stiefel_muon", muon::parse_config("constraint.dual_steps=1001")),
                    Catch::Contains("'dual_steps' must be in [1, 1000]"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("stiefel_muon", muon::parse_config("constraint.polish_steps=5000")),
                    Catch::Contains("'polish_steps' must be in [0, 1000]"));
  // One setting under two names: an error naming both, not "the last one wins".
  CHECK_THROWS_WITH(muon::make_optimizer<B>("adamw", muon::parse_config("lr=1e-3, fallback.lr=1e-2")),
                    Catch::Contains("'fallback.lr'") && Catch::Contains("'lr'") && Catch::Contains("give it once"));
  CHECK_NOTHROW(muon::make_optimizer<B>("adamw", muon::parse_config("lr=1e-3")));
  CHECK_NOTHROW(muon::make_optimizer<B>("muon", muon::parse_config("lr=0.02, fallback.lr=1e-3")));  // two settings
  // A huge value is quoted as a short prefix with its length.
  const std::string huge(100000, '7');
  try {
    (void)muon::make_optimizer<B>("muon", muon::parse_config("lr=x" + huge));
    FAIL("no error");
  } catch (const muon::Error& e) {
    const std::string what = e.what();
    CHECK(what.size() < 300);
    CHECK_THAT(what, Catch::Contains("100001 characters"));
  }
}

TEST_CASE("by name: muon_clip takes max logits and clips as the typed MuonClip does", "[by_name][qk_clip]") {
  using B = muon::backend::Eigen<float>;
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  const muon::ParamOptions qo{.role = muon::Role::query, .heads = 4, .rotary_rows = 2};
  const muon::ParamOptions ko{.role = muon::Role::key, .heads = 4};
  for (const std::string name : {"muon_clip", "muon_grokfast_clip"}) {
    INFO(name);
    const Mat q0 = Mat::Random(32, 16), k0 = Mat::Random(32, 16);
    const Mat gq = Mat::Random(32, 16), gk = Mat::Random(32, 16);
    Mat q1 = q0, k1 = k0, q2 = q0, k2 = k0;
    auto handle = muon::make_optimizer<B>(name, muon::parse_config("lr=0.02, constraint.tau=100, constraint.alpha=0.3"));
    handle->add("q", q1, gq, qo);
    handle->add("k", k1, gk, ko);
    const muon::policy::QKClip::Options clip{.tau = 100, .alpha = 0.3};
    muon::MuonClip<B> direct({.lr = 0.02, .constraint = clip});
    muon::MuonGrokfastClip<B> direct_grokfast({.lr = 0.02, .constraint = clip});
    const bool grokfast = name == "muon_grokfast_clip";
    if (grokfast) {
      direct_grokfast.add("q", q2, gq, qo);
      direct_grokfast.add("k", k2, gk, ko);
    } else {
      direct.add("q", q2, gq, qo);
      direct.add("k", k2, gk, ko);
    }
    const std::vector<float> s{10, 250, 100, 1000};  // heads 1 and 3 above tau
    for (int t = 0; t < 2; ++t) {
      // Step 1: the pair form; step 2: one tensor at a time.
      if (t == 0) {
        handle->set_max_logits("q", "k", s);
      } else {
        handle->set_max_logits("q", s);
        handle->set_max_logits("k", s);
      }
      if (grokfast)
        muon::set_max_logits(direct_grokfast, "q", "k", s);
      else
        muon::set_max_logits(direct, "q", "k", s);
      const auto r = handle->step();
      const auto rd = grokfast ? direct_grokfast.step() : direct.step();
      CHECK(r.constraint.clipped_heads == 4);
      CHECK(rd.constraint.clipped_heads == 4);
      CHECK(r.constraint.tensors_without_logits == 0);
      CHECK(r.constraint.max_head_value == 1000.0);
      CHECK(q1 == q2);  // same bits
      CHECK(k1 == k2);
    }
    const auto r = handle->step();  // no report: nothing clipped, and said so
    CHECK(r.constraint.clipped_heads == 0);
    CHECK(r.constraint.tensors_without_logits == 2);
  }
}

TEST_CASE("by name: max logits are refused where QK-Clip cannot take them", "[by_name][qk_clip][bad_input]") {
  using B = muon::backend::Eigen<float>;
  Eigen::MatrixXf q = Eigen::MatrixXf::Random(32, 16), gq = Eigen::MatrixXf::Random(32, 16);
  Eigen::MatrixXf k = Eigen::MatrixXf::Random(32, 16), gk = Eigen::MatrixXf::Random(32, 16);
  Eigen::MatrixXf mlp = Eigen::MatrixXf::Random(16, 16), gmlp = Eigen::MatrixXf::Random(16, 16);
  Eigen::VectorXf bias = Eigen::VectorXf::Random(16), gbias = Eigen::VectorXf::Random(16);
  const std::vector<float> s{10, 250, 100, 1000};
  auto build = [&](const std::string& name, const std::string& config) {
    auto opt = muon::make_optimizer<B>(name, muon::parse_config(config));
    opt->add("q", q, gq, {.role = muon::Role::query, .heads = 4});
    opt->add("k", k, gk, {.role = muon::Role::key, .heads = 4});
    opt->add("mlp", mlp, gmlp);
    opt->add("bias", bias, gbias, {.role = muon::Role::bias});
    return opt;
  };
  // A composition without QK-Clip.
  for (const std::string name : {"muon", "muon_grokfast", "stiefel_muon", "adamw"}) {
    auto opt = build(name, "");
    CHECK_THROWS_WITH(opt->set_max_logits("q", s), Catch::Contains("parameter 'q'") && Catch::Contains("no QK-Clip"));
    CHECK_THROWS_WITH(opt->set_max_logits("q", "k", s),
                      Catch::Contains("parameter 'q'") && Catch::Contains("'" + name + "' has no QK-Clip"));
  }
  // muon_clip: the typed call's checks, each naming the tensor, and nothing set.
  auto opt = build("muon_clip", "");
  CHECK_THROWS_WITH(opt->set_max_logits("mlp", s), Catch::Contains("'mlp'") && Catch::Contains("role query or key"));
  CHECK_THROWS_WITH(opt->set_max_logits("bias", s), Catch::Contains("'bias'") && Catch::Contains("fallback path"));
  CHECK_THROWS_WITH(opt->set_max_logits("q", std::vector<float>{1, 2, 3}),
                    Catch::Contains("'q'") && Catch::Contains("3 max logits for 4 heads"));
  CHECK_THROWS_WITH(opt->set_max_logits("nope", s), Catch::Contains("'nope'"));
  CHECK_THROWS_WITH(opt->set_max_logits("q", "mlp", s), Catch::Contains("'mlp'"));  // the pair: checked first
  CHECK_THROWS_WITH(opt->set_max_logits("q", "q", s), Catch::Contains("'q'") && Catch::Contains("two tensors"));
  const auto r = opt->step();
  CHECK(r.constraint.clipped_heads == 0);  // the failed calls reported nothing
  CHECK(r.constraint.tensors_without_logits == 2);
  // weight_norm mode takes no logits.
  auto weight = build("muon_clip", "constraint.mode=weight_norm");
  CHECK_THROWS_WITH(weight->set_max_logits("q", s), Catch::Contains("'q'") && Catch::Contains("weight_norm"));
}

TEST_CASE("by name: state formats for the momentum, the Grokfast average and the fallback's moments",
          "[by_name][state_format]") {
  Eigen::MatrixXf w1 = Eigen::MatrixXf::Random(8, 16), g = Eigen::MatrixXf::Random(8, 16);
  Eigen::VectorXf b1 = Eigen::VectorXf::Random(40), gb = Eigen::VectorXf::Random(40);
  Eigen::MatrixXf w2 = w1;
  Eigen::VectorXf b2 = b1;
  auto handle = muon::make_optimizer<B>(
      "muon_grokfast", muon::parse_config("momentum_state.format=bf16, momentum_state.rounding=stochastic, "
                                          "filter.state.format=bf16, fallback.state.format=q8, fallback.state.block=32"));
  muon::MuonGrokfast<B> direct({.momentum_state = {muon::StateFormat::bf16, muon::StateRounding::stochastic},
                                .filter = {.state = {muon::StateFormat::bf16}},
                                .fallback = {.state = {muon::StateFormat::q8, muon::StateRounding::nearest_even, 32}}});
  handle->add("w", w1, g);
  handle->add("b", b1, gb, {.role = muon::Role::bias});
  direct.add("w", w2, g);
  direct.add("b", b2, gb, {.role = muon::Role::bias});
  for (int i = 0; i < 3; ++i) {
    handle->step();
    direct.step();
  }
  CHECK(w1 == w2);
  CHECK(b1 == b2);
  std::ostringstream report;
  report << handle->routing_report();
  CHECK_THAT(report.str(), Catch::Contains("momentum bf16") && Catch::Contains("q8/32"));
  // One-optimizer names take the fallback's state without the prefix too.
  auto lion = muon::make_optimizer<B>("lion", muon::parse_config("state.format=bf16"));
  Eigen::VectorXf b3 = b1;
  lion->add("b", b3, gb);
  CHECK_NOTHROW(lion->step());
  // Formats an item cannot take, unknown ones, and a q8 block out of range are refused by name.
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("momentum_state.format=q8")),
                    Catch::Contains("option 'momentum_state.format': 'q8' is not one of full, bf16"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("fallback.state.format=q4")),
                    Catch::Contains("'q4' is not one of full, bf16, q8"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("fallback.state.block=8")),
                    Catch::Contains("block"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("fallback.state.block=-1")),
                    Catch::Contains("must be >= 0"));
  CHECK_THROWS_WITH(muon::make_optimizer<B>("muon", muon::parse_config("fallback.state.rounding=up")),
                    Catch::Contains("'up' is not one of nearest_even, stochastic"));
}
