# muon::mpi: the MPI communicator of muon's distributed optimizer
# (include/muon/distributed/mpi.hpp, header-only over MPI's C API). Created when MPI is found
# and MUON_MPI is ON.
#
#   MUON_MPI   ON (default): build muon::mpi where MPI is found; OFF: never.
# Sets MUON_HAVE_MPI when the target exists (tests/distributed is built then).

include_guard(GLOBAL)

option(MUON_MPI "Build muon::mpi (the MPI communicator of muon::distributed) when MPI is found" ON)
set(MUON_HAVE_MPI FALSE)

# muon_add_mpi_executable(<name> <source>...): an executable on muon::mpi and muon::eigen with the
# project's warning flags, where muon::mpi exists (nothing otherwise). For the benchmarks.
function(muon_add_mpi_executable name)
  if(NOT TARGET muon::mpi OR NOT TARGET muon::eigen)
    return()
  endif()
  add_executable(${name} ${ARGN})
  target_link_libraries(${name} PRIVATE muon::mpi muon::eigen)
  if(COMMAND muon_target_dev_options)
    muon_target_dev_options(${name})
  endif()
endfunction()

if(NOT MUON_MPI)
  message(STATUS "muon: MUON_MPI is OFF, muon::mpi will not be available")
  return()
endif()

# Only the CXX component: the project enables no C compiler (the communicator uses the C API,
# which MPI's C++ component carries as well).
find_package(MPI QUIET COMPONENTS CXX)
if(NOT TARGET MPI::MPI_CXX)
  message(STATUS "muon: MPI not found, muon::mpi will not be available")
  return()
endif()

add_library(muon_mpi INTERFACE)
add_library(muon::mpi ALIAS muon_mpi)
target_link_libraries(muon_mpi INTERFACE muon MPI::MPI_CXX)
# MUON_WITH_MPI for the user's code; the MPI C++ bindings (deprecated, and noisy under -Wextra)
# are kept out.
target_compile_definitions(muon_mpi INTERFACE MUON_WITH_MPI=1 OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)
set_target_properties(muon_mpi PROPERTIES EXPORT_NAME mpi)
list(APPEND _muon_export_targets muon_mpi)
string(APPEND MUON_CONFIG_DEPENDENCIES "find_dependency(MPI COMPONENTS CXX)\n")
set(MUON_HAVE_MPI TRUE)
message(STATUS "muon: MPI ${MPI_CXX_VERSION} found (${MPIEXEC_EXECUTABLE}), muon::mpi enabled")
