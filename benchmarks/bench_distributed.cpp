// Sharded Muon on GPT-2 small's parameter set under MPI: optimizer memory per rank and step
// time against the single-process optimizer, measured at the rank count it is started with, and
// a paper model of the same quantities (and of the bytes sent per step) for 1 to 1024 ranks.
//
//   mpirun -np N bench_distributed [--layers L] [--steps S] [--mode reduce|averaged]
//     --layers  transformer blocks (default 12 = GPT-2 small; fewer for a quicker timing run)
//     --steps   timed steps after one warm-up step (default 3; 0 = memory only, no step)
//     --blocking 1  blocking MPI collectives (MpiCommunicator::Options::blocking)
//
// Every rank holds the whole model (parameters and gradients, as a data-parallel trainer does);
// what is sharded is the optimizer's state and its work. Rank 0 also times the plain
// single-process Muon on the same model first (the work every rank would repeat without
// sharding), while the other ranks sleep. Threads: 1 per rank (the ranks share the machine's cores; with more
// ranks than cores, the measured times show oversubscription, not scaling).
#include <muon/distributed/mpi.hpp>  // first: it asks for MPI's C API only

#include <algorithm>
#include <chrono>
#include <ctime>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/distributed/sharded.hpp>
#include <muon/muon.hpp>

namespace {

using Opt = muon::Muon<muon::backend::Eigen<float>>;
using Sharded = muon::distributed::Sharded<Opt, muon::distributed::MpiCommunicator>;

struct Tensor {
  std::string name;
  muon::Shape shape;
  muon::ParamOptions options{};
};

std::vector<Tensor> gpt2(int layers) {
  using muon::Role;
  const muon::index_t d = 768;
  std::vector<Tensor> t = {{"wte", {50257, d}, {.role = Role::embedding}}, {"wpe", {1024, d}, {.role = Role::embedding}}};
  for (int l = 0; l < layers; ++l) {
    const std::string h = "h." + std::to_string(l) + ".";
    t.push_back({h + "ln_1.weight", {d}, {.role = Role::norm}});
    t.push_back({h + "ln_1.bias", {d}, {.role = Role::bias}});
    t.push_back({h + "attn.c_attn.weight", {3 * d, d}});
    t.push_back({h + "attn.c_attn.bias", {3 * d}, {.role = Role::bias}});
    t.push_back({h + "attn.c_proj.weight", {d, d}});
    t.push_back({h + "attn.c_proj.bias", {d}, {.role = Role::bias}});
    t.push_back({h + "ln_2.weight", {d}, {.role = Role::norm}});
    t.push_back({h + "ln_2.bias", {d}, {.role = Role::bias}});
    t.push_back({h + "mlp.c_fc.weight", {4 * d, d}});
    t.push_back({h + "mlp.c_fc.bias", {4 * d}, {.role = Role::bias}});
    t.push_back({h + "mlp.c_proj.weight", {d, 4 * d}});
    t.push_back({h + "mlp.c_proj.bias", {d}, {.role = Role::bias}});
  }
  t.push_back({"ln_f.weight", {d}, {.role = Role::norm}});
  t.push_back({"ln_f.bias", {d}, {.role = Role::bias}});
  return t;
}

// Peak resident memory of this process (Linux), in MiB; 0 where unknown.
double peak_rss_mib() {
  std::ifstream is("/proc/self/status");
  std::string line;
  while (std::getline(is, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;
  return 0;
}

double mib(double bytes) { return bytes / (1024.0 * 1024.0); }

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int layers = 12, steps = 3;
  bool blocking = false;
  auto mode = muon::distributed::GradientMode::reduce;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--layers") layers = std::atoi(v.c_str());
    if (a == "--steps") steps = std::atoi(v.c_str());
    if (a == "--blocking") blocking = v == "1";
    if (a == "--mode") mode = v == "averaged" ? muon::distributed::GradientMode::averaged : muon::distributed::GradientMode::reduce;
  }
  const auto spec = gpt2(layers);
  std::vector<std::vector<float>> w(spec.size()), g(spec.size());
  double matrix_elements = 0, fallback_elements = 0;
  for (std::size_t i = 0; i < spec.size(); ++i) {
    const auto n = static_cast<std::size_t>(spec[i].shape.numel());
    w[i].assign(n, 0.01f * static_cast<float>(i % 7 + 1));
    g[i].assign(n, 0.0f);
    for (std::size_t k = 0; k < n; ++k) g[i][k] = 1e-3f * static_cast<float>(static_cast<int>((k * 2654435761u + i + 97u * static_cast<unsigned>(rank)) % 201) - 100);
  }
  const Opt::Options options{.lr = 0.02, .weight_decay = 0.01, .threads = 1, .fallback = {.lr = 3e-4}};

  auto median = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  // The single-process baseline first, on rank 0 only (its own copies of the buffers); the other
  // ranks wait in a polled, sleeping barrier, so that no busy-waiting rank takes its cores.
  double single_time = 0, single_state = 0;
  if (rank == 0) {
    std::vector<std::vector<float>> w1 = w, g1 = g;
    Opt plain(options);
    for (std::size_t i = 0; i < spec.size(); ++i)
      plain.add(spec[i].name, muon::raw(w1[i].data(), spec[i].shape), muon::raw(g1[i].data(), spec[i].shape), spec[i].options);
    std::vector<double> t1;
    for (int s = 0; s <= steps && steps > 0; ++s) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();
      plain.step();
      if (s > 0) {
        t1.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        std::printf("single-process step %d: %.3f s [cpu %.3f]\n", s, t1.back(), static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC);
      }
    }
    single_time = median(t1);
    const auto m = plain.memory_report();
    single_state = static_cast<double>(m.matrix_state_bytes + m.fallback_state_bytes + m.filter_state_bytes + m.master_weight_bytes);
  }

