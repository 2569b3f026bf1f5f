# Build options for muon's own tests and examples (never the exported targets).
#
#   muon_target_dev_options(<target>)
#     GCC/Clang: -Wall -Wextra -Wpedantic, plus -Werror unless MUON_WERROR=OFF;
#     with MUON_SANITIZE=ON also ASan + UBSan (compile and link).

include_guard(GLOBAL)

if(CMAKE_CXX_COMPILER_ID MATCHES "^(GNU|Clang|AppleClang)$")
  set(MUON_GNU_LIKE_COMPILER TRUE)
else()
  set(MUON_GNU_LIKE_COMPILER FALSE)
  if(MUON_SANITIZE)
    message(WARNING "muon: MUON_SANITIZE is only implemented for GCC and Clang")
  endif()
endif()

function(muon_target_dev_options target)
  if(NOT MUON_GNU_LIKE_COMPILER)
    return()
  endif()
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(MUON_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(MUON_SANITIZE)
    set(_san -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all)
    target_compile_options(${target} PRIVATE ${_san})
    target_link_options(${target} PRIVATE ${_san})
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      # GCC's flow analysis under -fsanitize reports false positives inside
      # libstdc++ (e.g. <regex> used by Catch2's main with GCC 12 at -O1).
      target_compile_options(${target} PRIVATE -Wno-maybe-uninitialized)
    endif()
  endif()
endfunction()
