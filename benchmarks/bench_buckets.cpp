// Same-shape small matrix tensors orthogonalised as one batch (the optimizer's buckets) against
// the same tensors stepped one at a time (one optimizer each, where no bucket can form): the
// ratio of one step's time, measured side by side in one run, one thread, best of 7.
//   build-bench/benchmarks/bench_buckets
#include <muon/muon.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace {

using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Opt = muon::Muon<muon::backend::Eigen<float>>;
using Clock = std::chrono::steady_clock;

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

}  // namespace

int main() {
  for (const auto& [count, rows, cols] : {std::tuple{64, 32, 32}, std::tuple{64, 64, 64}, std::tuple{32, 128, 128}}) {
    std::mt19937 rng(1);
    std::normal_distribution<float> normal;
    std::vector<Matrix> w, g;
    for (int i = 0; i < count; ++i) {
      w.push_back(Matrix::NullaryExpr(rows, cols, [&] { return normal(rng); }));
      g.push_back(Matrix::NullaryExpr(rows, cols, [&] { return normal(rng); }));
    }
    Opt together({.threads = 1});
    std::vector<std::unique_ptr<Opt>> alone;
    for (int i = 0; i < count; ++i) {
      std::string name = "t";  // (not "t" + to_string: GCC 12 warns falsely at -O3, -Wrestrict)
      name += std::to_string(i);
      together.add(name, w[static_cast<std::size_t>(i)], g[static_cast<std::size_t>(i)]);
      alone.push_back(std::make_unique<Opt>(Opt::Options{.threads = 1}));
      alone.back()->add("t", w[static_cast<std::size_t>(i)], g[static_cast<std::size_t>(i)]);
    }
    double t_together = 1e9, t_alone = 1e9;
    for (int rep = 0; rep < 7; ++rep) {
      const auto t0 = Clock::now();
      together.step();
      const auto t1 = Clock::now();
      for (auto& o : alone) o->step();
      const auto t2 = Clock::now();
      t_together = std::min(t_together, seconds(t0, t1));
      t_alone = std::min(t_alone, seconds(t1, t2));
    }
    std::printf("%3d x %3dx%3d: one batch %.2f ms, one at a time %.2f ms, ratio %.2f\n", count, rows, cols,
                t_together * 1e3, t_alone * 1e3, t_together / t_alone);
  }
  return 0;
}
