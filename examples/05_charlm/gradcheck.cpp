// Gradient check of the character language model's hand-written backward pass
// (examples/common/layers.hpp): every parameter's gradient against central finite differences
// of the loss, in double, on a tiny model. Also checks that the model is causal (a prediction
// never depends on later tokens) and that float and double agree on the loss.
//
// Exit code 0 when every check passes, 1 otherwise (the CTest test example_charlm_gradcheck).
#include "../common/layers.hpp"

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

namespace {

using muon_examples::layers::ParamKind;
using muon_examples::layers::Transformer;
using muon_examples::layers::TransformerConfig;

// Small enough that every element can be perturbed (about 1.2k scalars, two forward passes
// each), big enough for two layers, two heads with two RoPE pairs each, and an MLP.
TransformerConfig tiny_config() {
  TransformerConfig c;
  c.vocab = 11;
  c.d_model = 8;
  c.layers = 2;
  c.heads = 2;
  c.context = 5;
  c.mlp_ratio = 2;
  // A large init makes every layer nonlinear (softmax far from uniform, GELU off its linear
  // part), so a wrong backward term cannot hide behind a near-zero activation.
  c.init_std = 0.5;
  return c;
}

std::vector<int> random_tokens(int n, int vocab, std::mt19937& rng) {
  std::uniform_int_distribution<int> pick(0, vocab - 1);
  std::vector<int> t(static_cast<std::size_t>(n));
  for (int& v : t) v = pick(rng);
  return t;
}

// Gains away from 1 so that their gradients and their effect on the backward pass are tested.
template <class T>
void randomize_gains(Transformer<T>& model, std::uint64_t seed) {
  std::mt19937 rng(static_cast<unsigned>(seed));
  std::uniform_real_distribution<double> u(0.5, 1.5);
  model.visit([&](const std::string&, auto& value, auto&, ParamKind kind, int) {
    if (kind != ParamKind::norm) return;
    for (Eigen::Index i = 0; i < value.size(); ++i) value(i) = static_cast<T>(u(rng));
  });
}

}  // namespace

int main() {
  const TransformerConfig cfg = tiny_config();
  const int batch = 2, n = batch * cfg.context;
  std::mt19937 rng(7);
  const std::vector<int> inputs = random_tokens(n, cfg.vocab, rng), targets = random_tokens(n, cfg.vocab, rng);

  Transformer<double> model(cfg, 3);
  randomize_gains(model, 5);
  model.forward(inputs, targets, batch);
  model.backward();

  // Central differences: error O(h^2) from the third derivative plus O(1e-16 / h) rounding;
  // h = 1e-5 puts both near 1e-10, far below the tolerance, while a wrong term in a backward pass
  // shows up at the size of the gradient itself.
  const double h = 1e-5, tolerance = 1e-6;
  bool ok = true;
  int tensors = 0;
  long checked = 0;
  std::printf("%-24s %8s %12s %12s\n", "parameter", "elements", "max |grad|", "max rel err");
  model.visit([&](const std::string& name, auto& value, auto& grad, ParamKind, int) {
    using M = std::remove_reference_t<decltype(grad)>;
    const M analytic = grad;  // backward() below overwrites nothing, but keep a copy anyway
    double max_grad = 0, max_err = 0;
    for (Eigen::Index i = 0; i < value.size(); ++i) {
      const double saved = value(i);
      value(i) = saved + h;
      const double up = model.forward(inputs, targets, batch);
      value(i) = saved - h;
      const double down = model.forward(inputs, targets, batch);
      value(i) = saved;
      const double numeric = (up - down) / (2 * h);
      max_grad = std::max(max_grad, std::abs(analytic(i)));
      max_err = std::max(max_err, std::abs(numeric - analytic(i)));
      ++checked;
    }
    // Relative to the tensor's largest gradient: elements with tiny gradients are judged on the
    // scale of their tensor, not on their own (where rounding dominates).
    const double rel = max_err / std::max(max_grad, 1e-12);
    const bool pass = max_grad > 1e-8 && rel < tolerance;
    ok = ok && pass;
    ++tensors;
    std::printf("%-24s %8ld %12.3e %12.3e%s\n", name.c_str(), static_cast<long>(value.size()), max_grad, rel,
                pass ? "" : (max_grad > 1e-8 ? "  <- FAIL" : "  <- FAIL (zero gradient)"));
  });
  std::printf("gradient check: %d tensors, %ld scalars, tolerance %.0e: %s\n", tensors, checked, tolerance,
              ok ? "PASS" : "FAIL");

  // Causality: changing the last token of each sequence must leave every earlier prediction
  // exactly as it was (the mask is the only thing that guarantees it).
  model.forward(inputs, targets, batch);
  const Eigen::MatrixXd before = model.probabilities();
  std::vector<int> changed = inputs;
  for (int b = 0; b < batch; ++b) {
    int& last = changed[static_cast<std::size_t>(b * cfg.context + cfg.context - 1)];
    last = (last + 1) % cfg.vocab;
  }
  model.forward(changed, targets, batch);
  const Eigen::MatrixXd after = model.probabilities();
  bool causal = true, last_moved = true;
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t + 1 < cfg.context; ++t) causal = causal && before.col(b * cfg.context + t) == after.col(b * cfg.context + t);
    const int last = b * cfg.context + cfg.context - 1;
    last_moved = last_moved && (before.col(last) - after.col(last)).norm() > 1e-9;
  }
  std::printf("causality: earlier predictions %s, last prediction %s: %s\n", causal ? "unchanged" : "CHANGED",
              last_moved ? "changed" : "UNCHANGED", causal && last_moved ? "PASS" : "FAIL");
  ok = ok && causal && last_moved;

  // The float instantiation (what training uses) computes the same function.
  Transformer<float> model_f(cfg, 3);
  randomize_gains(model_f, 5);
  const double loss_d = model.forward(inputs, targets, batch);
  const double loss_f = model_f.forward(inputs, targets, batch);
  const bool same = std::abs(loss_d - loss_f) < 1e-4 * std::abs(loss_d);
  std::printf("float vs double loss: %.7f vs %.7f: %s\n", loss_f, loss_d, same ? "PASS" : "FAIL");
  ok = ok && same;
  std::printf("%s\n", ok ? "PASS" : "FAIL");
  return ok ? 0 : 1;
}
