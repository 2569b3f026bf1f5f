// Parameter groups (ParamOptions::lr_scale / weight_decay): one optimizer serves tensors with
// different learning rates and weight decays, as torch's param_groups do, on both paths. A
// grouped tensor must step exactly as it would in an optimizer whose own options are the
// group's; groups show in the routing report, travel in checkpoints and can be changed.
// Stepping tests run on every backend in MUON_TEST_BACKENDS (the tensors are Eigen matrices,
// which every backend registers); registration checks and the by-name handle use one backend.
#include <catch2/catch.hpp>

#include <muon/backend/eigen.hpp>
#include <muon/core/archetypes.hpp>
#include <muon/muon.hpp>
#include <sstream>

#include "support/backends.hpp"

namespace {

template <class T>
using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
template <class T>
using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
template <class B>
using Opt = muon::Muon<B>;

template <class T>
void fill(Mat<T>& m, double phase) {
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(std::sin(phase + 0.37 * static_cast<double>(i)));
}
template <class T>
void fill(Vec<T>& m, double phase) {
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(std::cos(phase + 0.29 * static_cast<double>(i)));
}

}  // namespace

TEMPLATE_TEST_CASE("a grouped tensor steps as in an optimizer with the group's options", "[param_groups]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  const typename Opt<B>::Options base{.lr = 0.02, .weight_decay = 0.05, .fallback = {.lr = 1e-3, .weight_decay = 0.01}};
  Mat<T> w(6, 10), gw(6, 10), w_ref(6, 10);
  Vec<T> norm(10), gnorm(10), norm_ref(10);
  Vec<T> bias(6), gbias(6), bias_ref(6);
  fill(w, 0.1);
  fill(norm, 0.2);
  fill(bias, 0.3);
  w_ref = w;
  norm_ref = norm;
  bias_ref = bias;

  Opt<B> grouped(base);
  grouped.add("w", w, gw, {.lr_scale = 0.5, .weight_decay = 0.2});
  grouped.add("norm", norm, gnorm, {.role = muon::Role::norm, .lr_scale = 10.0, .weight_decay = 0.0});
  grouped.add("bias", bias, gbias, {.role = muon::Role::bias});  // no group: the fallback's own

  // References: one optimizer per group, whose own options are the group's.
  auto with = [&](double lr, double wd, double fallback_lr, double fallback_wd) {
    auto o = base;
    o.lr = lr;
    o.weight_decay = wd;
    o.fallback.lr = fallback_lr;
    o.fallback.weight_decay = fallback_wd;
    return o;
  };
  Opt<B> ref_w(with(0.01, 0.2, 1e-3, 0.01));
  Opt<B> ref_norm(with(0.02, 0.05, 1e-2, 0.0));
  Opt<B> ref_bias(base);
  ref_w.add("w", w_ref, gw);
  ref_norm.add("norm", norm_ref, gnorm, {.role = muon::Role::norm});
  ref_bias.add("bias", bias_ref, gbias, {.role = muon::Role::bias});

  for (int t = 0; t < 4; ++t) {
    fill(gw, 1.3 * t);
    fill(gnorm, 0.7 * t);
    gbias = Vec<T>::Constant(6, static_cast<T>(0.1 * (t + 1)));
    grouped.step();
    ref_w.step();
    ref_norm.step();
    ref_bias.step();
  }
  CHECK(w == w_ref);
  CHECK(norm == norm_ref);
  CHECK(bias == bias_ref);

  const std::string report = grouped.routing_report().to_string();
  INFO(report);
  CHECK(report.find("[group: lr x 0.5, wd 0.2]") != std::string::npos);
  CHECK(report.find("[group: lr x 10, wd 0]") != std::string::npos);
  const auto entries = grouped.routing_report().entries;
  CHECK(entries[1].group_lr_scale == 10.0);
  CHECK(entries[1].weight_decay == 0.0);
  CHECK(entries[2].group().empty());
}

