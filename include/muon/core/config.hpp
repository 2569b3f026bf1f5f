#pragma once
// Build-wide definitions shared by every header: the index type and the one host/device macro.
#include <cstddef>
#include <cstdint>

// Marks functions (elementwise functors, mostly) that must compile for both the host and a CUDA
// device.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MUON_HOST_DEVICE __host__ __device__
#else
#define MUON_HOST_DEVICE
#endif

// Before a loop whose iterations are independent although the compiler cannot prove it (a
// functor that writes element k of a buffer it carries): lets the host compiler vectorize it.
// Empty under nvcc and for other compilers.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MUON_INDEPENDENT_ITERATIONS
#elif defined(__clang__)
#define MUON_INDEPENDENT_ITERATIONS _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define MUON_INDEPENDENT_ITERATIONS _Pragma("GCC ivdep")
#else
#define MUON_INDEPENDENT_ITERATIONS
#endif

namespace muon {

// Signed, so that differences of sizes and loops counting down stay well defined.
using index_t = std::ptrdiff_t;

}  // namespace muon
