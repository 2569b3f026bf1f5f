// Named compositions and the runtime ablation switches: each switch turns off exactly its stage.
// Typed over every backend in MUON_TEST_BACKENDS (the comparisons are exact in any scalar).
#include <catch2/catch.hpp>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/backends.hpp"

namespace {
template <class T>
struct Problem {
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  Mat w = Mat::Random(8, 16), gw = Mat::Random(8, 16);
  Vec b = Vec::Random(8), gb = Vec::Random(8);
  template <class Opt>
  void add_to(Opt& opt) {
    opt.add("w", w, gw);
    opt.add("b", b, gb, {.role = muon::Role::bias});
  }
};
}  // namespace

TEMPLATE_TEST_CASE("Grokfast<B> sends every tensor to AdamW; MuonGrokfast routes like Muon", "[ablation][composition]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using P = Problem<typename B::value_type>;
  P p;
  muon::Grokfast<B> grokfast;
  p.add_to(grokfast);
  CHECK(grokfast.routing_report().count(muon::Path::fallback) == 2);
  CHECK(grokfast.routing_report().entries[0].rule == "fallback-only composition");
  P q;
  muon::MuonGrokfast<B> mg;
  q.add_to(mg);
  CHECK(mg.path(0) == muon::Path::matrix);
  CHECK(mg.path(1) == muon::Path::fallback);
}

TEMPLATE_TEST_CASE("enable_filter off equals the composition without the filter", "[ablation]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using P = Problem<typename B::value_type>;
  P a;
  P b = a;  // same values
  muon::MuonGrokfast<B> off({.enable_filter = false});
  muon::Muon<B> plain;
  a.add_to(off);
  b.add_to(plain);
  for (int i = 0; i < 3; ++i) {
    off.step();
    plain.step();
  }
  CHECK(a.w == b.w);
  CHECK(a.b == b.b);
  // The filter's state stayed untouched while off.
  CHECK(off.state_snapshot().at("w/filter/steps") == std::vector<double>{0});
  // On again: it starts filtering (and differs from plain Muon from then on).
  off.set_enable_filter(true);
  off.step();
  plain.step();
  CHECK(a.w != b.w);
}

TEMPLATE_TEST_CASE("enable_muon off sends matrices to the fallback, with the rule in the report", "[ablation]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using P = Problem<typename B::value_type>;
  P a;
  P b = a;
  muon::Muon<B> off({.enable_muon = false});
  muon::Muon<B> all_adamw;
  a.add_to(off);
  all_adamw.add("w", b.w, b.gw, {.path = muon::Path::fallback});
  all_adamw.add("b", b.b, b.gb, {.role = muon::Role::bias});
  CHECK(off.path(0) == muon::Path::fallback);
  CHECK(off.routing_report().entries[0].rule == "enable_muon off (router: rank 2)");
  off.step();
  all_adamw.step();
  CHECK(a.w == b.w);
}

TEMPLATE_TEST_CASE("enable_constraint off runs the orthogonalizer alone", "[ablation]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using P = Problem<typename B::value_type>;
  P a;
  P b = a;
  // With NoConstraint the two must agree exactly; constraints with effects test their own switch.
  muon::Muon<B> off({.enable_constraint = false});
  muon::Muon<B> on;
  a.add_to(off);
  b.add_to(on);
  off.step();
  on.step();
  CHECK(a.w == b.w);
}
