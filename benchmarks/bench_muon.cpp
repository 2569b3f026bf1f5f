// Micro-benchmarks of muon on the Eigen backend (CPU). See benchmarks/README.md.
//
// Every case times the measured call only (manual time); inputs are restored outside the timed
// region. Single-threaded cases report the calling thread's CPU time (CLOCK_THREAD_CPUTIME_ID):
// on a shared machine it is what the work cost, whatever else ran; their wall_ms counter is the
// wall-clock time per iteration and wall_over_cpu says how much the process was kept waiting.
// Multi-threaded cases (orth_all, gemm_split) report wall-clock time.
// Names are "<what>/<scalar>/<shape>[/...]":
//   gemm/f32/NT/MxNxK        Eigen<T>::gemm alone, C (M x N) = op(A) op(B), K inner; GFLOPS counter
//   ns5/f32/RxC              NewtonSchulz::apply (5 steps, Keller Jordan's coefficients) on one
//                            R x C matrix. Counters: GFLOPS (3 GEMMs per iteration), gemm_frac =
//                            time of the same 15 GEMMs run bare (interleaved in the same loop) /
//                            time of apply, gemm_GFLOPS = the rate of those bare GEMMs
//   step/f32/transformer     Muon<Eigen<float>>::step() on a 4-layer d=512 transformer. Counters:
//                            orth_share, fallback_share, other_share of the step's time
//   orth_all/f32/threads:N   NewtonSchulz on all 16 hidden matrices of that model, the matrices
//                            shared out over N threads (one backend + workspace per thread)
//   gemm_split/f32/..        one GEMM with C's rows split over N threads (one backend per thread)
//   syrk/f32/NxM             Eigen's rank-k update C += X X^T (lower half only), N x M X
//   sym_square/f32/N         the lower half of A A for a symmetric N x N A (Eigen triangular product)
//   The last two report GFLOPS as the equivalent full GEMM's flops per second, so they compare
//   directly with gemm/f32/NT/NxNxM and gemm/f32/NN/NxNxN: that ratio is what a symmetric A = X X^T
//   or a symmetric A A would buy in NewtonSchulz.
//   eigen_product/f32/..     Eigen's own C.noalias() = A * B (or A * B^T), the reference for gemm/
#include <benchmark/benchmark.h>

#include <muon/muon.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <numeric>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include <time.h>    // clock_gettime
#include <unistd.h>  // environ

#ifdef MUON_BENCH_OPENBLAS
extern "C" char* openblas_get_corename(void);
extern "C" int openblas_get_num_threads(void);
#endif

extern char** environ;

namespace {

using muon::index_t;
using muon::backend::MatrixView;
using muon::backend::Trans;
using Clock = std::chrono::steady_clock;

template <class T>
using Backend = muon::backend::Eigen<T>;

template <class T>
constexpr const char* scalar_name() {
  return std::is_same_v<T, float> ? "f32" : "f64";
}

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// Accumulates the calling thread's CPU time and the wall-clock time of the measured regions.
class Meter {
 public:
  void start() {
    wall0_ = Clock::now();
    cpu0_ = thread_cpu_seconds();
  }
  // Ends a region, adds it to the totals and returns its CPU time.
  double stop() {
    const double cpu = thread_cpu_seconds() - cpu0_;
    wall_ += seconds_since(wall0_);
    cpu_ += cpu;
    return cpu;
  }
  [[nodiscard]] double cpu() const { return cpu_; }
  [[nodiscard]] double wall() const { return wall_; }
  // The wall-clock counters of a case whose reported time is this meter's CPU time.
  void report_wall(benchmark::State& st) const {
    st.counters["wall_ms"] = wall_ / static_cast<double>(st.iterations()) * 1e3;
    st.counters["wall_over_cpu"] = wall_ / cpu_;
  }

