#pragma once
// CUDA backend: parameters, gradients, state and workspace in device memory; products on cuBLAS
// (strided-batched GEMM), elementwise work and reductions in the kernels of kernels.cuh. Compile
// with nvcc (C++20, --expt-relaxed-constexpr) and link the muon::cuda target (cudart, cuBLAS).
//
// Stream contract: every operation is enqueued on the stream given at construction (default:
// the legacy default stream 0), in issue order, and returns without waiting. The host waits only
// in read() (the step's one read of the NaN/Inf counts), copy_to_host / copy_from_host (outside
// the step), synchronize(), and when memory is allocated or freed (registration and the first
// step). The gradients must be complete on that stream (or before it, in stream order) when
// step() is called; the updated parameters are ready on that stream when step() returns.
//
// Registering tensors: device pointers with a row-major shape, muon::raw(device_ptr, {rows,
// cols}) (or any rank). Nothing reads them on the host.
//
// The optimizer runs this backend on one lane whatever Options::threads says (it is a
// backend::DeviceQueue: host threads would only race to enqueue on the one stream). A copy of the
// backend shares the stream and gets its own cuBLAS handle.
//
// State: compiled in CI, not yet run on a GPU.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "muon/backend/concept.hpp"
#include "muon/backend/cuda/error.cuh"
#include "muon/backend/cuda/kernels.cuh"
#include "muon/core/config.hpp"
#include "muon/core/error.hpp"

namespace muon::backend {

namespace cuda_detail {

// Fails unless the process sees at least one CUDA device.
inline int current_device() {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    muon::detail::fail(std::string("muon::backend::Cuda: no CUDA device (cudaGetDeviceCount: ") +
                 (e == cudaSuccess ? "0 devices" : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e)) +
                 ")");
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

[[nodiscard]] inline int attribute(cudaDeviceAttr what, int device) {
  int value = 0;
  check(cudaDeviceGetAttribute(&value, what, device), "cudaDeviceGetAttribute");
  return value;
}

// Functors for gemm with k == 0 (kernel arguments cannot be private nested types).
template <class T>
struct Zero {
  MUON_HOST_DEVICE T operator()(T) const { return T(0); }
};
template <class T>
struct Scale {
  T s;
  MUON_HOST_DEVICE T operator()(T x) const { return s * x; }
};

[[nodiscard]] inline int to_int(index_t v, const char* what) {
  if (v < 0 || v > INT_MAX) muon::detail::fail(std::string("muon::backend::Cuda::gemm: ") + what + " does not fit cuBLAS's int");
  return static_cast<int>(v);
}

// The cuBLAS handle of one backend copy, bound to the stream; with its workspace (so that
// cuBLAS allocates nothing inside a step).
struct Blas {
  cublasHandle_t handle = nullptr;
  void* workspace = nullptr;
  std::size_t workspace_bytes = 0;

  explicit Blas(cudaStream_t stream) {
    check(cublasCreate(&handle), "cublasCreate");
    const cublasStatus_t s = cublasSetStream(handle, stream);
    if (s != CUBLAS_STATUS_SUCCESS) {
      cublasDestroy(handle);
      check(s, "cublasSetStream");
    }
  }
  Blas(const Blas&) = delete;
  Blas& operator=(const Blas&) = delete;
  ~Blas() {
    if (handle) cublasDestroy(handle);
    if (workspace) cudaFree(workspace);
  }
  void reserve_workspace(std::size_t bytes) {
    if (bytes <= workspace_bytes) return;
    void* p = nullptr;
    check(cudaMalloc(&p, bytes), "cudaMalloc (cuBLAS workspace)");
    const cublasStatus_t s = cublasSetWorkspace(handle, p, bytes);
    if (s != CUBLAS_STATUS_SUCCESS) {
      cudaFree(p);
      check(s, "cublasSetWorkspace");
    }
    if (workspace) cudaFree(workspace);  // cudaFree waits for work that may still use it
    workspace = p;
    workspace_bytes = bytes;
  }
};

}  // namespace cuda_detail

template <class T>
class Cuda {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>,
                "muon::backend::Cuda: value_type must be float or double");

 public:
  using value_type = T;
  using accum_type = double;
  // Work is enqueued on a stream: the optimizer gives this backend one lane (backend::DeviceQueue).
  static constexpr bool enqueues_on_device = true;

  // cuBLAS's recommended workspace on Hopper (32 MiB), reserved with the first product.
  static constexpr std::size_t k_cublas_workspace_bytes = std::size_t{32} << 20;

