#pragma once
// A small decoder-only transformer written as plain Eigen matrices with hand-written backward
// passes, for the examples that train language models with the muon optimizers.
//
//   tokens -> tied embedding -> [RMSNorm -> causal multi-head attention with RoPE -> +residual,
//                                RMSNorm -> GELU MLP -> +residual] x layers
//          -> RMSNorm -> tied head (the embedding matrix again) -> softmax cross-entropy
//
// Layout. Parameters are stored as PyTorch stores them: a linear map is (out, in), the embedding
// (vocab, d_model), gains are vectors. Activations are (features, tokens): token n of a batch is
// column n = b * context + t, so every linear layer is one matrix product over the whole batch.
// The query and key projections are separate matrices (rows h * head_dim .. (h+1) * head_dim - 1
// belong to head h), which is what per-head QK-Clip needs.
//
// Everything is templated on the scalar so that the gradient check can run the same code in
// double while training runs in float. The model keeps the activations of its last forward pass
// for backward(); gradients are overwritten (not accumulated) by each backward(), in place, so
// an optimizer that holds pointers to the gradient buffers keeps seeing the right memory. The
// model must not move once its buffers are registered with an optimizer (copy and move are
// deleted for that reason).
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace muon_examples::layers {

// What a parameter is, so the trainer can tell the optimizer (muon::Role) without this header
// depending on the library.
enum class ParamKind { matrix, embedding, norm, query, key };

struct TransformerConfig {
  int vocab = 256;
  int d_model = 128;
  int layers = 2;
  int heads = 4;
  int context = 64;
  int mlp_ratio = 4;         // hidden width of the MLP = mlp_ratio * d_model
  double rope_base = 10000;  // RoPE's theta
  double norm_eps = 1e-5;    // RMSNorm's epsilon inside the root
  double init_std = 0.02;    // GPT-2's init; the residual output projections get init_std / sqrt(2 * layers)

  [[nodiscard]] int head_dim() const { return d_model / heads; }
  void validate() const {
    if (vocab < 2 || d_model < 2 || layers < 1 || heads < 1 || context < 1 || mlp_ratio < 1)
      throw std::invalid_argument("TransformerConfig: vocab, d_model, layers, heads, context and mlp_ratio must be positive");
    if (d_model % heads != 0 || head_dim() % 2 != 0)
      throw std::invalid_argument("TransformerConfig: d_model (" + std::to_string(d_model) + ") must split into " +
                                  std::to_string(heads) + " heads of even size (RoPE rotates pairs)");
  }
  // Number of trained scalars (the tied embedding counted once).
  [[nodiscard]] long parameter_count() const {
    const long d = d_model, h = static_cast<long>(mlp_ratio) * d_model;
    return static_cast<long>(vocab) * d + layers * (4 * d * d + 2 * h * d + 2 * d) + d;
  }
};

template <class T>
class Transformer {
 public:
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  using RowVec = Eigen::Matrix<T, 1, Eigen::Dynamic>;

  struct Block {
    Vec norm1, norm2;                // RMSNorm gains before attention and before the MLP
    Mat wq, wk, wv, wo;              // (d, d) each
    Mat w1, w2;                      // (hidden, d), (d, hidden)
  };

  // Weights drawn in double from `seed` and then rounded, so the float and double models built
  // from one seed start from the same point (up to rounding).
  Transformer(const TransformerConfig& config, std::uint64_t seed) : cfg_(config) {
    cfg_.validate();
    std::mt19937_64 rng(seed);
    const int d = cfg_.d_model, hidden = cfg_.mlp_ratio * cfg_.d_model;
    const double out_std = cfg_.init_std / std::sqrt(2.0 * cfg_.layers);
    embedding = normal(cfg_.vocab, d, cfg_.init_std, rng);
    d_embedding = Mat::Zero(cfg_.vocab, d);
    for (int l = 0; l < cfg_.layers; ++l) {
      Block b{Vec::Ones(d),
              Vec::Ones(d),
              normal(d, d, cfg_.init_std, rng),
              normal(d, d, cfg_.init_std, rng),
              normal(d, d, cfg_.init_std, rng),
              normal(d, d, out_std, rng),
              normal(hidden, d, cfg_.init_std, rng),
              normal(d, hidden, out_std, rng)};
      Block g{Vec::Zero(d),         Vec::Zero(d),         Mat::Zero(d, d),      Mat::Zero(d, d),
              Mat::Zero(d, d),      Mat::Zero(d, d),      Mat::Zero(hidden, d), Mat::Zero(d, hidden)};
      blocks.push_back(std::move(b));
      grads.push_back(std::move(g));
    }
    norm_f = Vec::Ones(d);
    d_norm_f = Vec::Zero(d);
    caches_.resize(static_cast<std::size_t>(cfg_.layers));
    max_logits_.assign(static_cast<std::size_t>(cfg_.layers), std::vector<T>(static_cast<std::size_t>(cfg_.heads), T(0)));

    // RoPE tables: pair (i, i + head_dim / 2) of every head turns by t * base^(-2i / head_dim).
    const int half = cfg_.head_dim() / 2;
    cos_.resize(half, cfg_.context);
    sin_.resize(half, cfg_.context);
    for (int t = 0; t < cfg_.context; ++t)
      for (int i = 0; i < half; ++i) {
        const double angle = t * std::pow(cfg_.rope_base, -2.0 * i / cfg_.head_dim());
        cos_(i, t) = static_cast<T>(std::cos(angle));
        sin_(i, t) = static_cast<T>(std::sin(angle));
      }
  }
  Transformer(const Transformer&) = delete;
  Transformer& operator=(const Transformer&) = delete;

  [[nodiscard]] const TransformerConfig& config() const { return cfg_; }

  // Calls f(name, value, grad, kind, heads) for every parameter, in a fixed order. Names follow
  // PyTorch's state_dict style; heads is nonzero for the query and key projections.
  template <class F>
  void visit(F&& f) {
    f(std::string("embedding.weight"), embedding, d_embedding, ParamKind::embedding, 0);
    for (int l = 0; l < cfg_.layers; ++l) {
      Block& b = blocks[static_cast<std::size_t>(l)];
      Block& g = grads[static_cast<std::size_t>(l)];
      std::string p = "blocks.";
      p += std::to_string(l);
      f(p + ".norm1.weight", b.norm1, g.norm1, ParamKind::norm, 0);
      f(p + ".attn.q.weight", b.wq, g.wq, ParamKind::query, cfg_.heads);
      f(p + ".attn.k.weight", b.wk, g.wk, ParamKind::key, cfg_.heads);
      f(p + ".attn.v.weight", b.wv, g.wv, ParamKind::matrix, 0);
      f(p + ".attn.o.weight", b.wo, g.wo, ParamKind::matrix, 0);
      f(p + ".norm2.weight", b.norm2, g.norm2, ParamKind::norm, 0);
      f(p + ".mlp.fc1.weight", b.w1, g.w1, ParamKind::matrix, 0);
      f(p + ".mlp.fc2.weight", b.w2, g.w2, ParamKind::matrix, 0);
    }
    f(std::string("norm_f.weight"), norm_f, d_norm_f, ParamKind::norm, 0);
  }

  // Mean cross-entropy (nats per token) of predicting targets[n] from inputs[0..n] within each
  // sequence. inputs and targets hold `batch` sequences of `context` tokens, one after another.
  // Keeps what backward() needs and each head's largest attention logit (max_logits()).
  T forward(const std::vector<int>& inputs, const std::vector<int>& targets, int batch) {
    const int d = cfg_.d_model, n_tokens = batch * cfg_.context;
    if (batch < 1 || static_cast<int>(inputs.size()) != n_tokens || static_cast<int>(targets.size()) != n_tokens)
      throw std::invalid_argument("Transformer::forward: inputs and targets must hold batch * context tokens");
    for (int n = 0; n < n_tokens; ++n)
      if (inputs[static_cast<std::size_t>(n)] < 0 || inputs[static_cast<std::size_t>(n)] >= cfg_.vocab ||
          targets[static_cast<std::size_t>(n)] < 0 || targets[static_cast<std::size_t>(n)] >= cfg_.vocab)
        throw std::invalid_argument("Transformer::forward: token out of the vocabulary");
    batch_ = batch;
    inputs_ = inputs;
    targets_ = targets;

    Mat x(d, n_tokens);
    for (int n = 0; n < n_tokens; ++n) x.col(n) = embedding.row(inputs[static_cast<std::size_t>(n)]).transpose();
    for (int l = 0; l < cfg_.layers; ++l) block_forward(l, x);
    rms_forward(x, norm_f, nf_, rf_, hf_);

    // Tied head: logits = E * h. Softmax probabilities kept for backward.
    probs_.noalias() = embedding * hf_;
    const RowVec col_max = probs_.colwise().maxCoeff();
    probs_.rowwise() -= col_max;
    double total = 0;
    // -log softmax(target) = log(sum exp(shifted)) - shifted(target), from the shifted logits so
    // that an underflowing probability cannot turn the loss into inf.
    for (int n = 0; n < n_tokens; ++n) total -= static_cast<double>(probs_(targets[static_cast<std::size_t>(n)], n));
    probs_ = probs_.array().exp().matrix();
    const RowVec sums = probs_.colwise().sum();
    for (int n = 0; n < n_tokens; ++n) total += std::log(static_cast<double>(sums(n)));
    probs_ = probs_ * sums.cwiseInverse().asDiagonal();
    return static_cast<T>(total / n_tokens);
  }

  // Gradients of the last forward()'s mean loss with respect to every parameter.
  void backward() {
    const int n_tokens = batch_ * cfg_.context;
    Mat dlogits = probs_;
    for (int n = 0; n < n_tokens; ++n) dlogits(targets_[static_cast<std::size_t>(n)], n) -= T(1);
    dlogits /= static_cast<T>(n_tokens);
    d_embedding.noalias() = dlogits * hf_.transpose();  // the head's use of E
    const Mat dh = embedding.transpose() * dlogits;
    Mat dx = rms_backward(dh, norm_f, nf_, rf_, d_norm_f);
    for (int l = cfg_.layers - 1; l >= 0; --l) dx = block_backward(l, dx);
    // The lookup's use of E: scatter-add each token's gradient into its row.
    for (int n = 0; n < n_tokens; ++n) d_embedding.row(inputs_[static_cast<std::size_t>(n)]) += dx.col(n).transpose();
  }

  // Largest pre-softmax attention logit (after the 1/sqrt(head_dim) scale) of each head in the
  // last forward pass, over the batch and every unmasked (query, key) pair: [layer][head].
  [[nodiscard]] const std::vector<std::vector<T>>& max_logits() const { return max_logits_; }

  // Softmax over the vocabulary of the last forward pass: (vocab, tokens), column n predicts
  // targets[n].
  [[nodiscard]] const Mat& probabilities() const { return probs_; }

  // Global L2 norm of the gradients of the last backward().
  [[nodiscard]] double grad_norm() {
    double sq = 0;
    visit([&](const std::string&, auto&, auto& g, ParamKind, int) { sq += static_cast<double>(g.squaredNorm()); });
    return std::sqrt(sq);
  }

  Mat embedding, d_embedding;
  std::vector<Block> blocks, grads;
  Vec norm_f, d_norm_f;

 private:
  struct Cache {
    Mat x_in, n1, h1, q, k, v, att, x_mid, n2, h2, u, g;
    Vec r1, r2;
    std::vector<Mat> probs;  // per (sequence, head): (keys, queries) softmax weights
  };

  static Mat normal(int rows, int cols, double stddev, std::mt19937_64& rng) {
    std::normal_distribution<double> dist(0.0, stddev);
    Mat m(rows, cols);
    for (int j = 0; j < cols; ++j)
      for (int i = 0; i < rows; ++i) m(i, j) = static_cast<T>(dist(rng));
    return m;
  }

  // y = gain * x / rms(x), rms over the features of each token (column).
  void rms_forward(const Mat& x, const Vec& gain, Mat& normed, Vec& rms, Mat& y) const {
    const T d = static_cast<T>(x.rows());
    rms = ((x.array().square().colwise().sum() / d) + static_cast<T>(cfg_.norm_eps)).sqrt().matrix().transpose();
    normed = x * rms.cwiseInverse().asDiagonal();
    y = gain.asDiagonal() * normed;
  }
  // With n = x / r: dgain = sum_tokens dy * n; dx = (dn - n * mean(dn * n)) / r, dn = gain * dy.
  Mat rms_backward(const Mat& dy, const Vec& gain, const Mat& normed, const Vec& rms, Vec& dgain) const {
    const T d = static_cast<T>(dy.rows());
    dgain = dy.cwiseProduct(normed).rowwise().sum();
    const Mat dn = gain.asDiagonal() * dy;
    const RowVec mean = dn.cwiseProduct(normed).colwise().sum() / d;
    return (dn - normed * mean.asDiagonal()) * rms.cwiseInverse().asDiagonal();
  }

  // Rotates each head's pairs (i, i + half) by the position's angle; sign -1 applies the inverse
  // (the transpose), which is what the backward pass needs.
  void rope(Mat& x, T sign) const {
    const int hd = cfg_.head_dim(), half = hd / 2, ctx = cfg_.context;
    for (int b = 0; b < batch_; ++b)
      for (int h = 0; h < cfg_.heads; ++h) {
        auto lo = x.block(h * hd, b * ctx, half, ctx);
        auto hi = x.block(h * hd + half, b * ctx, half, ctx);
        const Mat a = lo, c = hi;
        lo = a.cwiseProduct(cos_) - sign * c.cwiseProduct(sin_);
        hi = sign * a.cwiseProduct(sin_) + c.cwiseProduct(cos_);
      }
  }

  static T gelu(T u) { return T(0.5) * u * (T(1) + std::erf(u * T(0.70710678118654752440))); }
  static T gelu_grad(T u) {
    const T cdf = T(0.5) * (T(1) + std::erf(u * T(0.70710678118654752440)));
    return cdf + u * std::exp(T(-0.5) * u * u) * T(0.39894228040143267794);
  }

  void block_forward(int l, Mat& x) {
    const Block& w = blocks[static_cast<std::size_t>(l)];
    Cache& c = caches_[static_cast<std::size_t>(l)];
    const int hd = cfg_.head_dim(), ctx = cfg_.context, heads = cfg_.heads;
    const T scale = T(1) / std::sqrt(static_cast<T>(hd));
    c.x_in = x;
    rms_forward(c.x_in, w.norm1, c.n1, c.r1, c.h1);
    c.q.noalias() = w.wq * c.h1;
    c.k.noalias() = w.wk * c.h1;
    c.v.noalias() = w.wv * c.h1;
    rope(c.q, T(1));
    rope(c.k, T(1));

    c.att.resize(cfg_.d_model, x.cols());
    c.probs.resize(static_cast<std::size_t>(batch_ * heads));
    std::vector<T>& top = max_logits_[static_cast<std::size_t>(l)];
    std::fill(top.begin(), top.end(), -std::numeric_limits<T>::infinity());
    for (int b = 0; b < batch_; ++b)
      for (int h = 0; h < heads; ++h) {
        Mat& a = c.probs[static_cast<std::size_t>(b * heads + h)];
        // scores(i, j) = k_i . q_j * scale: column j is query j; keys after it are masked.
        a.noalias() = c.k.block(h * hd, b * ctx, hd, ctx).transpose() * c.q.block(h * hd, b * ctx, hd, ctx);
        a *= scale;
        a.template triangularView<Eigen::StrictlyLower>().setConstant(-std::numeric_limits<T>::infinity());
        top[static_cast<std::size_t>(h)] = std::max(top[static_cast<std::size_t>(h)], a.maxCoeff());
        const RowVec col_max = a.colwise().maxCoeff();
        a.rowwise() -= col_max;
        a = a.array().exp().matrix();  // exp(-inf) = 0 for the masked keys
        const RowVec sums = a.colwise().sum();
        a = a * sums.cwiseInverse().asDiagonal();
        c.att.block(h * hd, b * ctx, hd, ctx).noalias() = c.v.block(h * hd, b * ctx, hd, ctx) * a;
      }

    c.x_mid = c.x_in;
    c.x_mid.noalias() += w.wo * c.att;
    rms_forward(c.x_mid, w.norm2, c.n2, c.r2, c.h2);
    c.u.noalias() = w.w1 * c.h2;
    c.g = c.u.unaryExpr([](T v) { return gelu(v); });
    x = c.x_mid;
    x.noalias() += w.w2 * c.g;
  }

  // dx: gradient at the block's output; returns the gradient at its input.
  Mat block_backward(int l, const Mat& dx) {
    const Block& w = blocks[static_cast<std::size_t>(l)];
    Block& gw = grads[static_cast<std::size_t>(l)];
    Cache& c = caches_[static_cast<std::size_t>(l)];
    const int hd = cfg_.head_dim(), ctx = cfg_.context, heads = cfg_.heads;
    const T scale = T(1) / std::sqrt(static_cast<T>(hd));

    // MLP: x = x_mid + W2 gelu(W1 h2)
    gw.w2.noalias() = dx * c.g.transpose();
    Mat du = w.w2.transpose() * dx;
    du.array() *= c.u.array().unaryExpr([](T v) { return gelu_grad(v); });
    gw.w1.noalias() = du * c.h2.transpose();
    const Mat dh2 = w.w1.transpose() * du;
    const Mat dx_mid = dx + rms_backward(dh2, w.norm2, c.n2, c.r2, gw.norm2);

    // Attention: x_mid = x_in + Wo att
    gw.wo.noalias() = dx_mid * c.att.transpose();
    const Mat datt = w.wo.transpose() * dx_mid;
    Mat dq(c.q.rows(), c.q.cols()), dk(c.k.rows(), c.k.cols()), dv(c.v.rows(), c.v.cols());
    for (int b = 0; b < batch_; ++b)
      for (int h = 0; h < heads; ++h) {
        const Mat& a = c.probs[static_cast<std::size_t>(b * heads + h)];
        const auto dout = datt.block(h * hd, b * ctx, hd, ctx);
        dv.block(h * hd, b * ctx, hd, ctx).noalias() = dout * a.transpose();
        Mat da = c.v.block(h * hd, b * ctx, hd, ctx).transpose() * dout;
        // Softmax over each column: ds = a * (da - sum(a * da)); masked entries have a = 0.
        const RowVec dot = a.cwiseProduct(da).colwise().sum();
        da.rowwise() -= dot;
        const Mat ds = a.cwiseProduct(da) * scale;
        dq.block(h * hd, b * ctx, hd, ctx).noalias() = c.k.block(h * hd, b * ctx, hd, ctx) * ds;
        dk.block(h * hd, b * ctx, hd, ctx).noalias() = c.q.block(h * hd, b * ctx, hd, ctx) * ds.transpose();
      }
    rope(dq, T(-1));
    rope(dk, T(-1));
    gw.wq.noalias() = dq * c.h1.transpose();
    gw.wk.noalias() = dk * c.h1.transpose();
    gw.wv.noalias() = dv * c.h1.transpose();
    Mat dh1 = w.wq.transpose() * dq;
    dh1.noalias() += w.wk.transpose() * dk;
    dh1.noalias() += w.wv.transpose() * dv;
    return dx_mid + rms_backward(dh1, w.norm1, c.n1, c.r1, gw.norm1);
  }

  TransformerConfig cfg_;
  std::vector<Cache> caches_;
  std::vector<std::vector<T>> max_logits_;
  Mat cos_, sin_;
  int batch_ = 0;
  std::vector<int> inputs_, targets_;
  Mat nf_, hf_, probs_;
  Vec rf_;
};

}  // namespace muon_examples::layers
