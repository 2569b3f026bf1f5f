# Which library runs the CPU backends' matrix products (include/muon/backend/cpu/products.hpp),
# for every CPU backend target (muon::eigen, muon::xtensor) alike.
#
# The choice reaches the user's program through the backend target only: a compile definition
# of muon's own (MUON_WITH_ONEDNN / MUON_WITH_OPENBLAS) and the library to link. Nothing changes
# how the user's own Eigen code compiles (no EIGEN_USE_BLAS, no -fopenmp, no -march).
#
#   oneDNN 2.x (Debian: libdnnl-dev)     float and bf16 products, kernels chosen at run time
#   OpenBLAS (Debian: libopenblas-dev)   double products (and float without oneDNN)
#   built-in                             the backend's own kernel: Eigen's (user's compile flags) or
#                                        xtensor-blas's BLAS binding
#
# MUON_PRODUCTS = auto | onednn | openblas | builtin (auto: every library found is used).

set(MUON_PRODUCT_LIBRARIES "" CACHE INTERNAL "product libraries muon's CPU backend links")

function(muon_link_product_libraries target)
  set(_want "${MUON_PRODUCTS}")
  if(NOT _want MATCHES "^(auto|onednn|openblas|builtin)$")
    message(FATAL_ERROR "muon: MUON_PRODUCTS must be auto, onednn, openblas or builtin, got '${_want}'")
  endif()
  set(_libs "")

  if(_want STREQUAL "auto" OR _want STREQUAL "onednn")
    # Found by header and library, not by dnnl-config.cmake: Debian's requires OpenCL
    # development files for oneDNN's GPU runtime, which the CPU path does not use.
    find_path(MUON_ONEDNN_INCLUDE_DIR oneapi/dnnl/dnnl.h)
    find_library(MUON_ONEDNN_LIBRARY NAMES dnnl)
    set(_dnnl_major "")
    if(MUON_ONEDNN_INCLUDE_DIR AND EXISTS "${MUON_ONEDNN_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h")
      file(STRINGS "${MUON_ONEDNN_INCLUDE_DIR}/oneapi/dnnl/dnnl_version.h" _v REGEX "define DNNL_VERSION_(MAJOR|MINOR|PATCH) ")
      string(REGEX REPLACE ".*DNNL_VERSION_MAJOR ([0-9]+).*" "\\1" _dnnl_major "${_v}")
      string(REGEX REPLACE ".*DNNL_VERSION_MINOR ([0-9]+).*" "\\1" _dnnl_minor "${_v}")
      string(REGEX REPLACE ".*DNNL_VERSION_PATCH ([0-9]+).*" "\\1" _dnnl_patch "${_v}")
    endif()
    if(MUON_ONEDNN_LIBRARY AND _dnnl_major STREQUAL "2")
      if(NOT TARGET muon_onednn)
        add_library(muon_onednn INTERFACE)
        target_include_directories(muon_onednn INTERFACE "${MUON_ONEDNN_INCLUDE_DIR}")
        target_link_libraries(muon_onednn INTERFACE "${MUON_ONEDNN_LIBRARY}" ${CMAKE_DL_LIBS})
        set_target_properties(muon_onednn PROPERTIES EXPORT_NAME onednn)
      endif()
      target_link_libraries(${target} INTERFACE muon_onednn)
      target_compile_definitions(${target} INTERFACE MUON_WITH_ONEDNN=1)
      list(APPEND _libs "oneDNN ${_dnnl_major}.${_dnnl_minor}.${_dnnl_patch}")
    elseif(_want STREQUAL "onednn")
      message(FATAL_ERROR "muon: MUON_PRODUCTS=onednn but oneDNN 2.x was not found (Debian 12: libdnnl-dev)")
    elseif(MUON_ONEDNN_LIBRARY)
      message(STATUS "muon: oneDNN ${_dnnl_major}.x found; the product path needs 2.x, not using it")
    endif()
  endif()

  if(_want STREQUAL "auto" OR _want STREQUAL "openblas")
    find_package(OpenBLAS CONFIG QUIET)
    if(OpenBLAS_FOUND AND OpenBLAS_LIBRARIES)
      if(NOT TARGET muon_openblas)
        add_library(muon_openblas INTERFACE)
        target_include_directories(muon_openblas INTERFACE "${OpenBLAS_INCLUDE_DIRS}")
        target_link_libraries(muon_openblas INTERFACE "${OpenBLAS_LIBRARIES}")
        set_target_properties(muon_openblas PROPERTIES EXPORT_NAME openblas)
      endif()
      target_link_libraries(${target} INTERFACE muon_openblas)
      target_compile_definitions(${target} INTERFACE MUON_WITH_OPENBLAS=1)
      list(APPEND _libs "OpenBLAS ${OpenBLAS_VERSION}")
    elseif(_want STREQUAL "openblas")
      message(FATAL_ERROR "muon: MUON_PRODUCTS=openblas but OpenBLAS was not found (Debian: libopenblas-dev)")
    endif()
  endif()

  # Called once per CPU backend target (muon::eigen, muon::xtensor); the choice is the same, so
  # it is reported once.
  get_property(_reported GLOBAL PROPERTY MUON_PRODUCTS_REPORTED)
  set_property(GLOBAL PROPERTY MUON_PRODUCTS_REPORTED TRUE)
  if(_reported)
  elseif(_libs)
    string(REPLACE ";" ", " _shown "${_libs}")
    message(STATUS "muon: matrix products on ${_shown} (MUON_PRODUCTS=${_want})")
  else()
    message(STATUS "muon: matrix products on Eigen's built-in kernel (no oneDNN or OpenBLAS found, or MUON_PRODUCTS=builtin)")
  endif()
  set(MUON_PRODUCT_LIBRARIES "${_libs}" CACHE INTERNAL "product libraries muon's CPU backend links")
endfunction()
