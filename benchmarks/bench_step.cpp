// One optimizer step on GPT-2 small's parameter set, for the side-by-side comparison with
// torch.optim.Muon + torch.optim.AdamW in compare_torch.py (--gpt2-only). See benchmarks/README.md.
//
// The parameter set (torch order: a Linear weight is (out, in); GPT-2's Conv1D weights are stored
// transposed in the HF checkpoints, the shapes here are the Linear ones):
//   wte (50257, 768), wpe (1024, 768)                      role embedding -> AdamW
//   per block l = 0..11:
//     h.l.ln_1.weight / bias (768,)                        role norm / bias -> AdamW
//     h.l.attn.c_attn.weight (2304, 768), bias (2304,)     matrix -> Muon; bias -> AdamW
//     h.l.attn.c_proj.weight (768, 768), bias (768,)
//     h.l.ln_2.weight / bias (768,)
//     h.l.mlp.c_fc.weight (3072, 768), bias (3072,)
//     h.l.mlp.c_proj.weight (768, 3072), bias (768,)
//   ln_f.weight / bias (768,)
// 48 matrices (85 M values) on the matrix path, 39 M values on AdamW. Values ~ N(0, 0.02),
// gradients ~ N(0, 1e-3), fixed seeds; the gradients stay fixed from step to step.
//
// Hyperparameters as compare_torch.py gives torch: Muon lr 0.02, momentum 0.95, Nesterov, no weight
// decay, lr_adjust original; AdamW lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
//
// Cases (all UseManualTime, wall-clock time):
//   step/gpt2/<fp32|bf16>/threads:<N>   one Muon<Eigen<float>>::step(), N = 1 and every core
//       (std::thread::hardware_concurrency()); Options::threads = N and the orthogonalizer's
//       precision full (fp32) or bf16. One untimed warm-up step (it sizes the workspace), then
//       --step_iterations timed steps (default 3), each its own iteration. Counters:
//         flops          Newton-Schulz flops of one step: per matrix-path tensor
//                        5 x (2n²m + 2n³ + 2n²m), n = min, m = max of its shape
//         step_s_median  median wall-clock seconds of the timed steps (step_s_min: the fastest)
//         ns_GFLOPS      flops / step_s_median
//         cpu_over_wall  process CPU time / wall time over the timed steps (~ busy cores)
//         threads, matrices, fallback_tensors, layers
//         state_MB, matrix_state_MB, fallback_state_MB   memory_report() after the step
//   step/gpt2/fp32/state:<full|bf16|bf16_q8>/threads:<all>   the same step (fp32 products, every
//       core) with the state in value_type, with bf16 momentum and bf16 AdamW moments, and with
//       bf16 momentum and 8-bit block-wise AdamW moments (core/state_format.hpp)
//       bf16 on a CPU without bf16 dot products: the optimizer refuses it (muon::Error) and the
//       case is skipped with that message.
//   update/wte/<adamw|lion>/state:<full|bf16|q8>   one AdamW / Lion update of wte (38.6 M values)
//       alone, one thread, its state in that format. Counters: ns_per_value, state_MB.
//   gemm/f32/<op>/MxNxK   muon::backend::Eigen<float>::gemm alone, no thread pool set (one
//       thread), the products of Newton-Schulz on a 768 x 3072 matrix. Counters: GFLOPS
//       (2MNK / wall time), cpu_over_wall (about 1 when the product library kept to one thread).
// The JSON context records the library behind the backend's products (product_library).
//
// Extra flags (read before Google Benchmark's own):
//   --gpt2_layers=N       blocks in the model (default 12; fewer for a quick check of the script)
//   --step_iterations=N   timed steps per case (default 3)
#include <benchmark/benchmark.h>

#include <muon/muon.hpp>

#include <Eigen/Core>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <time.h>    // clock_gettime
#include <unistd.h>  // environ

extern char** environ;

