#pragma once
// Lion (EvoLved Sign Momentum), as lucidrains/lion-pytorch `update_fn`:
//   p <- p (1 - lr wd)
//   p <- p - lr sign(beta1 m + (1 - beta1) g)          sign(0) = 0; uses m from before this step
//   m <- beta2 m + (1 - beta2) g
// Every element moves by exactly lr (plus the decay) whatever the gradient's magnitude, so Lion
// wants a smaller lr (3-10x) and a larger weight decay than AdamW. Defaults are lion-pytorch's:
// lr 1e-4, betas (0.9, 0.99), weight_decay 0.
// The momentum is kept in value_type, in bf16 or 8-bit block-wise (Options::state;
// core/state_format.hpp): then one pass reads it, moves the parameter and stores the new
// momentum in its format.
// Chen et al., "Symbolic Discovery of Optimization Algorithms" (arXiv:2302.06675);
// github.com/lucidrains/lion-pytorch (lion_pytorch/lion_pytorch.py).
#include <cstdint>
#include <string>

#include "muon/backend/concept.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/param.hpp"
#include "muon/core/state_format.hpp"
#include "muon/core/validate.hpp"

namespace muon::policy {

class Lion {
 public:
  struct Options {
    double lr = 1e-4;
    double beta1 = 0.9;
    double beta2 = 0.99;
    double weight_decay = 0.0;
    StateStorage state{};  // exp_avg: full (value_type), bf16 or q8
  };

  template <class B>
  struct State {
    StateBuffer<B> exp_avg;
    std::uint64_t step = 0;
    std::string name;  // the tensor's, for stochastic rounding's streams (not saved)
    template <class V>
    void visit(V&& v) {
      v("exp_avg", exp_avg);
      v("step", step);
    }
  };

  Lion() : Lion(Options{}) {}
  explicit Lion(const Options& options) : options_(options) {
    detail::require_non_negative("Lion", "lr", options_.lr);
    detail::require_unit_interval("Lion", "beta1", options_.beta1);
    detail::require_unit_interval("Lion", "beta2", options_.beta2);
    detail::require_non_negative("Lion", "weight_decay", options_.weight_decay);
    detail::require_state_storage("Lion", "state", options_.state, true);
  }

  [[nodiscard]] const Options& options() const { return options_; }
  [[nodiscard]] double lr() const { return options_.lr; }
  void set_lr(double lr) {
    detail::require_non_negative("Lion", "lr", lr);
    options_.lr = lr;
  }

  template <class B>
  [[nodiscard]] State<B> make_state(B& b, const ParamInfo& info) {
    return {StateBuffer<B>(b, static_cast<std::size_t>(info.shape.numel()), options_.state), 0, info.name};
  }

  template <class B>
  void apply(B& b, State<B>& s, backend::MatrixView<typename B::value_type> w,
             backend::MatrixView<const typename B::value_type> g) {
    apply(b, s, w, g, FallbackRates{options_.lr, options_.weight_decay});
  }
  // The same with another lr and weight decay (a parameter group's), the other options as set.
  template <class B>
  void apply(B& b, State<B>& s, backend::MatrixView<typename B::value_type> w,
             backend::MatrixView<const typename B::value_type> g, const FallbackRates& rates) {
    using T = typename B::value_type;
    const Update<T> update{fn::saturate_cast<T>(1.0 - rates.lr * rates.weight_decay), fn::saturate_cast<T>(rates.lr),
                           static_cast<T>(options_.beta1), static_cast<T>(1.0 - options_.beta1)};
    const Ema<T> ema{static_cast<T>(options_.beta2), static_cast<T>(1.0 - options_.beta2)};
    const auto wf = w.flat();
    const auto gf = g.flat();
    if (s.exp_avg.format() != StateFormat::full) {
      detail::with_rounding(options_.state.rounding, [&](auto stochastic_tag) {
        constexpr bool stochastic = decltype(stochastic_tag)::value;
        const std::uint64_t stream = stochastic ? detail::rounding_stream(s.name, "exp_avg", s.step + 1) : 0;
        if (s.exp_avg.format() == StateFormat::q8) {  // one call: a block per index (scales as the output)
          const backend::MatrixView<T> scales{s.exp_avg.scales(), 1, 1, static_cast<index_t>(s.exp_avg.blocks())};
          b.transform_indexed(scales,
                              UpdateQ8<T, stochastic>{w.data, g.data, reinterpret_cast<std::int8_t*>(s.exp_avg.codes()),
                                                      w.size(), static_cast<index_t>(s.exp_avg.block()), update, ema,
                                                      stream},
                              backend::MatrixView<const T>(scales));
        } else {
          b.transform_indexed(wf, UpdateBf16<T, stochastic>{s.exp_avg.bits(), update, ema, stream},
                              backend::MatrixView<const T>(wf), gf);
        }
      });
      s.step += 1;
      return;
    }
    backend::MatrixView<T> m{s.exp_avg.data(), 1, 1, w.size()};
    // Two passes, each writing one tensor once: the parameter first, because its sign needs the
    // momentum from before this step; then the momentum. (One pass would need a transform with
    // two outputs, which the backend concept does not have.)
    b.transform(wf, update, wf, m, gf);
    b.transform(m, ema, m, gf);
    s.step += 1;
  }

