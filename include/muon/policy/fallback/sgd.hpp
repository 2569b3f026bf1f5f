#pragma once
// SGD, exactly torch.optim.SGD (maximize = False):
//   g <- g + wd p                                   (L2 weight decay, coupled, as torch does)
//   b <- g on the first step, else momentum b + (1 - dampening) g
//   g <- nesterov ? g + momentum b : b              (only when momentum != 0)
//   p <- p - lr g
// Defaults: lr 1e-3, momentum 0, dampening 0, nesterov false, weight_decay 0. With momentum 0
// the state is empty (no buffer is allocated).
#include <cstdint>

#include "muon/backend/concept.hpp"
#include "muon/core/functors.hpp"
#include "muon/core/error.hpp"
#include "muon/core/param.hpp"
#include "muon/core/validate.hpp"

namespace muon::policy {

class SGD {
 public:
  struct Options {
    double lr = 1e-3;
    double momentum = 0.0;
    double dampening = 0.0;
    bool nesterov = false;
    double weight_decay = 0.0;
  };

  template <class B>
  struct State {
    typename B::template Buffer<typename B::value_type> momentum_buffer;  // empty when momentum == 0
    std::uint64_t step = 0;
    template <class V>
    void visit(V&& v) {
      v("momentum_buffer", momentum_buffer);
      v("step", step);
    }
  };

  SGD() : SGD(Options{}) {}
  explicit SGD(const Options& options) : options_(options) {
    detail::require_non_negative("SGD", "lr", options_.lr);
    detail::require_unit_interval("SGD", "momentum", options_.momentum);
    detail::require_unit_interval("SGD", "dampening", options_.dampening);
    detail::require_non_negative("SGD", "weight_decay", options_.weight_decay);
    if (options_.nesterov && (options_.momentum <= 0 || options_.dampening != 0))
      detail::fail("SGD: nesterov needs momentum > 0 and dampening 0 (as torch.optim.SGD)");
  }

  [[nodiscard]] const Options& options() const { return options_; }
  [[nodiscard]] double lr() const { return options_.lr; }
  void set_lr(double lr) {
    detail::require_non_negative("SGD", "lr", lr);
    options_.lr = lr;
  }

  template <class B>
  [[nodiscard]] State<B> make_state(B& b, const ParamInfo& info) {
    State<B> s;
    if (options_.momentum != 0)
      s.momentum_buffer = b.template allocate<typename B::value_type>(static_cast<std::size_t>(info.shape.numel()));
    return s;
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
    const auto wf = w.flat();
    const auto gf = g.flat();
    const T lr = fn::saturate_cast<T>(rates.lr), wd = fn::saturate_cast<T>(rates.weight_decay);
    if (options_.momentum == 0) {
      b.transform(wf, Plain<T>{lr, wd}, wf, gf);
    } else {
      backend::MatrixView<T> buf{s.momentum_buffer.data(), 1, 1, w.size()};
      const T mu = static_cast<T>(options_.momentum);
      const T damp = s.step == 0 ? T(1) : static_cast<T>(1.0 - options_.dampening);
      const T keep = s.step == 0 ? T(0) : mu;  // first step: b = g exactly
      b.transform(buf, MomentumBuffer<T>{keep, damp, wd}, buf, gf, wf);
      b.transform(wf, MomentumUpdate<T>{lr, wd, mu, options_.nesterov}, wf, gf, buf);
    }
    s.step += 1;
  }

 public:
  // Elementwise functors are public: nvcc cannot instantiate a kernel on a private nested type.
  template <class T>
  struct Plain {
    T lr, wd;
    T max = fn::k_largest<T>;
    MUON_HOST_DEVICE T operator()(T p, T g) const { return fn::saturate(p - lr * fn::saturate(g + wd * p, max), max); }
  };
  template <class T>
  struct MomentumBuffer {
    T keep, damp, wd;
    T max = fn::k_largest<T>;
    MUON_HOST_DEVICE T operator()(T b, T g, T p) const {
      return fn::saturate(keep * b + damp * fn::saturate(g + wd * p, max), max);
    }
  };
  template <class T>
  struct MomentumUpdate {
    T lr, wd, mu;
    bool nesterov;
    T max = fn::k_largest<T>;
    MUON_HOST_DEVICE T operator()(T p, T g, T b) const {
      const T d = nesterov ? fn::saturate(fn::saturate(g + wd * p, max) + mu * b, max) : b;
      return fn::saturate(p - lr * d, max);
    }
  };

 private:
  Options options_;
};

}  // namespace muon::policy
