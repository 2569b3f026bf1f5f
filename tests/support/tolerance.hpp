#pragma once
// Per-scalar tolerances for tests typed over float and double backends.
#include <algorithm>

namespace muon::test {

template <class T>
struct Tolerance;

template <>
struct Tolerance<float> {
  // Golden cases carry their own float32 tolerance (manifest "suggested_atol": 8x the error of
  // a plain float32 run of the same algorithm); float code is held to that.
  static double golden(double suggested_atol) { return suggested_atol; }
};

template <>
struct Tolerance<double> {
  // A double run consumes the same float32 inputs exactly and computes in double, like the
  // reference; what remains is summation order in GEMM and reductions (measured <= 1e-13 on
  // these cases). 1e-10 leaves room without hiding a float32 path (errors ~1e-7).
  static double golden(double) { return 1e-10; }
};

}  // namespace muon::test
