#pragma once
// Products through OpenBLAS (float and double), included only when the build found OpenBLAS
// (MUON_WITH_OPENBLAS, set by the muon::eigen target).
//
// Declared here rather than through <cblas.h>: OpenBLAS's header puts a global `bfloat16`
// typedef into every program that includes it. The declarations are the Fortran BLAS ones,
// exactly as Eigen's own (Eigen/src/misc/blas.h), so they agree with EIGEN_USE_BLAS builds.
//
// OpenBLAS has its own thread pool; muon splits products over its pool instead, so each call
// runs OpenBLAS with one thread and restores its previous count after. That count is
// process-wide in OpenBLAS: a trainer calling OpenBLAS from another thread at the same moment
// would run single-threaded for that moment. OpenBLAS picks its kernels at run time, but
// OPENBLAS_CORETYPE overrides that choice (e.g. Haswell kernels, half the AVX-512 rate):
// docs/performance.md shows the difference.
#include <type_traits>

#include "muon/backend/concept.hpp"
#include "muon/backend/cpu/library_call.hpp"

extern "C" {
int sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
           const float*, const int*, const float*, float*, const int*);
int dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
           const double*, const int*, const double*, double*, const int*);
int openblas_get_num_threads(void);
void openblas_set_num_threads(int num_threads);
}

namespace muon::backend::cpu::openblas {

class SingleThreaded {
 public:
  SingleThreaded() : saved_(openblas_get_num_threads()) {
    if (saved_ != 1) openblas_set_num_threads(1);
  }
  ~SingleThreaded() {
    if (saved_ > 1) openblas_set_num_threads(saved_);
  }
  SingleThreaded(const SingleThreaded&) = delete;
  SingleThreaded& operator=(const SingleThreaded&) = delete;

 private:
  int saved_;
};

// Row-major C (m x n) = alpha op(A) op(B) + beta C. Fortran BLAS is column-major, where the
// same memory holds C^T = op(B)^T op(A)^T: so B goes first.
template <class T>
void gemm(Trans ta, Trans tb, index_t m, index_t n, index_t k, T alpha, const T* a, index_t lda, const T* b, index_t ldb,
          T beta, T* c, index_t ldc) {
  const char oa = ta == Trans::yes ? 'T' : 'N', ob = tb == Trans::yes ? 'T' : 'N';
  const int im = static_cast<int>(m), in = static_cast<int>(n), ik = static_cast<int>(k);
  const int ilda = static_cast<int>(lda), ildb = static_cast<int>(ldb), ildc = static_cast<int>(ldc);
  SingleThreaded one_thread;
  InLibrary library;
  if constexpr (std::is_same_v<T, float>)
    sgemm_(&ob, &oa, &in, &im, &ik, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
  else
    dgemm_(&ob, &oa, &in, &im, &ik, &alpha, b, &ildb, a, &ilda, &beta, c, &ildc);
}

}  // namespace muon::backend::cpu::openblas