namespace {

using muon::index_t;
using muon::backend::MatrixView;
using muon::backend::Trans;
using Clock = std::chrono::steady_clock;
using Backend = muon::backend::Eigen<float>;
using MuonF = muon::Muon<Backend>;

int g_layers = 12;
int g_step_iterations = 3;

constexpr index_t kWidth = 768;
constexpr index_t kVocab = 50257;
constexpr index_t kContext = 1024;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

double process_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t h = v.size() / 2;
  return v.size() % 2 == 1 ? v[h] : 0.5 * (v[h - 1] + v[h]);
}

std::vector<float> normal_values(std::size_t n, unsigned seed, float stddev) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0F, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

// Newton-Schulz flops of one rows x cols matrix: `steps` iterations of A = X Xᵀ (2n²m),
// B = bA + cA² (2n³), X = aX + BX (2n²m), with n = min and m = max of the shape.
double ns_flops(index_t rows, index_t cols, int steps) {
  const auto n = static_cast<double>(std::min(rows, cols));
  const auto m = static_cast<double>(std::max(rows, cols));
  return steps * (2.0 * n * n * m + 2.0 * n * n * n + 2.0 * n * n * m);
}

// ---- The model ------------------------------------------------------------------------------

struct Tensor {
  std::string name;
  std::vector<index_t> shape;
  muon::Role role = muon::Role::none;
  std::vector<float> w, g;

  [[nodiscard]] muon::Shape muon_shape() const {
    return shape.size() == 1 ? muon::Shape{shape[0]} : muon::Shape{shape[0], shape[1]};
  }
  [[nodiscard]] std::size_t numel() const {
    return static_cast<std::size_t>(
        std::accumulate(shape.begin(), shape.end(), index_t{1}, std::multiplies<>()));
  }
};

std::vector<Tensor> make_gpt2(int layers) {
  std::vector<Tensor> t;
  auto add = [&t](std::string name, std::vector<index_t> shape, muon::Role role) {
    t.push_back(Tensor{std::move(name), std::move(shape), role, {}, {}});
  };
  const index_t d = kWidth;
  add("wte.weight", {kVocab, d}, muon::Role::embedding);
  add("wpe.weight", {kContext, d}, muon::Role::embedding);
  for (int l = 0; l < layers; ++l) {
    const std::string p = "h." + std::to_string(l) + ".";
    add(p + "ln_1.weight", {d}, muon::Role::norm);
    add(p + "ln_1.bias", {d}, muon::Role::bias);
    add(p + "attn.c_attn.weight", {3 * d, d}, muon::Role::none);
    add(p + "attn.c_attn.bias", {3 * d}, muon::Role::bias);
    add(p + "attn.c_proj.weight", {d, d}, muon::Role::none);
    add(p + "attn.c_proj.bias", {d}, muon::Role::bias);
    add(p + "ln_2.weight", {d}, muon::Role::norm);
    add(p + "ln_2.bias", {d}, muon::Role::bias);
    add(p + "mlp.c_fc.weight", {4 * d, d}, muon::Role::none);
    add(p + "mlp.c_fc.bias", {4 * d}, muon::Role::bias);
    add(p + "mlp.c_proj.weight", {d, 4 * d}, muon::Role::none);
    add(p + "mlp.c_proj.bias", {d}, muon::Role::bias);
  }
  add("ln_f.weight", {d}, muon::Role::norm);
  add("ln_f.bias", {d}, muon::Role::bias);
  unsigned seed = 2024;
  for (auto& x : t) {
    x.w = normal_values(x.numel(), ++seed, 0.02F);
    x.g = normal_values(x.numel(), ++seed, 1e-3F);
  }
  return t;
}

// Built once per process (about 250 M random values): every case and repetition steps the same
// tensors, each with a fresh optimizer (fresh momentum and AdamW state).
std::vector<Tensor>& gpt2_model() {
  static std::vector<Tensor> model = make_gpt2(g_layers);
  return model;
}

// ---- step/gpt2 --------------------------------------------------------------------------------

