// Every named optimizer on every CPU backend: the same composition on the same inputs gives the
// same parameters on Eigen and xtensor (within the float tolerance), and a checkpoint saved on
// one backend resumes on the other (same value type) with the next steps agreeing. The tensors
// are raw buffers, which every backend registers, so one model serves all compositions.
#include <catch2/catch.hpp>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#ifdef MUON_WITH_XTENSOR
#include <muon/backend/xtensor.hpp>

#include <cmath>
#include <random>
#include <sstream>
#include <vector>

namespace {

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

// Parameters and gradients of a small transformer-ish model, in raw buffers.
template <class T>
struct Tensors {
  struct One {
    std::string name;
    muon::Shape shape;
    muon::ParamOptions options;
    std::vector<T> value, grad;
  };
  std::vector<One> all;
  Tensors() {
    add("w", {16, 12}, {});
    add("stack", {2, 6, 8}, {});
    add("q", {8, 12}, {.role = muon::Role::query, .heads = 2});
    add("k", {8, 12}, {.role = muon::Role::key, .heads = 2});
    add("embed", {10, 6}, {.role = muon::Role::embedding});
    add("bias", {16}, {.role = muon::Role::bias});
  }
  void add(std::string name, muon::Shape shape, muon::ParamOptions o) {
    const auto n = static_cast<std::size_t>(shape.numel());
    std::vector<T> v(n);
    std::mt19937 rng(static_cast<unsigned>(all.size() + 1));
    std::normal_distribution<double> normal(0.0, 0.3);
    for (auto& x : v) x = static_cast<T>(normal(rng));
    all.push_back({std::move(name), shape, o, std::move(v), std::vector<T>(n)});
  }
  void gradients(int t) {
    for (std::size_t k = 0; k < all.size(); ++k)
      for (std::size_t i = 0; i < all[k].grad.size(); ++i)
        all[k].grad[i] = static_cast<T>(std::sin(1.3 * t + 0.07 * static_cast<double>(i) + static_cast<double>(k)));
  }
  template <class Opt>
  void register_with(Opt& opt) {
    for (auto& x : all) opt.add(x.name, muon::raw(x.value.data(), x.shape), muon::raw(static_cast<const T*>(x.grad.data()), x.shape), x.options);
  }
  [[nodiscard]] double max_diff(const Tensors& o) const {
    double m = 0;
    for (std::size_t k = 0; k < all.size(); ++k)
      for (std::size_t i = 0; i < all[k].value.size(); ++i)
        m = std::max(m, std::abs(static_cast<double>(all[k].value[i]) - static_cast<double>(o.all[k].value[i])));
    return m;
  }
};

template <class Opt, class T>
void step(Opt& opt, Tensors<T>& m, int t) {
  m.gradients(t);
  if constexpr (std::is_same_v<typename Opt::constraint_type, muon::policy::QKClip>) {
    const std::vector<T> logits{static_cast<T>(150 + 10 * t), static_cast<T>(40)};  // head 0 clipped
    muon::set_max_logits(opt, "q", "k", std::span<const T>(logits));
  }
  const auto r = opt.step();
  REQUIRE(r.all_applied());
}

template <template <class> class Named, class T>
void agree_and_cross(const char* label) {
  INFO(label);
  using E = Named<muon::backend::Eigen<T>>;
  using X = Named<muon::backend::Xtensor<T>>;
  Tensors<T> me, mx;
  E eopt;
  X xopt;
  me.register_with(eopt);
  mx.register_with(xopt);
  for (int t = 0; t < 4; ++t) {
    step(eopt, me, t);
    step(xopt, mx, t);
  }
  INFO("Eigen vs xtensor after 4 steps: " << me.max_diff(mx));
  CHECK(me.max_diff(mx) <= tolerance<T>());

  // Saved on Eigen, resumed on xtensor (and the other way round); then two more steps each.
  std::stringstream from_eigen, from_xtensor;
  eopt.save(from_eigen, {.parameters = true});
  xopt.save(from_xtensor, {.parameters = true});
  Tensors<T> re, rx;
  E eres;
  X xres;
  re.register_with(eres);
  rx.register_with(xres);
  xres.load(from_eigen);
  eres.load(from_xtensor);
  CHECK(rx.max_diff(me) == 0);  // the stored parameters, exactly
  CHECK(re.max_diff(mx) == 0);
  for (int t = 4; t < 6; ++t) {
    step(eopt, me, t);
    step(xres, rx, t);
    step(eres, re, t);
  }
  INFO("resumed across backends, 2 more steps: " << me.max_diff(rx) << ", " << me.max_diff(re));
  CHECK(me.max_diff(rx) <= tolerance<T>());
  CHECK(me.max_diff(re) <= tolerance<T>());
}

}  // namespace

TEMPLATE_TEST_CASE("cross-backend: every named optimizer agrees on Eigen and xtensor, and checkpoints cross",
                   "[cross_backend][xtensor][checkpoint]", float, double) {
  using T = TestType;
  agree_and_cross<muon::Muon, T>("Muon");
  agree_and_cross<muon::MuonSGD, T>("MuonSGD");
  agree_and_cross<muon::MuonLion, T>("MuonLion");
  agree_and_cross<muon::Grokfast, T>("Grokfast");
  agree_and_cross<muon::MuonGrokfast, T>("MuonGrokfast");
  agree_and_cross<muon::MuonClip, T>("MuonClip");
  agree_and_cross<muon::MuonGrokfastClip, T>("MuonGrokfastClip");
  agree_and_cross<muon::StiefelMuon, T>("StiefelMuon");
  agree_and_cross<muon::HypersphereMuon, T>("HypersphereMuon");
  agree_and_cross<muon::AdamW, T>("AdamW");
}

TEMPLATE_TEST_CASE("cross-backend: ManifoldModel agrees on Eigen and xtensor, and its checkpoint crosses",
                   "[cross_backend][xtensor][manifold_model]", float, double) {
  using T = TestType;
  auto make = [](auto& opt, Tensors<T>& m) {
    for (auto& x : m.all) {
      muon::ParamOptions o = x.options;
      if (o.role == muon::Role::query || o.role == muon::Role::key) o = {};  // plain projections here
      opt.add(x.name, muon::raw(x.value.data(), x.shape), muon::raw(static_cast<const T*>(x.grad.data()), x.shape), o);
    }
  };
  Tensors<T> me, mx, rx;
  muon::ManifoldModel<muon::backend::Eigen<T>> eopt;
  muon::ManifoldModel<muon::backend::Xtensor<T>> xopt, xres;
  make(eopt, me);
  make(xopt, mx);
  make(xres, rx);
  for (int t = 0; t < 4; ++t) {
    me.gradients(t);
    mx.gradients(t);
    REQUIRE(eopt.step().all_applied());
    REQUIRE(xopt.step().all_applied());
  }
  CHECK(me.max_diff(mx) <= tolerance<T>());
  std::stringstream file;
  eopt.save(file, {.parameters = true});
  xres.load(file);
  CHECK(rx.max_diff(me) == 0);
  for (int t = 4; t < 6; ++t) {
    me.gradients(t);
    rx.gradients(t);
    REQUIRE(eopt.step().all_applied());
    REQUIRE(xres.step().all_applied());
  }
  CHECK(me.max_diff(rx) <= tolerance<T>());
}

#else
TEST_CASE("cross-backend: skipped (built without xtensor)", "[cross_backend]") {
  WARN("muon::xtensor is not available in this build: the cross-backend tests were not compiled");
}
#endif
