# cmake -DBUILD_DIR=... -DTARGET=... -DREGEX_FILE=... [-DCONFIG=...] -P RunCompileFailTest.cmake
#
# Passes (prints "muon-compile-fail-test: PASS") only when building TARGET fails
# and the build output matches the regex stored in REGEX_FILE.
foreach(var BUILD_DIR TARGET REGEX_FILE)
  if(NOT DEFINED ${var} OR "${${var}}" STREQUAL "")
    message(FATAL_ERROR "RunCompileFailTest: ${var} is not set")
  endif()
endforeach()
file(READ "${REGEX_FILE}" regex)

set(config_args "")
if(NOT "${CONFIG}" STREQUAL "")
  set(config_args --config "${CONFIG}")
endif()

execute_process(
  COMMAND "${CMAKE_COMMAND}" --build "${BUILD_DIR}" --target "${TARGET}" ${config_args}
  RESULT_VARIABLE rc
  OUTPUT_VARIABLE out
  ERROR_VARIABLE out)

if(rc EQUAL 0)
  message("${out}")
  message(FATAL_ERROR "muon-compile-fail-test: FAIL: ${TARGET} compiled, but it must not")
endif()
if(NOT out MATCHES "${regex}")
  message("${out}")
  message(FATAL_ERROR
    "muon-compile-fail-test: FAIL: ${TARGET} failed to compile, but the output "
    "does not match the expected regex:\n  ${regex}")
endif()
message("muon-compile-fail-test: PASS: ${TARGET} failed to compile with the expected diagnostic: "
        "\"${CMAKE_MATCH_0}\"")
