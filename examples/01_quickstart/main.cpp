// Quickstart: train a small MLP with Muon for its hidden matrices and AdamW for the rest.
//
// A fixed random "teacher" network makes the targets; a wider "student" learns to imitate it
// from fresh random inputs at every step. The student's weights are plain Eigen matrices and its
// gradients come from hand-written backprop, so the only muon-specific lines are the options,
// the registration (opt.add) and opt.step(). Build and run it with:  bash scripts/demo.sh
#include <muon/muon.hpp>

#include <Eigen/Core>

#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <iostream>
#include <random>
#include <string>
#include <vector>

namespace {

using Matrix = Eigen::MatrixXf;
using Vector = Eigen::VectorXf;

Matrix randn(Eigen::Index rows, Eigen::Index cols, std::mt19937& rng, float stddev) {
  std::normal_distribution<float> normal(0.0f, stddev);
  Matrix m(rows, cols);
  for (Eigen::Index j = 0; j < cols; ++j)
    for (Eigen::Index i = 0; i < rows; ++i) m(i, j) = normal(rng);
  return m;
}

// One fully connected layer, stored as torch.nn.Linear stores it: w is (out, in).
struct Layer {
  Matrix w, dw;
  Vector b, db;
};

// tanh MLP; samples are columns (features x batch).
struct Mlp {
  std::vector<Layer> layers;
  std::vector<Matrix> acts;  // acts[0] = input, acts[i + 1] = output of layer i

  // `gain` scales the usual 1/sqrt(fan_in) init: the teacher uses a larger one so that its tanh
  // units saturate and the function it computes is not close to linear.
  Mlp(std::initializer_list<int> widths, std::mt19937& rng, float gain) {
    const std::vector<int> w(widths);
    for (std::size_t i = 0; i + 1 < w.size(); ++i) {
      const float scale = gain / std::sqrt(static_cast<float>(w[i]));
      layers.push_back({randn(w[i + 1], w[i], rng, scale), Matrix::Zero(w[i + 1], w[i]),
                        randn(w[i + 1], 1, rng, scale), Vector::Zero(w[i + 1])});
    }
    acts.resize(layers.size() + 1);
  }

  const Matrix& forward(const Matrix& x) {
    acts[0] = x;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      acts[i + 1].noalias() = layers[i].w * acts[i];
      acts[i + 1].colwise() += layers[i].b;
      if (i + 1 < layers.size()) acts[i + 1] = acts[i + 1].array().tanh();
    }
    return acts.back();
  }

  // Writes every dw and db from delta = dLoss/d(output). The optimizer keeps pointers to these
  // buffers, so they are assigned in place (same size, no reallocation), never replaced.
  void backward(Matrix delta) {
    for (std::size_t i = layers.size(); i-- > 0;) {
      layers[i].dw.noalias() = delta * acts[i].transpose();
      layers[i].db = delta.rowwise().sum();
      if (i == 0) break;
      Matrix upstream = layers[i].w.transpose() * delta;
      delta = upstream.array() * (1.0f - acts[i].array().square());
    }
  }
};

float mse(const Matrix& prediction, const Matrix& target) {
  return (prediction - target).squaredNorm() / static_cast<float>(prediction.size());
}

constexpr int k_inputs = 32, k_hidden = 64, k_outputs = 8;
constexpr int k_steps = 1500, k_batch = 128, k_print_every = 100;

// Constant, then linear decay to zero over the last third: at a constant lr the loss levels off
// at a floor set by the step size and the minibatch noise, for both optimizers.
double lr_scale(int step) {
  const int decay_start = 2 * k_steps / 3;
  return step < decay_start ? 1.0 : static_cast<double>(k_steps - step) / (k_steps - decay_start);
}

struct Setup {
  bool muon_for_matrices;  // false: every tensor goes to AdamW (the baseline, same code)
  double matrix_lr;        // Muon's lr (unused when muon_for_matrices is false)
  double fallback_lr;      // AdamW's lr
  bool verbose;
};