 private:
  Clock::time_point wall0_{};
  double cpu0_ = 0;
  double wall_ = 0, cpu_ = 0;
};

template <class T>
std::vector<T> random_values(std::size_t n, unsigned seed, double stddev = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, stddev);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(normal(rng));
  return v;
}

std::string dims(index_t a, index_t b) { return std::to_string(a) + "x" + std::to_string(b); }
std::string dims(index_t a, index_t b, index_t c) { return dims(a, b) + "x" + std::to_string(c); }

// ---- GEMM problems ---------------------------------------------------------------------------

// C (m x n) = op(A) (m x k) * op(B) (k x n).
struct GemmShape {
  Trans ta = Trans::no, tb = Trans::no;
  index_t m = 0, n = 0, k = 0;

  [[nodiscard]] double flops() const { return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k); }
  [[nodiscard]] std::string name() const {
    return std::string(ta == Trans::no ? "N" : "T") + (tb == Trans::no ? "N" : "T") + "/" + dims(m, n, k);
  }
};

// The three products of one Newton-Schulz iteration on a rows x cols matrix, in the layouts
// NewtonSchulz::apply issues them (a tall matrix is worked on as its transpose, in place).
std::array<GemmShape, 3> ns_products(index_t rows, index_t cols) {
  const index_t n = std::min(rows, cols), m = std::max(rows, cols);
  if (rows <= cols)
    return {{{Trans::no, Trans::yes, n, n, m},    // A = X X^T
             {Trans::no, Trans::no, n, n, n},     // B = b A + c A A
             {Trans::no, Trans::no, n, m, n}}};   // Y = B X
  return {{{Trans::yes, Trans::no, n, n, m},      // A = X^T X
           {Trans::no, Trans::no, n, n, n},       // B = b A + c A A
           {Trans::no, Trans::no, m, n, n}}};     // Y = X B
}

double ns_flops(index_t rows, index_t cols, int steps) {
  double f = 0;
  for (const auto& g : ns_products(rows, cols)) f += g.flops();
  return f * steps;
}

// Operands and result of one GEMM, run through the backend's public gemm().
template <class T>
struct GemmProblem {
  GemmShape s;
  std::vector<T> a, b, c;

  GemmProblem(GemmShape shape, unsigned seed)
      : s(shape),
        a(random_values<T>(static_cast<std::size_t>(s.m * s.k), seed)),
        b(random_values<T>(static_cast<std::size_t>(s.k * s.n), seed + 1)),
        c(static_cast<std::size_t>(s.m * s.n)) {}

  // Rows [r0, r1) of C; only for op(A) = A (a row block of a row-major A is contiguous).
  void run(Backend<T>& be, index_t r0, index_t r1) {
    const index_t rows = r1 - r0;
    const MatrixView<const T> av = s.ta == Trans::no ? MatrixView<const T>{a.data() + r0 * s.k, 1, rows, s.k}
                                                     : MatrixView<const T>{a.data(), 1, s.k, s.m};
    const MatrixView<const T> bv =
        s.tb == Trans::no ? MatrixView<const T>{b.data(), 1, s.k, s.n} : MatrixView<const T>{b.data(), 1, s.n, s.k};
    be.gemm(s.ta, s.tb, T(1), av, bv, T(0), MatrixView<T>{c.data() + r0 * s.n, 1, rows, s.n});
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  }
  void run(Backend<T>& be) { run(be, 0, s.m); }
};

template <class T>
void bm_gemm(benchmark::State& st, GemmShape shape) {
  GemmProblem<T> p(shape, 1);
  Backend<T> be;
  be.reserve_gemm(shape.m, shape.n, shape.k);
  p.run(be);  // warm-up: caches, page faults
  Meter meter;
  for (auto _ : st) {
    meter.start();
    p.run(be);
    st.SetIterationTime(meter.stop());
  }
  st.counters["GFLOPS"] = shape.flops() * static_cast<double>(st.iterations()) / meter.cpu() * 1e-9;
  meter.report_wall(st);
}

