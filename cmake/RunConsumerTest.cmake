# Proves that a downstream project can consume muon.
#
#   cmake -DMODE=install|subdirectory
#         -DMUON_SOURCE_DIR=... -DMUON_BINARY_DIR=... -DCONSUMER_SOURCE_DIR=...
#         -DWORK_DIR=... -DEXPECTED_VERSION=... -DGENERATOR=... -DCXX_COMPILER=...
#         [-DCONFIG=...] [-DGENERATOR_PLATFORM=...] [-DGENERATOR_TOOLSET=...]
#         [-DMAKE_PROGRAM=...] [-DEIGEN3_DIR=...] [-DEXPECTED_MATH_ERRNO=on|off]
#         -P RunConsumerTest.cmake
#
# install:      cmake --install MUON_BINARY_DIR into WORK_DIR/prefix, then configure
#               CONSUMER_SOURCE_DIR with CMAKE_PREFIX_PATH=WORK_DIR/prefix.
# subdirectory: configure CONSUMER_SOURCE_DIR with -DMUON_SOURCE_DIR=...
# Both then build the consumer and run it; any error fails the test.

foreach(var MODE MUON_SOURCE_DIR MUON_BINARY_DIR CONSUMER_SOURCE_DIR WORK_DIR
            EXPECTED_VERSION GENERATOR CXX_COMPILER)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "RunConsumerTest: ${var} is not set")
  endif()
endforeach()

function(run step)
  string(REPLACE ";" " " pretty "${ARGN}")
  message(STATUS "[${step}] ${pretty}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT rc EQUAL 0)
    message("${out}")
    message(FATAL_ERROR "RunConsumerTest(${MODE}): step '${step}' failed (${rc})")
  endif()
  set(step_output "${out}" PARENT_SCOPE)
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
set(build "${WORK_DIR}/build")

set(config_args "")
set(build_type_args "")
if(NOT "${CONFIG}" STREQUAL "")
  set(config_args --config "${CONFIG}")
  set(build_type_args "-DCMAKE_BUILD_TYPE=${CONFIG}")
endif()

set(configure_args
  -S "${CONSUMER_SOURCE_DIR}" -B "${build}"
  -G "${GENERATOR}"
  "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}"
  -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF
  ${build_type_args})
if(NOT "${GENERATOR_PLATFORM}" STREQUAL "")
  list(APPEND configure_args -A "${GENERATOR_PLATFORM}")
endif()
if(NOT "${GENERATOR_TOOLSET}" STREQUAL "")
  list(APPEND configure_args -T "${GENERATOR_TOOLSET}")
endif()
if(NOT "${MAKE_PROGRAM}" STREQUAL "")
  list(APPEND configure_args "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(NOT "${EIGEN3_DIR}" STREQUAL "")
  list(APPEND configure_args "-DEigen3_DIR=${EIGEN3_DIR}")
endif()

if(MODE STREQUAL "install")
  run(install "${CMAKE_COMMAND}" --install "${MUON_BINARY_DIR}" --prefix "${prefix}" ${config_args})
  file(GLOB_RECURSE config_files "${prefix}/*/muonConfig.cmake")
  if(NOT config_files)
    message(FATAL_ERROR "RunConsumerTest(install): no muonConfig.cmake under ${prefix}")
  endif()
  if(NOT EXISTS "${prefix}/include/muon/muon.hpp")
    message(FATAL_ERROR "RunConsumerTest(install): muon/muon.hpp was not installed")
  endif()
  # The installed package must not point back into the source or build tree.
  file(GLOB_RECURSE package_files "${prefix}/*.cmake")
  foreach(f IN LISTS package_files)
    file(READ "${f}" text)
    foreach(tree IN ITEMS "${MUON_SOURCE_DIR}" "${MUON_BINARY_DIR}")
      string(FIND "${text}" "${tree}" pos)
      if(NOT pos EQUAL -1)
        message(FATAL_ERROR "RunConsumerTest(install): ${f} refers to ${tree}")
      endif()
    endforeach()
  endforeach()
  list(APPEND configure_args "-DCMAKE_PREFIX_PATH=${prefix}")
elseif(MODE STREQUAL "subdirectory")
  list(APPEND configure_args "-DMUON_SOURCE_DIR=${MUON_SOURCE_DIR}")
else()
  message(FATAL_ERROR "RunConsumerTest: unknown MODE '${MODE}'")
endif()

run(configure "${CMAKE_COMMAND}" ${configure_args})

if(MODE STREQUAL "install")
  # find_package must have picked the freshly installed copy, not another one.
  file(STRINGS "${build}/CMakeCache.txt" muon_dir_line REGEX "^muon_DIR:")
  string(REGEX REPLACE "^muon_DIR:[A-Z]*=" "" muon_dir "${muon_dir_line}")
  file(REAL_PATH "${prefix}" real_prefix)
  file(REAL_PATH "${muon_dir}" real_muon_dir)
  string(FIND "${real_muon_dir}" "${real_prefix}/" pos)
  if(NOT pos EQUAL 0)
    message(FATAL_ERROR "RunConsumerTest(install): found muon in '${muon_dir}', expected under ${prefix}")
  endif()
endif()

run(build "${CMAKE_COMMAND}" --build "${build}" ${config_args})

set(exe "${build}/bin/${CONFIG}/muon_consumer${CMAKE_EXECUTABLE_SUFFIX}")
if(NOT EXISTS "${exe}")
  message(FATAL_ERROR "RunConsumerTest(${MODE}): ${exe} was not built")
endif()
run(run "${exe}")
message("${step_output}")
if(NOT step_output MATCHES "muon ${EXPECTED_VERSION}")
  message(FATAL_ERROR "RunConsumerTest(${MODE}): expected 'muon ${EXPECTED_VERSION}' in the output")
endif()
# muon::muon carries -fno-math-errno to its consumers (option MUON_NO_MATH_ERRNO, GCC and Clang).
if(DEFINED EXPECTED_MATH_ERRNO AND NOT step_output MATCHES "math errno: ${EXPECTED_MATH_ERRNO}")
  message(FATAL_ERROR "RunConsumerTest(${MODE}): expected 'math errno: ${EXPECTED_MATH_ERRNO}' in the output")
endif()
message(STATUS "RunConsumerTest(${MODE}): OK")