MuonF::Options gpt2_options(muon::Precision precision, int threads) {
  MuonF::Options o;
  o.lr = 0.02;
  o.momentum = 0.95;
  o.nesterov = true;
  o.weight_decay = 0.0;
  o.lr_adjust = muon::LrAdjust::original;
  o.threads = threads;
  o.orthogonalizer.precision = precision;
  o.fallback.lr = 1e-3;
  o.fallback.beta1 = 0.9;
  o.fallback.beta2 = 0.999;
  o.fallback.eps = 1e-8;
  o.fallback.weight_decay = 0.01;
  return o;
}

// Optimizer state formats compared by step/gpt2/fp32/state:<label> (core/state_format.hpp).
enum class StateSet { full, bf16, bf16_q8 };

void bm_step_gpt2(benchmark::State& st, muon::Precision precision, int threads, StateSet state) {
  auto& model = gpt2_model();
  std::unique_ptr<MuonF> opt;
  double flops = 0;
  int matrices = 0, fallback_tensors = 0;
  try {
    MuonF::Options options = gpt2_options(precision, threads);
    if (state != StateSet::full) options.momentum_state.format = muon::StateFormat::bf16;
    if (state == StateSet::bf16) options.fallback.state.format = muon::StateFormat::bf16;
    if (state == StateSet::bf16_q8) options.fallback.state.format = muon::StateFormat::q8;
    const int steps = options.orthogonalizer.steps;
    opt = std::make_unique<MuonF>(options);
    for (auto& x : model) {
      const muon::ParamId id = opt->add(x.name, muon::raw(x.w.data(), x.muon_shape()),
                                        muon::raw(std::as_const(x.g).data(), x.muon_shape()),
                                        muon::ParamOptions{.role = x.role});
      if (opt->path(id) == muon::Path::matrix) {
        flops += ns_flops(x.shape[0], x.shape[1], steps);
        ++matrices;
      } else {
        ++fallback_tensors;
      }
    }
    const auto warm = opt->step();  // sizes the workspace, faults in the state buffers
    if (!warm.all_applied()) {
      st.SkipWithError("the warm-up step skipped a tensor (non-finite gradient)");
      return;
    }
  } catch (const muon::Error& e) {
    st.SkipWithError(e.what());
    return;
  }

  std::vector<double> times;
  double wall = 0, cpu = 0;
  for (auto _ : st) {
    const double cpu0 = process_cpu_seconds();
    const auto t0 = Clock::now();
    const auto result = opt->step();
    const double dt = seconds_since(t0);
    cpu += process_cpu_seconds() - cpu0;
    benchmark::DoNotOptimize(result.step);
    st.SetIterationTime(dt);
    times.push_back(dt);
    wall += dt;
  }
  const double med = median(times);
  st.counters["flops"] = flops;
  st.counters["step_s_median"] = med;
  st.counters["step_s_min"] = *std::min_element(times.begin(), times.end());
  st.counters["ns_GFLOPS"] = flops / med * 1e-9;
  st.counters["cpu_over_wall"] = cpu / wall;
  st.counters["threads"] = threads;
  st.counters["matrices"] = matrices;
  st.counters["fallback_tensors"] = fallback_tensors;
  st.counters["layers"] = g_layers;
  const muon::MemoryReport memory = opt->memory_report();
  st.counters["state_MB"] = static_cast<double>(memory.state_bytes()) * 1e-6;
  st.counters["matrix_state_MB"] = static_cast<double>(memory.matrix_state_bytes) * 1e-6;
  st.counters["fallback_state_MB"] = static_cast<double>(memory.fallback_state_bytes) * 1e-6;
}

// ---- update/wte --------------------------------------------------------------------------------