// C's rows split evenly over `threads` threads, each with its own backend (its own packing
// buffers): what multithreading inside the backend's GEMM could give.
template <class T>
void bm_gemm_split(benchmark::State& st, GemmShape shape, int threads) {
  if (shape.ta != Trans::no) {
    st.SkipWithError("gemm_split needs op(A) = A");
    return;
  }
  GemmProblem<T> p(shape, 1);
  std::vector<Backend<T>> backends(static_cast<std::size_t>(threads));
  std::vector<index_t> bounds;
  for (int t = 0; t <= threads; ++t) bounds.push_back(shape.m * t / threads);
  for (int t = 0; t < threads; ++t) {
    backends[t].reserve_gemm(bounds[t + 1] - bounds[t], shape.n, shape.k);
    p.run(backends[t], bounds[t], bounds[t + 1]);
  }
  double total = 0;
  for (auto _ : st) {
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back([&, t] { p.run(backends[t], bounds[t], bounds[t + 1]); });
    p.run(backends[0], bounds[0], bounds[1]);
    for (auto& th : pool) th.join();
    const double dt = seconds_since(t0);
    st.SetIterationTime(dt);
    total += dt;
  }
  st.counters["GFLOPS"] = shape.flops() * static_cast<double>(st.iterations()) / total * 1e-9;
}

// ---- Newton-Schulz on one matrix -------------------------------------------------------------

// One orthogonalisation job: a matrix, its pristine input, and what apply() needs.
template <class T>
struct NsJob {
  index_t rows, cols;
  std::vector<T> input, x;

  NsJob(index_t r, index_t c, unsigned seed)
      : rows(r), cols(c), input(random_values<T>(static_cast<std::size_t>(r * c), seed)), x(input) {}
  void restore() { std::copy(input.begin(), input.end(), x.begin()); }
  [[nodiscard]] MatrixView<T> view() { return {x.data(), 1, rows, cols}; }
};

template <class T>
struct NsRunner {
  muon::policy::NewtonSchulz ns{};
  Backend<T> be{};
  muon::Workspace<Backend<T>> ws{};

  void plan(index_t rows, index_t cols) {
    muon::WorkspaceNeed need = ns.plan(be, 1, rows, cols);
    need.raise_to(planned);
    planned = need;
  }
  void allocate() { ws.allocate(be, planned); }
  void apply(NsJob<T>& job) {
    ws.reset();
    ns.apply(be, job.view(), ws);
    benchmark::DoNotOptimize(job.x.data());
    benchmark::ClobberMemory();
  }
  muon::WorkspaceNeed planned{};
};

template <class T>
void bm_newton_schulz(benchmark::State& st, index_t rows, index_t cols) {
  NsJob<T> job(rows, cols, 7);
  NsRunner<T> runner;
  runner.plan(rows, cols);
  runner.allocate();
  const int steps = runner.ns.options().steps;

  // The same products, run bare on their own operands through a second backend.
  std::vector<GemmProblem<T>> bare;
  Backend<T> bare_be;
  unsigned seed = 11;
  for (const auto& g : ns_products(rows, cols)) {
    bare.emplace_back(g, seed += 2);
    bare_be.reserve_gemm(g.m, g.n, g.k);
  }
  auto run_bare = [&] {
    for (int k = 0; k < steps; ++k)
      for (auto& p : bare) p.run(bare_be);
  };

  runner.apply(job);  // warm-up
  run_bare();
  Meter ns_meter, gemm_meter;
  for (auto _ : st) {
    job.restore();
    ns_meter.start();
    runner.apply(job);
    st.SetIterationTime(ns_meter.stop());
    gemm_meter.start();
    run_bare();
    gemm_meter.stop();
  }
  const double flops = ns_flops(rows, cols, steps) * static_cast<double>(st.iterations());
  st.counters["GFLOPS"] = flops / ns_meter.cpu() * 1e-9;
  st.counters["gemm_GFLOPS"] = flops / gemm_meter.cpu() * 1e-9;
  st.counters["gemm_frac"] = gemm_meter.cpu() / ns_meter.cpu();
  ns_meter.report_wall(st);
}

