#pragma once
// Elementwise functors shared by several policies. Each is a small copyable struct whose call
// operator compiles for host and device; arithmetic is in the parameter type, as PyTorch does.
#include "muon/core/config.hpp"

namespace muon::fn {

// out = x (a copy).
struct Copy {
  template <class T>
  MUON_HOST_DEVICE T operator()(T x) const { return x; }
};

// out = 0, whatever x holds (NaN and Inf included, which s * x with s = 0 would keep).
struct Zero {
  template <class T>
  MUON_HOST_DEVICE T operator()(T) const { return T(0); }
};

// out = s * x.
template <class T>
struct Scale {
  T s;
  MUON_HOST_DEVICE T operator()(T x) const { return s * x; }
};

// out = a * x + y.
template <class T>
struct Axpy {
  T a;
  MUON_HOST_DEVICE T operator()(T x, T y) const { return a * x + y; }
};

// out = lerp(x, y, w) = x + w (y - x), evaluated as torch.lerp does (from the nearer end), so
// the EMA m.lerp_(g, 1 - beta) and Nesterov's g.lerp(m, beta) round as they do in PyTorch.
template <class T>
struct Lerp {
  T w;
  MUON_HOST_DEVICE T operator()(T x, T y) const {
    return (w < T(0.5) && w > T(-0.5)) ? x + w * (y - x) : y - (y - x) * (T(1) - w);
  }
};

}  // namespace muon::fn
