#pragma once
// Products through oneDNN's matmul primitive (oneDNN 2.x C API): float x float -> float and
// bfloat16 x bfloat16 -> float (float accumulation). Included only when the build found oneDNN
// (MUON_WITH_ONEDNN, set by the muon::eigen target).
//
// Why the matmul primitive and not dnnl_sgemm: on the CPUs tried (Zen 5, Xeon) it keeps 85-95 %
// of the GEMM rate down to the 128-row panels that symmetric products are cut into, where
// dnnl_sgemm drops to 40-80 %, and it runs bf16 on AVX512_BF16 / AMX. It picks its kernels at
// run time (JIT), whatever flags the user's program was compiled with.
//
// Primitives are created on first use of a (shape, strides, alpha, beta) and kept per thread,
// with their memory objects (only the data pointers change between calls) and a scratchpad we
// own: after the first step a product creates nothing. oneDNN still does some bookkeeping
// allocations inside each execute (docs/performance.md gives the count).
//
// Threads: oneDNN's CPU runtime here is OpenMP. muon splits products over its own pool and
// calls oneDNN single-threaded; the OpenMP thread count of the calling thread is set to 1 for
// the call and restored after (omp_* are looked up at run time, so muon adds no OpenMP flags to
// the user's build).
#include <dlfcn.h>
#include <oneapi/dnnl/dnnl.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <unordered_map>

#include "muon/backend/concept.hpp"
#include "muon/backend/cpu/library_call.hpp"
#include "muon/core/error.hpp"
#include "muon/core/low_precision.hpp"

#if DNNL_VERSION_MAJOR != 2
#error "muon: the oneDNN product path needs oneDNN 2.x (configure without oneDNN, or with MUON_GEMM=openblas)"
#endif