// ---- A small transformer ---------------------------------------------------------------------

struct Tensor {
  std::string name;
  std::vector<index_t> shape;  // torch order: Linear weight is (out, in)
  muon::Role role = muon::Role::none;
  std::vector<float> w, g;

  [[nodiscard]] muon::Shape muon_shape() const {
    return shape.size() == 1 ? muon::Shape{shape[0]} : muon::Shape{shape[0], shape[1]};
  }
  [[nodiscard]] index_t numel() const {
    return std::accumulate(shape.begin(), shape.end(), index_t{1}, std::multiplies<>());
  }
};

// 4 pre-norm blocks of d = 512 (fused qkv 1536x512, out 512x512, MLP 2048x512 and 512x2048, a
// bias on each Linear, two LayerNorms with weight and bias), a final LayerNorm and an 8192 x 512
// token embedding (tied output head).
std::vector<Tensor> make_transformer(int layers = 4, index_t d = 512, index_t vocab = 8192) {
  std::vector<Tensor> t;
  auto add = [&t](std::string name, std::vector<index_t> shape, muon::Role role) {
    t.push_back(Tensor{std::move(name), std::move(shape), role, {}, {}});
  };
  add("embed.weight", {vocab, d}, muon::Role::embedding);
  for (int l = 0; l < layers; ++l) {
    const std::string p = "blocks." + std::to_string(l) + ".";
    add(p + "ln1.weight", {d}, muon::Role::norm);
    add(p + "ln1.bias", {d}, muon::Role::bias);
    add(p + "attn.qkv.weight", {3 * d, d}, muon::Role::none);
    add(p + "attn.qkv.bias", {3 * d}, muon::Role::bias);
    add(p + "attn.out.weight", {d, d}, muon::Role::none);
    add(p + "attn.out.bias", {d}, muon::Role::bias);
    add(p + "ln2.weight", {d}, muon::Role::norm);
    add(p + "ln2.bias", {d}, muon::Role::bias);
    add(p + "mlp.up.weight", {4 * d, d}, muon::Role::none);
    add(p + "mlp.up.bias", {4 * d}, muon::Role::bias);
    add(p + "mlp.down.weight", {d, 4 * d}, muon::Role::none);
    add(p + "mlp.down.bias", {d}, muon::Role::bias);
  }
  add("ln_f.weight", {d}, muon::Role::norm);
  add("ln_f.bias", {d}, muon::Role::bias);
  unsigned seed = 100;
  for (auto& x : t) {
    const auto n = static_cast<std::size_t>(x.numel());
    x.w = random_values<float>(n, ++seed, 0.02);
    x.g = random_values<float>(n, ++seed, 1e-3);
  }
  return t;
}

using MuonF = muon::Muon<Backend<float>>;

void register_all(MuonF& opt, std::vector<Tensor>& model) {
  for (auto& x : model)
    opt.add(x.name, muon::raw(x.w.data(), x.muon_shape()), muon::raw(std::as_const(x.g).data(), x.muon_shape()),
            muon::ParamOptions{.role = x.role});
}

