#pragma once
// AdamW, exactly torch.optim.AdamW (amsgrad = False, maximize = False):
//   p <- p (1 - lr wd)
//   m <- beta1 m + (1 - beta1) g ;  v <- beta2 v + (1 - beta2) g^2
//   p <- p - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// with t counted per parameter from 1 (a skipped step does not advance it). Defaults are
// torch's: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0.01.
// The moments are kept in value_type, in bf16 or 8-bit block-wise (Options::state;
// core/state_format.hpp): then one pass reads both, updates them in value_type, stores them in
// their format and applies the update, with the stored values (bf16, as torch's AdamW does with
// bf16 state tensors) or the values before quantization (q8, as bitsandbytes' AdamW8bit does).
// Loshchilov & Hutter, "Decoupled Weight Decay Regularization" (ICLR 2019).
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>

#include "muon/backend/concept.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/param.hpp"
#include "muon/core/state_format.hpp"
#include "muon/core/validate.hpp"

namespace muon::policy {

class AdamW {
 public:
  struct Options {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.01;
    StateStorage state{};  // exp_avg and exp_avg_sq: full (value_type), bf16 or q8
  };

  template <class B>
  struct State {
    StateBuffer<B> exp_avg;
    StateBuffer<B> exp_avg_sq;
    std::uint64_t step = 0;
    std::string name;  // the tensor's, for stochastic rounding's streams (not saved)
    template <class V>
    void visit(V&& v) {
      v("exp_avg", exp_avg);
      v("exp_avg_sq", exp_avg_sq);
      v("step", step);
    }
  };

  AdamW() : AdamW(Options{}) {}
  explicit AdamW(const Options& options) : options_(options) {
    detail::require_non_negative("AdamW", "lr", options_.lr);
    detail::require_unit_interval("AdamW", "beta1", options_.beta1);
    detail::require_unit_interval("AdamW", "beta2", options_.beta2);
    detail::require_positive("AdamW", "eps", options_.eps);
    detail::require_non_negative("AdamW", "weight_decay", options_.weight_decay);
    detail::require_state_storage("AdamW", "state", options_.state, true);
  }

  [[nodiscard]] const Options& options() const { return options_; }
  [[nodiscard]] double lr() const { return options_.lr; }
  void set_lr(double lr) {
    detail::require_non_negative("AdamW", "lr", lr);
    options_.lr = lr;
  }

  // What load() accepts: no negative second moment (its root is taken).
  [[nodiscard]] static detail::StateLimits limits(std::string_view key) { return {.non_negative = key == "exp_avg_sq"}; }

  template <class B>
  [[nodiscard]] State<B> make_state(B& b, const ParamInfo& info) {
    const auto n = static_cast<std::size_t>(info.shape.numel());
    return {StateBuffer<B>(b, n, options_.state), StateBuffer<B>(b, n, options_.state, true), 0, info.name};
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
    const std::uint64_t t = s.step + 1;
    const double bias1 = 1.0 - std::pow(options_.beta1, static_cast<double>(t));
    const double bias2 = 1.0 - std::pow(options_.beta2, static_cast<double>(t));
    const T beta2 = static_cast<T>(options_.beta2);
    const Update<T> update{fn::saturate_cast<T>(1.0 - rates.lr * rates.weight_decay), fn::saturate_cast<T>(rates.lr / bias1),
                           static_cast<T>(std::sqrt(bias2)), static_cast<T>(options_.eps)};
    const T one_minus_beta1 = static_cast<T>(1.0 - options_.beta1);
    const EmaSquare<T> ema_square{beta2, static_cast<T>(1.0 - options_.beta2)};
    if (s.exp_avg.format() != StateFormat::full) {
      detail::with_rounding(options_.state.rounding, [&](auto stochastic_tag) {
        constexpr bool stochastic = decltype(stochastic_tag)::value;
        const std::uint64_t stream_m = stochastic ? detail::rounding_stream(s.name, "exp_avg", t) : 0;
        const std::uint64_t stream_v = stochastic ? detail::rounding_stream(s.name, "exp_avg_sq", t) : 0;
        if (s.exp_avg.format() == StateFormat::q8) {  // one call: a block per index (scales as the output)
          const backend::MatrixView<T> scales{s.exp_avg.scales(), 1, 1, static_cast<index_t>(s.exp_avg.blocks())};
          b.transform_indexed(scales,
                              UpdateQ8<T, stochastic>{w.data, g.data, reinterpret_cast<std::int8_t*>(s.exp_avg.codes()),
                                                      s.exp_avg_sq.codes(), s.exp_avg_sq.scales(), w.size(),
                                                      static_cast<index_t>(s.exp_avg.block()), one_minus_beta1,
                                                      ema_square, update, stream_m, stream_v},
                              backend::MatrixView<const T>(scales));
        } else {
          b.transform_indexed(w.flat(),
                              UpdateBf16<T, stochastic>{s.exp_avg.bits(), s.exp_avg_sq.bits(), one_minus_beta1,
                                                        ema_square, update, stream_m, stream_v},
                              backend::MatrixView<const T>(w.flat()), g.flat());
        }
      });
      s.step = t;
      return;
    }
    backend::MatrixView<T> m{s.exp_avg.data(), 1, 1, w.size()};
    backend::MatrixView<T> v{s.exp_avg_sq.data(), 1, 1, w.size()};
    const auto wf = w.flat();
    const auto gf = g.flat();
    // Same operation order as torch's single-tensor AdamW (m.lerp_, v.mul_.addcmul_, addcdiv_).
    b.transform(m, fn::Lerp<T>{one_minus_beta1}, m, gf);
    b.transform(v, ema_square, v, gf);
    b.transform(wf, update, wf, m, v);
    s.step = t;
  }