// One fallback update of GPT-2's token embedding (50257 x 768, the largest AdamW tensor of the
// step) with its state in `format`, on one thread: the cost of each state format next to full.
template <class Policy>
void bm_update_wte(benchmark::State& st, muon::StateFormat format) {
  typename Policy::Options options;
  options.lr = 1e-3;
  options.weight_decay = 0.01;
  options.state.format = format;
  Policy policy(options);
  Backend b;
  const auto n = static_cast<index_t>(kVocab) * kWidth;
  std::vector<float> w = normal_values(static_cast<std::size_t>(n), 7, 0.02F);
  const std::vector<float> g = normal_values(static_cast<std::size_t>(n), 8, 1e-3F);
  const muon::ParamInfo info{"wte.weight", muon::Shape{kVocab, kWidth}, muon::Role::embedding};
  auto state = policy.make_state(b, info);
  const MatrixView<float> wv{w.data(), 1, kVocab, kWidth};
  const MatrixView<const float> gv{g.data(), 1, kVocab, kWidth};
  policy.apply(b, state, wv, gv);  // faults the state in
  for (auto _ : st) {
    const auto t0 = Clock::now();
    policy.apply(b, state, wv, gv);
    st.SetIterationTime(seconds_since(t0));
    benchmark::DoNotOptimize(w.data());
  }
  st.counters["values"] = static_cast<double>(n);
  st.counters["ns_per_value"] =
      benchmark::Counter(static_cast<double>(n) * 1e-9, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  st.counters["state_MB"] = static_cast<double>(muon::StateBuffer<Backend>::storage_elements(
                                static_cast<std::size_t>(n), options.state) * sizeof(float)) *
                            (std::is_same_v<Policy, muon::policy::AdamW> ? 2e-6 : 1e-6);
}

// ---- gemm/f32 ---------------------------------------------------------------------------------

// C (m x n) = op(A) (m x k) op(B) (k x n), row-major operands, through the backend's gemm.
struct GemmShape {
  Trans ta = Trans::no, tb = Trans::no;
  index_t m = 0, n = 0, k = 0;

  [[nodiscard]] double flops() const { return 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k); }
  [[nodiscard]] std::string name() const {
    return std::string(ta == Trans::no ? "N" : "T") + (tb == Trans::no ? "N" : "T") + "/" + std::to_string(m) + "x" +
           std::to_string(n) + "x" + std::to_string(k);
  }
};

// In = float: float products; In = muon::bfloat16: bf16 operands, float accumulation. threads > 1
// splits the product over a pool as the optimizer does.
template <class In>
void bm_gemm(benchmark::State& st, GemmShape s, int threads) {
  const auto a = normal_values(static_cast<std::size_t>(s.m * s.k), 11, 1.0F);
  const auto b = normal_values(static_cast<std::size_t>(s.k * s.n), 12, 1.0F);
  std::vector<float> c(static_cast<std::size_t>(s.m * s.n));
  Backend be;
  auto pool = muon::shared_thread_pool(threads);
  be.set_pool(pool.get());
  if constexpr (std::is_same_v<In, muon::bfloat16>) {
    const std::string why = be.bf16_unavailable_reason();
    if (!why.empty()) {
      st.SkipWithError(why.c_str());
      return;
    }
  }
  std::vector<In> a_in(a.size()), b_in(b.size());
  if constexpr (std::is_same_v<In, float>) {
    a_in = a;
    b_in = b;
  } else {
    be.convert(MatrixView<const float>{a.data(), 1, 1, static_cast<index_t>(a.size())}, MatrixView<In>{a_in.data(), 1, 1, static_cast<index_t>(a.size())});
    be.convert(MatrixView<const float>{b.data(), 1, 1, static_cast<index_t>(b.size())}, MatrixView<In>{b_in.data(), 1, 1, static_cast<index_t>(b.size())});
  }
  const MatrixView<const In> av = s.ta == Trans::no ? MatrixView<const In>{a_in.data(), 1, s.m, s.k}
                                                    : MatrixView<const In>{a_in.data(), 1, s.k, s.m};
  const MatrixView<const In> bv = s.tb == Trans::no ? MatrixView<const In>{b_in.data(), 1, s.k, s.n}
                                                    : MatrixView<const In>{b_in.data(), 1, s.n, s.k};
  be.reserve_gemm(s.m, s.n, s.k);
  auto run = [&] {
    be.gemm(s.ta, s.tb, 1.0F, av, bv, 0.0F, MatrixView<float>{c.data(), 1, s.m, s.n});
    benchmark::DoNotOptimize(c.data());
    benchmark::ClobberMemory();
  };
  run();  // warm-up
  double wall = 0, cpu = 0, best = 1e300;
  for (auto _ : st) {
    const double cpu0 = process_cpu_seconds();
    const auto t0 = Clock::now();
    run();
    const double dt = seconds_since(t0);
    cpu += process_cpu_seconds() - cpu0;
    st.SetIterationTime(dt);
    wall += dt;
    best = std::min(best, dt);
  }
  st.counters["GFLOPS"] = s.flops() * static_cast<double>(st.iterations()) / wall * 1e-9;
  st.counters["GFLOPS_best"] = s.flops() / best * 1e-9;
  st.counters["cpu_over_wall"] = cpu / wall;
}