  // Owning, zero-initialised device memory (cudaMalloc, zeroed on the stream).
  template <class U>
  class Buffer {
   public:
    Buffer() = default;
    Buffer(std::size_t n, cudaStream_t stream) : size_(n) {
      if (n == 0) return;
      void* p = nullptr;
      cuda_detail::check(cudaMalloc(&p, n * sizeof(U)), "cudaMalloc");
      data_ = static_cast<U*>(p);
      const cudaError_t e = cudaMemsetAsync(p, 0, n * sizeof(U), stream);
      if (e != cudaSuccess) {
        cudaFree(p);
        data_ = nullptr;
        cuda_detail::check(e, "cudaMemsetAsync");
      }
    }
    Buffer(Buffer&& o) noexcept : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
    Buffer& operator=(Buffer&& o) noexcept {
      if (this != &o) {
        release();
        data_ = std::exchange(o.data_, nullptr);
        size_ = std::exchange(o.size_, 0);
      }
      return *this;
    }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    ~Buffer() { release(); }

    [[nodiscard]] U* data() { return data_; }
    [[nodiscard]] const U* data() const { return data_; }
    [[nodiscard]] std::size_t size() const { return size_; }

   private:
    void release() noexcept {
      if (data_) cudaFree(data_);  // waits for the device: never inside a step
      data_ = nullptr;
      size_ = 0;
    }
    U* data_ = nullptr;
    std::size_t size_ = 0;
  };

  // Binds to `stream` (0: the legacy default stream) on the current device. Throws muon::Error
  // when there is no device or the stream is not valid.
  explicit Cuda(cudaStream_t stream = nullptr)
      : device_(cuda_detail::current_device()),
        cc_major_(cuda_detail::attribute(cudaDevAttrComputeCapabilityMajor, device_)),
        cc_minor_(cuda_detail::attribute(cudaDevAttrComputeCapabilityMinor, device_)),
        stream_(checked_stream(stream)),
        blas_(std::make_unique<cuda_detail::Blas>(stream_)) {}
  // A copy (a lane of the optimizer) shares the stream and has its own cuBLAS handle and scratch.
  Cuda(const Cuda& o)
      : device_(o.device_), cc_major_(o.cc_major_), cc_minor_(o.cc_minor_), stream_(o.stream_), blas_(std::make_unique<cuda_detail::Blas>(o.stream_)) {
    if (o.blas_) blas_->reserve_workspace(o.blas_->workspace_bytes);
  }
  Cuda& operator=(const Cuda& o) {
    if (this != &o) *this = Cuda(o);
    return *this;
  }
  Cuda(Cuda&&) noexcept = default;
  Cuda& operator=(Cuda&&) noexcept = default;
  ~Cuda() = default;

  [[nodiscard]] cudaStream_t stream() const { return stream_; }
  [[nodiscard]] int device() const { return device_; }
  [[nodiscard]] cublasHandle_t cublas_handle() const { return blas_->handle; }

  template <class U>
  [[nodiscard]] Buffer<U> allocate(std::size_t n) {
    return Buffer<U>(n, stream_);
  }

  // ---- Products ------------------------------------------------------------------------------
  void reserve_gemm(index_t, index_t, index_t) { blas_->reserve_workspace(k_cublas_workspace_bytes); }

  // C = alpha op(A) op(B) + beta C over row-major slices (cuBLAS strided-batched GEMM).
  void gemm(Trans ta, Trans tb, T alpha, MatrixView<const T> a, MatrixView<const T> b, T beta, MatrixView<T> c) {
    gemm_impl("gemm", ta, tb, alpha, a, b, beta, c);
  }

  void add_to_diagonal(MatrixView<T> c, T alpha) {
    const index_t d = c.rows < c.cols ? c.rows : c.cols;
    if (c.batch * d == 0) return;
    cuda_detail::add_to_diagonal_kernel<T>
        <<<cuda_detail::blocks_for(c.batch * d), cuda_detail::k_threads, 0, stream_>>>(c.data, c.batch, c.rows, c.cols, d,
                                                                                        alpha);
    cuda_detail::check_launch("muon::backend::Cuda::add_to_diagonal (kernel launch)");
  }

