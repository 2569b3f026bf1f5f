// Character language model: a small decoder-only transformer trained on a text every Debian
// system ships (/usr/share/common-licenses/GPL-3, package base-files), to check the Muon
// integration card's claims against AdamW, and what MuonClip's QK-Clip costs.
//
// The model (examples/common/layers.hpp): byte vocabulary (256), tied embedding / output head,
// RMSNorm, causal multi-head attention with RoPE, GELU MLP, hand-written backward checked by
// gradcheck.cpp. Parameters are registered as PyTorch lays them out; the query and key
// projections with Role::query / Role::key and the head count (per-head QK-Clip), the tied
// embedding once with Role::embedding and the RMSNorm gains with Role::norm (both to AdamW, no
// weight decay). The last 10 % of the text is held out; bits per byte = nats / ln 2.
//
// Modes:
//   --mode train  one run of any composition by name (the ablation runner):
//                 --optimizer muon_grokfast --config "lr=0.01, filter.lamb=0.5" --steps 2000
//   --mode gates  the card's gates, each printed PASS/FAIL with its number: overfit-100 to
//                 < 0.5 bpb (learning-rate sweep, then 3 seeds each, AdamW vs Muon), Muon's
//                 steps-to-target at least 35 % below AdamW's, 2000 steps with finite loss and
//                 gradient norm, step throughput (the card asks 18 steps/s)
//   --mode clip   MuonClip: the per-head max attention logit reported to QK-Clip every step;
//                 the max logit over training for Muon and MuonClip at each --taus cap, and the
//                 held-out bpb each cap costs
//   --quick       short versions of gates and clip with loose checks (the CTest test)
// Every curve goes to CSV under --out (default ./charlm_results); PNG plots go to --plots
// (default: the --out folder) when gnuplot or python3-matplotlib is installed.
//
// Build and run (Release):
//   cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build --target charlm
//   ./build/examples/05_charlm/charlm --mode gates
#include <muon/muon.hpp>

#include "../common/layers.hpp"
#include "../common/run_io.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

using muon_examples::Csv;
using muon_examples::Plot;
using muon_examples::Progress;
using muon_examples::Series;
using muon_examples::layers::ParamKind;
using muon_examples::layers::TransformerConfig;
using Model = muon_examples::layers::Transformer<float>;
using Backend = muon::backend::Eigen<float>;
using Optimizer = std::unique_ptr<muon::AnyOptimizer<Backend>>;

constexpr double k_ln2 = 0.69314718055994530942;

