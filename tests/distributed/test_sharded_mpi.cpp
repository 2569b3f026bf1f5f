// Sharded<Opt, MpiCommunicator> against a single-process Opt on the same data, under mpirun.
//   muon_mpi_tests <scenario>      scenarios: single, muon, grokfast, averaged, blocking, clip, stiefel, stack, nan, checkpoint
// Every rank also runs the single-process optimizer (the reference) on the average of every
// rank's gradient: each rank's local gradient is a function of (rank, step, tensor, element), so
// every rank can compute them all without communication. Gradients and parameters are small
// dyadic rationals, so the sum over ranks and the division by 2 or 4 are exact in any order:
// the sharded step must then give the same bits as the single-process step. Exits non-zero on
// every rank when any rank finds a mismatch.
#include <muon/distributed/mpi.hpp>  // first: it asks for MPI's C API only

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/distributed/mpi.hpp>
#include <muon/distributed/sharded.hpp>
#include <muon/muon.hpp>

namespace {

using muon::distributed::GradientMode;
using muon::distributed::MpiCommunicator;
using muon::distributed::Sharded;

int g_rank = 0, g_size = 1;
int g_failures = 0;
bool g_blocking = false;  // scenario "blocking": MpiCommunicator with blocking collectives

MpiCommunicator world() { return MpiCommunicator(MPI_COMM_WORLD, {.blocking = g_blocking}); }

void check(bool ok, const std::string& what) {
  if (ok) return;
  ++g_failures;
  std::fprintf(stderr, "[rank %d] FAIL: %s\n", g_rank, what.c_str());
}

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return x;
}
// A dyadic value in [-0.5, 0.5] (multiples of 1/128): exact sums over a few ranks.
double dyadic(std::uint64_t a, std::uint64_t b, std::uint64_t c, std::uint64_t d) {
  const std::uint64_t h = mix(a * 0x9e3779b97f4a7c15ull ^ mix(b * 1315423911ull ^ mix(c * 2654435761ull ^ mix(d + 17))));
  return static_cast<double>(static_cast<int>(h % 129) - 64) / 128.0;
}

struct Tensor {
  std::string name;
  muon::Shape shape;
  muon::ParamOptions options{};
  std::string alias_of{};  // registered again under this name (a tied tensor)
};

template <class T>
struct Model {
  std::vector<Tensor> spec;
  std::vector<std::vector<T>> w, g;
  explicit Model(std::vector<Tensor> s) : spec(std::move(s)) {
    for (std::size_t i = 0; i < spec.size(); ++i) {
      const auto n = static_cast<std::size_t>(spec[i].shape.numel());
      w.emplace_back(n);
      g.emplace_back(n);
      for (std::size_t k = 0; k < n; ++k) w[i][k] = static_cast<T>(dyadic(99, i, k, 7));
    }
  }
  // Rank r's gradient at a step (the reference uses the average over ranks).
  void local_gradients(int rank, int step) {
    for (std::size_t i = 0; i < spec.size(); ++i)
      for (std::size_t k = 0; k < g[i].size(); ++k) g[i][k] = static_cast<T>(dyadic(static_cast<std::uint64_t>(rank), static_cast<std::uint64_t>(step), i, k));
  }
  void mean_gradients(int ranks, int step) {
    for (std::size_t i = 0; i < spec.size(); ++i)
      for (std::size_t k = 0; k < g[i].size(); ++k) {
        double s = 0;
        for (int r = 0; r < ranks; ++r) s += dyadic(static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(step), i, k);
        g[i][k] = static_cast<T>(s / ranks);
      }
  }
  template <class O>
  void register_with(O& opt) {
    for (std::size_t i = 0; i < spec.size(); ++i) {
      const Tensor& t = spec[i];
      opt.add(t.name, muon::raw(w[i].data(), t.shape), muon::raw(g[i].data(), t.shape), t.options);
      if (!t.alias_of.empty()) {
        muon::ParamOptions o = t.options;
        o.role = muon::Role::output_head;
        opt.add(t.alias_of, muon::raw(w[i].data(), t.shape), muon::raw(g[i].data(), t.shape), o);
      }
    }
  }
};