// Shares of one step's time: the orthogonalisations (the same NewtonSchulz on copies of the
// matrix gradients, timed in the same loop), the fallback group (an optimizer holding only the
// fallback tensors) and the rest (gradient checks, momentum, Nesterov, the update).
void bm_step(benchmark::State& st) {
  auto model = make_transformer();
  MuonF opt({.threads = 1});  // the single-threaded comparison: thread CPU time
  register_all(opt, model);

  std::vector<Tensor> fallback_model;
  std::vector<NsJob<float>> jobs;
  NsRunner<float> runner;
  for (std::size_t i = 0; i < model.size(); ++i) {
    const auto& x = model[i];
    if (opt.path(static_cast<muon::ParamId>(i)) == muon::Path::matrix) {
      jobs.emplace_back(x.shape[0], x.shape[1], 0);
      jobs.back().input = x.g;
      runner.plan(x.shape[0], x.shape[1]);
    } else {
      fallback_model.push_back(x);
    }
  }
  runner.allocate();
  MuonF fallback_opt({.threads = 1});
  register_all(fallback_opt, fallback_model);

  double orth_flops = 0;
  for (const auto& j : jobs) orth_flops += ns_flops(j.rows, j.cols, runner.ns.options().steps);

  opt.step();  // the first step sizes the workspace
  fallback_opt.step();
  for (auto& j : jobs) {
    j.restore();
    runner.apply(j);
  }

  Meter step_meter, orth_meter, fallback_meter;
  for (auto _ : st) {
    step_meter.start();
    opt.step();
    st.SetIterationTime(step_meter.stop());

    for (auto& j : jobs) {
      j.restore();
      orth_meter.start();
      runner.apply(j);
      orth_meter.stop();
    }
    fallback_meter.start();
    fallback_opt.step();
    fallback_meter.stop();
  }
  const double t_step = step_meter.cpu();
  st.counters["orth_share"] = orth_meter.cpu() / t_step;
  st.counters["fallback_share"] = fallback_meter.cpu() / t_step;
  st.counters["other_share"] = 1.0 - (orth_meter.cpu() + fallback_meter.cpu()) / t_step;
  st.counters["orth_GFLOPS"] = orth_flops * static_cast<double>(st.iterations()) / orth_meter.cpu() * 1e-9;
  st.counters["matrices"] = static_cast<double>(jobs.size());
  step_meter.report_wall(st);
}

// NewtonSchulz over all of the model's hidden matrices, shared out over `threads` threads
// (largest first, each to the least loaded thread), each thread with its own backend and
// workspace: what running the per-parameter orthogonalisations concurrently could give.
void bm_orth_all(benchmark::State& st, int threads) {
  const auto model = make_transformer();
  std::vector<NsJob<float>> jobs;
  for (const auto& x : model)
    if (x.shape.size() == 2 && x.role == muon::Role::none) jobs.emplace_back(x.shape[0], x.shape[1], 3);
  std::vector<std::size_t> order(jobs.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
    return ns_flops(jobs[a].rows, jobs[a].cols, 5) > ns_flops(jobs[b].rows, jobs[b].cols, 5);
  });
  std::vector<std::vector<std::size_t>> share(static_cast<std::size_t>(threads));
  std::vector<double> load(static_cast<std::size_t>(threads), 0.0);
  for (std::size_t i : order) {
    const auto t = static_cast<std::size_t>(std::min_element(load.begin(), load.end()) - load.begin());
    share[t].push_back(i);
    load[t] += ns_flops(jobs[i].rows, jobs[i].cols, 5);
  }
  std::vector<NsRunner<float>> runners(static_cast<std::size_t>(threads));
  for (int t = 0; t < threads; ++t) {
    for (std::size_t i : share[t]) runners[t].plan(jobs[i].rows, jobs[i].cols);
    runners[t].allocate();
  }
  auto work = [&](int t) {
    for (std::size_t i : share[t]) runners[t].apply(jobs[i]);
  };
  for (int t = 0; t < threads; ++t) work(t);  // warm-up

  double total = 0, flops = 0;
  for (const auto& j : jobs) flops += ns_flops(j.rows, j.cols, runners[0].ns.options().steps);
  for (auto _ : st) {
    for (auto& j : jobs) j.restore();
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
    work(0);
    for (auto& th : pool) th.join();
    const double dt = seconds_since(t0);
    st.SetIterationTime(dt);
    total += dt;
  }
  st.counters["GFLOPS"] = flops * static_cast<double>(st.iterations()) / total * 1e-9;
}

