# Test helpers for muon's own test suite.
#
#   muon_add_compile_fail_test(<name> <source> <regex> [LINK <targets>...])
#
# Adds the CTest test `compile_fail.<name>`. It builds <source> (an OBJECT library
# excluded from `all`, with the test warning flags) and passes only when the
# compilation FAILS *and* the compiler output matches <regex> (a CMake regex).
# A source that compiles, or fails for another reason, fails the test.
# LINK defaults to muon::eigen.

include_guard(GLOBAL)

# Every test that drives `cmake --build` on this build tree takes this lock so
# that `ctest -j` never runs two builds of the same tree at once.
set(MUON_BUILD_TREE_LOCK muon_build_tree)

function(muon_add_compile_fail_test name source regex)
  cmake_parse_arguments(PARSE_ARGV 3 arg "" "" "LINK")
  if(arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "muon_add_compile_fail_test(${name}): unknown arguments ${arg_UNPARSED_ARGUMENTS}")
  endif()
  if(NOT arg_LINK)
    set(arg_LINK muon::eigen)
  endif()
  if(regex STREQUAL "")
    message(FATAL_ERROR "muon_add_compile_fail_test(${name}): empty regex")
  endif()

  set(target muon_compile_fail_${name})
  add_library(${target} OBJECT EXCLUDE_FROM_ALL "${source}")
  target_link_libraries(${target} PRIVATE ${arg_LINK})
  if(COMMAND muon_target_dev_options)
    muon_target_dev_options(${target})
  endif()

  # The regex travels through a file so that any character (';', quotes, '\') survives.
  set(regex_file "${CMAKE_CURRENT_BINARY_DIR}/compile_fail/${name}.regex")
  file(WRITE "${regex_file}" "${regex}")

  add_test(NAME compile_fail.${name}
    COMMAND "${CMAKE_COMMAND}"
      "-DBUILD_DIR=${CMAKE_BINARY_DIR}"
      "-DTARGET=${target}"
      "-DCONFIG=$<CONFIG>"
      "-DREGEX_FILE=${regex_file}"
      -P "${MUON_CMAKE_DIR}/RunCompileFailTest.cmake")
  set_tests_properties(compile_fail.${name} PROPERTIES
    PASS_REGULAR_EXPRESSION "muon-compile-fail-test: PASS"
    RESOURCE_LOCK ${MUON_BUILD_TREE_LOCK}
    LABELS "compile_fail"
    TIMEOUT 300)
endfunction()