namespace muon::backend::cpu::onednn {

namespace detail {

inline void check(dnnl_status_t s, const char* call) {
  if (s != dnnl_success) muon::detail::fail(std::string("oneDNN: ") + call + " failed with status " + std::to_string(static_cast<int>(s)));
}

inline dnnl_engine_t engine() {
  static dnnl_engine_t e = [] {
    dnnl_engine_t x = nullptr;
    check(dnnl_engine_create(&x, dnnl_cpu, 0), "dnnl_engine_create");
    return x;
  }();
  return e;
}

// omp_get_max_threads / omp_set_num_threads of the OpenMP runtime oneDNN brought in, if any.
struct OmpApi {
  int (*get_max_threads)() = nullptr;
  void (*set_num_threads)(int) = nullptr;
};
inline const OmpApi& omp_api() {
  static const OmpApi api = [] {
    OmpApi a;
    a.get_max_threads = reinterpret_cast<int (*)()>(::dlsym(RTLD_DEFAULT, "omp_get_max_threads"));
    a.set_num_threads = reinterpret_cast<void (*)(int)>(::dlsym(RTLD_DEFAULT, "omp_set_num_threads"));
    if (!a.get_max_threads || !a.set_num_threads) a = OmpApi{};
    return a;
  }();
  return api;
}

// Runs oneDNN on the calling thread only, for the guard's lifetime.
class SingleThreaded {
 public:
  SingleThreaded() {
    const OmpApi& api = omp_api();
    if (api.get_max_threads) {
      saved_ = api.get_max_threads();
      if (saved_ != 1) api.set_num_threads(1);
    }
  }
  ~SingleThreaded() {
    if (saved_ > 1) omp_api().set_num_threads(saved_);
  }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int saved_ = 1;
};

struct Key {
  int in_type, ta, tb;
  std::int64_t m, n, k, lda, ldb, ldc;
  std::int64_t batch, a_stride, b_stride, c_stride;  // slice strides; 0: shared by every slice
  std::uint32_t alpha_is_one, beta_bits;
  bool operator==(const Key&) const = default;
};
struct KeyHash {
  std::size_t operator()(const Key& k) const {
    std::uint64_t h = 1469598103934665603ull;
    auto mix = [&h](std::uint64_t v) { h = (h ^ v) * 1099511628211ull; };
    mix(static_cast<std::uint64_t>(k.in_type)); mix(static_cast<std::uint64_t>(k.ta)); mix(static_cast<std::uint64_t>(k.tb));
    mix(static_cast<std::uint64_t>(k.m)); mix(static_cast<std::uint64_t>(k.n)); mix(static_cast<std::uint64_t>(k.k));
    mix(static_cast<std::uint64_t>(k.lda)); mix(static_cast<std::uint64_t>(k.ldb)); mix(static_cast<std::uint64_t>(k.ldc));
    mix(static_cast<std::uint64_t>(k.batch)); mix(static_cast<std::uint64_t>(k.a_stride));
    mix(static_cast<std::uint64_t>(k.b_stride)); mix(static_cast<std::uint64_t>(k.c_stride));
    mix(k.alpha_is_one); mix(k.beta_bits);
    return static_cast<std::size_t>(h);
  }
};

// One primitive with the memory objects it executes on.
class Matmul {
 public:
  Matmul(const Key& key, dnnl_data_type_t in_type, float beta) {
    dnnl_memory_desc_t a_md, b_md, c_md, s_md;
    // A batch is a leading dimension; an operand shared by every slice has batch 1 there
    // (oneDNN broadcasts it).
    const std::int64_t a_batch = key.a_stride ? key.batch : 1, b_batch = key.b_stride ? key.batch : 1;
    const dnnl_dims_t a_dims{a_batch, key.m, key.k}, b_dims{b_batch, key.k, key.n}, c_dims{key.batch, key.m, key.n};
    const dnnl_dims_t a_strides{key.a_stride ? key.a_stride : key.m * key.k, key.ta ? 1 : key.lda, key.ta ? key.lda : 1};
    const dnnl_dims_t b_strides{key.b_stride ? key.b_stride : key.k * key.n, key.tb ? 1 : key.ldb, key.tb ? key.ldb : 1};
    const dnnl_dims_t c_strides{key.c_stride, key.ldc, 1};
    check(dnnl_memory_desc_init_by_strides(&a_md, 3, a_dims, in_type, a_strides), "memory_desc_init (A)");
    check(dnnl_memory_desc_init_by_strides(&b_md, 3, b_dims, in_type, b_strides), "memory_desc_init (B)");
    check(dnnl_memory_desc_init_by_strides(&c_md, 3, c_dims, dnnl_f32, c_strides), "memory_desc_init (C)");
    dnnl_matmul_desc_t desc;
    check(dnnl_matmul_desc_init(&desc, &a_md, &b_md, nullptr, &c_md), "dnnl_matmul_desc_init");

    dnnl_primitive_attr_t attr = nullptr;
    check(dnnl_primitive_attr_create(&attr), "dnnl_primitive_attr_create");
    std::unique_ptr<dnnl_primitive_attr, decltype(&dnnl_primitive_attr_destroy)> attr_guard(attr, &dnnl_primitive_attr_destroy);
    check(dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user), "set_scratchpad_mode");
    has_scale_ = !key.alpha_is_one;
    if (has_scale_) {
      const float runtime = DNNL_RUNTIME_F32_VAL;
      check(dnnl_primitive_attr_set_output_scales(attr, 1, 0, &runtime), "set_output_scales");
    }
    if (beta != 0.0f) {
      dnnl_post_ops_t ops = nullptr;
      check(dnnl_post_ops_create(&ops), "dnnl_post_ops_create");
      std::unique_ptr<dnnl_post_ops, decltype(&dnnl_post_ops_destroy)> ops_guard(ops, &dnnl_post_ops_destroy);
      check(dnnl_post_ops_append_sum(ops, beta), "dnnl_post_ops_append_sum");
      check(dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops");
    }
    dnnl_primitive_desc_t pd = nullptr;
    check(dnnl_primitive_desc_create(&pd, &desc, attr, engine(), nullptr), "dnnl_primitive_desc_create (matmul)");
    std::unique_ptr<dnnl_primitive_desc, decltype(&dnnl_primitive_desc_destroy)> pd_guard(pd, &dnnl_primitive_desc_destroy);
    check(dnnl_primitive_create(&prim_, pd), "dnnl_primitive_create (matmul)");
    s_md = *dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    scratch_bytes_ = dnnl_memory_desc_get_size(&s_md);
    const char* info = nullptr;
    if (dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &info) == dnnl_success && info) impl_ = info;

    check(dnnl_memory_create(&a_, &a_md, engine(), DNNL_MEMORY_NONE), "memory_create (A)");
    check(dnnl_memory_create(&b_, &b_md, engine(), DNNL_MEMORY_NONE), "memory_create (B)");
    check(dnnl_memory_create(&c_, &c_md, engine(), DNNL_MEMORY_NONE), "memory_create (C)");
    check(dnnl_memory_create(&s_, &s_md, engine(), DNNL_MEMORY_NONE), "memory_create (scratchpad)");
    dnnl_memory_desc_t scale_md;
    const dnnl_dims_t one{1};
    check(dnnl_memory_desc_init_by_tag(&scale_md, 1, one, dnnl_f32, dnnl_a), "memory_desc_init (scale)");
    check(dnnl_memory_create(&scale_, &scale_md, engine(), &scale_value_), "memory_create (scale)");
  }
  ~Matmul() {
    for (dnnl_memory_t m : {a_, b_, c_, s_, scale_})
      if (m) dnnl_memory_destroy(m);
    if (prim_) dnnl_primitive_destroy(prim_);
  }
  Matmul(const Matmul&) = delete;
  Matmul& operator=(const Matmul&) = delete;

  [[nodiscard]] std::size_t scratch_bytes() const { return scratch_bytes_; }
  [[nodiscard]] const std::string& impl() const { return impl_; }