// ---- Registration and context -----------------------------------------------------------------

void register_all_benchmarks() {
  const int all = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  std::vector<int> thread_counts{1};
  if (all > 1) thread_counts.push_back(all);
  // Newton-Schulz on a 768 x 3072 matrix (mlp.c_proj; c_fc is its transpose): A = X Xᵀ,
  // A A, B X.
  for (const GemmShape g : {GemmShape{Trans::no, Trans::yes, kWidth, kWidth, 4 * kWidth},
                            GemmShape{Trans::no, Trans::no, kWidth, kWidth, kWidth},
                            GemmShape{Trans::no, Trans::no, kWidth, 4 * kWidth, kWidth}})
    for (int t : thread_counts) {
      const std::string suffix = g.name() + "/threads:" + std::to_string(t);
      benchmark::RegisterBenchmark(("gemm/f32/" + suffix).c_str(), bm_gemm<float>, g, t)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
      benchmark::RegisterBenchmark(("gemm/bf16/" + suffix).c_str(), bm_gemm<muon::bfloat16>, g, t)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond);
    }

  for (const auto& [label, precision] : {std::pair{"fp32", muon::Precision::full}, std::pair{"bf16", muon::Precision::bf16}})
    for (int t : thread_counts)
      benchmark::RegisterBenchmark(("step/gpt2/" + std::string(label) + "/threads:" + std::to_string(t)).c_str(),
                                   bm_step_gpt2, precision, t, StateSet::full)
          ->UseManualTime()
          ->Unit(benchmark::kSecond)
          ->Iterations(g_step_iterations);
  for (const auto& [label, format] : {std::pair{"full", muon::StateFormat::full}, std::pair{"bf16", muon::StateFormat::bf16},
                                      std::pair{"q8", muon::StateFormat::q8}}) {
    benchmark::RegisterBenchmark(("update/wte/adamw/state:" + std::string(label)).c_str(), bm_update_wte<muon::policy::AdamW>, format)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("update/wte/lion/state:" + std::string(label)).c_str(), bm_update_wte<muon::policy::Lion>, format)
        ->UseManualTime()
        ->Unit(benchmark::kMillisecond);
  }
  // The state formats side by side (fp32 products, every core): full, bf16 momentum + bf16
  // AdamW moments, bf16 momentum + 8-bit AdamW moments.
  for (const auto& [label, state] : {std::pair{"full", StateSet::full}, std::pair{"bf16", StateSet::bf16},
                                     std::pair{"bf16_q8", StateSet::bf16_q8}}) {
    const int t = thread_counts.back();
    benchmark::RegisterBenchmark(("step/gpt2/fp32/state:" + std::string(label) + "/threads:" + std::to_string(t)).c_str(),
                                 bm_step_gpt2, muon::Precision::full, t, state)
        ->UseManualTime()
        ->Unit(benchmark::kSecond)
        ->Iterations(g_step_iterations);
  }
}

