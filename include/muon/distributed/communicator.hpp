#pragma once
// The Communicator concept: what muon::distributed::Sharded needs from a communication library
// (MPI, NCCL, or none), and SingleProcess, the communicator of a run with one process.
//
// Element collectives work on float or double buffers that live where the optimizer's backend
// keeps its tensors (host memory for MPI and SingleProcess, device memory for NCCL). They may run
// asynchronously: a call only queues the operation, and its buffers must not be read or written
// until wait() returns. Every rank calls the same collectives in the same order (Sharded does).
//   reduce_sum(send, recv, n, root)        recv[0..n) on root = sum over ranks of send[0..n);
//                                          recv is not touched elsewhere (may be null there)
//   reduce_scatter_sum(send, recv, counts) send holds sum(counts) elements on every rank; rank r
//                                          receives counts[r] elements, the sum over ranks of
//                                          its chunk (chunks in rank order); recv may be null
//                                          where counts[rank] == 0
//   broadcast(buf, n, root)                buf[0..n) of root, on every rank
//   all_gather(buf, counts)                in place: chunk r of buf (counts[r] elements, chunks
//                                          in rank order) is rank r's; every rank gets them all
//   wait()                                 completes every queued operation
// Host collectives are blocking and take host memory:
//   all_reduce(values, op)                 elementwise max or sum of a few doubles over ranks
//   broadcast_bytes(bytes, root)           root's bytes (any length) on every rank
// The element sums run in the library's order: with more than two ranks the order of the
// additions (and so the last bit of a sum) is the library's choice.
#include <algorithm>
#include <concepts>
#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

namespace muon::distributed {

enum class ReduceOp { max, sum };

template <class C>
concept Communicator =
    requires(C& c, const C& cc, float* f, const float* cf, double* d, const double* cd, std::size_t n, int root,
             std::span<const std::size_t> counts, std::span<double> values, std::vector<char>& bytes) {
      { cc.rank() } -> std::convertible_to<int>;
      { cc.size() } -> std::convertible_to<int>;
      c.reduce_sum(cf, f, n, root);
      c.reduce_sum(cd, d, n, root);
      c.reduce_scatter_sum(cf, f, counts);
      c.reduce_scatter_sum(cd, d, counts);
      c.broadcast(f, n, root);
      c.broadcast(d, n, root);
      c.all_gather(f, counts);
      c.all_gather(d, counts);
      c.wait();
      c.all_reduce(values, ReduceOp::max);
      c.broadcast_bytes(bytes, root);
    };

// One process: rank 0 of 1. Element collectives are copies in host memory (or nothing); a
// trainer without MPI or NCCL gets Sharded's code path unchanged, and tests a single rank with it.
class SingleProcess {
 public:
  [[nodiscard]] int rank() const { return 0; }
  [[nodiscard]] int size() const { return 1; }
  template <class T>
  void reduce_sum(const T* send, T* recv, std::size_t n, int /*root*/) {
    if (recv != send && n > 0) std::memmove(recv, send, n * sizeof(T));
  }
  template <class T>
  void reduce_scatter_sum(const T* send, T* recv, std::span<const std::size_t> counts) {
    const std::size_t n = counts.empty() ? 0 : counts[0];
    if (recv != send && n > 0) std::memmove(recv, send, n * sizeof(T));
  }
  template <class T>
  void broadcast(T*, std::size_t, int) {}
  template <class T>
  void all_gather(T*, std::span<const std::size_t>) {}
  void wait() {}
  void all_reduce(std::span<double>, ReduceOp) {}
  void broadcast_bytes(std::vector<char>&, int) {}
};
static_assert(Communicator<SingleProcess>, "muon::distributed::SingleProcess must satisfy Communicator");

}  // namespace muon::distributed