double cpu_seconds() {
  timespec t{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// ---- Data --------------------------------------------------------------------------------------

struct Text {
  std::vector<int> train, heldout;  // bytes as tokens 0..255
};

std::optional<Text> load_text(const std::string& path, double heldout_fraction) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Text t;
  const auto cut = static_cast<std::size_t>(static_cast<double>(bytes.size()) * (1.0 - heldout_fraction));
  for (std::size_t i = 0; i < bytes.size(); ++i)
    (i < cut ? t.train : t.heldout).push_back(static_cast<unsigned char>(bytes[i]));
  return t;
}

// A batch of windows: inputs data[s .. s+ctx), targets data[s+1 .. s+ctx] for each start s.
struct Batch {
  std::vector<int> inputs, targets;
  int size = 0;
};

Batch make_batch(const std::vector<int>& data, const std::vector<long>& starts, int ctx) {
  Batch b;
  b.size = static_cast<int>(starts.size());
  for (long s : starts)
    for (int t = 0; t < ctx; ++t) {
      b.inputs.push_back(data[static_cast<std::size_t>(s + t)]);
      b.targets.push_back(data[static_cast<std::size_t>(s + t + 1)]);
    }
  return b;
}

// Non-overlapping windows covering `data` (the held-out tail): every byte after the first is
// predicted once, from 0 .. ctx-1 bytes of context.
std::vector<long> tiling_starts(const std::vector<int>& data, int ctx) {
  std::vector<long> s;
  for (long i = 0; i + ctx + 1 <= static_cast<long>(data.size()); i += ctx) s.push_back(i);
  return s;
}

std::vector<long> random_starts(const std::vector<int>& data, int ctx, int count, std::mt19937_64& rng) {
  std::uniform_int_distribution<long> pick(0, static_cast<long>(data.size()) - ctx - 1);
  std::vector<long> s(static_cast<std::size_t>(count));
  for (long& v : s) v = pick(rng);
  return s;
}

// Mean bits per byte of the model over the windows (forward only, in chunks).
double evaluate_bpb(Model& model, const std::vector<int>& data, const std::vector<long>& starts) {
  const int ctx = model.config().context;
  constexpr std::size_t chunk = 50;
  double nats = 0;
  for (std::size_t i = 0; i < starts.size(); i += chunk) {
    const std::vector<long> part(starts.begin() + static_cast<long>(i),
                                 starts.begin() + static_cast<long>(std::min(starts.size(), i + chunk)));
    const Batch b = make_batch(data, part, ctx);
    nats += static_cast<double>(model.forward(b.inputs, b.targets, b.size)) * static_cast<double>(part.size());
  }
  return nats / static_cast<double>(starts.size()) / k_ln2;
}

// ---- Optimizer ---------------------------------------------------------------------------------

bool has_qk_clip(const std::string& name) { return name == "muon_clip" || name == "muon_grokfast_clip"; }
bool one_optimizer_name(const std::string& name) {
  return name == "adamw" || name == "sgd" || name == "lion" || name == "grokfast";
}

// The program's defaults for a composition, then the user's --config on top. One core, no
// weight decay (a short run; embeddings and gains are registered with weight decay 0 anyway).
muon::Config make_config(const std::string& name, double lr, double fallback_lr, const std::string& schedule,
                         const std::string& user) {
  muon::Config c;
  c["threads"] = "1";
  if (one_optimizer_name(name)) {
    c["lr"] = std::to_string(lr);
    c["weight_decay"] = "0";
  } else {
    c["lr"] = std::to_string(lr);
    c["weight_decay"] = "0";
    c["fallback.lr"] = std::to_string(fallback_lr);
    c["fallback.weight_decay"] = "0";
  }
  for (const auto& [k, v] : muon::parse_config(schedule)) c[k] = v;
  for (const auto& [k, v] : muon::parse_config(user)) {
    // For one-optimizer names "fallback.lr" and "lr" are one setting: the user's spelling wins.
    if (one_optimizer_name(name) && k.rfind("fallback.", 0) == 0) c.erase(k.substr(9));
    c[k] = v;
  }
  return c;
}

// warmup then constant (min_lr_ratio 1), or warmup then cosine to 10 %.
std::string schedule_text(int warmup, int total, bool cosine) {
  std::string s = "schedule=warmup_cosine, schedule.warmup_steps=" + std::to_string(warmup) +
                  ", schedule.total_steps=" + std::to_string(std::max(total, warmup + 1));
  s += cosine ? ", schedule.min_lr_ratio=0.1" : ", schedule.min_lr_ratio=1";
  return s;
}

muon::ParamOptions param_options(ParamKind kind, int heads) {
  switch (kind) {
    case ParamKind::embedding: return {.role = muon::Role::embedding, .weight_decay = 0.0};
    case ParamKind::norm: return {.role = muon::Role::norm, .weight_decay = 0.0};
    case ParamKind::query: return {.role = muon::Role::query, .heads = heads};
    case ParamKind::key: return {.role = muon::Role::key, .heads = heads};
    case ParamKind::matrix: break;
  }
  return {};
}

Optimizer build_optimizer(const std::string& name, const muon::Config& config, Model& model) {
  Optimizer opt = muon::make_optimizer<Backend>(name, config);
  model.visit([&](const std::string& param, auto& value, auto& grad, ParamKind kind, int heads) {
    opt->add(param, value, grad, param_options(kind, heads));
  });
  return opt;
}

// ---- One training run --------------------------------------------------------------------------

struct RunSpec {
  std::string label;  // names the CSV files
  std::string optimizer;
  muon::Config config;
  TransformerConfig model;
  std::uint64_t seed = 0;  // initial weights and batch order
  int steps = 1000;        // at most
  int batch = 16;
  // Overfit runs: minibatches drawn from these fixed windows (shuffled each epoch); the run
  // stops at the first evaluation with the windows' bpb below target_bpb.
  const std::vector<long>* fixed = nullptr;
  double target_bpb = 0;
  int eval_every = 100;
  bool eval_heldout = true;
};

struct RunResult {
  long steps_to_target = -1;  // first evaluated step below target_bpb (overfit runs)
  int steps = 0;
  bool finite = true;
  double first_loss_bpb = 0, last_loss_bpb = 0;  // batch loss, first step and mean of the last 10 %
  double train_bpb = 0, heldout_bpb = 0;         // last evaluation
  // The lowest held-out bpb of the run and its step: the text is small, so long runs overfit and
  // the held-out curve turns up (early stopping would keep this point).
  double best_heldout_bpb = std::numeric_limits<double>::infinity();
  int best_heldout_step = 0;
  double max_grad_norm = 0, max_logit = 0;       // over the run
  // Wall-clock rates, and steps per CPU-second of this (single-threaded) process: on a shared
  // machine the second is what one dedicated core would do, the first depends on the load.
  double steps_per_second = 0, steps_per_cpu_second = 0, optimizer_ms = 0;
  std::size_t state_bytes = 0;  // the optimizer's state after the run (memory_report())
  long clipped_heads = 0, steps_without_logits = 0;
  std::vector<std::pair<int, double>> heldout_curve;  // (step, held-out bpb)
  std::string steps_csv, eval_csv;
};

RunResult train(const RunSpec& spec, const Text& text, const std::string& out_dir) {
  using Clock = std::chrono::steady_clock;
  Model model(spec.model, spec.seed);
  Optimizer opt = build_optimizer(spec.optimizer, spec.config, model);
  const bool clip = has_qk_clip(spec.optimizer);
  const int ctx = spec.model.context, layers = spec.model.layers;
  std::vector<std::string> q_names, k_names;
  for (int l = 0; l < layers; ++l) {
    std::string p = "blocks.";
    p += std::to_string(l);
    q_names.push_back(p + ".attn.q.weight");
    k_names.push_back(p + ".attn.k.weight");
  }

  RunResult r;
  r.steps_csv = out_dir + "/" + spec.label + "_steps.csv";
  r.eval_csv = out_dir + "/" + spec.label + "_eval.csv";
  Csv steps_csv(r.steps_csv, {"step", "loss_bpb", "grad_norm", "max_logit", "lr", "fallback_lr", "clipped_heads"});
  Csv eval_csv(r.eval_csv, {"step", "train_bpb", "heldout_bpb"});

  std::mt19937_64 rng(spec.seed * 7919 + 17);
  const std::vector<long> heldout_starts = tiling_starts(text.heldout, ctx);
  std::mt19937_64 probe_rng(4242);  // one fixed sample of training windows to report train bpb on
  const std::vector<long> probe = spec.fixed ? *spec.fixed : random_starts(text.train, ctx, 64, probe_rng);
  std::vector<long> order;
  std::size_t next = 0;
  if (spec.fixed) order = *spec.fixed;

  auto evaluate = [&](int step) {
    r.train_bpb = evaluate_bpb(model, text.train, probe);
    r.heldout_bpb = spec.eval_heldout ? evaluate_bpb(model, text.heldout, heldout_starts) : std::nan("");
    if (spec.eval_heldout) {
      r.heldout_curve.emplace_back(step, r.heldout_bpb);
      if (r.heldout_bpb < r.best_heldout_bpb) {
        r.best_heldout_bpb = r.heldout_bpb;
        r.best_heldout_step = step;
      }
    }
    eval_csv.row({static_cast<double>(step), r.train_bpb, r.heldout_bpb});
  };

  Progress bar(spec.label, spec.steps);
  double step_seconds = 0, step_cpu_seconds = 0, opt_seconds = 0, tail_sum = 0;
  int tail_count = 0;
  const int tail_from = spec.steps - std::max(1, spec.steps / 10);
  for (int step = 1; step <= spec.steps; ++step) {
    const auto t0 = Clock::now();
    const double c0 = cpu_seconds();
    std::vector<long> starts;
    if (spec.fixed) {
      for (int i = 0; i < spec.batch; ++i) {
        if (next == 0) std::shuffle(order.begin(), order.end(), rng);
        starts.push_back(order[next]);
        next = (next + 1) % order.size();
      }
    } else {
      starts = random_starts(text.train, ctx, spec.batch, rng);
    }
    const Batch b = make_batch(text.train, starts, ctx);
    const double loss_bpb = static_cast<double>(model.forward(b.inputs, b.targets, b.size)) / k_ln2;
    model.backward();
    const double gnorm = model.grad_norm();
    double max_logit = 0;
    for (int l = 0; l < layers; ++l) {
      const std::vector<float>& s = model.max_logits()[static_cast<std::size_t>(l)];
      max_logit = std::max(max_logit, static_cast<double>(*std::max_element(s.begin(), s.end())));
      // QK-Clip's input: this step's largest logit of each head (never negative: a head whose
      // logits are all below 0 needs no clip, and the library takes values >= 0).
      if (clip) {
        std::vector<float> report(s.size());
        std::transform(s.begin(), s.end(), report.begin(), [](float v) { return std::max(v, 0.0f); });
        opt->set_max_logits(q_names[static_cast<std::size_t>(l)], k_names[static_cast<std::size_t>(l)], report);
      }
    }
    const auto t1 = Clock::now();
    const muon::StepResult result = opt->step();
    const auto t2 = Clock::now();
    step_cpu_seconds += cpu_seconds() - c0;
    step_seconds += std::chrono::duration<double>(t2 - t0).count();
    opt_seconds += std::chrono::duration<double>(t2 - t1).count();

    r.steps = step;
    if (step == 1) r.first_loss_bpb = loss_bpb;
    if (step > tail_from) {
      tail_sum += loss_bpb;
      ++tail_count;
    }
    r.max_grad_norm = std::max(r.max_grad_norm, gnorm);
    r.max_logit = std::max(r.max_logit, max_logit);
    r.clipped_heads += static_cast<long>(result.constraint.clipped_heads);
    r.steps_without_logits += static_cast<long>(result.constraint.tensors_without_logits);
    steps_csv.row({static_cast<double>(step), loss_bpb, gnorm, max_logit, result.lr, result.fallback_lr,
                   static_cast<double>(result.constraint.clipped_heads)});
    if (!std::isfinite(loss_bpb) || !std::isfinite(gnorm) || !result.all_applied()) {
      r.finite = false;
      std::printf("%s: step %d: loss %g bpb, gradient norm %g: not finite, run stopped\n", spec.label.c_str(), step,
                  loss_bpb, gnorm);
      break;
    }
    if (step % spec.eval_every == 0 || step == spec.steps) {
      evaluate(step);
      if (spec.target_bpb > 0 && r.train_bpb < spec.target_bpb) {
        r.steps_to_target = step;
        break;
      }
    }
    char status[96];
    std::snprintf(status, sizeof status, "loss %.3f bpb  |g| %.2f  max logit %.1f", loss_bpb, gnorm, max_logit);
    bar.update(step, status);
  }
  r.last_loss_bpb = tail_count > 0 ? tail_sum / tail_count : std::nan("");
  r.steps_per_second = r.steps / step_seconds;
  r.steps_per_cpu_second = r.steps / step_cpu_seconds;
  r.optimizer_ms = 1e3 * opt_seconds / r.steps;
  r.state_bytes = opt->memory_report().state_bytes();
  char status[160];
  if (spec.target_bpb > 0)
    std::snprintf(status, sizeof status, "train bpb %.3f (%s)", r.train_bpb,
                  r.steps_to_target > 0 ? ("< " + std::to_string(spec.target_bpb).substr(0, 4) + " at step " +
                                           std::to_string(r.steps_to_target)).c_str()
                                        : "target not reached");
  else
    std::snprintf(status, sizeof status, "held-out %.3f bpb, %.1f steps/s", r.heldout_bpb, r.steps_per_second);
  bar.finish(status);
  return r;
}

// ---- Reporting ---------------------------------------------------------------------------------

struct Gate {
  std::string name, value;
  bool pass;
  bool counts = true;  // false: printed for information, not part of the exit code (--quick's claims)
};

// Prints every gate; returns whether every counted one passed.
bool print_gates(const std::vector<Gate>& gates) {
  std::printf("\n");
  bool ok = true;
  for (const Gate& g : gates) {
    std::printf("%s  %-46s %s%s\n", g.pass ? "PASS" : "FAIL", g.name.c_str(), g.value.c_str(),
                g.counts ? "" : "  (information: not checked in --quick)");
    ok = ok && (g.pass || !g.counts);
  }
  return ok;
}

template <class... A>
std::string format(const char* fmt, A... a) {
  char buf[256];
  std::snprintf(buf, sizeof buf, fmt, a...);
  return buf;
}

double mean(const std::vector<double>& v) { return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size()); }

