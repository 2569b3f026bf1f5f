// The quickstart problem (examples/01_quickstart) with xtensor containers: a wider "student" MLP
// learns to imitate a fixed random "teacher" from fresh random inputs at every step, trained by
// Muon (hidden matrices) and AdamW (biases) on the xtensor backend. Weights, gradients and
// activations are xt::xtensor; forward and backward use xtensor-blas's dot. The muon-specific
// lines are the same as with Eigen: the options, opt.add(name, tensor, grad) and opt.step().
#include <muon/backend/xtensor.hpp>
#include <muon/muon.hpp>

#include <xtensor/xnoalias.hpp>

#include <cmath>
#include <cstdio>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

namespace {

using Matrix = xt::xtensor<float, 2>;
using Vector = xt::xtensor<float, 1>;

Matrix randn(std::size_t rows, std::size_t cols, std::mt19937& rng, float stddev) {
  std::normal_distribution<float> normal(0.0f, stddev);
  Matrix m = xt::empty<float>({rows, cols});
  for (auto& x : m) x = normal(rng);
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

  Mlp(std::initializer_list<std::size_t> widths, std::mt19937& rng, float gain) {
    const std::vector<std::size_t> w(widths);
    for (std::size_t i = 0; i + 1 < w.size(); ++i) {
      const float scale = gain / std::sqrt(static_cast<float>(w[i]));
      Matrix weight = randn(w[i + 1], w[i], rng, scale);
      Vector bias = xt::flatten(randn(w[i + 1], 1, rng, scale));
      layers.push_back({weight, xt::zeros<float>({w[i + 1], w[i]}), bias, xt::zeros<float>({w[i + 1]})});
    }
    acts.resize(layers.size() + 1);
  }

  const Matrix& forward(const Matrix& x) {
    acts[0] = x;
    for (std::size_t i = 0; i < layers.size(); ++i) {
      acts[i + 1] = xt::linalg::dot(layers[i].w, acts[i]) + xt::view(layers[i].b, xt::all(), xt::newaxis());
      if (i + 1 < layers.size()) acts[i + 1] = xt::tanh(acts[i + 1]);
    }
    return acts.back();
  }

  // Writes every dw and db from delta = dLoss/d(output). The optimizer keeps pointers to these
  // buffers, so they are written in place (xt::noalias, same shape), never replaced.
  void backward(Matrix delta) {
    for (std::size_t i = layers.size(); i-- > 0;) {
      xt::noalias(layers[i].dw) = xt::linalg::dot(delta, xt::transpose(acts[i]));
      xt::noalias(layers[i].db) = xt::sum(delta, {1});
      if (i == 0) break;
      const Matrix upstream = xt::linalg::dot(xt::transpose(layers[i].w), delta);
      delta = upstream * (1.0f - xt::square(acts[i]));
    }
  }
};

float mse(const Matrix& prediction, const Matrix& target) {
  return xt::mean(xt::square(prediction - target))();
}

constexpr std::size_t k_inputs = 32, k_hidden = 64, k_outputs = 8, k_batch = 128;
constexpr int k_steps = 1500, k_print_every = 100;

// Constant, then linear decay to zero over the last third (as in the quickstart).
double lr_scale(int step) {
  const int decay_start = 2 * k_steps / 3;
  return step < decay_start ? 1.0 : static_cast<double>(k_steps - step) / (k_steps - decay_start);
}

}  // namespace

int main() {
  std::mt19937 teacher_rng(0), eval_rng(3), init_rng(1), data_rng(2);
  Mlp teacher({k_inputs, k_hidden, k_outputs}, teacher_rng, 2.0f);
  const Matrix x_eval = randn(k_inputs, 1024, eval_rng, 1.0f);
  const Matrix y_eval = teacher.forward(x_eval);
  Mlp student({k_inputs, k_hidden, k_hidden, k_outputs}, init_rng, 1.0f);

  // Keller Jordan's settings for the matrices; AdamW with its own lr for the biases.
  constexpr double matrix_lr = 0.02, fallback_lr = 3e-3;
  muon::Muon<muon::backend::Xtensor<float>> opt({
      .lr = matrix_lr,
      .momentum = 0.95,
      .fallback = {.lr = fallback_lr, .weight_decay = 0.0},
  });
  for (std::size_t i = 0; i < student.layers.size(); ++i) {
    Layer& l = student.layers[i];
    const std::string name = "layer" + std::to_string(i);
    opt.add(name + ".weight", l.w, l.dw);
    opt.add(name + ".bias", l.b, l.db, {.role = muon::Role::bias});
  }
  std::printf("teacher-student regression on xtensor containers, products on %s\n",
              muon::backend::cpu::to_string(muon::backend::Xtensor<float>::product_library));
  std::printf("%s\n", opt.routing_report().to_string().c_str());

  float first = 0, last = 0;
  for (int step = 0; step <= k_steps; ++step) {
    if (step % k_print_every == 0) {
      last = mse(student.forward(x_eval), y_eval);
      if (step == 0) first = last;
      std::printf("step %5d  loss %.6f\n", step, static_cast<double>(last));
    }
    if (step == k_steps) break;
    const Matrix x = randn(k_inputs, k_batch, data_rng, 1.0f);
    const Matrix y = teacher.forward(x);
    const Matrix& prediction = student.forward(x);
    student.backward(2.0f * (prediction - y) / static_cast<float>(prediction.size()));
    opt.set_lr(matrix_lr * lr_scale(step));
    opt.set_fallback_lr(fallback_lr * lr_scale(step));
    if (!opt.step().all_applied()) std::printf("step %d: skipped tensors with NaN/Inf gradients\n", step);
  }
  // The exit code makes this program a test: the loss must fall at least 10x (NaN fails too).
  const bool ok = last * 10.0f <= first;
  std::printf("%s: Muon + AdamW on xtensor, loss %.6f -> %.6f (%.0fx lower)\n", ok ? "PASS" : "FAIL",
              static_cast<double>(first), static_cast<double>(last), static_cast<double>(first / last));
  return ok ? 0 : 1;
}
