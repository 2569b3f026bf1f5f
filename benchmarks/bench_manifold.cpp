// One StiefelMuon step against one plain Muon step on the Eigen backend (float32, one matrix).
// See benchmarks/README.md ("Manifold Muon").
//
//   step/muon/f32/RxC       muon::Muon<Eigen<float>>::step() (Newton-Schulz, 5 steps)
//   step/stiefel/f32/RxC    muon::StiefelMuon<Eigen<float>>::step() (default options)
//   pair/f32/RxC            both steps in the same loop, alternating, each timed on its own:
//                           the ratio Stiefel / Muon with both sides seeing the same machine state
//   pair_warm5/f32/RxC      the same with StiefelMuon {.dual_steps = 5, .warm_start = true}
//
// Times are the benchmark thread's CPU time (CLOCK_THREAD_CPUTIME_ID) of step() alone; wall_ms
// is wall-clock time per iteration. Counters of the Stiefel step (per step): orth_calls (the
// orthogonalizer's apply() calls, counted by a forwarding wrapper), dual_iterations,
// polish_steps; of the pair: muon_ms, stiefel_ms, ratio = stiefel_ms / muon_ms.
// The gradient stays fixed (the momentum converges to it); the first step of each optimizer,
// which sizes the workspace and retracts the Gaussian initial W, runs before timing.
#include <benchmark/benchmark.h>

#include <muon/muon.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <time.h>  // clock_gettime

namespace {

using muon::index_t;

// Forwards to Polar Express (StiefelMuon's orthogonalizer) and counts apply() calls.
struct CountingPolarExpress : muon::policy::PolarExpress {
  using muon::policy::PolarExpress::PolarExpress;
  static inline long calls = 0;
  template <class B>
  void apply(B& b, muon::backend::MatrixView<typename B::value_type> x, muon::Workspace<B>& ws) const {
    ++calls;
    muon::policy::PolarExpress::apply(b, x, ws);
  }
};

using Backend = muon::backend::Eigen<float>;
using MuonOpt = muon::Muon<Backend>;
// StiefelMuon with the counting wrapper in place of PolarExpress (the same arithmetic).
using StiefelOpt = muon::Optimizer<Backend, muon::policy::NoFilter, muon::policy::ShapeRoleRouter, CountingPolarExpress,
                                   muon::policy::Stiefel, muon::policy::AdamW>;
static_assert(std::is_same_v<muon::StiefelMuon<Backend>,
                             muon::Optimizer<Backend, muon::policy::NoFilter, muon::policy::ShapeRoleRouter,
                                             muon::policy::PolarExpress, muon::policy::Stiefel, muon::policy::AdamW>>,
              "bench_manifold times StiefelMuon's composition: keep StiefelOpt in step with it");

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// One optimizer with one rows x cols parameter (Gaussian, scaled 1/sqrt(max(rows, cols))) and a
// fixed Gaussian gradient.
// Both sides of a pair on one thread (the comparison is per CPU time).
template <class Options>
Options one_thread(Options o) {
  o.threads = 1;
  return o;
}

template <class Opt>
struct Problem {
  std::vector<float> w, g;
  Opt opt;
  Problem(index_t rows, index_t cols, unsigned seed, typename Opt::Options options = {})
      : w(static_cast<std::size_t>(rows * cols)), g(w.size()), opt(one_thread(std::move(options))) {
    std::mt19937 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    const double scale = 1.0 / std::sqrt(static_cast<double>(std::max(rows, cols)));
    for (auto& x : w) x = static_cast<float>(scale * normal(rng));
    for (auto& x : g) x = static_cast<float>(normal(rng));
    opt.add("w", muon::raw(w.data(), {rows, cols}), muon::raw(static_cast<const float*>(g.data()), {rows, cols}));
    opt.step();
  }
  // CPU time of one step; adds its wall time to *wall.
  double timed_step(double* wall) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = thread_cpu_seconds();
    benchmark::DoNotOptimize(opt.step());
    const double cpu = thread_cpu_seconds() - c0;
    *wall += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return cpu;
  }
};

