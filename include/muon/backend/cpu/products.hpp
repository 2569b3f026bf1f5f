#pragma once
// Matrix products for CPU backends: which library runs them, symmetric products, bf16 products,
// and how they are split over the thread pool. A CPU backend (Eigen, xtensor) owns one Products
// (through cpu::HostBackend) and forwards its GEMMs here; the only thing it supplies is a
// built-in kernel for builds without a product library.
//
// The library, chosen when the build is configured (the muon::eigen and muon::xtensor targets
// define the macro):
//   float:   oneDNN's matmul (MUON_WITH_ONEDNN), else OpenBLAS (MUON_WITH_OPENBLAS), else built-in
//   double:  OpenBLAS, else built-in
//   bf16:    oneDNN only (bf16 x bf16 products accumulated in float)
// Libraries are always called single-threaded; splitting is done here, on the pool:
//   * a batch of at least `threads` slices: whole slices per thread;
//   * otherwise the larger side of C is cut into `threads` contiguous panels;
//   * symmetric products (C = alpha op(A) op(A)^T + beta C) compute the upper triangle as
//     128-row block rows (about 58 % of a full product's flops for n = 768), balanced over the
//     threads, then mirror it to the lower triangle, so C is exactly symmetric.
// The split depends only on the shapes and the thread count: results are deterministic for a
// given count. Products too small to pay for a fork-join run on the calling thread.
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "muon/backend/concept.hpp"
#include "muon/core/error.hpp"
#include "muon/core/low_precision.hpp"
#include "muon/core/thread_pool.hpp"
#include "muon/backend/cpu/library_call.hpp"

#if defined(MUON_WITH_ONEDNN)
#include "muon/backend/cpu/onednn.hpp"
#endif
#if defined(MUON_WITH_OPENBLAS)
#include "muon/backend/cpu/openblas.hpp"
#endif

namespace muon::backend::cpu {

enum class Library { onednn, openblas, builtin };

[[nodiscard]] constexpr const char* to_string(Library l) {
  return l == Library::onednn ? "oneDNN" : l == Library::openblas ? "OpenBLAS" : "built-in";
}

// The library that runs products of T in this build.
template <class T>
[[nodiscard]] constexpr Library library_for() {
#if defined(MUON_WITH_ONEDNN)
  if constexpr (std::is_same_v<T, float>) return Library::onednn;
#endif
#if defined(MUON_WITH_OPENBLAS)
  return Library::openblas;
#else
  return Library::builtin;
#endif
}

// Whether bf16 products can run here, and if not, why (for the error a bf16 composition gets).
[[nodiscard]] inline std::string bf16_unavailable_reason() {
#if defined(MUON_WITH_ONEDNN)
  if (onednn::has_bf16_hardware()) return {};
  return "this CPU has no bf16 dot-product instructions (AVX512_BF16 or AMX) as oneDNN sees them (a "
         "ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA setting can also hide them)";
#else
  return "this build has no bf16 product library: bf16 products need oneDNN (Debian: libdnnl-dev), found when muon "
         "is configured";
#endif
}

// One row-major product C = alpha op(A) op(B) + beta C on raw pointers.
template <class In, class Out>
struct GemmCall {
  Trans ta, tb;
  index_t m, n, k;
  Out alpha;
  const In* a;
  index_t lda;
  const In* b;
  index_t ldb;
  Out beta;
  Out* c;
  index_t ldc;
  // Slices of a batched product (oneDNN runs them in one call): count and strides; a stride of
  // 0 shares that operand between slices.
  index_t batch = 1, a_stride = 0, b_stride = 0, c_stride = 0;

  // The part of C from row r0 (count rows) and column c0 (count columns).
  [[nodiscard]] GemmCall rows(index_t r0, index_t count) const {
    GemmCall x = *this;
    x.m = count;
    x.a = a + (ta == Trans::no ? r0 * lda : r0);
    x.c = c + r0 * ldc;
    return x;
  }
  [[nodiscard]] GemmCall cols(index_t c0, index_t count) const {
    GemmCall x = *this;
    x.n = count;
    x.b = b + (tb == Trans::no ? c0 : c0 * ldb);
    x.c = c + c0;
    return x;
  }
  [[nodiscard]] double flops() const {
    return 2.0 * static_cast<double>(batch) * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  }
  // Slices [s0, s0 + count) of a batched product.
  [[nodiscard]] GemmCall slices(index_t s0, index_t count) const {
    GemmCall x = *this;
    x.batch = count;
    x.a = a + s0 * a_stride;
    x.b = b + s0 * b_stride;
    x.c = c + s0 * c_stride;
    return x;
  }
  [[nodiscard]] GemmCall slice(index_t s) const { return slices(s, 1); }
};

// Kernel: the backend's own product for builds without a library; a type with
//   static void gemm(const GemmCall<T, T>&)   (thread-safe: callable from several threads).
template <class T, class Kernel>
class Products {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "muon: CPU products are float or double");

 public:
  static constexpr Library library = library_for<T>();