void plot(const std::string& png, const std::string& title, const std::string& ylabel, bool log_y,
          std::vector<Series> series) {
  Plot p{png, title, "step", ylabel, log_y, std::move(series)};
  if (muon_examples::plot_png(p)) std::printf("plot: %s\n", png.c_str());
}

// The first evaluated step whose held-out bpb is at or below `target`, or -1.
long first_step_at(const std::vector<std::pair<int, double>>& curve, double target) {
  for (const auto& [step, bpb] : curve)
    if (bpb <= target) return step;
  return -1;
}

struct Common {
  Text text;
  TransformerConfig model;
  std::string out, plots, user_config;
  int batch = 16;
  bool quick = false;
};

// ---- Mode: gates -------------------------------------------------------------------------------

struct GateSettings {
  std::vector<double> adamw_lrs, muon_lrs;
  int seeds = 3;
  int overfit_sequences = 100, overfit_batch = 20, overfit_cap = 1500, overfit_eval_every = 10;
  double overfit_target = 0.5;
  int long_steps = 2000, long_eval_every = 100;
  bool quick = false;  // the card's claims are shown but only the code-health checks count
};

int run_gates(const Common& c, const GateSettings& s) {
  const auto t_start = std::chrono::steady_clock::now();
  // overfit-100: fixed windows of the training text, drawn once (the same for every run).
  std::mt19937_64 data_rng(1234);
  const std::vector<long> overfit = random_starts(c.text.train, c.model.context, s.overfit_sequences, data_rng);
  auto overfit_run = [&](const std::string& name, double lr, double fallback_lr, std::uint64_t seed) {
    RunSpec spec;
    spec.optimizer = name;
    spec.label = "overfit_" + name + "_lr" + format("%g", lr) + "_seed" + std::to_string(seed);
    spec.config = make_config(name, lr, fallback_lr, schedule_text(10, s.overfit_cap, false), c.user_config);
    spec.model = c.model;
    spec.seed = seed;
    spec.steps = s.overfit_cap;
    spec.batch = s.overfit_batch;
    spec.fixed = &overfit;
    spec.target_bpb = s.overfit_target;
    spec.eval_every = s.overfit_eval_every;
    spec.eval_heldout = false;
    return train(spec, c.text, c.out);
  };
  // Steps to target, a run that misses counted at the cap (so a mean is a lower bound then).
  auto steps_of = [&](const RunResult& r) { return r.steps_to_target > 0 ? double(r.steps_to_target) : double(s.overfit_cap); };

  std::printf("== overfit-%d: %d fixed windows of %d bytes, minibatches of %d, target %.2f bpb, at most %d steps\n",
              s.overfit_sequences, s.overfit_sequences, c.model.context, s.overfit_batch, s.overfit_target,
              s.overfit_cap);
  Csv sweep_csv(c.out + "/overfit_sweep.csv", {"muon", "lr", "seed", "steps_to_target", "train_bpb"});
  // Learning-rate sweep on seed 0: AdamW first; Muon's AdamW group (embedding, gains) then uses
  // AdamW's best rate, so the comparison is only about the matrices.
  auto sweep = [&](const std::string& name, const std::vector<double>& lrs, double fallback_lr,
                   std::vector<RunResult>& results) {
    double best_lr = lrs.front(), best_steps = 1e300;
    for (double lr : lrs) {
      results.push_back(overfit_run(name, lr, fallback_lr, 0));
      const RunResult& r = results.back();
      sweep_csv.row({name == "adamw" ? 0.0 : 1.0, lr, 0, static_cast<double>(r.steps_to_target), r.train_bpb});
      // Fewest steps wins; among runs that all miss, the lowest final bpb.
      const double key = steps_of(r) + (r.steps_to_target > 0 ? 0 : r.train_bpb);
      if (key < best_steps) {
        best_steps = key;
        best_lr = lr;
      }
    }
    return best_lr;
  };
  std::vector<RunResult> adamw_sweep, muon_sweep;
  const double adamw_lr = sweep("adamw", s.adamw_lrs, 0, adamw_sweep);
  const double muon_lr = sweep("muon", s.muon_lrs, adamw_lr, muon_sweep);

  std::vector<RunResult> adamw_seeds, muon_seeds;
  for (std::size_t i = 0; i < s.adamw_lrs.size(); ++i)
    if (s.adamw_lrs[i] == adamw_lr) adamw_seeds.push_back(adamw_sweep[i]);
  for (std::size_t i = 0; i < s.muon_lrs.size(); ++i)
    if (s.muon_lrs[i] == muon_lr) muon_seeds.push_back(muon_sweep[i]);
  for (int seed = 1; seed < s.seeds; ++seed) {
    adamw_seeds.push_back(overfit_run("adamw", adamw_lr, 0, static_cast<std::uint64_t>(seed)));
    sweep_csv.row({0, adamw_lr, double(seed), double(adamw_seeds.back().steps_to_target), adamw_seeds.back().train_bpb});
    muon_seeds.push_back(overfit_run("muon", muon_lr, adamw_lr, static_cast<std::uint64_t>(seed)));
    sweep_csv.row({1, muon_lr, double(seed), double(muon_seeds.back().steps_to_target), muon_seeds.back().train_bpb});
  }

  std::printf("\nlearning-rate sweep (seed 0), steps to train bpb < %.2f:\n", s.overfit_target);
  for (std::size_t i = 0; i < s.adamw_lrs.size(); ++i)
    std::printf("  adamw lr %-8g %s\n", s.adamw_lrs[i],
                adamw_sweep[i].steps_to_target > 0 ? std::to_string(adamw_sweep[i].steps_to_target).c_str()
                                                   : format("not reached (%.3f bpb)", adamw_sweep[i].train_bpb).c_str());
  for (std::size_t i = 0; i < s.muon_lrs.size(); ++i)
    std::printf("  muon  lr %-8g %s\n", s.muon_lrs[i],
                muon_sweep[i].steps_to_target > 0 ? std::to_string(muon_sweep[i].steps_to_target).c_str()
                                                  : format("not reached (%.3f bpb)", muon_sweep[i].train_bpb).c_str());
  if (s.adamw_lrs.size() > 1 && (adamw_lr == s.adamw_lrs.front() || adamw_lr == s.adamw_lrs.back()))
    std::printf("  note: AdamW's best rate %g is at an edge of the sweep\n", adamw_lr);
  if (s.muon_lrs.size() > 1 && (muon_lr == s.muon_lrs.front() || muon_lr == s.muon_lrs.back()))
    std::printf("  note: Muon's best rate %g is at an edge of the sweep\n", muon_lr);
  std::vector<double> adamw_steps, muon_steps;
  bool all_reached = true;
  std::string adamw_list, muon_list;
  for (const RunResult& r : adamw_seeds) {
    adamw_steps.push_back(steps_of(r));
    all_reached = all_reached && r.steps_to_target > 0;
    adamw_list += (adamw_list.empty() ? "" : " ") + (r.steps_to_target > 0 ? std::to_string(r.steps_to_target) : std::string(">cap"));
  }
  for (const RunResult& r : muon_seeds) {
    muon_steps.push_back(steps_of(r));
    all_reached = all_reached && r.steps_to_target > 0;
    muon_list += (muon_list.empty() ? "" : " ") + (r.steps_to_target > 0 ? std::to_string(r.steps_to_target) : std::string(">cap"));
  }
  const double reduction = 1.0 - mean(muon_steps) / mean(adamw_steps);
  std::printf("seeds 0..%d at the best rates: adamw lr %g: %s (mean %.0f); muon lr %g (AdamW group %g): %s (mean %.0f)\n",
              s.seeds - 1, adamw_lr, adamw_list.c_str(), mean(adamw_steps), muon_lr, adamw_lr, muon_list.c_str(),
              mean(muon_steps));
  plot(c.plots + "/charlm_overfit.png",
       "overfit-" + std::to_string(s.overfit_sequences) + ": bpb on the fixed windows (seed 0, best lr)", "bits per byte",
       false,
       {{adamw_seeds.front().eval_csv, "step", "train_bpb", "AdamW lr " + format("%g", adamw_lr)},
        {muon_seeds.front().eval_csv, "step", "train_bpb", "Muon lr " + format("%g", muon_lr)}});

  // 2000 steps on the whole training text, cosine schedule: stability, held-out bpb, throughput.
  std::printf("\n== %d steps, batch %d x %d bytes, warmup %d then cosine to 10 %%\n", s.long_steps, c.batch,
              c.model.context, s.long_steps / 20);
  auto long_run = [&](const std::string& name, double lr, double fallback_lr) {
    RunSpec spec;
    spec.optimizer = name;
    spec.label = "long_" + name;
    spec.config = make_config(name, lr, fallback_lr, schedule_text(s.long_steps / 20, s.long_steps, true), c.user_config);
    spec.model = c.model;
    spec.seed = 0;
    spec.steps = s.long_steps;
    spec.batch = c.batch;
    spec.eval_every = s.long_eval_every;
    return train(spec, c.text, c.out);
  };
  const RunResult adamw_long = long_run("adamw", adamw_lr, 0);
  const RunResult muon_long = long_run("muon", muon_lr, adamw_lr);
  for (const auto* r : {&adamw_long, &muon_long})
    std::printf("  %-5s held-out %.3f bpb (best %.3f at step %d), train windows %.3f bpb, max |g| %.3g, %.1f steps per "
                "CPU-second (%.1f steps/s wall; optimizer %.1f ms/step wall)\n",
                r == &adamw_long ? "adamw" : "muon", r->heldout_bpb, r->best_heldout_bpb, r->best_heldout_step,
                r->train_bpb, r->max_grad_norm,
                r->steps_per_cpu_second, r->steps_per_second, r->optimizer_ms);
  // Steps for Muon to reach AdamW's best held-out bpb (within one evaluation interval).
  const long muon_to_adamw_best = first_step_at(muon_long.heldout_curve, adamw_long.best_heldout_bpb);
  plot(c.plots + "/charlm_heldout.png", "held-out bpb (last 10 % of GPL-3), " + std::to_string(s.long_steps) + " steps",
       "bits per byte", false,
       {{adamw_long.eval_csv, "step", "heldout_bpb", "AdamW"}, {muon_long.eval_csv, "step", "heldout_bpb", "Muon"}});

  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  std::vector<Gate> gates;
  bool muon_all = true;
  for (const RunResult& r : muon_seeds) muon_all = muon_all && r.steps_to_target > 0;
  gates.push_back({"overfit-" + std::to_string(s.overfit_sequences) + " < " + format("%.2g", s.overfit_target) +
                       " bpb (Muon, every seed)",
                   "muon steps " + muon_list + ", adamw steps " + adamw_list, muon_all});
  gates.push_back({"Muon steps-to-target >= 35 % below AdamW's",
                   format("%.1f %% (mean %.0f vs %.0f steps", 100 * reduction, mean(muon_steps), mean(adamw_steps)) +
                       (all_reached ? ")" : "; a miss counted at the cap)"),
                   reduction >= 0.35 && muon_all, !s.quick});
  gates.push_back({std::to_string(s.long_steps) + " steps, loss and |g| finite (both)",
                   format("adamw max |g| %.3g, muon max |g| %.3g", adamw_long.max_grad_norm, muon_long.max_grad_norm),
                   adamw_long.finite && muon_long.finite && adamw_long.steps == s.long_steps &&
                       muon_long.steps == s.long_steps});
  gates.push_back({"step throughput >= 18 steps/s (Muon, one core)",
                   format("muon %.1f, adamw %.1f steps per CPU-second (wall %.1f, %.1f; batch %d x %d)",
                          muon_long.steps_per_cpu_second, adamw_long.steps_per_cpu_second, muon_long.steps_per_second,
                          adamw_long.steps_per_second, c.batch, c.model.context),
                   muon_long.steps_per_cpu_second >= 18, !s.quick});
  gates.push_back({"held-out: Muon reaches AdamW's best >= 35 % sooner",
                   muon_to_adamw_best > 0
                       ? format("adamw best %.3f bpb at step %d; muon reaches it at step %ld (%.0f %% fewer), "
                                "muon best %.3f",
                                adamw_long.best_heldout_bpb, adamw_long.best_heldout_step, muon_to_adamw_best,
                                100.0 * (1.0 - double(muon_to_adamw_best) / adamw_long.best_heldout_step),
                                muon_long.best_heldout_bpb)
                       : format("never (best adamw %.3f, muon %.3f bpb)", adamw_long.best_heldout_bpb,
                                muon_long.best_heldout_bpb),
                   muon_to_adamw_best > 0 && muon_to_adamw_best <= 0.65 * adamw_long.best_heldout_step, !s.quick});
  if (s.quick) {
    // What a broken model, backward pass or optimizer would fail: the batch loss must fall well
    // below its start (8 bits per byte, uniform) in both runs.
    for (const auto* r : {&adamw_long, &muon_long})
      gates.push_back({std::string(r == &adamw_long ? "adamw" : "muon") + ": batch loss falls by a third",
                       format("%.3f -> %.3f bpb (mean of the last 10 %% of steps)", r->first_loss_bpb, r->last_loss_bpb),
                       r->last_loss_bpb < r->first_loss_bpb * 2 / 3});
    bool adamw_all = true;
    for (const RunResult& r : adamw_seeds) adamw_all = adamw_all && r.steps_to_target > 0;
    gates.push_back({"overfit target reached (AdamW)", "steps " + adamw_list, adamw_all});
  }
  const bool ok = print_gates(gates);
  std::printf("(%.0f s in all; CSV files under %s)\n", seconds, c.out.c_str());
  return ok ? 0 : 1;
}