std::string cpuinfo_field(const std::string& field) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(field, 0) == 0) {
      const auto colon = line.find(':');
      return colon == std::string::npos ? std::string() : line.substr(colon + 2);
    }
  return {};
}

// The CPU flags that decide which GEMM kernels a library can use.
std::string gemm_cpu_flags() {
  std::istringstream in(cpuinfo_field("flags"));
  std::vector<std::string> have;
  for (std::string f; in >> f;) have.push_back(f);
  std::string out;
  for (const char* f : {"avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    if (std::find(have.begin(), have.end(), f) != have.end()) {
      if (!out.empty()) out.push_back(' ');
      out.append(f);
    }
  return out.empty() ? "(none of avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile)" : out;
}

// The library that runs the backend's products, where the backend says (a static
// product_library member whose enum has a to_string); otherwise a note.
template <class B>
std::string product_library_name() {
  if constexpr (requires { to_string(B::product_library); })
    return std::string(to_string(B::product_library));
  else
    return "(not reported by the backend)";
}

// Settings that change what a BLAS, OpenMP or oneDNN runtime does, as this process saw them.
void add_environment_context() {
  static constexpr std::array<const char*, 9> prefixes{"OPENBLAS_", "GOTO_", "OMP_", "GOMP_", "KMP_",
                                                       "MKL_", "DNNL_", "ONEDNN_", "EIGEN_"};
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string kv(*e);
    const auto eq = kv.find('=');
    if (eq == std::string::npos) continue;
    const std::string key = kv.substr(0, eq);
    for (const char* p : prefixes)
      if (key.rfind(p, 0) == 0) benchmark::AddCustomContext("env." + key, kv.substr(eq + 1));
  }
}

// Takes "--name=<int>" out of argv; returns whether it was there.
bool take_int_flag(int& argc, char** argv, const char* name, int& value) {
  const std::string prefix = std::string("--") + name + "=";
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix.c_str(), prefix.size()) != 0) continue;
    value = std::atoi(argv[i] + prefix.size());
    for (int j = i; j + 1 < argc; ++j) argv[j] = argv[j + 1];
    --argc;
    return true;
  }
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  take_int_flag(argc, argv, "gpt2_layers", g_layers);
  take_int_flag(argc, argv, "step_iterations", g_step_iterations);
  g_layers = std::max(0, g_layers);
  g_step_iterations = std::max(1, g_step_iterations);

  benchmark::AddCustomContext("muon_compiler", MUON_BENCH_COMPILER);
  benchmark::AddCustomContext("muon_cxx_flags", MUON_BENCH_CXX_FLAGS);
  benchmark::AddCustomContext("eigen_version", std::to_string(EIGEN_WORLD_VERSION) + "." +
                                                   std::to_string(EIGEN_MAJOR_VERSION) + "." +
                                                   std::to_string(EIGEN_MINOR_VERSION));
  benchmark::AddCustomContext("eigen_simd", ::Eigen::SimdInstructionSetsInUse());
  benchmark::AddCustomContext("math_errno", muon::math_errno ? "on (square-root loops stay scalar)" : "off");
  benchmark::AddCustomContext("product_library", product_library_name<Backend>());
  benchmark::AddCustomContext("product_libraries_linked", MUON_BENCH_PRODUCTS);
  benchmark::AddCustomContext("cpu_model", cpuinfo_field("model name"));
  benchmark::AddCustomContext("cpu_gemm_flags", gemm_cpu_flags());
  benchmark::AddCustomContext("hardware_threads", std::to_string(std::thread::hardware_concurrency()));
  benchmark::AddCustomContext("gpt2_layers", std::to_string(g_layers));
  benchmark::AddCustomContext("step_iterations", std::to_string(g_step_iterations));
  add_environment_context();

  register_all_benchmarks();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
