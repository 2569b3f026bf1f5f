# The CUDA backend's target, muon::cuda (header-only: include/muon/backend/cuda/*.cuh, compiled
# by the user's nvcc). Created when a CUDA compiler and toolkit are found and MUON_CUDA is ON.
#
#   MUON_CUDA                 ON (default): build muon::cuda where CUDA is found; OFF: never.
#   MUON_CUDA_ARCHITECTURES   default for CMAKE_CUDA_ARCHITECTURES when that is not set:
#                             "90-real;90-virtual" (Hopper code plus PTX the driver can JIT for
#                             newer GPUs).
# Sets MUON_HAVE_CUDA when the target exists.

include_guard(GLOBAL)
include(CheckLanguage)

option(MUON_CUDA "Build muon::cuda (the CUDA backend) when a CUDA toolkit is found" ON)
set(MUON_CUDA_ARCHITECTURES "90-real;90-virtual" CACHE STRING
    "CUDA architectures for muon's CUDA code when CMAKE_CUDA_ARCHITECTURES is not set")
set(MUON_HAVE_CUDA FALSE)

if(NOT MUON_CUDA)
  message(STATUS "muon: MUON_CUDA is OFF, muon::cuda will not be available")
  return()
endif()

# nvcc uses the project's C++ compiler as its host compiler, unless told otherwise.
if(NOT DEFINED CMAKE_CUDA_HOST_COMPILER AND NOT DEFINED ENV{CUDAHOSTCXX} AND CMAKE_CXX_COMPILER)
  set(CMAKE_CUDA_HOST_COMPILER "${CMAKE_CXX_COMPILER}")
endif()
check_language(CUDA)
if(NOT CMAKE_CUDA_COMPILER)
  message(STATUS "muon: no CUDA compiler found, muon::cuda will not be available")
  return()
endif()
if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
  set(CMAKE_CUDA_ARCHITECTURES "${MUON_CUDA_ARCHITECTURES}")
endif()
enable_language(CUDA)
find_package(CUDAToolkit QUIET)
if(NOT TARGET CUDA::cudart OR NOT TARGET CUDA::cublas OR NOT TARGET CUDA::cublasLt)
  message(STATUS "muon: CUDA compiler found but not cudart / cuBLAS / cuBLASLt, muon::cuda will not be available")
  return()
endif()

add_library(muon_cuda INTERFACE)
add_library(muon::cuda ALIAS muon_cuda)
target_link_libraries(muon_cuda INTERFACE muon CUDA::cudart CUDA::cublas CUDA::cublasLt)
if("cuda_std_20" IN_LIST CMAKE_CUDA_COMPILE_FEATURES)
  target_compile_features(muon_cuda INTERFACE cuda_std_20)
else()  # CMake older than the nvcc (3.25 does not know nvcc 13's dialects)
  target_compile_options(muon_cuda INTERFACE "$<$<COMPILE_LANGUAGE:CUDA>:-std=c++20>")
endif()
# Functors call constexpr host functions (std::min, numeric_limits) from device code; #554 is a
# false positive of nvcc's front end on MatrixView's constrained conversion operator.
target_compile_options(muon_cuda INTERFACE
  "$<$<COMPILE_LANGUAGE:CUDA>:--expt-relaxed-constexpr;-diag-suppress=554>")
target_compile_definitions(muon_cuda INTERFACE MUON_WITH_CUDA=1)
set_target_properties(muon_cuda PROPERTIES EXPORT_NAME cuda)
list(APPEND _muon_export_targets muon_cuda)
string(APPEND MUON_CONFIG_DEPENDENCIES "find_dependency(CUDAToolkit)\n")
set(MUON_HAVE_CUDA TRUE)
message(STATUS "muon: CUDA ${CMAKE_CUDA_COMPILER_VERSION} found, muon::cuda enabled "
               "(architectures: ${CMAKE_CUDA_ARCHITECTURES})")