// Compares the parameters: bit for bit, or within a relative tolerance.
template <class T>
void compare(const Model<T>& a, const Model<T>& b, const std::string& what, double tol) {
  for (std::size_t i = 0; i < a.w.size(); ++i) {
    double worst = 0;
    bool same = true;
    for (std::size_t k = 0; k < a.w[i].size(); ++k) {
      const double x = a.w[i][k], y = b.w[i][k];
      if (std::memcmp(&a.w[i][k], &b.w[i][k], sizeof(T)) != 0) same = false;
      if (std::isnan(x) != std::isnan(y)) worst = std::numeric_limits<double>::infinity();
      worst = std::max(worst, std::abs(x - y) / std::max(1.0, std::abs(y)));
    }
    const bool ok = tol == 0 ? same : worst <= tol;
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s: tensor '%s' differs (max rel diff %.3g, tolerance %.3g)", what.c_str(),
                  a.spec[i].name.c_str(), worst, tol);
    check(ok, buf);
  }
}

std::vector<Tensor> muon_model() {
  using muon::Role;
  return {
      {"embed", {50, 16}, {.role = Role::embedding}, "lm_head"},
      {"h0.q", {32, 16}},
      {"h0.k", {32, 16}},
      {"h0.up", {64, 16}},
      {"h0.down", {16, 64}},
      {"h1.up", {64, 16}},
      {"big", {48, 40}},
      {"h0.norm", {16}, {.role = Role::norm, .weight_decay = 0.0}},
      {"h0.bias", {7}, {.role = Role::bias, .lr_scale = 2.0}},
      {"tiny", {3}, {.role = Role::bias}},
  };
}

