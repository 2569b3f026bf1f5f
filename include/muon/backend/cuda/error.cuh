#pragma once
// CUDA and cuBLAS status codes turned into muon::Error naming the call that failed, so that a
// missing device, a bad stream or an exhausted device memory reads as a sentence, not a crash.
// Host code only (device code never throws).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

#include "muon/core/error.hpp"

namespace muon::backend::cuda_detail {

[[nodiscard]] inline const char* cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "unknown cuBLAS status";
  }
}

// Throws muon::Error "muon: <call> failed: <cudaErrorName>: <description>" unless e is success.
inline void check(cudaError_t e, const char* call) {
  if (e == cudaSuccess) return;
  muon::detail::fail(std::string(call) + " failed: " + cudaGetErrorName(e) + ": " + cudaGetErrorString(e));
}

inline void check(cublasStatus_t s, const char* call) {
  if (s == CUBLAS_STATUS_SUCCESS) return;
  muon::detail::fail(std::string(call) + " failed: " + cublas_status_name(s));
}

// A kernel launch reports a bad configuration through cudaGetLastError (no synchronisation).
inline void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace muon::backend::cuda_detail