  {
    MPI_Request barrier;
    MPI_Ibarrier(MPI_COMM_WORLD, &barrier);
    for (int done = 0; !done;) {
      MPI_Test(&barrier, &done, MPI_STATUS_IGNORE);
      if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  }

  Sharded opt(muon::distributed::MpiCommunicator(MPI_COMM_WORLD, {.blocking = blocking}), options, {.gradients = mode});
  for (std::size_t i = 0; i < spec.size(); ++i)
    opt.add(spec[i].name, muon::raw(w[i].data(), spec[i].shape), muon::raw(g[i].data(), spec[i].shape), spec[i].options);
  opt.finalize();
  for (std::size_t i = 0; i < spec.size(); ++i)
    (opt.path(i) == muon::Path::matrix ? matrix_elements : fallback_elements) += static_cast<double>(w[i].size());

  // Timed steps (the slowest rank's time is the step's).
  std::vector<double> times;
  for (int s = 0; s <= steps && steps > 0; ++s) {
    MPI_Barrier(MPI_COMM_WORLD);
    const auto t0 = std::chrono::steady_clock::now();
    opt.step();
    double t = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    MPI_Allreduce(MPI_IN_PLACE, &t, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (s > 0) times.push_back(t);
    const auto& p = opt.last_step_times();
    double phases[5] = {p.stage, p.decide, p.inner, p.distribute, p.inner_cpu};
    MPI_Allreduce(MPI_IN_PLACE, phases, 5, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (rank == 0 && s > 0)
      std::printf("step %d: %.3f s (slowest rank per phase: stage %.3f, decide %.3f, inner %.3f [cpu %.3f], distribute %.3f)\n",
                  s, t, phases[0], phases[1], phases[2], phases[4], phases[3]);
  }
  const auto mem = opt.memory_report();
  double mine[6] = {static_cast<double>(mem.state_bytes()), static_cast<double>(mem.inner.matrix_state_bytes),
                    static_cast<double>(mem.inner.fallback_state_bytes), static_cast<double>(mem.staging_bytes),
                    static_cast<double>(mem.inner.workspace_bytes), peak_rss_mib()};
  std::vector<double> all(6 * static_cast<std::size_t>(size));
  MPI_Gather(mine, 6, MPI_DOUBLE, all.data(), 6, MPI_DOUBLE, 0, MPI_COMM_WORLD);

  if (rank == 0) {
    std::printf("GPT-2 small parameter set, %d layers: %.1fM matrix-path + %.1fM fallback-path elements (fp32), mode %s\n",
                layers, matrix_elements / 1e6, fallback_elements / 1e6,
                mode == muon::distributed::GradientMode::reduce ? "reduce" : "averaged");
    std::printf("machine: %u hardware threads; %d ranks x 1 thread each%s\n", std::thread::hardware_concurrency(), size,
                static_cast<unsigned>(size) > std::thread::hardware_concurrency() ? " (oversubscribed)" : "");
    std::printf("\nmeasured, per rank (MiB):\n  rank  optimizer state  (matrix / fallback)  grad staging  workspace  peak RSS\n");
    for (int r = 0; r < size; ++r) {
      const double* m = &all[6 * static_cast<std::size_t>(r)];
      std::printf("  %4d  %15.1f  (%6.1f / %8.1f)  %12.1f  %9.1f  %8.1f\n", r, mib(m[0]), mib(m[1]), mib(m[2]), mib(m[3]),
                  mib(m[4]), m[5]);
    }
    std::printf("  single-process optimizer state: %.1f MiB (rank 0 of %d holds %.3f of it)\n", mib(single_state), size,
                single_state > 0 ? all[0] / single_state : 0.0);
    if (steps > 0)
      std::printf("\nstep time (median of %d, slowest rank): sharded %.3f s on %d ranks, single-process %.3f s (ratio %.2f)\n",
                  steps, median(times), size, single_time, single_time > 0 ? median(times) / single_time : 0.0);

    // The paper model: owners by the same rule as Sharded, for N ranks.
    std::vector<double> costs;
    double total_cost = 0, largest = 0;
    for (std::size_t i = 0; i < spec.size(); ++i)
      if (opt.path(i) == muon::Path::matrix) {
        costs.push_back(muon::distributed::orthogonalization_cost(spec[i].shape));
        total_cost += costs.back();
        largest = std::max(largest, costs.back());
      }
    const double b = sizeof(float);
    std::printf("\nmodel for N ranks (fp32; P = %.1fM matrix, F = %.1fM fallback elements; AdamW state 2F, momentum P):\n",
                matrix_elements / 1e6, fallback_elements / 1e6);
    std::printf("  %5s  %16s  %18s  %22s  %22s  %12s\n", "N", "max NS share", "NS speed-up bound", "state/rank max (MiB)",
                "sent/rank/step (MiB)", "collectives");
    for (int n = 1; n <= 1024; n *= 2) {
      const auto owners = muon::distributed::assign_owners(costs, n);
      std::vector<double> load(static_cast<std::size_t>(n), 0.0), mom(static_cast<std::size_t>(n), 0.0);
      std::size_t k = 0;
      for (std::size_t i = 0; i < spec.size(); ++i)
        if (opt.path(i) == muon::Path::matrix) {
          load[static_cast<std::size_t>(owners[k])] += costs[k];
          mom[static_cast<std::size_t>(owners[k])] += static_cast<double>(w[i].size());
          ++k;
        }
      const double max_load = *std::max_element(load.begin(), load.end());
      const double max_mom = *std::max_element(mom.begin(), mom.end());
      const double state = (max_mom + 2 * std::ceil(fallback_elements / n)) * b;
      // reduce mode: ring reduce + broadcast of each matrix, reduce-scatter + all-gather of the
      // fallback: each rank sends about 2 (N-1)/N of every byte, as one all-reduce would.
      const double sent = 2.0 * (n - 1) / n * (matrix_elements + fallback_elements) * b;
      std::printf("  %5d  %16.4f  %18.1f  %22.1f  %22.1f  %12zu\n", n, max_load / total_cost, total_cost / max_load, mib(state),
                  mib(sent), n > 1 ? 2 * spec.size() + 3 : std::size_t{0});
    }
    std::printf("  (averaged mode: the trainer's all-reduce sends the same 2 (N-1)/N (P + F) b, and Sharded adds the\n"
                "   distribution, (N-1)/N (P + F) b; the largest matrix bounds the Newton-Schulz speed-up at %.1f)\n",
                total_cost / largest);
  }
  MPI_Finalize();
  return 0;
}