  void execute(dnnl_stream_t stream, const void* a, const void* b, float* c, float alpha, void* scratch) {
    check(dnnl_memory_set_data_handle(a_, const_cast<void*>(a)), "set_data_handle (A)");
    check(dnnl_memory_set_data_handle(b_, const_cast<void*>(b)), "set_data_handle (B)");
    check(dnnl_memory_set_data_handle(c_, c), "set_data_handle (C)");
    check(dnnl_memory_set_data_handle(s_, scratch), "set_data_handle (scratchpad)");
    scale_value_ = alpha;
    const dnnl_exec_arg_t args[] = {{DNNL_ARG_SRC, a_},
                                    {DNNL_ARG_WEIGHTS, b_},
                                    {DNNL_ARG_DST, c_},
                                    {DNNL_ARG_SCRATCHPAD, s_},
                                    {DNNL_ARG_ATTR_OUTPUT_SCALES, scale_}};
    dnnl_status_t status = dnnl_success;
    {
      InLibrary library;
      status = dnnl_primitive_execute(prim_, stream, has_scale_ ? 5 : 4, args);
      if (status == dnnl_success) status = dnnl_stream_wait(stream);
    }
    check(status, "dnnl_primitive_execute (matmul)");
  }

 private:
  dnnl_primitive_t prim_ = nullptr;
  dnnl_memory_t a_ = nullptr, b_ = nullptr, c_ = nullptr, s_ = nullptr, scale_ = nullptr;
  float scale_value_ = 1.0f;
  bool has_scale_ = false;
  std::size_t scratch_bytes_ = 0;
  std::string impl_;
};

struct AlignedFree {
  void operator()(void* p) const { ::operator delete(p, std::align_val_t{64}); }
};

// What each thread keeps: its stream, its primitives, its scratchpad.
class ThreadCache {
 public:
  ThreadCache() { check(dnnl_stream_create(&stream_, engine(), dnnl_stream_default_flags), "dnnl_stream_create"); }
  ~ThreadCache() {
    prims_.clear();
    if (stream_) dnnl_stream_destroy(stream_);
  }
  ThreadCache(const ThreadCache&) = delete;
  ThreadCache& operator=(const ThreadCache&) = delete;

  Matmul& get(const Key& key, dnnl_data_type_t in_type, float beta) {
    auto it = prims_.find(key);
    if (it == prims_.end()) it = prims_.emplace(key, std::make_unique<Matmul>(key, in_type, beta)).first;
    return *it->second;
  }
  void* scratch(std::size_t bytes) {
    if (bytes > scratch_size_) {
      scratch_.reset(static_cast<char*>(::operator new(bytes, std::align_val_t{64})));
      scratch_size_ = bytes;
    }
    return scratch_.get();
  }
  [[nodiscard]] dnnl_stream_t stream() const { return stream_; }

 private:
  dnnl_stream_t stream_ = nullptr;
  std::unordered_map<Key, std::unique_ptr<Matmul>, KeyHash> prims_;
  std::unique_ptr<char, AlignedFree> scratch_;
  std::size_t scratch_size_ = 0;
};

inline ThreadCache& thread_cache() {
  thread_local ThreadCache cache;
  return cache;
}

}  // namespace detail

// Whether bf16 products run on bf16 hardware here (AVX512_BF16 or AMX, as oneDNN sees it:
// ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA lower it).
[[nodiscard]] inline bool has_bf16_hardware() {
  const unsigned isa = static_cast<unsigned>(dnnl_get_effective_cpu_isa());
  const unsigned bf16 = static_cast<unsigned>(dnnl_cpu_isa_avx512_core_bf16);
  return (isa & bf16) == bf16;
}

// C (m x n, row-major, leading dimension ldc) = alpha op(A) op(B) + beta C, where A and B are
// float or bfloat16 (row-major with leading dimensions lda, ldb; transposed as asked), for
// `batch` slices at the given slice strides (a stride of 0: one operand for every slice).
template <class In>
void matmul(Trans ta, Trans tb, index_t m, index_t n, index_t k, float alpha, const In* a, index_t lda, const In* b,
            index_t ldb, float beta, float* c, index_t ldc, index_t batch = 1, index_t a_stride = 0,
            index_t b_stride = 0, index_t c_stride = 0) {
  static_assert(std::is_same_v<In, float> || std::is_same_v<In, bfloat16>, "oneDNN products take float or bfloat16");
  constexpr dnnl_data_type_t in_type = std::is_same_v<In, float> ? dnnl_f32 : dnnl_bf16;
  std::uint32_t beta_bits = 0;
  std::memcpy(&beta_bits, &beta, sizeof(beta));
  const detail::Key key{static_cast<int>(in_type),
                        ta == Trans::yes,
                        tb == Trans::yes,
                        m, n, k, lda, ldb, ldc,
                        batch,
                        batch > 1 ? a_stride : 0,
                        batch > 1 ? b_stride : 0,
                        batch > 1 ? c_stride : m * ldc,
                        alpha == 1.0f,
                        beta_bits};
  detail::SingleThreaded one_thread;
  detail::ThreadCache& cache = detail::thread_cache();
  detail::Matmul& mm = cache.get(key, in_type, beta);
  mm.execute(cache.stream(), a, b, c, alpha, cache.scratch(mm.scratch_bytes()));
}

}  // namespace muon::backend::cpu::onednn
