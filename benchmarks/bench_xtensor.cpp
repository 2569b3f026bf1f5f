// One Muon step on the xtensor backend against the same step on the Eigen backend: same shapes
// (one GPT-2-small block: four 768 x 768 attention matrices, the 3072 x 768 and 768 x 3072 MLP
// matrices, biases on AdamW), same values, same product library, measured side by side in one
// run (steps interleaved, best of 9) on 1 thread and on every core. Prints the ratio
// xtensor / Eigen (1.00 = as fast).
//   build/benchmarks/bench_xtensor
#include <muon/backend/eigen.hpp>
#include <muon/backend/xtensor.hpp>
#include <muon/muon.hpp>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::VectorXf;
constexpr std::array<std::array<std::size_t, 2>, 6> k_shapes{
    {{768, 768}, {768, 768}, {768, 768}, {768, 768}, {3072, 768}, {768, 3072}}};

template <class Opt>
double timed_step(Opt& opt) {
  const auto t0 = Clock::now();
  opt.step();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

}  // namespace

int main() {
  const int all = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::printf("Muon step, one GPT-2-small block, float, products on %s\n",
              muon::backend::cpu::to_string(muon::backend::Xtensor<float>::product_library));
  for (const int threads : {1, all}) {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    std::vector<xt::xtensor<float, 2>> xw, xg;
    std::vector<xt::xtensor<float, 1>> xb, xgb;
    std::vector<RowMat> ew, eg;
    std::vector<Vec> eb, egb;
    for (const auto& s : k_shapes) {
      xt::xtensor<float, 2> w(s), g(s);
      for (auto& v : w) v = 0.02f * normal(rng);
      for (auto& v : g) v = normal(rng);
      xw.push_back(w);
      xg.push_back(g);
      ew.push_back(Eigen::Map<RowMat>(w.data(), static_cast<Eigen::Index>(s[0]), static_cast<Eigen::Index>(s[1])));
      eg.push_back(Eigen::Map<RowMat>(g.data(), static_cast<Eigen::Index>(s[0]), static_cast<Eigen::Index>(s[1])));
      xt::xtensor<float, 1> b = xt::zeros<float>({s[0]}), gb = xt::ones<float>({s[0]});
      xb.push_back(b);
      xgb.push_back(gb);
      eb.push_back(Vec::Zero(static_cast<Eigen::Index>(s[0])));
      egb.push_back(Vec::Ones(static_cast<Eigen::Index>(s[0])));
    }
    muon::Muon<muon::backend::Xtensor<float>> xopt({.threads = threads});
    muon::Muon<muon::backend::Eigen<float>> eopt({.threads = threads});
    for (std::size_t i = 0; i < k_shapes.size(); ++i) {
      const std::string n = "w" + std::to_string(i), b = "b" + std::to_string(i);
      xopt.add(n, xw[i], xg[i]);
      xopt.add(b, xb[i], xgb[i], {.role = muon::Role::bias});
      eopt.add(n, ew[i], eg[i]);
      eopt.add(b, eb[i], egb[i], {.role = muon::Role::bias});
    }
    xopt.step();  // the first step allocates workspaces
    eopt.step();
    double best_x = 1e30, best_e = 1e30;
    for (int rep = 0; rep < 9; ++rep) {
      best_x = std::min(best_x, timed_step(xopt));
      best_e = std::min(best_e, timed_step(eopt));
    }
    std::printf("threads %d: xtensor / Eigen = %.3f  (xtensor %.1f ms, Eigen %.1f ms)\n", xopt.threads(),
                best_x / best_e, 1e3 * best_x, 1e3 * best_e);
  }
}