 public:
  // Elementwise functors are public: nvcc cannot instantiate a kernel on a private nested type.
  // -1, 0 or +1. Comparisons rather than copysign so that +-0 gives 0, and a finite or infinite
  // x never gives NaN. A NaN x gives 0 (torch.sign would give NaN); in the step path x is never
  // NaN: the optimizer skips non-finite gradients before the fallback runs, and x and m are
  // convex combinations of finite values, |x| <= max(|m|, |g|). Rounded, they stay finite too
  // (checked for every float beta with |m| = |g| = FLT_MAX, with and without FMA contraction).
  template <class T>
  MUON_HOST_DEVICE static T sign(T x) {
    return static_cast<T>(T(0) < x) - static_cast<T>(x < T(0));
  }
  // p <- p (1 - lr wd) - lr sign(beta1 m + (1 - beta1) g), lion-pytorch's
  // p.mul_(1 - lr wd); p.add_(sign(m.mul(beta1).add(g, alpha=1 - beta1)), alpha=-lr).
  template <class T>
  struct Update {
    T decay, lr, beta1, one_minus_beta1;
    T max = fn::k_largest<T>;
    MUON_HOST_DEVICE T operator()(T p, T m, T g) const {
      return fn::saturate(p * decay - lr * sign(beta1 * m + one_minus_beta1 * g), max);
    }
  };
  // m <- beta2 m + (1 - beta2) g, lion-pytorch's m.mul_(beta2).add_(g, alpha=1 - beta2).
  template <class T>
  struct Ema {
    T beta, one_minus_beta;
    MUON_HOST_DEVICE T operator()(T m, T g) const { return beta * m + one_minus_beta * g; }
  };

  // The momentum in q8, one block per call (index: the block; value: its old scale; result: the
  // new one). The parameter moves with the stored momentum from before this step; the new
  // momentum's block maximum is found first, then its codes are stored. Stochastic rounding is
  // a template argument, so that the nearest-even loops carry no hashing.
  template <class T, bool Stochastic>
  struct UpdateQ8 {
    T* p;
    const T* g;
    std::int8_t* m;
    index_t n, block;
    Update<T> update;
    Ema<T> ema;
    std::uint64_t stream;
    MUON_HOST_DEVICE T operator()(index_t s, T scale) const {
      // Fields in locals: a store through a byte pointer may alias this functor, so a compiler
      // would reload every field after every code it stores, and not vectorize the loop.
      T* const param = p;
      const T* const grad = g;
      std::int8_t* const codes = m;
      const Update<T> step = update;
      const Ema<T> next = ema;
      const std::uint64_t sm = stream;
      const index_t lo = s * block, hi = lo + block < n ? lo + block : n;
      detail::magnitude_bits_t<T> top = 0;
      for (index_t i = lo; i < hi; ++i) {
        const auto bits = detail::magnitude_bits(next(detail::q8_decode_signed(codes[i], scale), grad[i]));
        top = bits > top ? bits : top;
      }
      const T next_max = detail::from_magnitude_bits<T>(top);
      MUON_INDEPENDENT_ITERATIONS
      for (index_t i = lo; i < hi; ++i) {
        const T old = detail::q8_decode_signed(codes[i], scale);
        param[i] = step(param[i], old, grad[i]);
        codes[i] = detail::q8_encode_signed(next(old, grad[i]), next_max, Stochastic, sm, static_cast<std::uint64_t>(i));
      }
      return next_max;
    }
  };
  // The momentum in bf16: the parameter moves with the stored momentum from before this step,
  // then the new momentum is stored rounded (both in one pass).
  template <class T, bool Stochastic>
  struct UpdateBf16 {
    std::uint16_t* m;
    Update<T> update;
    Ema<T> ema;
    std::uint64_t stream;
    MUON_HOST_DEVICE T operator()(index_t k, T p, T g) const {
      const T old = static_cast<T>(detail::bf16_to_float(m[k]));
      m[k] = detail::encode_state_bf16(ema(old, g), Stochastic, stream, static_cast<std::uint64_t>(k));
      return update(p, old, g);
    }
  };

 private:
  Options options_;
};

}  // namespace muon::policy