TEMPLATE_TEST_CASE("groups travel in checkpoints and can be changed between steps", "[param_groups][checkpoint]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  Mat<T> w(4, 6), gw = Mat<T>::Zero(4, 6);
  Vec<T> b(4), gb = Vec<T>::Zero(4);
  fill(w, 0.0);
  fill(b, 0.0);
  Opt<B> source;
  source.add("w", w, gw, {.lr_scale = 3.0});
  source.add("b", b, gb, {.role = muon::Role::bias, .weight_decay = 0.0});
  std::stringstream file;
  source.save(file);

  Mat<T> w2 = w;
  Vec<T> b2 = b;
  Opt<B> target;
  target.add("w", w2, gw);
  target.add("b", b2, gb, {.role = muon::Role::bias});
  CHECK(target.routing_report().to_string() != source.routing_report().to_string());
  target.load(file);
  CHECK(target.routing_report().to_string() == source.routing_report().to_string());

  // Changed by the trainer later (e.g. after a resume), checked as at registration.
  target.set_param_group(target.id("w"), 1.0);
  CHECK(target.routing_report().entries[0].group().empty());
  CHECK_THROWS_WITH(target.set_param_group(target.id("b"), -1.0), Catch::Contains("parameter 'b': lr_scale"));
  CHECK_THROWS_WITH(target.set_param_group(target.id("b"), 1.0, std::numeric_limits<double>::infinity()),
                    Catch::Contains("parameter 'b': weight_decay"));
  CHECK(target.routing_report().entries[1].weight_decay == 0.0);  // unchanged by the rejected calls
}

TEST_CASE("group errors name the parameter and change nothing", "[param_groups][bad_input]") {
  // Registration checks run before any backend work: one backend covers them.
  using T = float;
  Mat<T> w(4, 6), gw(4, 6);
  Vec<T> b(4), gb(4);
  fill(w, 0.0);
  fill(b, 0.0);
  Opt<muon::backend::Eigen<T>> opt;
  CHECK_THROWS_WITH(opt.add("w", w, gw, {.lr_scale = std::nan("")}), Catch::Contains("parameter 'w': lr_scale"));
  CHECK_THROWS_WITH(opt.add("w", w, gw, {.weight_decay = -0.1}), Catch::Contains("parameter 'w': weight_decay"));
  CHECK(opt.size() == 0);

  // A tied tensor is one tensor: its second registration cannot ask for another group.
  Mat<T> emb(5, 3), gemb(5, 3);
  fill(emb, 1.0);
  opt.add("embed", emb, gemb, {.role = muon::Role::embedding, .weight_decay = 0.0});
  CHECK_THROWS_WITH(opt.add("lm_head", emb, gemb, {.role = muon::Role::output_head}),
                    Catch::Contains("parameter 'lm_head': is the same tensor as 'embed'"));
  opt.add("lm_head", emb, gemb, {.role = muon::Role::output_head, .weight_decay = 0.0});
  CHECK(opt.size() == 1);

  // A fallback policy without per-call rates cannot serve a group on the fallback path.
  using Plain = muon::Optimizer<muon::backend::Eigen<T>, muon::policy::NoFilter, muon::policy::ShapeRoleRouter,
                                muon::policy::NewtonSchulz, muon::policy::NoConstraint, muon::archetype::Fallback>;
  Plain plain;
  CHECK_THROWS_WITH(plain.add("b", b, gb, {.role = muon::Role::bias, .lr_scale = 2.0}),
                    Catch::Contains("parameter 'b': takes the fallback path"));
  plain.add("w", w, gw, {.lr_scale = 2.0});  // the matrix path always can
  CHECK(plain.size() == 1);
}

TEST_CASE("groups by name: a handle steps as the typed optimizer", "[param_groups][by_name]") {
  // One backend: what is tested is the handle forwarding groups (backend-independent); by-name
  // construction instantiates every named optimizer, once per backend (test_by_name's job, and
  // the heaviest part of this file's build).
  using T = float;
  Mat<T> w(4, 6), gw(4, 6), w2(4, 6);
  Vec<T> b(4), gb(4), b2(4);
  fill(w, 0.0);
  fill(b, 0.5);
  fill(gw, 1.0);
  fill(gb, 2.0);
  w2 = w;
  b2 = b;
  auto handle = muon::make_optimizer<muon::backend::Eigen<T>>("muon");
  Opt<muon::backend::Eigen<T>> typed;
  handle->add("w", w, gw, {.lr_scale = 0.25});
  handle->add("b", b, gb, {.role = muon::Role::bias, .lr_scale = 4.0, .weight_decay = 0.0});
  typed.add("w", w2, gw, {.lr_scale = 0.25});
  typed.add("b", b2, gb, {.role = muon::Role::bias, .lr_scale = 4.0, .weight_decay = 0.0});
  for (int t = 0; t < 3; ++t) {
    handle->step();
    typed.step();
  }
  CHECK(w == w2);
  CHECK(b == b2);
  handle->set_param_group("b", 1.0);
  CHECK(handle->routing_report().entries[1].group().empty());
  CHECK_THROWS_WITH(handle->set_param_group("nope", 1.0), Catch::Contains("no parameter named 'nope'"));
}