// Runs `steps` steps of Sharded<Opt> and of a single-process Opt, comparing after each.
template <class Opt>
void run_against_reference(const std::string& what, std::vector<Tensor> spec, typename Opt::Options options,
                           GradientMode mode, int steps, double tol,
                           const std::function<void(int, Sharded<Opt, MpiCommunicator>&, Opt&)>& before_step = {}) {
  using T = typename Opt::value_type;
  Model<T> ms(spec), mr(spec);
  Sharded<Opt, MpiCommunicator> sharded(world(), options, {.gradients = mode});
  Opt ref(options);
  ms.register_with(sharded);
  mr.register_with(ref);
  for (int s = 1; s <= steps; ++s) {
    if (mode == GradientMode::reduce)
      ms.local_gradients(g_rank, s);
    else
      ms.mean_gradients(g_size, s);
    mr.mean_gradients(g_size, s);
    if (before_step) before_step(s, sharded, ref);
    const auto rs = sharded.step();
    const auto rr = ref.step();
    check(rs.step == rr.step, what + ": step counts differ");
    check(rs.skipped.size() == rr.skipped.size(), what + ": skipped lists differ at step " + std::to_string(s));
    compare(ms, mr, what + " step " + std::to_string(s), tol);
  }
  // ZeRO-1: this rank keeps the state of its parts only.
  const auto mem = sharded.memory_report();
  const auto full = ref.memory_report();
  if (g_rank == 0)
    std::printf("%s: %d ranks, rank 0 holds %zu of %zu state bytes (matrix %zu / %zu, fallback %zu / %zu)\n", what.c_str(),
                g_size, mem.state_bytes(), full.matrix_state_bytes + full.fallback_state_bytes + full.filter_state_bytes,
                mem.inner.matrix_state_bytes, full.matrix_state_bytes, mem.inner.fallback_state_bytes, full.fallback_state_bytes);
  // Every rank's share, summed, is the single-process state (fallback state is cut exactly).
  double totals[2] = {static_cast<double>(mem.inner.matrix_state_bytes), static_cast<double>(mem.inner.fallback_state_bytes)};
  MPI_Allreduce(MPI_IN_PLACE, totals, 2, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
  check(totals[0] == static_cast<double>(full.matrix_state_bytes), what + ": matrix state over ranks != single-process");
  check(totals[1] == static_cast<double>(full.fallback_state_bytes), what + ": fallback state over ranks != single-process");
}

template <class T>
using Eigen = muon::backend::Eigen<T>;

void scenario_muon(GradientMode mode) {
  const std::string m = mode == GradientMode::reduce ? "reduce" : "averaged";
  run_against_reference<muon::Muon<Eigen<float>>>("Muon float (" + m + ")", muon_model(),
                                                  {.lr = 0.02, .weight_decay = 0.01, .threads = 1, .fallback = {.lr = 3e-3}},
                                                  mode, 4, 0.0);
  run_against_reference<muon::Muon<Eigen<double>>>("Muon double (" + m + ")", muon_model(),
                                                   {.lr = 0.02, .threads = 1, .fallback = {.lr = 3e-3}}, mode, 3, 0.0);
  run_against_reference<muon::MuonLion<Eigen<float>>>("MuonLion float (" + m + ")", muon_model(),
                                                      {.lr = 0.02, .threads = 1, .fallback = {.lr = 1e-3}}, mode, 3, 0.0);
}

void scenario_clip() {
  using Opt = muon::MuonClip<Eigen<float>>;
  using muon::Role;
  std::vector<Tensor> spec = {
      {"q", {32, 16}, {.role = Role::query, .heads = 4}},
      {"k", {32, 16}, {.role = Role::key, .heads = 4}},
      {"v", {32, 16}},
      {"o", {16, 32}},
      {"norm", {16}, {.role = Role::norm}},
  };
  Opt::Options o{.lr = 0.02, .threads = 1};
  o.constraint.tau = 10.0;
  int clipped = 0;
  run_against_reference<Opt>("MuonClip float", spec, o, GradientMode::reduce, 4, 0.0,
                             [&](int step, Sharded<Opt, MpiCommunicator>& sh, Opt& ref) {
                               // Each rank's own max logits; a single process sees their maximum.
                               std::vector<float> mine(4), all(4, 0.f);
                               for (int h = 0; h < 4; ++h) {
                                 for (int r = 0; r < g_size; ++r)
                                   all[static_cast<std::size_t>(h)] = std::max(all[static_cast<std::size_t>(h)], static_cast<float>(8 + 16 * (0.5 + dyadic(5, static_cast<std::uint64_t>(r), static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(h)))));
                                 mine[static_cast<std::size_t>(h)] = static_cast<float>(8 + 16 * (0.5 + dyadic(5, static_cast<std::uint64_t>(g_rank), static_cast<std::uint64_t>(step), static_cast<std::uint64_t>(h))));
                                 clipped += all[static_cast<std::size_t>(h)] > 10.f;
                               }
                               for (const char* n : {"q", "k"}) {
                                 sh.set_max_logits(n, mine);
                                 muon::set_max_logits(ref, std::string(n), std::span<const float>(all));
                               }
                             });
  check(clipped > 0, "MuonClip: the test data clips no head");
}

void scenario_stiefel() {
  std::vector<Tensor> spec = {{"a", {32, 16}}, {"b", {16, 24}}, {"c", {40, 40}}, {"d", {32, 16}}, {"bias", {9}, {.role = muon::Role::bias}}};
  run_against_reference<muon::StiefelMuon<Eigen<double>>>("StiefelMuon double", spec, {.lr = 0.02, .threads = 1},
                                                          GradientMode::reduce, 3, 0.0);
}

void scenario_stack() {
  std::vector<Tensor> spec = {{"experts.up", {4, 24, 16}}, {"experts.down", {4, 16, 24}}, {"router", {4, 16}, {.role = muon::Role::router_gate}},
                              {"attn", {24, 24}}, {"norm", {16}, {.role = muon::Role::norm}}};
  run_against_reference<muon::Muon<Eigen<float>>>("Muon 3-D expert stack float", spec, {.lr = 0.02, .threads = 1},
                                                  GradientMode::reduce, 3, 0.0);
  // HypersphereMuon: its RankRouter puts the router gate (and any embedding) on the matrix path.
  run_against_reference<muon::HypersphereMuon<Eigen<float>>>("HypersphereMuon 3-D expert stack float", spec,
                                                             {.lr = 0.02, .threads = 1}, GradientMode::reduce, 3, 0.0);
}

// A NaN / Inf on one rank: every rank takes the same decision, the one a single process takes
// on the average (which holds the NaN).
void scenario_nan() {
  using Opt = muon::Muon<Eigen<float>>;
  for (auto policy : {muon::NonFinitePolicy::skip_parameter, muon::NonFinitePolicy::skip_step, muon::NonFinitePolicy::throw_error}) {
    const std::string what = std::string("NaN on one rank, policy ") +
                             (policy == muon::NonFinitePolicy::skip_parameter ? "skip_parameter"
                              : policy == muon::NonFinitePolicy::skip_step   ? "skip_step"
                                                                              : "throw_error");
    const auto spec = muon_model();
    Model<float> ms(spec), mr(spec);
    Opt::Options o{.lr = 0.02, .non_finite = policy, .threads = 1};
    Sharded<Opt, MpiCommunicator> sharded(world(), o);
    Opt ref(o);
    ms.register_with(sharded);
    mr.register_with(ref);
    const int last = g_size - 1;
    for (int s = 1; s <= 4; ++s) {
      ms.local_gradients(g_rank, s);
      mr.mean_gradients(g_size, s);
      // Step 2: a NaN in a matrix on the last rank. Step 3: an Inf in the embedding on rank 0,
      // at an element of the last rank's slice (the owner of that slice never saw it locally).
      if (s == 2 && g_rank == last) ms.g[3][5] = std::numeric_limits<float>::quiet_NaN();
      if (s == 2) mr.g[3][5] = std::numeric_limits<float>::quiet_NaN();
      if (s == 3 && g_rank == 0) ms.g[0][ms.g[0].size() - 2] = std::numeric_limits<float>::infinity();
      if (s == 3) mr.g[0][mr.g[0].size() - 2] = std::numeric_limits<float>::infinity();
      std::string err_s, err_r;
      std::vector<muon::ParamId> skip_s, skip_r;
      double lr_s = -1, lr_r = -1, flr_s = -1, flr_r = -1;
      try {
        const auto r = sharded.step();
        lr_s = r.lr;
        flr_s = r.fallback_lr;
        skip_s.assign(r.skipped.begin(), r.skipped.end());
      } catch (const muon::Error& e) {
        err_s = e.what();
      }
      try {
        const auto r = ref.step();
        lr_r = r.lr;
        flr_r = r.fallback_lr;
        skip_r.assign(r.skipped.begin(), r.skipped.end());
      } catch (const muon::Error& e) {
        err_r = e.what();
      }
      check(lr_s == lr_r && flr_s == flr_r, what + ": step " + std::to_string(s) + " reports other learning rates");
      check(err_s.empty() == err_r.empty(), what + ": step " + std::to_string(s) + " threw on one side only (" + err_s + " | " + err_r + ")");
      if (!err_s.empty()) check(err_s.find("h0.up") != std::string::npos || err_s.find("embed") != std::string::npos,
                                what + ": the error does not name the tensor: " + err_s);
      // The same decision on every rank: compare a digest of the skipped list.
      double digest[2] = {static_cast<double>(skip_s.size()), 0};
      for (auto id : skip_s) digest[1] += static_cast<double>(id + 1) * static_cast<double>(id + 3);
      double lo[2], hi[2];
      MPI_Allreduce(digest, lo, 2, MPI_DOUBLE, MPI_MIN, MPI_COMM_WORLD);
      MPI_Allreduce(digest, hi, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      check(lo[0] == hi[0] && lo[1] == hi[1], what + ": ranks disagree on the skip at step " + std::to_string(s));
      check(skip_s.size() == skip_r.size(), what + ": step " + std::to_string(s) + " skipped " + std::to_string(skip_s.size()) +
                                                " tensors, a single process " + std::to_string(skip_r.size()));
      if (s == 2 && policy == muon::NonFinitePolicy::skip_parameter)
        check(skip_s.size() == 1 && sharded.tensors() > 3 && skip_s[0] == 3, what + ": step 2 should skip h0.up only");
      compare(ms, mr, what + " step " + std::to_string(s), 0.0);
    }
  }
}

// A filter with per-element state in rows (Grokfast-MA's window: window x n values): the
// sharded step equals the single process, and a merged checkpoint cut into slices row by row
// resumes on 1 rank and on every rank.
void scenario_grokfast(const std::string& dir) {
  using Opt = muon::MuonGrokfastMA<Eigen<float>>;
  Opt::Options o{.lr = 0.02, .threads = 1, .fallback = {.lr = 3e-3}};
  o.filter.window = 3;
  o.filter.lamb = 2.0;
  const auto spec = muon_model();
  Model<float> ms(spec), mr(spec);
  Opt ref(o);
  mr.register_with(ref);
  const std::string file = dir + "/mpi_grokfast_" + std::to_string(g_size) + ".ckpt";
  {
    Sharded<Opt, MpiCommunicator> sh(world(), o);
    ms.register_with(sh);
    for (int s = 1; s <= 4; ++s) {
      ms.local_gradients(g_rank, s);
      mr.mean_gradients(g_size, s);
      sh.step();
      ref.step();
      compare(ms, mr, "MuonGrokfastMA step " + std::to_string(s), 0.0);
    }
    std::ofstream os(file, std::ios::binary);
    sh.save_merged(os);
  }
  MPI_Barrier(MPI_COMM_WORLD);
  const auto after4 = mr.w;
  for (int s = 5; s <= 6; ++s) {
    mr.mean_gradients(g_size, s);
    ref.step();
  }
  for (MPI_Comm comm : {MPI_COMM_SELF, MPI_COMM_WORLD}) {
    Model<float> m2(spec);
    m2.w = after4;  // the parameters are the trainer's (saved without them)
    Sharded<Opt, MpiCommunicator> sh(MpiCommunicator(comm), o, {.gradients = GradientMode::averaged});
    m2.register_with(sh);
    std::ifstream is(file, std::ios::binary);
    sh.load_merged(is);
    for (int s = 5; s <= 6; ++s) {
      m2.mean_gradients(g_size, s);
      sh.step();
    }
    compare(m2, mr, std::string("MuonGrokfastMA merged checkpoint resumed on ") + (comm == MPI_COMM_SELF ? "1 rank" : "every rank"), 0.0);
  }
}

// SingleProcess: Sharded on one process equals the plain optimizer; and what Sharded refuses,
// naming the tensor (each rank on its own: no communication).
void scenario_single() {
  using Opt = muon::Muon<Eigen<float>>;
  using Single = Sharded<Opt, muon::distributed::SingleProcess>;
  const Opt::Options o{.lr = 0.02, .weight_decay = 0.01, .threads = 1, .fallback = {.lr = 3e-3}};
  for (auto mode : {GradientMode::reduce, GradientMode::averaged}) {
    const auto spec = muon_model();
    Model<float> ms(spec), mr(spec);
    Single sh({}, o, {.gradients = mode});
    Opt ref(o);
    ms.register_with(sh);
    mr.register_with(ref);
    check(sh.routing_report().to_string() == ref.routing_report().to_string(),
          "the routing report differs from the plain optimizer's:\n" + sh.routing_report().to_string() + "\n" +
              ref.routing_report().to_string());
    for (int s = 1; s <= 3; ++s) {
      ms.mean_gradients(3, s);
      mr.mean_gradients(3, s);
      sh.step();
      ref.step();
      compare(ms, mr, "SingleProcess step " + std::to_string(s), 0.0);
    }
    // A loss-scaled step: the inverse scale is applied while staging (the inner optimizer needs
    // no loss_scaling); the reference steps on the unscaled gradients (exact: powers of two).
    ms.mean_gradients(3, 4);
    mr.mean_gradients(3, 4);
    for (auto& g : ms.g)
      for (auto& x : g) x *= 1024.0f;
    for (auto& g : mr.g)
      for (auto& x : g) x *= 1024.0f;
    sh.step({.inv_scale = 1.0 / 1024.0});
    for (auto& g : mr.g)
      for (auto& x : g) x /= 1024.0f;
    ref.step();
    compare(ms, mr, "SingleProcess loss-scaled step", 0.0);
  }
  auto refused = [](const std::string& what, const std::string& needle, const std::function<void()>& f) {
    std::string err;
    try {
      f();
    } catch (const muon::Error& e) {
      err = e.what();
    }
    check(err.find(needle) != std::string::npos, what + ": expected an error with '" + needle + "', got '" + err + "'");
  };
  std::vector<float> w(64, 0.1f), g(64, 0.01f), w2(64, 0.1f), g2(64, 0.01f);
  std::vector<muon::bfloat16> wb(64), gb(64);
  refused("add after the first step", "after the first step", [&] {
    Single sh({}, o);
    sh.add("a", muon::raw(w.data(), {8, 8}), muon::raw(g.data(), {8, 8}));
    sh.step();
    sh.add("b", muon::raw(w2.data(), {8, 8}), muon::raw(g2.data(), {8, 8}));
  });
  refused("16-bit parameters", "16-bit", [&] {
    Single sh({}, o);
    sh.add("bf16", muon::raw(wb.data(), {8, 8}), muon::raw(gb.data(), {8, 8}));
  });
  refused("quantized view on a fallback tensor", "fake_quant_bits", [&] {
    Single sh({}, o);
    sh.add("norm", muon::raw(w.data(), {64}), muon::raw(g.data(), {64}), {.role = muon::Role::norm, .fake_quant_bits = 8});
  });
  refused("the same name twice", "already registered", [&] {
    Single sh({}, o);
    sh.add("a", muon::raw(w.data(), {8, 8}), muon::raw(g.data(), {8, 8}));
    sh.add("a", muon::raw(w2.data(), {8, 8}), muon::raw(g2.data(), {8, 8}));
  });
  refused("max logits for a tensor without QK-Clip", "takes no max logits", [&] {
    Single sh({}, o);
    sh.add("a", muon::raw(w.data(), {8, 8}), muon::raw(g.data(), {8, 8}));
    const float logits[2] = {1, 2};
    sh.set_max_logits("a", logits);
  });
  refused("a per-rank checkpoint of other registrations", "placement", [&] {
    Single a({}, o), b({}, o);
    a.add("a", muon::raw(w.data(), {8, 8}), muon::raw(g.data(), {8, 8}));
    b.add("b", muon::raw(w2.data(), {8, 8}), muon::raw(g2.data(), {8, 8}));
    std::stringstream ss;
    a.save(ss);
    b.load(ss);
  });
}

// Checkpoints: per rank (same rank count) and merged (any rank count, and a plain optimizer).
void scenario_checkpoint(const std::string& dir) {
  using Opt = muon::Muon<Eigen<float>>;
  const auto spec = muon_model();
  const Opt::Options o{.lr = 0.02, .weight_decay = 0.01, .threads = 1, .fallback = {.lr = 3e-3}};
  // The reference: 4 steps in one process.
  Model<float> mr(spec);
  Opt ref(o);
  mr.register_with(ref);
  for (int s = 1; s <= 4; ++s) {
    mr.mean_gradients(g_size, s);
    ref.step();
  }
  // 2 steps on `comm`, then save (merged from `writers` ranks, or per rank).
  const std::string merged = dir + "/mpi_merged_" + std::to_string(g_size) + ".ckpt";
  const bool writer = g_rank < 2;  // the merged file is written by a 2-rank group
  MPI_Comm pair;
  MPI_Comm_split(MPI_COMM_WORLD, writer ? 0 : 1, g_rank, &pair);
  if (writer) {
    Model<float> ms(spec);
    // Two writers stand for g_size ranks: given the average, as a trainer's all-reduce would.
    Sharded<Opt, MpiCommunicator> sh(MpiCommunicator(pair), o, {.gradients = GradientMode::averaged});
    ms.register_with(sh);
    for (int s = 1; s <= 2; ++s) {
      ms.mean_gradients(g_size, s);
      sh.step();
    }
    std::ofstream os(merged, std::ios::binary);  // only rank 0 of the pair writes
    sh.save_merged(os, {.parameters = true});
  }
  MPI_Comm_free(&pair);
  MPI_Barrier(MPI_COMM_WORLD);

  auto continue_from = [&](MPI_Comm comm, const std::string& what) {
    Model<float> ms(spec);
    int r = 0, n = 1;
    MPI_Comm_rank(comm, &r);
    MPI_Comm_size(comm, &n);
    Sharded<Opt, MpiCommunicator> sh(MpiCommunicator(comm), o, {.gradients = GradientMode::averaged});
    ms.register_with(sh);
    std::ifstream is(merged, std::ios::binary);
    sh.load_merged(is);
    check(sh.steps_taken() == 2, what + ": step count not restored");
    for (int s = 3; s <= 4; ++s) {
      ms.mean_gradients(g_size, s);
      sh.step();
    }
    compare(ms, mr, what, 0.0);
    return std::pair<int, int>{r, n};
  };
  continue_from(MPI_COMM_SELF, "merged checkpoint of 2 ranks, loaded by 1 rank");
  continue_from(MPI_COMM_WORLD, "merged checkpoint of 2 ranks, loaded by " + std::to_string(g_size) + " ranks");

  // A plain single-process optimizer loads the merged file too.
  {
    Model<float> mp(spec);
    Opt plain(o);
    mp.register_with(plain);
    std::ifstream is(merged, std::ios::binary);
    plain.load(is);
    for (int s = 3; s <= 4; ++s) {
      mp.mean_gradients(g_size, s);
      plain.step();
    }
    compare(mp, mr, "merged checkpoint loaded by a plain Opt", 0.0);
  }

  // Per rank: save after 2 steps, load into a fresh run of the same rank count, continue.
  {
    Model<float> ms(spec);
    Sharded<Opt, MpiCommunicator> sh(MpiCommunicator(MPI_COMM_WORLD), o);
    ms.register_with(sh);
    for (int s = 1; s <= 2; ++s) {
      ms.local_gradients(g_rank, s);
      sh.step();
    }
    std::stringstream per_rank;
    sh.save(per_rank, {.parameters = true});
    Model<float> m2(spec);
    Sharded<Opt, MpiCommunicator> sh2(MpiCommunicator(MPI_COMM_WORLD), o);
    m2.register_with(sh2);
    sh2.load(per_rank);
    for (int s = 3; s <= 4; ++s) {
      m2.local_gradients(g_rank, s);
      sh2.step();
    }
    compare(m2, mr, "per-rank checkpoint", 0.0);

    // A per-rank file on a 1-rank run: refused, naming the rank count.
    std::string err;
    try {
      Model<float> m1(spec);
      Sharded<Opt, MpiCommunicator> one(MpiCommunicator(MPI_COMM_SELF), o);
      m1.register_with(one);
      std::stringstream copy(per_rank.str());
      one.load(copy);
    } catch (const muon::Error& e) {
      err = e.what();
    }
    check(g_size == 1 || err.find("ranks") != std::string::npos, "per-rank checkpoint on another rank count: " + err);
  }

  // A merged file that lacks a registered tensor: every rank throws, naming it; nothing changes.
  {
    auto spec2 = spec;
    spec2.push_back({"extra", {8, 8}});
    Model<float> ms(spec2);
    const auto before = ms.w;
    Sharded<Opt, MpiCommunicator> sh(MpiCommunicator(MPI_COMM_WORLD), o);
    ms.register_with(sh);
    std::string err;
    try {
      std::ifstream is(merged, std::ios::binary);
      sh.load_merged(is);
    } catch (const muon::Error& e) {
      err = e.what();
    }
    check(err.find("extra") != std::string::npos, "merged checkpoint without a tensor: error '" + err + "'");
    check(ms.w == before && sh.steps_taken() == 0, "a refused checkpoint changed something");
  }
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
  MPI_Comm_size(MPI_COMM_WORLD, &g_size);
  const std::string scenario = argc > 1 ? argv[1] : "muon";
  const std::string dir = argc > 2 ? argv[2] : ".";
  try {
    if (scenario == "muon")
      scenario_muon(GradientMode::reduce);
    else if (scenario == "blocking") {
      g_blocking = true;
      scenario_muon(GradientMode::reduce);
      scenario_nan();
    } else if (scenario == "averaged")
      scenario_muon(GradientMode::averaged);
    else if (scenario == "grokfast")
      scenario_grokfast(dir);
    else if (scenario == "single")
      scenario_single();
    else if (scenario == "clip")
      scenario_clip();
    else if (scenario == "stiefel")
      scenario_stiefel();
    else if (scenario == "stack")
      scenario_stack();
    else if (scenario == "nan")
      scenario_nan();
    else if (scenario == "checkpoint")
      scenario_checkpoint(dir);
    else
      check(false, "unknown scenario '" + scenario + "'");
  } catch (const std::exception& e) {
    check(false, std::string("exception: ") + e.what());
  }
  int failures = g_failures;
  MPI_Allreduce(MPI_IN_PLACE, &failures, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
  if (g_rank == 0) std::printf("%s on %d ranks: %s (%d failures)\n", scenario.c_str(), g_size, failures ? "FAILED" : "passed", failures);
  MPI_Finalize();
  return failures ? 1 : 0;
}
