// Grokking on x·y mod p (Power et al. 2022; the task of Grokfast, Lee et al. 2024), and manifold
// Muon on the same task.
//
//   --experiment grokking (default)  AdamW alone (the baseline), Grokfast (EMA filter + AdamW) and
//       GrokfastMA (moving-average filter + AdamW) from the same initialisation and data split
//       per seed; records the steps to 95 % validation accuracy and the speed-up over the
//       baseline. The paper reports, for its transformer: baseline ~40k steps, EMA x44
//       (alpha 0.98, lamb 2.0), MA x50 (window 100, lamb 5.0); AdamW lr 1e-3, betas 0.9/0.98,
//       weight decay 1.0.
//   --experiment manifold  Muon, StiefelMuon and HypersphereMuon on the hidden matrix (the rest on
//       AdamW as above): loss, accuracy and the constraint errors ||W^T W - I||_F and
//       max_r | ||w_r|| - 1 | of that matrix over training.
//
// The model is a 2-layer MLP on concatenated embeddings (not the paper's transformer, which takes
// far longer per step on a CPU):  h = relu(W1 [E x ; E y] + b1),  logits = W2 h + b2,  trained
// full batch (all training pairs every step) on cross-entropy. Backprop is written out below;
// --quick checks it against finite differences in double before training.
//
// Every curve goes to CSV under --out, with PNG plots when gnuplot or matplotlib is installed.
//   build/examples/06_grokking/grokking --quick            (x*y mod 53, ~30 s; CI runs it)
//   build/examples/06_grokking/grokking --seeds 3          (the numbers in docs/results.md)
//   build/examples/06_grokking/grokking --experiment manifold
// Exit status: 0 when the run's checks pass, 1 when one fails, 2 on a bad command line.
#include <muon/muon.hpp>