  // Products below this many flops per thread run on the calling thread (a fork-join costs
  // a few microseconds; 4 MFLOP is ~20 microseconds of one core).
  static constexpr double k_min_flops_per_thread = 4e6;
  // Slices up to this many flops go to the library as one batched call (128 x 128 x 128).
  static constexpr double k_small_slice_flops = 2.0 * 128 * 128 * 128;
  // Block rows of symmetric products.
  static constexpr index_t k_sym_block = 128;
  static constexpr int k_max_sym_blocks = 64;

  // The pool products are split over (nullptr or one thread: the calling thread only).
  void set_pool(ThreadPool* pool) { pool_ = pool; }
  [[nodiscard]] ThreadPool* pool() const { return pool_; }
  // Inside a task of the pool (tensors side by side) products run whole on their thread.
  [[nodiscard]] int threads() const { return pool_ && !ThreadPool::in_task() ? pool_->size() : 1; }

  // ---- C = alpha op(A) op(B) + beta C, batched (a batch-1 operand is shared by every slice) ----
  template <class In, class Out>
  void gemm(Trans ta, Trans tb, Out alpha, MatrixView<const In> a, MatrixView<const In> b, Out beta, MatrixView<Out> c) {
    const index_t m = c.rows, n = c.cols, k = ta == Trans::no ? a.cols : a.rows;
    const GemmCall<In, Out> all{ta, tb, m, n, k, alpha, a.data, a.cols, b.data, b.cols, beta, c.data, n,
                                c.batch, a.batch == 1 ? 0 : a.slice_size(), b.batch == 1 ? 0 : b.slice_size(),
                                c.slice_size()};
    const int t = threads();
    if (t == 1 || all.flops() < k_min_flops_per_thread * t) {
      run_batch(all);
      return;
    }
    if (c.batch >= t) {  // whole slices per thread
      pool_->run(t, [&](int w) {
        const index_t s0 = c.batch * w / t, s1 = c.batch * (w + 1) / t;
        if (s1 > s0) run_batch(all.slices(s0, s1 - s0));
      });
      return;
    }
    for (index_t s = 0; s < c.batch; ++s) run_split(all.slice(s), t);
  }

  // ---- C = alpha op(A) op(A)^T + beta C (n x n), both triangles written, exactly symmetric ----
  // op(A) is n x k: A itself (Trans::no, A is n x k) or A^T (Trans::yes, A is k x n).
  template <class In, class Out>
  void syrk(Trans t, Out alpha, MatrixView<const In> a, Out beta, MatrixView<Out> c) {
    const index_t n = c.rows;
    const index_t k = t == Trans::no ? a.cols : a.rows;
    // op(A) op(A)^T: rows i of op(A) times rows j of op(A).
    const index_t a_stride = a.batch == 1 ? 0 : a.slice_size();
    const GemmCall<In, Out> all{t, t == Trans::no ? Trans::yes : Trans::no, n, n, k, alpha, a.data, a.cols, a.data, a.cols,
                                beta, c.data, n, c.batch, a_stride, a_stride, c.slice_size()};
    if (n <= k_sym_block && c.batch > 1) {
      // Small slices: one full product per slice, all slices in one batched call (the
      // triangle would not pay for the calls), then each mirrored.
      gemm(all.ta, all.tb, alpha, a, a, beta, c);
      for (index_t s = 0; s < c.batch; ++s) mirror(c.data + s * c.slice_size(), n, 0, n);
      return;
    }
    for (index_t s = 0; s < c.batch; ++s) syrk_slice(all.slice(s));
  }

 private:
  template <class In, class Out>
  static void run(const GemmCall<In, Out>& g) {
    if (g.m == 0 || g.n == 0) return;
    if (g.k == 0 || g.alpha == Out(0)) {  // C = beta C (beta 0 clears NaN too, as BLAS does)
      for (index_t i = 0; i < g.m; ++i)
        for (index_t j = 0; j < g.n; ++j) g.c[i * g.ldc + j] = g.beta == Out(0) ? Out(0) : g.beta * g.c[i * g.ldc + j];
      return;
    }
    if constexpr (std::is_same_v<In, bfloat16>) {
#if defined(MUON_WITH_ONEDNN)
      onednn::matmul<bfloat16>(g.ta, g.tb, g.m, g.n, g.k, g.alpha, g.a, g.lda, g.b, g.ldb, g.beta, g.c, g.ldc);
#else
      muon::detail::fail("bf16 products: " + bf16_unavailable_reason());
#endif
    } else if constexpr (library == Library::onednn) {
#if defined(MUON_WITH_ONEDNN)
      onednn::matmul<float>(g.ta, g.tb, g.m, g.n, g.k, g.alpha, g.a, g.lda, g.b, g.ldb, g.beta, g.c, g.ldc);
#endif
    } else if constexpr (library == Library::openblas) {
#if defined(MUON_WITH_OPENBLAS)
      openblas::gemm<T>(g.ta, g.tb, g.m, g.n, g.k, g.alpha, g.a, g.lda, g.b, g.ldb, g.beta, g.c, g.ldc);
#endif
    } else {
      Kernel::gemm(g);
    }
  }