 public:
  // Elementwise functors are public: nvcc cannot instantiate a kernel on a private nested type.
  // v <- beta v + (1 - beta) g g, torch's v.mul_(beta2).addcmul_(g, g, value=1 - beta2),
  // saturated: g g overflows for |g| > 1.8e19 in float, and an Inf v would freeze the tensor.
  template <class T>
  struct EmaSquare {
    T beta, one_minus_beta;
    T max = fn::k_largest<T>;
    MUON_HOST_DEVICE T operator()(T v, T g) const { return fn::saturate(beta * v + one_minus_beta * g * g, max); }
  };
  // p <- p (1 - lr wd) - step_size m / (sqrt(v) / sqrt(bias2) + eps)
  template <class T>
  struct Update {
    T decay, step_size, bias2_sqrt, eps;
    T max = fn::k_largest<T>;
    MUON_HOST_DEVICE T operator()(T p, T m, T v) const {
      return fn::saturate(p * decay - step_size * (m / (std::sqrt(v) / bias2_sqrt + eps)), max);
    }
  };

  // Both moments in q8, one block per call (the index is the block, the value its old exp_avg
  // scale, the result its new one): the first loop finds the new moments' block maxima, the
  // second recomputes them (from the codes not yet overwritten), stores their codes and applies
  // the update with the new moments as computed, before quantization (as bitsandbytes' 8-bit
  // optimizers do; bf16 state applies the stored values, as torch does with bf16 state
  // tensors). Stochastic rounding is a template argument, so that the nearest-even loops carry
  // no hashing.
  template <class T, bool Stochastic>
  struct UpdateQ8 {
    T* p;
    const T* g;
    std::int8_t* m;
    std::uint8_t* v;
    T* v_scales;
    index_t n, block;
    T one_minus_beta1;
    EmaSquare<T> ema_square;
    Update<T> update;
    std::uint64_t stream_m, stream_v;
    MUON_HOST_DEVICE T operator()(index_t s, T m_scale) const {
      // Fields in locals: a store through a byte pointer may alias this functor, so a compiler
      // would reload every field after every code it stores, and not vectorize the loop.
      T* const param = p;
      const T* const grad = g;
      std::int8_t* const m_codes = m;
      std::uint8_t* const v_codes = v;
      const fn::Lerp<T> ema_m{one_minus_beta1};
      const EmaSquare<T> ema_v = ema_square;
      const Update<T> step = update;
      const std::uint64_t sm = stream_m, sv = stream_v;
      const index_t lo = s * block, hi = lo + block < n ? lo + block : n;
      const T v_scale = v_scales[s];
      detail::magnitude_bits_t<T> m_top = 0, v_top = 0;
      for (index_t i = lo; i < hi; ++i) {
        const auto mb = detail::magnitude_bits(ema_m(detail::q8_decode_signed(m_codes[i], m_scale), grad[i]));
        const auto vb = detail::magnitude_bits(ema_v(detail::q8_decode_unsigned(v_codes[i], v_scale), grad[i]));
        m_top = mb > m_top ? mb : m_top;
        v_top = vb > v_top ? vb : v_top;
      }
      const T m_max = detail::from_magnitude_bits<T>(m_top), v_max = detail::from_magnitude_bits<T>(v_top);
      MUON_INDEPENDENT_ITERATIONS
      for (index_t i = lo; i < hi; ++i) {
        const T mi = ema_m(detail::q8_decode_signed(m_codes[i], m_scale), grad[i]);
        const T vi = ema_v(detail::q8_decode_unsigned(v_codes[i], v_scale), grad[i]);
        const auto k = static_cast<std::uint64_t>(i);
        const std::int8_t mq = detail::q8_encode_signed(mi, m_max, Stochastic, sm, k);
        const std::uint8_t vq = detail::q8_encode_unsigned(vi, v_max, Stochastic, sv, k);
        m_codes[i] = mq;
        v_codes[i] = vq;
        param[i] = step(param[i], mi, vi);
      }
      v_scales[s] = v_max;
      return m_max;
    }
  };
  // Both moments in bf16: read, update in T, store rounded, apply with the stored values.
  template <class T, bool Stochastic>
  struct UpdateBf16 {
    std::uint16_t* m;
    std::uint16_t* v;
    T one_minus_beta1;
    EmaSquare<T> ema_square;
    Update<T> update;
    std::uint64_t stream_m, stream_v;
    MUON_HOST_DEVICE T operator()(index_t k, T p, T g) const {
      const auto i = static_cast<std::uint64_t>(k);
      const std::uint16_t mb = detail::encode_state_bf16(
          fn::Lerp<T>{one_minus_beta1}(static_cast<T>(detail::bf16_to_float(m[k])), g), Stochastic, stream_m, i);
      const std::uint16_t vb =
          detail::encode_state_bf16(ema_square(static_cast<T>(detail::bf16_to_float(v[k])), g), Stochastic, stream_v, i);
      m[k] = mb;
      v[k] = vb;
      return update(p, static_cast<T>(detail::bf16_to_float(mb)), static_cast<T>(detail::bf16_to_float(vb)));
    }
  };

 private:
  Options options_;
};

}  // namespace muon::policy
