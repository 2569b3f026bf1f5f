// SGD fallback against a double-precision transcription of torch.optim.SGD's update rule
// (momentum with first-step buffer = g, dampening, Nesterov, coupled L2 weight decay).
#include <catch2/catch.hpp>

#include "support/backends.hpp"

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>
#include <random>

namespace {

struct SgdConfig {
  double lr, momentum, dampening, weight_decay;
  bool nesterov;
};

std::vector<double> reference_sgd(std::vector<double> p, const std::vector<std::vector<double>>& grads, const SgdConfig& c) {
  std::vector<double> buf(p.size(), 0.0);
  for (std::size_t t = 0; t < grads.size(); ++t) {
    for (std::size_t i = 0; i < p.size(); ++i) {
      double d = grads[t][i] + c.weight_decay * p[i];
      if (c.momentum != 0) {
        buf[i] = t == 0 ? d : c.momentum * buf[i] + (1 - c.dampening) * d;
        d = c.nesterov ? d + c.momentum * buf[i] : buf[i];
      }
      p[i] -= c.lr * d;
    }
  }
  return p;
}

}  // namespace

TEMPLATE_TEST_CASE("SGD fallback follows torch.optim.SGD", "[sgd]", MUON_TEST_BACKENDS) {
  using T = typename TestType::value_type;
  const auto config = GENERATE(SgdConfig{0.1, 0.0, 0.0, 0.0, false}, SgdConfig{0.05, 0.9, 0.0, 0.0, false},
                               SgdConfig{0.05, 0.9, 0.0, 1e-2, true}, SgdConfig{0.02, 0.8, 0.3, 1e-3, false});
  std::mt19937 rng(5);
  std::normal_distribution<double> normal;
  const std::size_t n = 40, steps = 7;
  std::vector<double> p0(n);
  for (auto& x : p0) x = normal(rng);
  std::vector<std::vector<double>> grads(steps, std::vector<double>(n));
  for (auto& g : grads)
    for (auto& x : g) x = normal(rng);

  // Run on values already rounded to T so the reference sees the same inputs.
  std::vector<T> p(p0.begin(), p0.end()), g(n);
  std::vector<double> p0_rounded(p.begin(), p.end());
  std::vector<std::vector<double>> grads_rounded;
  muon::MuonSGD<TestType> opt({.fallback = {.lr = config.lr,
                                                           .momentum = config.momentum,
                                                           .dampening = config.dampening,
                                                           .nesterov = config.nesterov,
                                                           .weight_decay = config.weight_decay}});
  opt.add("p", muon::raw(p.data(), {static_cast<muon::index_t>(n)}), muon::raw(g.data(), {static_cast<muon::index_t>(n)}));
  for (const auto& gt : grads) {
    std::copy(gt.begin(), gt.end(), g.begin());
    grads_rounded.emplace_back(g.begin(), g.end());
    REQUIRE(opt.step().all_applied());
  }
  const auto expected = reference_sgd(p0_rounded, grads_rounded, config);
  double err = 0;
  for (std::size_t i = 0; i < n; ++i) err = std::max(err, std::abs(static_cast<double>(p[i]) - expected[i]));
  INFO("lr " << config.lr << " momentum " << config.momentum << " nesterov " << config.nesterov << ": max error " << err);
  CHECK(err <= (std::is_same_v<T, float> ? 2e-6 : 1e-13));
  CHECK(opt.state_snapshot().at("p/fallback/momentum_buffer").size() == (config.momentum != 0 ? n : 0));
}
