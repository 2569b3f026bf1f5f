#pragma once
// GrokfastEMA: amplifies the slow (low-frequency) part of each gradient with an exponential
// moving average, before either path sees it:
//   h <- g_1 on the first step (the average starts at the first raw gradient), then at every
//   step, the first included:
//   h <- alpha h + (1 - alpha) g
//   g' <- g + lamb h
// The average always takes the raw gradient g, never g'. The user's gradient is not modified:
// g' is written to workspace. A skipped step (NaN/Inf gradient) never reaches the filter, so it
// leaves h and the step count as they were.
// Follows ironjr/grokfast grokfast.py::gradfilter_ema operation for operation (the same
// multiplication order). Lee, Kang, Lee, Kim, "Grokfast: Accelerated Grokking by Amplifying Slow
// Gradients" (arXiv:2405.20233). Defaults are the official code's: alpha 0.98, lamb 2.0.
// State per tensor: one buffer the tensor's size ("ema") and the step count ("steps").
#include <cstdint>
#include <string>

#include "muon/backend/concept.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/config.hpp"
#include "muon/core/param.hpp"
#include "muon/core/state_format.hpp"
#include "muon/core/validate.hpp"
#include "muon/core/workspace.hpp"

namespace muon::policy {

class GrokfastEMA {
 public:
  struct Options {
    double alpha = 0.98;  // EMA momentum, in [0, 1)
    double lamb = 2.0;    // amplification of the average, finite
    StateStorage state{};  // the average: full (value_type) or bf16 (core/state_format.hpp)
  };

  template <class B>
  struct State {
    StateBuffer<B> ema;
    std::uint64_t steps = 0;  // gradients seen; 0 means the average is not started yet
    std::string name;         // the tensor's, for stochastic rounding's streams (not saved)
    template <class V>
    void visit(V&& v) {
      v("ema", ema);
      v("steps", steps);
    }
  };

  GrokfastEMA() : GrokfastEMA(Options{}) {}
  explicit GrokfastEMA(const Options& options) : options_(options) {
    detail::require_unit_interval("GrokfastEMA", "alpha", options_.alpha);
    detail::require_finite("GrokfastEMA", "lamb", options_.lamb);
    detail::require_state_storage("GrokfastEMA", "state", options_.state, false);
  }

  [[nodiscard]] const Options& options() const { return options_; }

  template <class B>
  [[nodiscard]] State<B> make_state(B& b, const ParamInfo& info) {
    return {StateBuffer<B>(b, static_cast<std::size_t>(info.shape.numel()), options_.state), 0, info.name};
  }

  [[nodiscard]] WorkspaceNeed plan(const ParamInfo& info) const {
    return WorkspaceNeed{}.add_matrix(1, 1, info.shape.numel());
  }

  template <class B>
  backend::MatrixView<const typename B::value_type> apply(B& b, State<B>& s,
                                                          backend::MatrixView<const typename B::value_type> g,
                                                          Workspace<B>& ws) {
    using T = typename B::value_type;
    const auto gf = g.flat();
    const EmaUpdate<T> update{static_cast<T>(options_.alpha), static_cast<T>(1.0 - options_.alpha), s.steps == 0};
    const Amplify<T> amplify{static_cast<T>(options_.lamb)};
    auto out = ws.take(g.batch, g.rows, g.cols);
    if (s.ema.format() == StateFormat::bf16) {  // one pass: read, update, store rounded, amplify
      detail::with_rounding(options_.state.rounding, [&](auto stochastic_tag) {
        constexpr bool stochastic = decltype(stochastic_tag)::value;
        b.transform_indexed(out.flat(),
                            AmplifyBf16<T, stochastic>{s.ema.bits(), update, amplify,
                                                       stochastic ? detail::rounding_stream(s.name, "ema", s.steps + 1) : 0},
                            gf);
      });
      s.steps += 1;
      return out;
    }
    backend::MatrixView<T> h{s.ema.data(), 1, 1, gf.size()};
    b.transform(h, update, h, gf);
    b.transform(out.flat(), amplify, gf, h);
    s.steps += 1;
    return out;
  }

 public:
  // Elementwise functors are public: nvcc cannot instantiate a kernel on a private nested type.
  // h <- (first ? g : h) alpha + g (1 - alpha): grads[n] * alpha + grad * (1 - alpha), with
  // grads[n] = grad on the first call, as the official code does.
  template <class T>
  struct EmaUpdate {
    T alpha, one_minus_alpha;
    bool first;
    MUON_HOST_DEVICE T operator()(T h, T g) const { return fn::pick(first, g, h) * alpha + g * one_minus_alpha; }
  };
  // g' = g + h lamb, saturated: amplifying a gradient near the float maximum must not make it Inf.
  template <class T>
  struct Amplify {
    T lamb;
    T max = fn::k_largest<T>;
    MUON_HOST_DEVICE T operator()(T g, T h) const { return fn::saturate(g + h * lamb, max); }
  };

  // The average in bf16: updated in T, stored rounded, and the stored value amplifies g.
  template <class T, bool Stochastic>
  struct AmplifyBf16 {
    std::uint16_t* h;
    EmaUpdate<T> update;
    Amplify<T> amplify;
    std::uint64_t stream;
    MUON_HOST_DEVICE T operator()(index_t k, T g) const {
      const std::uint16_t bits =
          detail::encode_state_bf16(update(static_cast<T>(detail::bf16_to_float(h[k])), g), Stochastic, stream,
                                    static_cast<std::uint64_t>(k));
      h[k] = bits;
      return amplify(g, static_cast<T>(detail::bf16_to_float(bits)));
    }
  };

 private:
  Options options_;
};

}  // namespace muon::policy
