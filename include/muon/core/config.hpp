#pragma once
// Build-wide definitions shared by every header: the index type and the one host/device macro.
#include <cstddef>
#include <cstdint>

// Marks functions (elementwise functors, mostly) that must compile for both the host and a CUDA
// device. It is the only portability macro in the library.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MUON_HOST_DEVICE __host__ __device__
#else
#define MUON_HOST_DEVICE
#endif

namespace muon {

// Signed, so that differences of sizes and loops counting down stay well defined.
using index_t = std::ptrdiff_t;

}  // namespace muon