  // ---- bf16 products (Cuda<float>): bf16 operands, float accumulation and results ---------
  // What NewtonSchulz's Precision::bf16 runs on (backend::Bf16Products): tensor-core GEMMs
  // through cublasGemmStridedBatchedEx with CUBLAS_COMPUTE_32F.
  [[nodiscard]] std::string bf16_unavailable_reason() const
    requires std::is_same_v<T, float>
  {
    if (cc_major_ >= 8) return {};
    return "bf16 products need a GPU of compute capability 8.0 or newer; device " + std::to_string(device_) + " is " +
           std::to_string(cc_major_) + "." + std::to_string(cc_minor_);
  }
  void gemm(Trans ta, Trans tb, float alpha, MatrixView<const bfloat16> a, MatrixView<const bfloat16> b, float beta,
            MatrixView<float> c)
    requires std::is_same_v<T, float>
  {
    gemm_impl("gemm (bf16)", ta, tb, alpha, a, b, beta, c);
  }
  // C = alpha op(A) op(A)^T + beta C, exactly symmetric. cuBLAS has no bf16 symmetric product,
  // so this is a general product (no flops saved) whose lower triangle is then copied from the
  // upper one; C must be square and, when beta != 0, symmetric on entry.
  void syrk(Trans t, float alpha, MatrixView<const bfloat16> a, float beta, MatrixView<float> c)
    requires std::is_same_v<T, float>
  {
    gemm_impl("syrk (bf16)", t, t == Trans::no ? Trans::yes : Trans::no, alpha, a, a, beta, c);
    if (c.rows != c.cols) muon::detail::fail("muon::backend::Cuda::syrk: C is not square");
    if (c.empty()) return;
    cuda_detail::mirror_upper_kernel<float>
        <<<cuda_detail::blocks_for(c.size()), cuda_detail::k_threads, 0, stream_>>>(c.data, c.batch, c.rows);
    cuda_detail::check_launch("muon::backend::Cuda::syrk (mirror kernel launch)");
  }
  // dst = src rounded to bf16 (nearest even; NaN stays NaN), bit-identical to the CPU backends.
  void convert(MatrixView<const T> src, MatrixView<bfloat16> dst)
    requires std::is_same_v<T, float>
  {
    if (src.size() != dst.size()) muon::detail::fail("muon::backend::Cuda::convert: views of different sizes");
    if (src.empty()) return;
    static_assert(sizeof(bfloat16) == sizeof(std::uint16_t), "bfloat16 is stored as its 16 bits");
    cuda_detail::convert_bf16_kernel<T><<<cuda_detail::blocks_for(src.size()), cuda_detail::k_threads, 0, stream_>>>(
        src.data, reinterpret_cast<std::uint16_t*>(dst.data), src.size());
    cuda_detail::check_launch("muon::backend::Cuda::convert (kernel launch)");
  }

  // ---- Elementwise: one grid-stride kernel per call, calling the functor per element --------
  template <class F, class... In>
  void transform(MatrixView<T> out, F f, In... in) {
    static_assert((std::is_convertible_v<In, MatrixView<const T>> && ...),
                  "muon::backend::transform: inputs must be matrix views of value_type");
    check_sizes("transform", out, MatrixView<const T>(in)...);
    const index_t n = out.size();
    if (n == 0) return;
    cuda_detail::transform_kernel<T, F, std::conditional_t<true, T, In>...>
        <<<cuda_detail::blocks_for(n), cuda_detail::k_threads, 0, stream_>>>(out.data, n, f, MatrixView<const T>(in).data...);
    cuda_detail::check_launch("muon::backend::Cuda::transform (kernel launch)");
  }

  template <class F, class... In>
  void transform_slices(MatrixView<T> out, F f, In... in) {
    static_assert((std::is_convertible_v<In, MatrixView<const T>> && ...),
                  "muon::backend::transform_slices: inputs must be matrix views of value_type");
    check_sizes("transform_slices", out, MatrixView<const T>(in)...);
    const index_t n = out.size();
    if (n == 0) return;
    cuda_detail::transform_slices_kernel<T, F, std::conditional_t<true, T, In>...>
        <<<cuda_detail::blocks_for(n), cuda_detail::k_threads, 0, stream_>>>(out.data, n, out.slice_size(), f,
                                                                            MatrixView<const T>(in).data...);
    cuda_detail::check_launch("muon::backend::Cuda::transform_slices (kernel launch)");
  }

  template <class F, class... In>
  void transform_indexed(MatrixView<T> out, F f, In... in) {
    static_assert((std::is_convertible_v<In, MatrixView<const T>> && ...),
                  "muon::backend::transform_indexed: inputs must be matrix views of value_type");
    check_sizes("transform_indexed", out, MatrixView<const T>(in)...);
    const index_t n = out.size();
    if (n == 0) return;
    cuda_detail::transform_indexed_kernel<T, F, std::conditional_t<true, T, In>...>
        <<<cuda_detail::blocks_for(n), cuda_detail::k_threads, 0, stream_>>>(out.data, n, f, MatrixView<const T>(in).data...);
    cuda_detail::check_launch("muon::backend::Cuda::transform_indexed (kernel launch)");
  }