// ---- Symmetric products (Eigen's public API; it allocates its packing buffers per call) ------

template <class T>
using RowMatrix = ::Eigen::Matrix<T, ::Eigen::Dynamic, ::Eigen::Dynamic, ::Eigen::RowMajor>;

template <class T>
void bm_syrk(benchmark::State& st, index_t n, index_t m) {
  RowMatrix<T> x = ::Eigen::Map<const RowMatrix<T>>(random_values<T>(static_cast<std::size_t>(n * m), 5).data(), n, m);
  RowMatrix<T> c = RowMatrix<T>::Zero(n, n);
  Meter meter;
  for (auto _ : st) {
    meter.start();
    c.setZero();
    c.template selfadjointView<::Eigen::Lower>().rankUpdate(x);
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
    st.SetIterationTime(meter.stop());
  }
  st.counters["GFLOPS"] = 2.0 * static_cast<double>(n) * n * m * static_cast<double>(st.iterations()) / meter.cpu() * 1e-9;
  meter.report_wall(st);
}

template <class T>
void bm_sym_square(benchmark::State& st, index_t n) {
  RowMatrix<T> x = ::Eigen::Map<const RowMatrix<T>>(random_values<T>(static_cast<std::size_t>(n * n), 6).data(), n, n);
  RowMatrix<T> a = x * x.transpose();  // symmetric
  RowMatrix<T> c = RowMatrix<T>::Zero(n, n);
  Meter meter;
  for (auto _ : st) {
    meter.start();
    c.template triangularView<::Eigen::Lower>() = a * a;
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
    st.SetIterationTime(meter.stop());
  }
  st.counters["GFLOPS"] = 2.0 * static_cast<double>(n) * n * n * static_cast<double>(st.iterations()) / meter.cpu() * 1e-9;
  meter.report_wall(st);
}

// Eigen's public product on row-major matrices (it allocates its packing buffers per call): a
// reference for what the backend gets out of the same kernel.
template <class T>
void bm_eigen_product(benchmark::State& st, GemmShape shape) {
  const auto a_values = random_values<T>(static_cast<std::size_t>(shape.m * shape.k), 1);
  const auto b_values = random_values<T>(static_cast<std::size_t>(shape.k * shape.n), 2);
  const RowMatrix<T> a = ::Eigen::Map<const RowMatrix<T>>(a_values.data(), shape.m, shape.k);
  const RowMatrix<T> b = shape.tb == Trans::no ? RowMatrix<T>(::Eigen::Map<const RowMatrix<T>>(b_values.data(), shape.k, shape.n))
                                               : RowMatrix<T>(::Eigen::Map<const RowMatrix<T>>(b_values.data(), shape.n, shape.k));
  RowMatrix<T> c(shape.m, shape.n);
  auto run = [&] {
    if (shape.tb == Trans::no)
      c.noalias() = a * b;
    else
      c.noalias() = a * b.transpose();
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  };
  run();
  Meter meter;
  for (auto _ : st) {
    meter.start();
    run();
    st.SetIterationTime(meter.stop());
  }
  st.counters["GFLOPS"] = shape.flops() * static_cast<double>(st.iterations()) / meter.cpu() * 1e-9;
  meter.report_wall(st);
}

// ---- Registration and context ------------------------------------------------------------------

benchmark::internal::Benchmark* timed(benchmark::internal::Benchmark* b) {
  return b->UseManualTime()->Unit(benchmark::kMillisecond);
}

template <class T>
void register_shapes(const std::vector<std::pair<index_t, index_t>>& shapes, std::set<std::string>& gemms) {
  const std::string s = scalar_name<T>();
  for (const auto& [rows, cols] : shapes) {
    for (const auto& g : ns_products(rows, cols)) {
      const std::string name = "gemm/" + s + "/" + g.name();
      if (gemms.insert(name).second) timed(benchmark::RegisterBenchmark(name.c_str(), bm_gemm<T>, g));
    }
    timed(benchmark::RegisterBenchmark(("ns5/" + s + "/" + dims(rows, cols)).c_str(), bm_newton_schulz<T>, rows, cols));
  }
}