// ---- Mode: clip --------------------------------------------------------------------------------

struct ClipSettings {
  std::vector<double> taus;
  int steps = 2000, eval_every = 100;
  double lr = 0.02, fallback_lr = 1e-3;
  bool quick = false;
};

// Muon, then MuonClip at each cap, from the same initial weights and the same batches: the only
// difference is the clip. Every step reports each head's largest logit to QK-Clip.
int run_clip(const Common& c, const ClipSettings& s) {
  const auto t_start = std::chrono::steady_clock::now();
  std::printf("== MuonClip: %d steps, batch %d x %d bytes, Muon lr %g (AdamW group %g), caps:", s.steps, c.batch,
              c.model.context, s.lr, s.fallback_lr);
  for (double t : s.taus) std::printf(" %g", t);
  std::printf("\n");
  auto run = [&](const std::string& name, double tau) {
    RunSpec spec;
    spec.optimizer = name;
    spec.label = name == "muon" ? std::string("clip_none") : "clip_tau" + format("%g", tau);
    std::string user = c.user_config;
    if (name != "muon") user = "constraint.tau=" + format("%.17g", tau) + (user.empty() ? "" : ", " + user);
    spec.config = make_config(name, s.lr, s.fallback_lr, schedule_text(s.steps / 20, s.steps, true), user);
    spec.model = c.model;
    spec.seed = 0;
    spec.steps = s.steps;
    spec.batch = c.batch;
    spec.eval_every = s.eval_every;
    return train(spec, c.text, c.out);
  };
  const RunResult base = run("muon", 0);
  std::vector<RunResult> clipped;
  for (double tau : s.taus) clipped.push_back(run("muon_clip", tau));

  // QK-Clip rescales the heads that went over the cap after the step whose forward pass saw
  // them, so the next forward pass can overshoot by what one update adds: the logits should stay
  // near the cap on average and within a small multiple at worst. Measured over the second half
  // of the run (max and mean of the per-step max logit).
  struct Half {
    double max = 0, mean = 0;
  };
  auto second_half = [](const RunResult& r, int from) {
    std::ifstream in(r.steps_csv);
    std::string line;
    std::getline(in, line);
    Half h;
    int n = 0;
    while (std::getline(in, line)) {
      std::stringstream cells(line);
      std::string cell;
      std::vector<double> v;
      while (std::getline(cells, cell, ',')) v.push_back(std::stod(cell));
      if (v.size() < 4 || v[0] <= from) continue;
      h.max = std::max(h.max, v[3]);
      h.mean += v[3];
      ++n;
    }
    if (n > 0) h.mean /= n;
    return h;
  };
  // The cost of a cap: held-out bpb against the uncapped run's, at the best evaluation of each
  // run (early stopping) and at the end.
  Csv table(c.out + "/clip_summary.csv", {"tau", "max_logit", "max_logit_second_half", "mean_max_logit_second_half",
                                          "best_heldout_bpb", "best_cost", "final_heldout_bpb", "final_cost",
                                          "clipped_heads"});
  std::printf("\n%-6s %9s %14s %15s %13s %10s %14s %10s %13s\n", "cap", "max logit", "2nd half: max",
              "2nd half: mean", "best held-out", "cost", "final held-out", "cost", "clipped heads");
  const Half base_half = second_half(base, s.steps / 2);
  std::printf("%-6s %9.2f %14.2f %15.2f %13.4f %10s %14.4f %10s %13s\n", "none", base.max_logit, base_half.max,
              base_half.mean, base.best_heldout_bpb, "-", base.heldout_bpb, "-", "-");
  table.row({0, base.max_logit, base_half.max, base_half.mean, base.best_heldout_bpb, 0, base.heldout_bpb, 0, 0});
  std::vector<Gate> gates;
  std::vector<Series> series{{base.steps_csv, "step", "max_logit", "Muon (no cap)"}};
  bool finite = base.finite;
  for (std::size_t i = 0; i < clipped.size(); ++i) {
    const RunResult& r = clipped[i];
    const double tau = s.taus[i];
    const Half half = second_half(r, s.steps / 2);
    finite = finite && r.finite;
    std::printf("%-6g %9.2f %14.2f %15.2f %13.4f %+10.4f %14.4f %+10.4f %13ld\n", tau, r.max_logit, half.max,
                half.mean, r.best_heldout_bpb, r.best_heldout_bpb - base.best_heldout_bpb, r.heldout_bpb,
                r.heldout_bpb - base.heldout_bpb, r.clipped_heads);
    table.row({tau, r.max_logit, half.max, half.mean, r.best_heldout_bpb, r.best_heldout_bpb - base.best_heldout_bpb,
               r.heldout_bpb, r.heldout_bpb - base.heldout_bpb, double(r.clipped_heads)});
    series.push_back({r.steps_csv, "step", "max_logit", "MuonClip tau " + format("%g", tau)});
    gates.push_back({"QK-Clip got every head's logits, every step",
                     format("tau %g: %ld tensor-steps without a report", tau, r.steps_without_logits),
                     r.steps_without_logits == 0});
    // A cap below what plain Muon reaches must act, and must hold the logits near it.
    if (tau < base_half.mean)
      gates.push_back({"cap " + format("%g", tau) + " holds: 2nd-half mean <= 1.25 tau, max <= 2 tau",
                       format("mean %.2f, max %.2f (no cap: %.2f, %.2f); %ld heads clipped", half.mean, half.max,
                              base_half.mean, base_half.max, r.clipped_heads),
                       half.mean <= 1.25 * tau && half.max <= 2 * tau && r.clipped_heads > 0});
  }
  gates.push_back({"every run finite", finite ? "yes" : "no", finite});
  plot(c.plots + "/charlm_maxlogit.png", "largest attention logit per step: Muon vs MuonClip", "max logit", false,
       series);
  std::vector<Series> heldout{{base.eval_csv, "step", "heldout_bpb", "Muon (no cap)"}};
  for (std::size_t i = 0; i < clipped.size(); ++i)
    heldout.push_back({clipped[i].eval_csv, "step", "heldout_bpb", "MuonClip tau " + format("%g", s.taus[i])});
  plot(c.plots + "/charlm_clip_heldout.png", "held-out bpb: Muon vs MuonClip", "bits per byte", false, heldout);
  const bool ok = print_gates(gates);
  std::printf("(%.0f s in all; CSV files under %s)\n",
              std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count(), c.out.c_str());
  return ok ? 0 : 1;
}

