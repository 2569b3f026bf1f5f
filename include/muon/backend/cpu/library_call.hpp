#pragma once
// Marks the time a thread spends inside a product library's own code (oneDNN, OpenBLAS).
namespace muon::backend::cpu {

// How deep the calling thread is inside a product library's own code (oneDNN, OpenBLAS). Lets
// the allocation test tell a library's internal bookkeeping from muon's own allocations.
[[nodiscard]] inline int& library_call_depth() {
  thread_local int depth = 0;
  return depth;
}
struct InLibrary {
  InLibrary() { ++library_call_depth(); }
  ~InLibrary() { --library_call_depth(); }
  InLibrary(const InLibrary&) = delete;
  InLibrary& operator=(const InLibrary&) = delete;
};

}  // namespace muon::backend::cpu