void register_all_benchmarks() {
  std::set<std::string> gemms;
  register_shapes<float>({{256, 256}, {512, 512}, {1024, 1024}, {1024, 4096}, {4096, 1024}}, gemms);
  register_shapes<double>({{256, 256}, {512, 512}}, gemms);

  timed(benchmark::RegisterBenchmark("step/f32/transformer", bm_step));
  for (int t : {1, 2})
    timed(benchmark::RegisterBenchmark(("orth_all/f32/threads:" + std::to_string(t)).c_str(), bm_orth_all, t));
  for (const GemmShape g : {GemmShape{Trans::no, Trans::no, 1024, 1024, 1024}, GemmShape{Trans::no, Trans::yes, 1024, 1024, 4096}})
    for (int t : {1, 2})
      timed(benchmark::RegisterBenchmark(("gemm_split/f32/" + g.name() + "/threads:" + std::to_string(t)).c_str(),
                                         bm_gemm_split<float>, g, t));
  for (const auto& [n, m] : std::vector<std::pair<index_t, index_t>>{{512, 512}, {1024, 1024}, {1024, 4096}})
    timed(benchmark::RegisterBenchmark(("syrk/f32/" + dims(n, m)).c_str(), bm_syrk<float>, n, m));
  for (index_t n : {512, 1024})
    timed(benchmark::RegisterBenchmark(("sym_square/f32/" + std::to_string(n)).c_str(), bm_sym_square<float>, n));
  for (const GemmShape g : {GemmShape{Trans::no, Trans::no, 1024, 1024, 1024}, GemmShape{Trans::no, Trans::yes, 1024, 1024, 1024},
                            GemmShape{Trans::no, Trans::yes, 1024, 1024, 4096}})
    timed(benchmark::RegisterBenchmark(("eigen_product/f32/" + g.name()).c_str(), bm_eigen_product<float>, g));
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? line : line.substr(colon + 2);
    }
  return "unknown";
}

// Settings that change what a BLAS or OpenMP runtime does, as the process saw them.
void add_environment_context() {
  static constexpr std::array<const char*, 7> prefixes{"OPENBLAS_", "GOTO_", "OMP_", "GOMP_", "MKL_", "EIGEN_", "NVPL_"};
  for (const char* name : {"OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"})
    if (std::getenv(name) == nullptr) benchmark::AddCustomContext(std::string("env.") + name, "(unset)");
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string kv(*e);
    const auto eq = kv.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = kv.substr(0, eq);
    for (const char* p : prefixes)
      if (key.rfind(p, 0) == 0) benchmark::AddCustomContext("env." + key, kv.substr(eq + 1));
  }
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::AddCustomContext("muon_variant", MUON_BENCH_VARIANT);
  benchmark::AddCustomContext("muon_compiler", MUON_BENCH_COMPILER);
  benchmark::AddCustomContext("muon_cxx_flags", MUON_BENCH_CXX_FLAGS);
  benchmark::AddCustomContext("math_errno", muon::math_errno ? "on (square-root loops stay scalar)" : "off");
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("eigen_simd", ::Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("eigen_threads", std::to_string(::Eigen::nbThreads()));
  benchmark::AddCustomContext("cpu_model", cpu_model());
  benchmark::AddCustomContext("hardware_threads", std::to_string(std::thread::hardware_concurrency()));
#ifdef MUON_BENCH_OPENBLAS
  benchmark::AddCustomContext("openblas_core", openblas_get_corename());
  benchmark::AddCustomContext("openblas_threads", std::to_string(openblas_get_num_threads()));
#endif
  add_environment_context();

  register_all_benchmarks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