// ---- Mode: train -------------------------------------------------------------------------------

struct TrainSettings {
  std::string optimizer = "muon";
  double lr = 0.02, fallback_lr = 1e-3;
  int steps = 2000, eval_every = 100;
  std::uint64_t seed = 0;
};

int run_train(const Common& c, const TrainSettings& s) {
  RunSpec spec;
  spec.optimizer = s.optimizer;
  spec.label = "train_" + s.optimizer;
  spec.config = make_config(s.optimizer, s.lr, s.fallback_lr, schedule_text(s.steps / 20, s.steps, true), c.user_config);
  spec.model = c.model;
  spec.seed = s.seed;
  spec.steps = s.steps;
  spec.batch = c.batch;
  spec.eval_every = s.eval_every;
  {
    // The routing report: which tensor takes which path, and why.
    Model probe(c.model, s.seed);
    std::cout << build_optimizer(s.optimizer, spec.config, probe)->routing_report() << "\n";
  }
  std::string shown;
  for (const auto& [k, v] : spec.config) shown += (shown.empty() ? "" : ", ") + k + "=" + v;
  std::printf("%s: %s\n", s.optimizer.c_str(), shown.c_str());
  const RunResult r = train(spec, c.text, c.out);
  std::printf("\n%s: %d steps, held-out %.4f bpb (best %.4f at step %d), training windows %.4f bpb, batch loss %.3f -> "
              "%.3f bpb\n"
              "max |g| %.3g, max attention logit %.2f, %.1f steps per CPU-second, %.1f steps/s wall (optimizer %.2f ms/step)%s\n"
              "optimizer state %zu bytes\n",
              s.optimizer.c_str(), r.steps, r.heldout_bpb, r.best_heldout_bpb, r.best_heldout_step, r.train_bpb,
              r.first_loss_bpb, r.last_loss_bpb,
              r.max_grad_norm, r.max_logit, r.steps_per_cpu_second, r.steps_per_second, r.optimizer_ms,
              has_qk_clip(s.optimizer) ? format(", %ld heads clipped", r.clipped_heads).c_str() : "", r.state_bytes);
  plot(c.plots + "/charlm_train_" + s.optimizer + ".png", s.optimizer + ": bits per byte", "bits per byte", false,
       {{r.eval_csv, "step", "train_bpb", "training windows"}, {r.eval_csv, "step", "heldout_bpb", "held-out tail"}});
  const bool ok = r.finite && r.last_loss_bpb < r.first_loss_bpb;
  std::printf("%s: %s\n", ok ? "PASS" : "FAIL", ok ? "finite throughout, loss fell" : "the loss did not fall or went non-finite");
  return ok ? 0 : 1;
}

