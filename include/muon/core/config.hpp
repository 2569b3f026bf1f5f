#pragma once
// Build-wide definitions shared by every header: the index type and the one host/device macro.
#include <cstddef>
#include <cstdint>

// Marks functions (elementwise functors, mostly) that must compile for both the host and a CUDA
// device. On the host they are always inlined: they are the bodies of the backends' elementwise
// loops, a loop vectorizes only with its body inlined, and GCC's heuristics leave such calls in
// place in a large translation unit (a trainer's), which keeps the loop scalar.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MUON_HOST_DEVICE __host__ __device__
#elif defined(__GNUC__)  // GCC and Clang
#define MUON_HOST_DEVICE __attribute__((always_inline))
#else
#define MUON_HOST_DEVICE
#endif

// Before a loop whose iterations are independent although the compiler cannot prove it (a
// functor that writes element k of a buffer it carries): lets GCC vectorize it. Empty under
// nvcc, for Clang and for other compilers. (Clang's counterpart, `clang loop
// vectorize(assume_safety)`, turns every such loop it does not vectorize, at -O0 and -O1 for
// instance, into a -Wpass-failed warning that -Werror builds fail on; Clang vectorizes these
// loops with run-time overlap checks instead.)
#if defined(__CUDACC__) || defined(__HIPCC__) || defined(__clang__)
#define MUON_INDEPENDENT_ITERATIONS
#elif defined(__GNUC__)
#define MUON_INDEPENDENT_ITERATIONS _Pragma("GCC ivdep")
#else
#define MUON_INDEPENDENT_ITERATIONS
#endif

namespace muon {

// Signed, so that differences of sizes and loops counting down stay well defined.
using index_t = std::ptrdiff_t;

// Whether math functions may set errno in this translation unit. Then GCC and Clang guard every
// std::sqrt with a branch to the library call, and the elementwise loops that take square roots
// (AdamW's update, the 8-bit state code) do not vectorize. muon::muon's CMake target compiles
// with -fno-math-errno (option MUON_NO_MATH_ERRNO); benchmarks record this value.
#if defined(__GNUC__) && !defined(__NO_MATH_ERRNO__) && !defined(__CUDA_ARCH__)
inline constexpr bool math_errno = true;
#else
inline constexpr bool math_errno = false;
#endif

}  // namespace muon