// Trains a fresh student (same init and same data in every call) and returns the held-out loss
// every k_print_every steps.
std::vector<float> train(Mlp& teacher, const Matrix& x_eval, const Matrix& y_eval, const Setup& setup) {
  std::mt19937 init_rng(1), data_rng(2);
  Mlp student({k_inputs, k_hidden, k_hidden, k_outputs}, init_rng, 1.0f);

  // Matrix path: Keller Jordan's settings (lr 0.02, Nesterov momentum 0.95, 5 Newton-Schulz
  // steps). The orthogonalised update has singular values near 1 whatever the gradient's scale,
  // so Muon's lr is not comparable to an Adam lr: the fallback group (biases here) is AdamW with
  // its own lr.
  muon::Muon<muon::backend::Eigen<float>> opt({
      .lr = setup.matrix_lr,
      .momentum = 0.95,
      .fallback = {.lr = setup.fallback_lr, .weight_decay = 0.0},
  });

  for (std::size_t i = 0; i < student.layers.size(); ++i) {
    Layer& l = student.layers[i];
    const std::string name = "layer" + std::to_string(i);
    // add() keeps pointers to the tensor and its gradient: both must stay where they are (same
    // object, same size) while the optimizer lives. No role on the weights: the router decides
    // by shape (rank 2, not too skinny -> matrix). In a language model, tag the embedding and
    // the output head (Role::embedding, Role::output_head) so that they go to AdamW, as Muon's
    // author advises.
    muon::ParamOptions weight_options{};
    if (!setup.muon_for_matrices) weight_options.path = muon::Path::fallback;
    opt.add(name + ".weight", l.w, l.dw, weight_options);
    opt.add(name + ".bias", l.b, l.db, {.role = muon::Role::bias});
  }

  if (setup.verbose) {
    std::cout << opt.routing_report() << "\n";
    std::cout << "optimizer memory: " << opt.memory_report() << "\n\n";
  }

  std::vector<float> losses;
  Matrix x(k_inputs, k_batch), y(k_outputs, k_batch);
  for (int step = 0; step <= k_steps; ++step) {
    if (step % k_print_every == 0) {
      losses.push_back(mse(student.forward(x_eval), y_eval));
      if (setup.verbose) std::printf("step %5d  loss %.6f\n", step, static_cast<double>(losses.back()));
    }
    if (step == k_steps) break;

    x = randn(k_inputs, k_batch, data_rng, 1.0f);
    y = teacher.forward(x);
    const Matrix& prediction = student.forward(x);
    student.backward(2.0f * (prediction - y) / static_cast<float>(prediction.size()));

    opt.set_lr(setup.matrix_lr * lr_scale(step));
    opt.set_fallback_lr(setup.fallback_lr * lr_scale(step));
    // A gradient holding NaN/Inf is not applied (NonFinitePolicy::skip_parameter, the default);
    // the step says which tensors it skipped.
    const muon::StepResult result = opt.step();
    if (!result.all_applied())
      std::printf("step %d: skipped %zu tensors with NaN/Inf gradients\n", step, result.skipped.size());
  }
  return losses;
}

}  // namespace

int main() {
  std::mt19937 teacher_rng(0), eval_rng(3);
  Mlp teacher({k_inputs, k_hidden, k_outputs}, teacher_rng, 2.0f);
  const Matrix x_eval = randn(k_inputs, 1024, eval_rng, 1.0f);
  const Matrix y_eval = teacher.forward(x_eval);

  std::printf("teacher-student regression: %d -> %d -> %d -> %d tanh MLP, batch %d, %d steps\n\n", k_inputs,
              k_hidden, k_hidden, k_outputs, k_batch, k_steps);
  const Setup muon_setup{.muon_for_matrices = true, .matrix_lr = 0.02, .fallback_lr = 3e-3, .verbose = true};
  // The baseline's lr, 2e-2, was the best of 5e-3, 1e-2, 2e-2, 3e-2 and 5e-2 on this problem.
  const Setup adamw_setup{.muon_for_matrices = false, .matrix_lr = 0.0, .fallback_lr = 2e-2, .verbose = false};
  const std::vector<float> muon_losses = train(teacher, x_eval, y_eval, muon_setup);
  const std::vector<float> adamw_losses = train(teacher, x_eval, y_eval, adamw_setup);

  const float first = muon_losses.front(), last = muon_losses.back();
  std::printf("\nbaseline, AdamW (lr 2e-2) for every tensor: loss %.6f -> %.6f\n",
              static_cast<double>(adamw_losses.front()), static_cast<double>(adamw_losses.back()));
  // The exit code makes this program a test: the loss must fall at least 10x (NaN fails too).
  const bool ok = last * 10.0f <= first;
  std::printf("%s: Muon + AdamW loss %.6f -> %.6f (%.0fx lower)\n", ok ? "PASS" : "FAIL", static_cast<double>(first),
              static_cast<double>(last), static_cast<double>(first / last));
  return ok ? 0 : 1;
}