std::vector<double> parse_list(const std::string& text, const std::string& option) {
  std::vector<double> v;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    std::size_t used = 0;
    double x = 0;
    try {
      x = std::stod(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    while (used < item.size() && item[used] == ' ') ++used;
    if (used != item.size() || item.empty() || !std::isfinite(x) || x <= 0)
      throw std::invalid_argument(option + ": '" + item + "' is not a positive number (expected a list like 1e-3,3e-3)");
    v.push_back(x);
  }
  if (v.empty()) throw std::invalid_argument(option + ": empty list");
  return v;
}

constexpr const char* k_usage =
    "Character language model on Debian's GPL-3 text: Muon vs AdamW (the Muon card's gates), MuonClip, and any\n"
    "composition by name.\n"
    "  --mode gates   overfit-100 sweep + 3 seeds, 2000-step A/B, throughput; PASS/FAIL per gate (default)\n"
    "  --mode clip    Muon vs MuonClip at each of --taus: max attention logit and held-out bpb\n"
    "  --mode train   one run of --optimizer NAME (adamw, muon, muon_clip, muon_grokfast, ...) with --config\n"
    "  --quick        short gates + clip runs with loose checks (CI); exit 1 when a check fails\n"
    "--config takes the library's by-name fields, e.g. \"momentum=0.9, orthogonalizer.steps=3\", added to every run.\n";

}  // namespace

