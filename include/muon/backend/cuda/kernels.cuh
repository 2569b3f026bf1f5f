#pragma once
// The CUDA backend's kernels: elementwise transforms that call a MUON_HOST_DEVICE functor, the
// diagonal update, and per-slice reductions accumulated in double.
//
// Reductions run one block per slice, or for large slices (few of them) a block per chunk and a
// second pass over the chunks' partial results; both combine in a fixed order (a tree in shared
// memory), so results are deterministic for given shapes. They follow the CPU backend's rules:
// max_abs ignores NaN, count_non_finite counts NaN and +-Inf, and a Frobenius norm whose sum of
// squares overflows double is recomputed scaled by the slice's largest magnitude.
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "muon/core/config.hpp"
#include "muon/core/low_precision.hpp"

namespace muon::backend::cuda_detail {

inline constexpr int k_threads = 256;         // elementwise kernels
inline constexpr int k_reduce_threads = 512;  // reductions (a power of two)
inline constexpr index_t k_max_blocks = 65535;

[[nodiscard]] inline unsigned blocks_for(index_t n) {
  const index_t b = (n + k_threads - 1) / k_threads;
  return static_cast<unsigned>(b < 1 ? 1 : (b > k_max_blocks ? k_max_blocks : b));
}

// out[k] = f(in[k]...)
template <class T, class F, class... P>
__global__ void transform_kernel(T* out, index_t n, F f, const P*... in) {
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride)
    out[k] = static_cast<T>(f(in[k]...));
}

// out[s][k] = f(s, in[s][k]...), slices of `len` elements.
template <class T, class F, class... P>
__global__ void transform_slices_kernel(T* out, index_t n, index_t len, F f, const P*... in) {
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride)
    out[k] = static_cast<T>(f(k / len, in[k]...));
}

// out[k] = f(k, in[k]...)
template <class T, class F, class... P>
__global__ void transform_indexed_kernel(T* out, index_t n, F f, const P*... in) {
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride)
    out[k] = static_cast<T>(f(k, in[k]...));
}

// c[s][i][i] += alpha for i < d, every slice.
template <class T>
__global__ void add_to_diagonal_kernel(T* c, index_t batch, index_t rows, index_t cols, index_t d, T alpha) {
  const index_t n = batch * d;
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride) {
    const index_t s = k / d, i = k % d;
    c[s * rows * cols + i * cols + i] += alpha;
  }
}

// dst[k] = src[k] rounded to bf16 (nearest even, NaN stays NaN), as the CPU backends round.
template <class T>
__global__ void convert_bf16_kernel(const T* src, std::uint16_t* dst, index_t n) {
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < n; k += stride)
    dst[k] = muon::detail::float_to_bf16(static_cast<float>(src[k]));
}

// c[s][i][j] = c[s][j][i] for i > j, slices of n x n: the lower triangle copies the upper one,
// so a product A A^T that cuBLAS computed as a general product is exactly symmetric.
template <class T>
__global__ void mirror_upper_kernel(T* c, index_t batch, index_t n) {
  const index_t total = batch * n * n;
  const index_t stride = static_cast<index_t>(blockDim.x) * gridDim.x;
  for (index_t k = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < total; k += stride) {
    const index_t s = k / (n * n), i = (k / n) % n, j = k % n;
    if (i > j) c[k] = c[s * n * n + j * n + i];
  }
}

enum class Reduce { sum_squares, dot, max_abs, count_non_finite, norm };

// Sum (or max) of v over the block, returned to every thread. Fixed order: deterministic.
template <bool Max>
__device__ double block_reduce(double v, double* shared) {
  shared[threadIdx.x] = v;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const double other = shared[threadIdx.x + half];
      shared[threadIdx.x] = Max ? fmax(shared[threadIdx.x], other) : shared[threadIdx.x] + other;
    }
    __syncthreads();
  }
  const double out = shared[0];
  __syncthreads();  // shared may be reused by the caller's next reduction
  return out;
}

// Adds element i of the slice (p, q) to acc.
template <Reduce R, class T>
__device__ void accumulate(double& acc, const T* p, const T* q, index_t i) {
  const double v = static_cast<double>(p[i]);
  if constexpr (R == Reduce::sum_squares || R == Reduce::norm)
    acc += v * v;
  else if constexpr (R == Reduce::dot)
    acc += v * static_cast<double>(q[i]);
  else if constexpr (R == Reduce::max_abs)
    acc = fmax(acc, fabs(v));  // fmax drops NaN, as the CPU backend's max does
  else
    acc += isfinite(v) ? 0.0 : 1.0;
}