#include "../common/run_io.hpp"

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace {

using muon_examples::Args;
using muon_examples::Csv;
using muon_examples::Plot;
using muon_examples::Progress;
using muon_examples::Series;

// ---- data ---------------------------------------------------------------------------------

// Every pair (x, y) of residues mod p with its label x·y mod p, shuffled by `seed` and split.
struct Split {
  std::vector<int> x, y, label;
};
struct Data {
  int p = 0;
  Split train, val;
};

Data make_data(int p, double train_fraction, unsigned seed) {
  std::vector<int> order(static_cast<std::size_t>(p) * static_cast<std::size_t>(p));
  std::iota(order.begin(), order.end(), 0);
  std::mt19937 rng(seed * 7919u + 17u);
  std::shuffle(order.begin(), order.end(), rng);
  const auto n_train = static_cast<std::size_t>(train_fraction * static_cast<double>(order.size()));
  Data d;
  d.p = p;
  for (std::size_t i = 0; i < order.size(); ++i) {
    Split& s = i < n_train ? d.train : d.val;
    const int a = order[i] / p, b = order[i] % p;
    s.x.push_back(a);
    s.y.push_back(b);
    s.label.push_back(static_cast<int>((static_cast<long>(a) * b) % p));
  }
  return d;
}

// ---- model --------------------------------------------------------------------------------

template <class T>
struct Mlp {
  // Row-major: a logical row is a row in memory, so "every row at unit norm" (HypersphereMuon)
  // means every hidden unit's incoming weights, and an embedding row is one token's vector.
  using RM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using CM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;

  int p, d, h;
  RM E, W1, W2;  // p x d, h x 2d, p x h
  Vec b1, b2;
  RM dE, dW1, dW2;
  Vec db1, db2;
  // Forward cache of the last call with backprop wanted.
  CM z, act, probs;

  Mlp(int p_, int d_, int h_, unsigned seed) : p(p_), d(d_), h(h_) {
    // torch's defaults: nn.Embedding N(0, 1), nn.Linear U(+-1/sqrt(fan_in)) for weight and bias.
    std::mt19937 rng(seed);
    std::normal_distribution<double> normal(0.0, 1.0);
    auto uniform = [&](Eigen::Index rows, Eigen::Index cols, double bound) {
      std::uniform_real_distribution<double> u(-bound, bound);
      CM m(rows, cols);
      for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<T>(u(rng));
      return m;
    };
    E = RM(p, d);
    for (Eigen::Index i = 0; i < E.size(); ++i) E.data()[i] = static_cast<T>(normal(rng));
    const double k1 = 1.0 / std::sqrt(2.0 * d), k2 = 1.0 / std::sqrt(static_cast<double>(h));
    W1 = uniform(h, 2 * d, k1);
    b1 = uniform(h, 1, k1);
    W2 = uniform(p, h, k2);
    b2 = uniform(p, 1, k2);
    dE = RM::Zero(p, d);
    dW1 = RM::Zero(h, 2 * d);
    dW2 = RM::Zero(p, h);
    db1 = Vec::Zero(h);
    db2 = Vec::Zero(p);
  }

  struct Eval {
    double loss = 0, acc = 0;
  };

  // Mean cross-entropy and accuracy on a split; with `grad`, also writes every gradient buffer
  // in place (the optimizer holds pointers to them).
  Eval run(const Split& s, bool grad) {
    const auto n = static_cast<Eigen::Index>(s.x.size());
    // W1 [E x ; E y] = (W1_left E^T)[:, x] + (W1_right E^T)[:, y]: two h x p tables, gathered.
    const CM left = W1.leftCols(d) * E.transpose(), right = W1.rightCols(d) * E.transpose();
    z.resize(h, n);
    for (Eigen::Index i = 0; i < n; ++i) z.col(i) = left.col(s.x[i]) + right.col(s.y[i]) + b1;
    act = z.cwiseMax(T(0));
    probs.noalias() = W2 * act;
    probs.colwise() += b2;
    Eval out;
    for (Eigen::Index i = 0; i < n; ++i) {
      auto c = probs.col(i);
      Eigen::Index arg = 0;
      const T top = c.maxCoeff(&arg);
      // -log softmax from the logits (log-sum-exp), not from the probability: a confident
      // wrong answer's probability underflows to 0 in float, and its loss must stay finite.
      const double label_logit = static_cast<double>(c(s.label[i]) - top);
      c = (c.array() - top).exp();
      const T sum = c.sum();
      c /= sum;
      out.loss += std::log(static_cast<double>(sum)) - label_logit;
      out.acc += arg == s.label[i] ? 1.0 : 0.0;
    }
    out.loss /= static_cast<double>(n);
    out.acc /= static_cast<double>(n);
    if (!grad) return out;

    CM& g = probs;  // dloss/dlogits = (softmax - onehot) / n, in place
    for (Eigen::Index i = 0; i < n; ++i) g(s.label[i], i) -= T(1);
    g /= static_cast<T>(n);
    dW2.noalias() = g * act.transpose();
    db2 = g.rowwise().sum();
    CM dz = W2.transpose() * g;
    dz = (z.array() > T(0)).select(dz, T(0));
    db1 = dz.rowwise().sum();
    CM d_left = CM::Zero(h, p), d_right = CM::Zero(h, p);
    for (Eigen::Index i = 0; i < n; ++i) {
      d_left.col(s.x[i]) += dz.col(i);
      d_right.col(s.y[i]) += dz.col(i);
    }
    dW1.leftCols(d).noalias() = d_left * E;
    dW1.rightCols(d).noalias() = d_right * E;
    dE.noalias() = d_left.transpose() * W1.leftCols(d);
    dE.noalias() += d_right.transpose() * W1.rightCols(d);
    return out;
  }

  [[nodiscard]] bool finite() const {
    return E.allFinite() && W1.allFinite() && W2.allFinite() && b1.allFinite() && b2.allFinite();
  }
};

// Backprop against central differences, in double on a small model: the largest relative error
// over a sample of entries of every tensor.
double gradient_check() {
  const Data data = make_data(7, 0.5, 1);
  Mlp<double> m(7, 4, 6, 3);
  m.run(data.train, true);
  const Mlp<double> analytic = m;
  double worst = 0;
  auto probe = [&](auto& param, const auto& grad) {
    for (Eigen::Index i = 0; i < param.size(); i += 3) {
      const double keep = param.data()[i], eps = 1e-6;
      param.data()[i] = keep + eps;
      const double up = m.run(data.train, false).loss;
      param.data()[i] = keep - eps;
      const double down = m.run(data.train, false).loss;
      param.data()[i] = keep;
      const double numeric = (up - down) / (2 * eps), exact = grad.data()[i];
      // Relative to the entry (floor 1e-4: tiny entries carry the differences' own rounding).
      worst = std::max(worst, std::abs(numeric - exact) / std::max(1e-4, std::abs(numeric) + std::abs(exact)));
    }
  };
  probe(m.E, analytic.dE);
  probe(m.W1, analytic.dW1);
  probe(m.b1, analytic.db1);
  probe(m.W2, analytic.dW2);
  probe(m.b2, analytic.db2);
  return worst;
}

// ---- measurements of the hidden matrix ----------------------------------------------------

// ||W^T W - I||_F for a tall W (W W^T for a wide one), in double.
template <class M>
double stiefel_error(const M& w) {
  const Eigen::MatrixXd a = w.template cast<double>();
  const Eigen::MatrixXd g = a.rows() >= a.cols() ? Eigen::MatrixXd(a.transpose() * a) : Eigen::MatrixXd(a * a.transpose());
  return (g - Eigen::MatrixXd::Identity(g.rows(), g.cols())).norm();
}
// max over rows of | ||w_r|| - 1 |, in double.
template <class M>
double sphere_error(const M& w) {
  return (w.template cast<double>().rowwise().norm().array() - 1.0).abs().maxCoeff();
}

// ---- training -----------------------------------------------------------------------------

struct Config {
  int p = 97;
  double train_fraction = 0.5;
  int embed = 32, hidden = 256;
  long max_steps = 20000;
  long eval_every = 10;
  double stop_at = 0.99;  // a run ends at the first evaluation with this validation accuracy
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.98, weight_decay = 1.0;
  // Per-run weight decay (AdamW's, decoupled). "equal" protocol: all three at weight_decay.
  // "official" protocol, the official code's commands: baseline 0, EMA 0.005, MA 0.01.
  double baseline_wd = 1.0, ema_wd = 1.0, ma_wd = 1.0;
  double ema_alpha = 0.98, ema_lamb = 2.0;
  int ma_window = 100;
  double ma_lamb = 5.0;
  double matrix_lr = 0.02;
  std::string out = "runs/grokking";
};

struct RunResult {
  std::string name;
  unsigned seed = 0;
  long steps_train99 = -1;  // first step with training accuracy >= 99 %
  long steps_val95 = -1;    // first evaluation with validation accuracy >= 95 %
  long steps_run = 0;
  double final_train_acc = 0, final_val_acc = 0, final_train_loss = 0;
  double max_stiefel = 0, max_sphere = 0;  // of the hidden matrix, over training
  double first_train_loss = 0;
  bool finite = true;
  double seconds = 0;
};

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

template <class Opt>
void register_model(Opt& opt, Mlp<float>& m, bool manifold) {
  // In the manifold runs only the hidden matrix W1 takes the matrix path (the embedding and the
  // head would go there too under HypersphereMuon's RankRouter): one constrained tensor, the
  // rest AdamW exactly as in the baseline, so the runs differ in W1's update alone.
  const auto fb = manifold ? std::optional<muon::Path>(muon::Path::fallback) : std::nullopt;
  opt.add("embed", m.E, m.dE, {.role = muon::Role::embedding, .path = fb});
  opt.add("hidden.w", m.W1, m.dW1, {.role = muon::Role::none});
  opt.add("hidden.b", m.b1, m.db1, {.role = muon::Role::bias});
  opt.add("head.w", m.W2, m.dW2, {.role = muon::Role::output_head, .path = fb});
  opt.add("head.b", m.b2, m.db2, {.role = muon::Role::bias});
}

template <class Opt>
RunResult train(Opt& opt, Mlp<float>& m, const Data& data, const Config& cfg, const std::string& name, unsigned seed,
                bool manifold) {
  register_model(opt, m, manifold);
  RunResult r{.name = name, .seed = seed};
  std::vector<std::string> cols{"step", "train_loss", "train_acc", "val_loss", "val_acc"};
  if (manifold) cols.insert(cols.end(), {"stiefel_error", "sphere_error"});
  Csv csv(cfg.out + "/" + name + "_seed" + std::to_string(seed) + ".csv", cols);
  Progress bar(name + " seed " + std::to_string(seed), cfg.max_steps);
  const auto start = std::chrono::steady_clock::now();
  std::string status;
  for (long step = 1; step <= cfg.max_steps; ++step) {
    const auto tr = m.run(data.train, true);  // accuracy and loss before this step's update
    if (step == 1) r.first_train_loss = tr.loss;
    opt.step();
    r.steps_run = step;
    r.final_train_acc = tr.acc;
    r.final_train_loss = tr.loss;
    if (r.steps_train99 < 0 && tr.acc >= 0.99) r.steps_train99 = step;
    const bool last = step == cfg.max_steps;
    if (step % cfg.eval_every == 0 || step == 1 || last) {
      const auto va = m.run(data.val, false);
      r.final_val_acc = va.acc;
      std::vector<double> row{static_cast<double>(step), tr.loss, tr.acc, va.loss, va.acc};
      if (manifold) {
        const double se = stiefel_error(m.W1), he = sphere_error(m.W1);
        r.max_stiefel = std::max(r.max_stiefel, se);
        r.max_sphere = std::max(r.max_sphere, he);
        row.insert(row.end(), {se, he});
      }
      csv.row(row);
      if (!std::isfinite(tr.loss) || !std::isfinite(va.loss) || !m.finite()) {
        r.finite = false;
        break;
      }
      if (r.steps_val95 < 0 && va.acc >= 0.95) r.steps_val95 = step;
      status = "train acc " + fmt("%.3f", tr.acc) + " val acc " + fmt("%.3f", va.acc) + " loss " + fmt("%.3g", tr.loss);
      if (va.acc >= cfg.stop_at) break;
    }
    bar.update(step, status);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bar.finish(status + (r.steps_val95 > 0 ? " | 95 % val at step " + std::to_string(r.steps_val95) : " | 95 % val not reached") +
             " | " + fmt("%.0f s", r.seconds));
  return r;
}

using B = muon::backend::Eigen<float>;

RunResult run_one(const std::string& name, const Config& cfg, unsigned seed) {
  const Data data = make_data(cfg.p, cfg.train_fraction, seed);
  Mlp<float> m(cfg.p, cfg.embed, cfg.hidden, seed);  // same data and initialisation for every optimizer
  muon::policy::AdamW::Options adamw{
      .lr = cfg.lr, .beta1 = cfg.beta1, .beta2 = cfg.beta2, .eps = 1e-8, .weight_decay = cfg.weight_decay};
  auto with_wd = [&](double wd) {
    auto o = adamw;
    o.weight_decay = wd;
    return o;
  };
  if (name == "baseline") {
    muon::AdamW<B> opt({.threads = 1, .fallback = with_wd(cfg.baseline_wd)});
    return train(opt, m, data, cfg, name, seed, false);
  }
  if (name == "ema") {
    muon::Grokfast<B> opt(
        {.threads = 1, .filter = {.alpha = cfg.ema_alpha, .lamb = cfg.ema_lamb}, .fallback = with_wd(cfg.ema_wd)});
    return train(opt, m, data, cfg, name, seed, false);
  }
  if (name == "ma") {
    muon::GrokfastMA<B> opt(
        {.threads = 1, .filter = {.window = cfg.ma_window, .lamb = cfg.ma_lamb}, .fallback = with_wd(cfg.ma_wd)});
    return train(opt, m, data, cfg, name, seed, false);
  }
  if (name == "muon") {
    muon::Muon<B> opt({.lr = cfg.matrix_lr, .threads = 1, .fallback = adamw});
    return train(opt, m, data, cfg, name, seed, true);
  }
  if (name == "stiefel") {
    muon::StiefelMuon<B> opt({.lr = cfg.matrix_lr, .threads = 1, .fallback = adamw});
    return train(opt, m, data, cfg, name, seed, true);
  }
  if (name == "sphere") {
    muon::HypersphereMuon<B> opt({.lr = cfg.matrix_lr, .threads = 1, .fallback = adamw});
    return train(opt, m, data, cfg, name, seed, true);
  }
  throw std::invalid_argument("unknown run " + name);
}

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char c : s) {
    if (c == ',') {
      if (!cur.empty()) out.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  if (!cur.empty()) out.push_back(cur);
  return out;
}

std::string steps_text(long s, long max_steps) { return s > 0 ? std::to_string(s) : "> " + std::to_string(max_steps); }

}  // namespace

int main(int argc, char** argv) {
  Args args(argc, argv,
            "Grokking on x*y mod p: AdamW vs Grokfast EMA vs Grokfast MA (--experiment grokking), or\n"
            "Muon vs StiefelMuon vs HypersphereMuon on the same task (--experiment manifold).\n");
  const bool quick = args.flag("--quick");
  const std::string experiment = args.text("--experiment", "grokking");
  const bool manifold = experiment == "manifold";
  Config cfg;
  if (manifold) {
    cfg.out = "runs/manifold";
    cfg.max_steps = 3000;
  }
  if (quick) {
    // A smaller task that still groks: x*y mod 53 with 70 % of the pairs for training, a
    // narrower MLP. Every run memorises by step ~400 and passes 95 % validation near step 1000
    // (seed 1), so the cap of 3000 leaves a margin for other CPUs' rounding. About 20 s on one
    // core for the three grokking runs; the manifold ones (1000 steps: StiefelMuon memorises last,
    // near step 500) about 25 s.
    cfg.p = 53;
    cfg.train_fraction = 0.7;
    cfg.hidden = 128;
    cfg.max_steps = manifold ? 1000 : 3000;
    cfg.eval_every = 20;
    cfg.out += "_quick";
  }
  cfg.p = static_cast<int>(args.integer("--p", cfg.p));
  cfg.train_fraction = args.real("--train-fraction", cfg.train_fraction);
  cfg.embed = static_cast<int>(args.integer("--embed", cfg.embed));
  cfg.hidden = static_cast<int>(args.integer("--hidden", cfg.hidden));
  cfg.max_steps = args.integer("--steps", cfg.max_steps);
  cfg.eval_every = args.integer("--eval-every", cfg.eval_every);
  cfg.stop_at = args.real("--stop-at", cfg.stop_at);
  cfg.lr = args.real("--lr", cfg.lr);
  cfg.beta2 = args.real("--beta2", cfg.beta2);
  const std::string protocol = args.text("--protocol", "equal");
  cfg.weight_decay = args.real("--weight-decay", cfg.weight_decay);
  const bool official = protocol == "official";
  cfg.baseline_wd = args.real("--baseline-weight-decay", official ? 0.0 : cfg.weight_decay);
  cfg.ema_wd = args.real("--ema-weight-decay", official ? 0.005 : cfg.weight_decay);
  cfg.ma_wd = args.real("--ma-weight-decay", official ? 0.01 : cfg.weight_decay);
  cfg.ema_alpha = args.real("--ema-alpha", cfg.ema_alpha);
  cfg.ema_lamb = args.real("--ema-lamb", cfg.ema_lamb);
  cfg.ma_window = static_cast<int>(args.integer("--ma-window", cfg.ma_window));
  cfg.ma_lamb = args.real("--ma-lamb", cfg.ma_lamb);
  cfg.matrix_lr = args.real("--matrix-lr", cfg.matrix_lr);
  cfg.out = args.text("--out", cfg.out);
  const long n_seeds = args.integer("--seeds", 1);
  const long first_seed = args.integer("--first-seed", 1);
  const std::string runs_text = args.text("--runs", manifold ? "muon,stiefel,sphere" : "baseline,ema,ma");
  // Redraw the plots from the CSV files of an earlier run with the same options, no training.
  const bool plot_only = args.flag("--plot-only");
  args.done();

  std::string bad;
  if (experiment != "grokking" && experiment != "manifold") bad = "--experiment must be grokking or manifold";
  if (protocol != "equal" && protocol != "official") bad = "--protocol must be equal or official";
  if (cfg.p < 3) bad = "--p must be at least 3";
  if (!(cfg.train_fraction > 0 && cfg.train_fraction < 1)) bad = "--train-fraction must be in (0, 1)";
  if (cfg.embed < 1 || cfg.hidden < 1 || cfg.max_steps < 1 || cfg.eval_every < 1 || n_seeds < 1)
    bad = "--embed, --hidden, --steps, --eval-every and --seeds must be positive";
  const std::vector<std::string> runs = split_list(runs_text);
  for (const auto& r : runs)
    if (r != "baseline" && r != "ema" && r != "ma" && r != "muon" && r != "stiefel" && r != "sphere")
      bad = "--runs takes baseline, ema, ma, muon, stiefel, sphere (got " + r + ")";
  if (!bad.empty()) {
    std::fprintf(stderr, "%s\n%s", bad.c_str(), args.help_text().c_str());
    return 2;
  }

  int failures = 0;
  if (quick) {
    const double err = gradient_check();
    std::printf("gradient check (double, finite differences): worst relative error %.2e\n", err);
    if (!(err < 1e-5)) {
      std::printf("FAIL: backprop disagrees with finite differences\n");
      ++failures;
    }
  }

  std::printf("%s on x*y mod %d: %zu training pairs, %zu validation pairs; MLP embed %d, hidden %d; full batch\n",
              experiment.c_str(), cfg.p, make_data(cfg.p, cfg.train_fraction, 1).train.x.size(),
              make_data(cfg.p, cfg.train_fraction, 1).val.x.size(), cfg.embed, cfg.hidden);
  std::printf("AdamW lr %g betas (%g, %g); weight decay: %s; up to %ld steps, validation every %ld, stop at %.0f %%\n",
              cfg.lr, cfg.beta1, cfg.beta2,
              manifold ? fmt("%g (fallback tensors)", cfg.weight_decay).c_str()
                       : (fmt("baseline %g", cfg.baseline_wd) + fmt(", ema %g", cfg.ema_wd) + fmt(", ma %g", cfg.ma_wd)).c_str(),
              cfg.max_steps, cfg.eval_every, 100 * cfg.stop_at);
  std::fflush(stdout);

  std::vector<RunResult> results;
  for (long s = 0; s < n_seeds && !plot_only; ++s)
    for (const auto& name : runs) results.push_back(run_one(name, cfg, static_cast<unsigned>(first_seed + s)));

  // Summary table and CSV.
  std::ofstream summary;
  if (!plot_only) summary.open(cfg.out + "/summary.csv");
  summary << "run,seed,steps_train99,steps_val95,steps_run,final_train_acc,final_val_acc,max_stiefel_error,max_sphere_error,"
             "seconds\n";
  std::printf("\n%-9s %5s %14s %14s %12s %10s %10s", "run", "seed", "train>=99% at", "val>=95% at", "speed-up", "val acc",
              "seconds");
  if (manifold) std::printf(" %14s %14s", "max Stiefel", "max sphere");
  std::printf("\n");
  for (const auto& r : results) {
    const RunResult* base = nullptr;
    for (const auto& b : results)
      if (b.seed == r.seed && b.name == (manifold ? "muon" : "baseline")) base = &b;
    std::string speedup = "-";
    if (base != nullptr && base != &r && r.steps_val95 > 0) {
      speedup = base->steps_val95 > 0 ? fmt("x%.1f", static_cast<double>(base->steps_val95) / static_cast<double>(r.steps_val95))
                                      : "> x" + fmt("%.1f", static_cast<double>(cfg.max_steps) / static_cast<double>(r.steps_val95));
    }
    std::printf("%-9s %5u %14s %14s %12s %10.3f %10.1f", r.name.c_str(), r.seed, steps_text(r.steps_train99, r.steps_run).c_str(),
                steps_text(r.steps_val95, r.steps_run).c_str(), speedup.c_str(), r.final_val_acc, r.seconds);
    if (manifold) std::printf(" %14.2e %14.2e", r.max_stiefel, r.max_sphere);
    std::printf("\n");
    summary << r.name << ',' << r.seed << ',' << r.steps_train99 << ',' << r.steps_val95 << ',' << r.steps_run << ','
            << r.final_train_acc << ',' << r.final_val_acc << ',' << r.max_stiefel << ',' << r.max_sphere << ',' << r.seconds
            << '\n';
  }
  if (!plot_only) std::printf("(-1 in %s/summary.csv and \"> N\" here: not reached in the steps run)\n", cfg.out.c_str());

  // Plots of the first seed.
  const std::string seed1 = "_seed" + std::to_string(first_seed) + ".csv";
  auto path = [&](const std::string& name) { return cfg.out + "/" + name + seed1; };
  if (!manifold) {
    Plot acc{cfg.out + "/grokking_accuracy.png", "x*y mod " + std::to_string(cfg.p) + ": accuracy (seed " + std::to_string(first_seed) + ")",
             "step", "accuracy", false, {}, true};
    Plot loss{cfg.out + "/grokking_loss.png", "x*y mod " + std::to_string(cfg.p) + ": validation loss (seed " + std::to_string(first_seed) + ")",
              "step", "cross-entropy", true, {}, true};
    for (const auto& name : runs) {
      acc.series.push_back({path(name), "step", "train_acc", name + " train"});
      acc.series.push_back({path(name), "step", "val_acc", name + " validation"});
      loss.series.push_back({path(name), "step", "val_loss", name + " validation"});
    }
    for (const Plot* p : {&acc, &loss})
      if (muon_examples::plot_png(*p)) std::printf("wrote %s\n", p->png_path.c_str());
  } else {
    Plot loss{cfg.out + "/manifold_runs_loss.png", "x*y mod " + std::to_string(cfg.p) + ": training loss (seed " + std::to_string(first_seed) + ")",
              "step", "cross-entropy", true, {}, false};
    Plot acc{cfg.out + "/manifold_runs_accuracy.png", "x*y mod " + std::to_string(cfg.p) + ": validation accuracy (seed " + std::to_string(first_seed) + ")",
             "step", "accuracy", false, {}, false};
    Plot constraint{cfg.out + "/manifold_runs_constraint.png", "hidden matrix W1: distance from each manifold", "step",
                    "error (log)", true, {}, false};
    for (const auto& name : runs) {
      loss.series.push_back({path(name), "step", "train_loss", name});
      acc.series.push_back({path(name), "step", "val_acc", name});
      if (name != "sphere") constraint.series.push_back({path(name), "step", "stiefel_error", name + ": ||W^T W - I||_F"});
      if (name != "stiefel") constraint.series.push_back({path(name), "step", "sphere_error", name + ": max | ||row|| - 1 |"});
    }
    for (const Plot* p : {&loss, &acc, &constraint})
      if (muon_examples::plot_png(*p)) std::printf("wrote %s\n", p->png_path.c_str());
  }

  // Checks: what must hold whatever the seed (a failed one exits 1).
  for (const auto& r : results) {
    auto fail = [&](const std::string& what) {
      std::printf("FAIL: %s seed %u: %s\n", r.name.c_str(), r.seed, what.c_str());
      ++failures;
    };
    if (!r.finite) fail("a loss or a weight became NaN or Inf");
    if (r.steps_train99 < 0) fail("training accuracy never reached 99 % (no memorisation)");
    // Only the quick task is sized to grok within its steps; elsewhere not grokking is a result.
    if (quick && !manifold && r.steps_val95 < 0) fail("validation accuracy never reached 95 % (no grokking)");
    if (manifold) {
      if (r.name == "stiefel" && !(r.max_stiefel < 1e-3)) fail("W1 left the Stiefel manifold: " + fmt("%.2e", r.max_stiefel));
      if (r.name == "sphere" && !(r.max_sphere < 1e-4)) fail("a row of W1 left the sphere: " + fmt("%.2e", r.max_sphere));
      if (!(r.final_train_loss < 0.5 * r.first_train_loss)) fail("the training loss did not halve");
    }
  }
  if (failures == 0) std::printf("all checks passed\n");
  return failures == 0 ? 0 : 1;
}