int main(int argc, char** argv) {
  muon_examples::Args args(argc, argv, k_usage);
  const bool quick = args.flag("--quick");
  const std::string mode = args.text("--mode", "gates");
  const std::string text_path = args.text("--text", "/usr/share/common-licenses/GPL-3");
  Common c;
  c.quick = quick;
  c.out = args.text("--out", "charlm_results");
  c.plots = args.text("--plots", c.out);
  c.user_config = args.text("--config", "");
  // Quick mode: a narrower model and shorter context, same architecture.
  c.model.d_model = static_cast<int>(args.integer("--d-model", 64));
  c.model.layers = static_cast<int>(args.integer("--layers", 2));
  c.model.heads = static_cast<int>(args.integer("--heads", 4));
  c.model.context = static_cast<int>(args.integer("--context", quick ? 32 : 64));
  c.batch = static_cast<int>(args.integer("--batch", quick ? 8 : 16));
  const std::string taus = args.text("--taus", quick ? "3" : "5,10,20");
  const std::string adamw_lrs = args.text("--adamw-lrs", quick ? "1e-2" : "3e-4,1e-3,3e-3,1e-2");
  const std::string muon_lrs = args.text("--muon-lrs", quick ? "0.05" : "0.005,0.01,0.02,0.05,0.1");
  GateSettings g;
  g.quick = quick;
  g.seeds = static_cast<int>(args.integer("--seeds", quick ? 1 : 3));
  g.overfit_sequences = static_cast<int>(args.integer("--overfit-sequences", quick ? 20 : 100));
  g.overfit_batch = static_cast<int>(args.integer("--overfit-batch", quick ? 10 : 20));
  g.overfit_cap = static_cast<int>(args.integer("--overfit-cap", quick ? 300 : 1500));
  g.overfit_target = args.real("--overfit-target", quick ? 2.0 : 0.5);
  const long steps = args.integer("--steps", quick ? 150 : 2000);
  const long eval_every = args.integer("--eval-every", quick ? 50 : 100);
  TrainSettings t;
  t.optimizer = args.text("--optimizer", "muon");
  t.lr = args.real("--lr", 0.02);
  // The rates the gates' sweep picked on overfit-100 (docs/results.md): Muon 0.02, AdamW 1e-3.
  t.fallback_lr = args.real("--fallback-lr", 1e-3);
  t.seed = static_cast<std::uint64_t>(args.integer("--seed", 0));
  args.done();

  try {
    if (mode != "gates" && mode != "clip" && mode != "train")
      throw std::invalid_argument("--mode: '" + mode + "' is not one of gates, clip, train");
    if (steps < 1 || eval_every < 1 || g.seeds < 1 || g.overfit_sequences < 1 || g.overfit_batch < 1 ||
        g.overfit_cap < 1 || c.batch < 1)
      throw std::invalid_argument("--steps, --eval-every, --seeds, --overfit-* and --batch must be positive");
    c.model.validate();
    if (!muon_examples::require_file(text_path, "the training text", "base-files")) return 2;
    const double heldout_fraction = 0.1;
    std::optional<Text> text = load_text(text_path, heldout_fraction);
    if (!text || static_cast<long>(text->heldout.size()) < c.model.context + 2)
      throw std::invalid_argument(text_path + ": cannot be read, or too short for a held-out tail of " +
                                  std::to_string(c.model.context + 2) + " bytes");
    c.text = std::move(*text);
    std::printf("text: %s, %zu bytes for training, %zu held out (the last 10 %%)\n", text_path.c_str(),
                c.text.train.size(), c.text.heldout.size());
    std::printf("model: d_model %d, %d layers, %d heads, context %d, byte vocabulary, %ld parameters\n",
                c.model.d_model, c.model.layers, c.model.heads, c.model.context, c.model.parameter_count());

    int rc = 0;
    if (mode == "gates" || quick) {
      g.adamw_lrs = parse_list(adamw_lrs, "--adamw-lrs");
      g.muon_lrs = parse_list(muon_lrs, "--muon-lrs");
      g.long_steps = static_cast<int>(steps);
      g.long_eval_every = static_cast<int>(eval_every);
      rc = std::max(rc, run_gates(c, g));
    }
    if (mode == "clip" || quick) {
      ClipSettings cs;
      cs.taus = parse_list(taus, "--taus");
      cs.steps = static_cast<int>(steps);
      cs.eval_every = static_cast<int>(eval_every);
      cs.lr = quick ? 0.05 : t.lr;
      cs.fallback_lr = quick ? 1e-2 : t.fallback_lr;
      cs.quick = quick;
      rc = std::max(rc, run_clip(c, cs));
    }
    if (mode == "train" && !quick) {
      t.steps = static_cast<int>(steps);
      t.eval_every = static_cast<int>(eval_every);
      rc = run_train(c, t);
    }
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "charlm: %s\n", e.what());
    return 2;
  }
}
