#pragma once
// Master weights, quantized views and loss-scaled gradients: the pieces between the tensors a
// trainer registers and the value_type tensors the step works on.
//
//  * A parameter stored in bf16 / fp16 gets a master copy in value_type (fp32) held by the
//    optimizer; the step updates the master and then rewrites the 16-bit tensor from it
//    (round to nearest even). Small updates accumulate in the master instead of rounding away.
//  * A quantized view (ParamOptions::fake_quant_bits = b): the registered tensor is what the
//    trainer's forward pass reads; after every step it receives Q(master), the master
//    fake-quantized to b-bit symmetric integers with one absmax scale per tensor,
//      s = max|master| / (2^(b-1) - 1),  Q(x) = s * clamp(round(x / s), -(2^(b-1)-1), 2^(b-1)-1),
//    then stored in the tensor's own format. Gradients with respect to the view are applied to
//    the master unchanged: the straight-through estimator (Bengio et al. 2013; BinaryConnect).
//  * A 16-bit gradient is decoded into workspace, and a loss-scaled gradient (step's inv_scale)
//    is unscaled there: the trainer's buffers are never written.
// Every conversion runs on the backend as a transform (so a device backend converts in place on
// the device); the store functors write element k of the registered tensor while visiting
// element k of the master (each index exactly once).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "muon/backend/concept.hpp"
#include "muon/core/config.hpp"
#include "muon/core/low_precision.hpp"

namespace muon::detail {

// Where a registered gradient's elements are and how they are stored.
struct GradSource {
  const void* data = nullptr;
  ElementFormat format = ElementFormat::value;
};

// out[k] = decode(src[k]) * scale (the input view is only the index space).
template <class T>
struct DecodeScaled {
  const std::uint16_t* src;
  ElementFormat format;
  T scale;
  MUON_HOST_DEVICE T operator()(index_t k, T) const {
    return static_cast<T>(decode16(format, src[k])) * scale;
  }
};

// Writes element k of the registered tensor from master element x; returns x (master unchanged).
template <class T>
struct StoreParam {
  void* dst;
  ElementFormat format;
  MUON_HOST_DEVICE T operator()(index_t k, T x) const {
    if (format == ElementFormat::value)
      static_cast<T*>(dst)[k] = x;
    else
      static_cast<std::uint16_t*>(dst)[k] = encode16(format, x);
    return x;
  }
};

// Like StoreParam, with the value fake-quantized first; absmax points at max|master| (backend memory).
template <class T, class A>
struct StoreQuantized {
  void* dst;
  ElementFormat format;
  const A* absmax;
  T levels;  // 2^(bits-1) - 1
  MUON_HOST_DEVICE T operator()(index_t k, T x) const {
    const T scale = static_cast<T>(*absmax) / levels;
    T q = T(0);
    if (scale > T(0)) q = std::min(levels, std::max(-levels, std::nearbyint(x / scale))) * scale;
    if (format == ElementFormat::value)
      static_cast<T*>(dst)[k] = q;
    else
      static_cast<std::uint16_t*>(dst)[k] = encode16(format, q);
    return x;
  }
};

// The registered tensor behind a master copy (target == nullptr: the tensor is updated in place,
// no master).
struct ParamTarget {
  void* data = nullptr;
  ElementFormat format = ElementFormat::value;
  index_t quant_levels = 0;  // 0: no fake quantization
  [[nodiscard]] bool has_master() const { return data != nullptr; }
};

// Rewrites the registered tensor from the master (flat view), quantizing if asked.
template <class B>
void refresh_target(B& b, const ParamTarget& t, backend::MatrixView<typename B::value_type> master,
                    typename B::accum_type* absmax) {
  using T = typename B::value_type;
  if (!t.has_master()) return;
  if (t.quant_levels > 0) {
    b.max_abs(master.flat(), absmax);
    b.transform_indexed(master.flat(),
                        StoreQuantized<T, typename B::accum_type>{t.data, t.format, absmax, static_cast<T>(t.quant_levels)},
                        master.flat());
  } else {
    b.transform_indexed(master.flat(), StoreParam<T>{t.data, t.format}, master.flat());
  }
}

}  // namespace muon::detail