  // ---- Reductions: one result per slice, in double, into device memory ----------------------
  void frobenius_norms(MatrixView<const T> x, double* out) { reduce<cuda_detail::Reduce::norm>("frobenius_norms", x, nullptr, out); }
  void dots(MatrixView<const T> x, MatrixView<const T> y, double* out) {
    if (x.size() != y.size()) muon::detail::fail("muon::backend::Cuda::dots: views of different sizes");
    reduce<cuda_detail::Reduce::dot>("dots", x, y.data, out);
  }
  void max_abs(MatrixView<const T> x, double* out) { reduce<cuda_detail::Reduce::max_abs>("max_abs", x, nullptr, out); }
  void count_non_finite(MatrixView<const T> x, double* out) {
    reduce<cuda_detail::Reduce::count_non_finite>("count_non_finite", x, nullptr, out);
  }

  // ---- Host transfers (each waits for the stream: the host span is usable on return) ---------
  void copy_to_host(MatrixView<const T> src, std::span<T> dst) {
    if (static_cast<index_t>(dst.size()) != src.size()) muon::detail::fail("muon::backend::Cuda::copy_to_host: sizes differ");
    if (src.size() == 0) return;
    cuda_detail::check(cudaMemcpyAsync(dst.data(), src.data, dst.size_bytes(), cudaMemcpyDeviceToHost, stream_),
                       "cudaMemcpyAsync (device to host)");
    synchronize();
  }
  void copy_from_host(std::span<const T> src, MatrixView<T> dst) {
    if (static_cast<index_t>(src.size()) != dst.size()) muon::detail::fail("muon::backend::Cuda::copy_from_host: sizes differ");
    if (dst.size() == 0) return;
    cuda_detail::check(cudaMemcpyAsync(dst.data, src.data(), src.size_bytes(), cudaMemcpyHostToDevice, stream_),
                       "cudaMemcpyAsync (host to device)");
    synchronize();  // the host span may be a temporary
  }
  // The step's one host read (the NaN/Inf counts): waits for the work issued before it.
  void read(const double* src, std::span<double> dst) {
    if (dst.empty()) return;
    cuda_detail::check(cudaMemcpyAsync(dst.data(), src, dst.size_bytes(), cudaMemcpyDeviceToHost, stream_),
                       "cudaMemcpyAsync (read)");
    synchronize();
  }
  void synchronize() { cuda_detail::check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

  // cuBLAS's workspace and the reductions' partial results.
  [[nodiscard]] std::size_t scratch_bytes() const {
    return (blas_ ? blas_->workspace_bytes : 0) + partials_.size() * sizeof(double);
  }

 private:
  template <class... V>
  static void check_sizes(const char* what, MatrixView<T> out, V... in) {
    if (((in.size() != out.size()) || ...))
      muon::detail::fail(std::string("muon::backend::Cuda::") + what + ": views of different sizes");
  }

  // The products' one path. cuBLAS is column-major, and a row-major X is the column-major X^T
  // with the same leading dimension, so C^T = op(B)^T op(A)^T is computed: the operands swap
  // places and keep their transpose flags. U is T, or bfloat16 (float accumulation and results).
  template <class U>
  void gemm_impl(const char* what, Trans ta, Trans tb, T alpha, MatrixView<const U> a, MatrixView<const U> b, T beta,
                 MatrixView<T> c) {
    const index_t k = ta == Trans::no ? a.cols : a.rows;
    const bool shapes_agree = (ta == Trans::no ? a.rows : a.cols) == c.rows && (tb == Trans::no ? b.rows : b.cols) == k &&
                              (tb == Trans::no ? b.cols : b.rows) == c.cols && (a.batch == c.batch || a.batch == 1) &&
                              (b.batch == c.batch || b.batch == 1);
    if (!shapes_agree) muon::detail::fail(std::string("muon::backend::Cuda::") + what + ": operand shapes do not agree");
    if (c.empty()) return;
    if (k == 0) {  // C = beta C (cuBLAS would too, but keep beta == 0 from reading C)
      if (beta == T(0))
        transform(c, cuda_detail::Zero<T>{}, c);
      else
        transform(c, cuda_detail::Scale<T>{beta}, c);
      return;
    }
    const cublasOperation_t op_a = ta == Trans::no ? CUBLAS_OP_N : CUBLAS_OP_T;
    const cublasOperation_t op_b = tb == Trans::no ? CUBLAS_OP_N : CUBLAS_OP_T;
    const int m = cuda_detail::to_int(c.cols, "columns of C"), n = cuda_detail::to_int(c.rows, "rows of C"),
              kk = cuda_detail::to_int(k, "the inner dimension");
    const int lda = cuda_detail::to_int(a.cols, "A's row length"), ldb = cuda_detail::to_int(b.cols, "B's row length");
    const int batch = cuda_detail::to_int(c.batch, "the batch");
    const long long stride_a = a.batch == 1 ? 0 : a.slice_size(), stride_b = b.batch == 1 ? 0 : b.slice_size();
    const long long stride_c = c.slice_size();
    if constexpr (std::is_same_v<U, bfloat16>)
      cuda_detail::check(cublasGemmStridedBatchedEx(blas_->handle, op_b, op_a, m, n, kk, &alpha, b.data, CUDA_R_16BF, ldb,
                                                    stride_b, a.data, CUDA_R_16BF, lda, stride_a, &beta, c.data, CUDA_R_32F,
                                                    m, stride_c, batch, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                         "cublasGemmStridedBatchedEx (bf16 operands, float accumulation)");
    else if constexpr (std::is_same_v<T, float>)
      cuda_detail::check(cublasSgemmStridedBatched(blas_->handle, op_b, op_a, m, n, kk, &alpha, b.data, ldb, stride_b,
                                                   a.data, lda, stride_a, &beta, c.data, m, stride_c, batch),
                         "cublasSgemmStridedBatched");
    else
      cuda_detail::check(cublasDgemmStridedBatched(blas_->handle, op_b, op_a, m, n, kk, &alpha, b.data, ldb, stride_b,
                                                   a.data, lda, stride_a, &beta, c.data, m, stride_c, batch),
                         "cublasDgemmStridedBatched");
  }

  template <cuda_detail::Reduce R>
  void reduce(const char* what, MatrixView<const T> x, const T* y, double* out) {
    if (x.batch == 0) return;
    const index_t len = x.slice_size();
    const index_t chunks = cuda_detail::reduce_chunks(x.batch, len);
    if (chunks == 1) {
      cuda_detail::reduce_kernel<R, T>
          <<<cuda_detail::slice_grid(x.batch), cuda_detail::k_reduce_threads, 0, stream_>>>(x.data, y, x.batch, len, out);
      cuda_detail::check_launch(what);
      return;
    }
    // Few, large slices: every SM gets a chunk, then one block per slice adds the chunks up.
    const index_t chunk_len = (len + chunks - 1) / chunks;
    cuda_detail::reduce_chunks_kernel<R, T>
        <<<dim3(static_cast<unsigned>(chunks), static_cast<unsigned>(x.batch)), cuda_detail::k_reduce_threads, 0, stream_>>>(
            x.data, y, len, chunk_len, partials_.data());
    cuda_detail::check_launch(what);
    cuda_detail::reduce_partials_kernel<R, T>
        <<<static_cast<unsigned>(x.batch), cuda_detail::k_reduce_threads, 0, stream_>>>(partials_.data(), chunks, x.data, len, out);
    cuda_detail::check_launch(what);
  }

  static cudaStream_t checked_stream(cudaStream_t stream) {
    unsigned flags = 0;
    if (stream != nullptr) cuda_detail::check(cudaStreamGetFlags(stream, &flags), "cudaStreamGetFlags (the given stream)");
    return stream;
  }

  int device_ = 0;  // first: the device check runs before anything touches the stream
  int cc_major_ = 0, cc_minor_ = 0;  // the device's compute capability
  cudaStream_t stream_ = nullptr;
  std::unique_ptr<cuda_detail::Blas> blas_;
  // Partial results of reductions over large slices (fixed size: allocated once, here).
  Buffer<double> partials_{static_cast<std::size_t>(cuda_detail::k_reduce_partials), stream_};
};

static_assert(Backend<Cuda<float>>, "muon::backend::Cuda<float> must satisfy muon::backend::Backend");
static_assert(Backend<Cuda<double>>, "muon::backend::Cuda<double> must satisfy muon::backend::Backend");
static_assert(Bf16Products<Cuda<float>>, "muon::backend::Cuda<float> has bf16 products (NewtonSchulz precision bf16)");
static_assert(DeviceQueue<Cuda<float>> && DeviceQueue<Cuda<double>>, "the CUDA backend enqueues on a stream");

}  // namespace muon::backend
