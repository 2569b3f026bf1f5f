# muon::nccl: the NCCL communicator of muon's distributed optimizer
# (include/muon/distributed/nccl.hpp, header-only host code over NCCL and the CUDA runtime).
# Created when the CUDA toolkit and NCCL (nccl.h and libnccl) are found and MUON_NCCL is ON.
#
#   MUON_NCCL        ON (default): build muon::nccl where NCCL is found; OFF: never.
#   NCCL_ROOT        where to look first (else the CUDA toolkit's directories).
# Sets MUON_HAVE_NCCL when the target exists.

include_guard(GLOBAL)

option(MUON_NCCL "Build muon::nccl (the NCCL communicator of muon::distributed) when NCCL is found" ON)
set(MUON_HAVE_NCCL FALSE)

if(NOT MUON_NCCL)
  message(STATUS "muon: MUON_NCCL is OFF, muon::nccl will not be available")
  return()
endif()

find_package(CUDAToolkit QUIET)
if(NOT TARGET CUDA::cudart)
  message(STATUS "muon: no CUDA toolkit found, muon::nccl will not be available")
  return()
endif()
find_path(MUON_NCCL_INCLUDE_DIR nccl.h
  HINTS ${NCCL_ROOT} ENV NCCL_ROOT ${CUDAToolkit_INCLUDE_DIRS}
  PATH_SUFFIXES include)
find_library(MUON_NCCL_LIBRARY nccl
  HINTS ${NCCL_ROOT} ENV NCCL_ROOT ${CUDAToolkit_LIBRARY_DIR}
  PATH_SUFFIXES lib lib64)
if(NOT MUON_NCCL_INCLUDE_DIR OR NOT MUON_NCCL_LIBRARY)
  message(STATUS "muon: NCCL (nccl.h and libnccl) not found, muon::nccl will not be available")
  return()
endif()

add_library(muon_nccl INTERFACE)
add_library(muon::nccl ALIAS muon_nccl)
# NCCL has no CMake package of its own: its header directory and library go in by path.
target_include_directories(muon_nccl SYSTEM INTERFACE "${MUON_NCCL_INCLUDE_DIR}")
target_link_libraries(muon_nccl INTERFACE muon CUDA::cudart "${MUON_NCCL_LIBRARY}")
target_compile_definitions(muon_nccl INTERFACE MUON_WITH_NCCL=1)
set_target_properties(muon_nccl PROPERTIES EXPORT_NAME nccl)
list(APPEND _muon_export_targets muon_nccl)
if(NOT MUON_CONFIG_DEPENDENCIES MATCHES "find_dependency\\(CUDAToolkit\\)")
  string(APPEND MUON_CONFIG_DEPENDENCIES "find_dependency(CUDAToolkit)\n")
endif()
set(MUON_HAVE_NCCL TRUE)
message(STATUS "muon: NCCL found (${MUON_NCCL_LIBRARY}), muon::nccl enabled")