void stiefel_counters(benchmark::State& st, double steps, double calls, double dual, double polish) {
  st.counters["orth_calls"] = calls / steps;
  st.counters["dual_iterations"] = dual / steps;
  st.counters["polish_steps"] = polish / steps;
}

void bm_muon(benchmark::State& st, index_t rows, index_t cols) {
  Problem<MuonOpt> p(rows, cols, 1);
  double wall = 0;
  for (auto _ : st) st.SetIterationTime(p.timed_step(&wall));
  st.counters["wall_ms"] = wall / static_cast<double>(st.iterations()) * 1e3;
  st.counters["orth_calls"] = 1;
}

void bm_stiefel(benchmark::State& st, index_t rows, index_t cols) {
  Problem<StiefelOpt> p(rows, cols, 1);
  double wall = 0, calls = 0, dual = 0, polish = 0;
  for (auto _ : st) {
    CountingPolarExpress::calls = 0;
    st.SetIterationTime(p.timed_step(&wall));
    calls += static_cast<double>(CountingPolarExpress::calls);
    const auto& s = p.opt.constraint_state(0);
    dual += s.last_dual_iterations();
    polish += s.last_polish_steps();
  }
  const auto n = static_cast<double>(st.iterations());
  st.counters["wall_ms"] = wall / n * 1e3;
  stiefel_counters(st, n, calls, dual, polish);
}

void bm_pair(benchmark::State& st, index_t rows, index_t cols, bool warm5) {
  Problem<MuonOpt> muon(rows, cols, 1);
  typename StiefelOpt::Options options;
  if (warm5) options.constraint = {.dual_steps = 5, .warm_start = true};
  Problem<StiefelOpt> stiefel(rows, cols, 1, options);
  double wall = 0, muon_cpu = 0, stiefel_cpu = 0, calls = 0, dual = 0, polish = 0;
  for (auto _ : st) {
    const double a = muon.timed_step(&wall);
    CountingPolarExpress::calls = 0;
    const double b = stiefel.timed_step(&wall);
    calls += static_cast<double>(CountingPolarExpress::calls);
    const auto& s = stiefel.opt.constraint_state(0);
    dual += s.last_dual_iterations();
    polish += s.last_polish_steps();
    muon_cpu += a;
    stiefel_cpu += b;
    st.SetIterationTime(a + b);
  }
  const auto n = static_cast<double>(st.iterations());
  st.counters["muon_ms"] = muon_cpu / n * 1e3;
  st.counters["stiefel_ms"] = stiefel_cpu / n * 1e3;
  st.counters["ratio"] = stiefel_cpu / muon_cpu;
  st.counters["wall_ms"] = wall / n * 1e3;
  stiefel_counters(st, n, calls, dual, polish);
}

std::string dims(index_t r, index_t c) { return std::to_string(r) + "x" + std::to_string(c); }

void register_all() {
  for (const auto& [rows, cols] : {std::pair<index_t, index_t>{256, 256}, {512, 256}, {1024, 512}}) {
    const std::string shape = dims(rows, cols);
    benchmark::RegisterBenchmark(("step/muon/f32/" + shape).c_str(), bm_muon, rows, cols)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("step/stiefel/f32/" + shape).c_str(), bm_stiefel, rows, cols)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("pair/f32/" + shape).c_str(), bm_pair, rows, cols, false)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("pair_warm5/f32/" + shape).c_str(), bm_pair, rows, cols, true)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
}

}  // namespace

int main(int argc, char** argv) {
#ifdef MUON_BENCH_CXX_FLAGS
  benchmark::AddCustomContext("muon_cxx_flags", MUON_BENCH_CXX_FLAGS);
#endif
  benchmark::AddCustomContext("eigen_simd", ::Eigen::SimdInstructionSetsInUse());
  const char* coretype = std::getenv("OPENBLAS_CORETYPE");
  benchmark::AddCustomContext("env.OPENBLAS_CORETYPE", coretype ? coretype : "(unset)");
  register_all();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