// The Frobenius norm of p[0 .. len) scaled by its largest magnitude, for a sum of squares that
// overflowed double (only doubles near DBL_MAX get here). The whole block calls it.
template <class T>
__device__ double rescaled_norm(const T* p, index_t len, double* shared) {
  double m = 0.0;
  for (index_t i = threadIdx.x; i < len; i += blockDim.x) m = fmax(m, fabs(static_cast<double>(p[i])));
  const double scale = block_reduce<true>(m, shared);
  if (scale == 0.0 || !isfinite(scale)) return scale;
  double sum = 0.0;
  for (index_t i = threadIdx.x; i < len; i += blockDim.x) {
    const double r = static_cast<double>(p[i]) / scale;
    sum += r * r;
  }
  return scale * sqrt(block_reduce<false>(sum, shared));
}

// One block per slice (blockIdx.x + gridDim.x * blockIdx.y over `batch` slices of `len`).
template <Reduce R, class T>
__global__ void __launch_bounds__(k_reduce_threads)
    reduce_kernel(const T* x, const T* y, index_t batch, index_t len, double* out) {
  __shared__ double shared[k_reduce_threads];
  const index_t s = static_cast<index_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  if (s >= batch) return;  // uniform over the block
  const T* p = x + s * len;
  const T* q = y ? y + s * len : nullptr;
  double acc = 0.0;
  for (index_t i = threadIdx.x; i < len; i += blockDim.x) accumulate<R>(acc, p, q, i);
  double total = block_reduce<R == Reduce::max_abs>(acc, shared);
  if constexpr (R == Reduce::norm) {
    total = sqrt(total);
    if (isinf(total)) total = rescaled_norm(p, len, shared);
  }
  if (threadIdx.x == 0) out[s] = total;
}

// Large slices, first pass: block (c, s) reduces chunk c (chunk_len elements) of slice s into
// partials[s * gridDim.x + c]. The second pass (reduce_partials_kernel) combines the chunks of
// each slice in a fixed order, so the result does not depend on timing.
template <Reduce R, class T>
__global__ void __launch_bounds__(k_reduce_threads)
    reduce_chunks_kernel(const T* x, const T* y, index_t len, index_t chunk_len, double* partials) {
  __shared__ double shared[k_reduce_threads];
  const index_t s = blockIdx.y, c = blockIdx.x;
  const T* p = x + s * len;
  const T* q = y ? y + s * len : nullptr;
  const index_t begin = c * chunk_len;
  const index_t end = begin + chunk_len < len ? begin + chunk_len : len;
  double acc = 0.0;
  for (index_t i = begin + threadIdx.x; i < end; i += blockDim.x) accumulate<R>(acc, p, q, i);
  const double total = block_reduce<R == Reduce::max_abs>(acc, shared);
  if (threadIdx.x == 0) partials[s * gridDim.x + c] = total;
}

// Second pass: one block per slice, one partial per thread (chunks <= k_reduce_threads).
template <Reduce R, class T>
__global__ void __launch_bounds__(k_reduce_threads)
    reduce_partials_kernel(const double* partials, index_t chunks, const T* x, index_t len, double* out) {
  __shared__ double shared[k_reduce_threads];
  const index_t s = blockIdx.x;
  const double v = static_cast<index_t>(threadIdx.x) < chunks ? partials[s * chunks + threadIdx.x] : 0.0;
  double total = block_reduce<R == Reduce::max_abs>(v, shared);
  if constexpr (R == Reduce::norm) {
    total = sqrt(total);
    if (isinf(total)) total = rescaled_norm(x + s * len, len, shared);
  }
  if (threadIdx.x == 0) out[s] = total;
}

// Large slices are split into chunks of at least this many elements, with at most
// k_reduce_partials partial results per call (the backend's fixed scratch).
inline constexpr index_t k_reduce_chunk_min = 16384;
inline constexpr index_t k_reduce_partials = 4096;

// How many chunks per slice a reduction over batch x len uses (1: one block per slice).
[[nodiscard]] inline index_t reduce_chunks(index_t batch, index_t len) {
  index_t chunks = (len + k_reduce_chunk_min - 1) / k_reduce_chunk_min;
  if (chunks > k_reduce_threads) chunks = k_reduce_threads;
  if (batch > 0 && chunks > k_reduce_partials / batch) chunks = k_reduce_partials / batch;
  return chunks < 1 ? 1 : chunks;
}

// Grid for one block per slice: x up to 65535, y for the rest.
[[nodiscard]] inline dim3 slice_grid(index_t batch) {
  const index_t x = batch < k_max_blocks ? (batch < 1 ? 1 : batch) : k_max_blocks;
  const index_t y = (batch + x - 1) / x;
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y < 1 ? 1 : y));
}

}  // namespace muon::backend::cuda_detail