  // A batched product: small slices in one library call where the library takes batches
  // (oneDNN; a call costs a few microseconds, a 32 x 32 x 32 product less than one), else one
  // call per slice.
  template <class In, class Out>
  static void run_batch(const GemmCall<In, Out>& g) {
    if (g.batch == 1) {
      run(g);
      return;
    }
#if defined(MUON_WITH_ONEDNN)
    if constexpr (std::is_same_v<In, bfloat16> || library == Library::onednn) {
      if (g.m > 0 && g.n > 0 && g.k > 0 && g.alpha != Out(0) && g.flops() / static_cast<double>(g.batch) <= k_small_slice_flops) {
        onednn::matmul<In>(g.ta, g.tb, g.m, g.n, g.k, g.alpha, g.a, g.lda, g.b, g.ldb, g.beta, g.c, g.ldc, g.batch,
                           g.a_stride, g.b_stride, g.c_stride);
        return;
      }
    }
#endif
    for (index_t s = 0; s < g.batch; ++s) run(g.slice(s));
  }

  // One product cut into `t` panels along C's larger side (multiples of 16 where possible).
  template <class In, class Out>
  void run_split(const GemmCall<In, Out>& g, int t) {
    const bool by_rows = g.m >= g.n;
    const index_t len = by_rows ? g.m : g.n;
    const index_t unit = len >= 16 * t ? 16 : 1;
    const index_t units = (len + unit - 1) / unit;
    pool_->run(t, [&](int w) {
      const index_t b0 = std::min(len, units * w / t * unit), b1 = std::min(len, units * (w + 1) / t * unit);
      if (b1 > b0) run(by_rows ? g.rows(b0, b1 - b0) : g.cols(b0, b1 - b0));
    });
  }

  template <class In, class Out>
  void syrk_slice(const GemmCall<In, Out>& full) {
    const index_t n = full.m;
    index_t block = k_sym_block;
    if ((n + block - 1) / block > k_max_sym_blocks) block = (n + k_max_sym_blocks - 1) / k_max_sym_blocks;
    const int blocks = static_cast<int>((n + block - 1) / block);
    // Block row i: rows [i*block, ...) of C, columns from its diagonal to n.
    auto block_row = [&](int i) {
      const index_t r0 = i * block, r1 = std::min(n, r0 + block);
      run(full.rows(r0, r1 - r0).cols(r0, n - r0));
    };
    const int t = threads();
    const double flops = full.flops() * 0.5;
    if (blocks == 1) {  // one product; the mirror makes rounding differences symmetric too
      run(full);
      mirror(full.c, full.ldc, 0, n);
      return;
    }
    if (t == 1 || flops < k_min_flops_per_thread * t) {
      for (int i = 0; i < blocks; ++i) block_row(i);
      mirror(full.c, full.ldc, 0, n);
      return;
    }
    // Longest block rows first, each to the least loaded thread (ties: the lowest index).
    std::array<std::int16_t, k_max_sym_blocks> owner{};
    std::array<double, ThreadPool::k_max_threads> load{};
    for (int i = 0; i < blocks; ++i) {
      int best = 0;
      for (int w = 1; w < t; ++w)
        if (load[static_cast<std::size_t>(w)] < load[static_cast<std::size_t>(best)]) best = w;
      owner[static_cast<std::size_t>(i)] = static_cast<std::int16_t>(best);
      load[static_cast<std::size_t>(best)] += static_cast<double>(n - i * block);
    }
    pool_->run(t, [&](int w) {
      for (int i = 0; i < blocks; ++i)
        if (owner[static_cast<std::size_t>(i)] == w) block_row(i);
    });
    // Mirror: row i copies i elements, so equal-area bands have boundaries n sqrt(w / t).
    pool_->run(t, [&](int w) {
      auto edge = [&](int x) {
        return x == t ? n : static_cast<index_t>(static_cast<double>(n) * std::sqrt(static_cast<double>(x) / t));
      };
      mirror(full.c, full.ldc, edge(w), edge(w + 1));
    });
  }

  // C[i][j] = C[j][i] for j < i, rows [r0, r1): the lower triangle from the upper, in tiles.
  template <class Out>
  static void mirror(Out* c, index_t ldc, index_t r0, index_t r1) {
    constexpr index_t tile = 32;
    for (index_t i0 = r0; i0 < r1; i0 += tile) {
      const index_t i1 = std::min(r1, i0 + tile);
      for (index_t j0 = 0; j0 < i1; j0 += tile) {
        const index_t j1 = std::min(i1, j0 + tile);
        for (index_t i = i0; i < i1; ++i)
          for (index_t j = j0; j < std::min(j1, i); ++j) c[i * ldc + j] = c[j * ldc + i];
      }
    }
  }

  ThreadPool* pool_ = nullptr;
};

}  // namespace muon::backend::cpu
