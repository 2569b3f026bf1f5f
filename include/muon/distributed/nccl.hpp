#pragma once
// NcclCommunicator: the Communicator concept (distributed/communicator.hpp) over NCCL, for
// device memory (the CUDA backend). Link muon::nccl (NCCL and the CUDA runtime; defines
// MUON_WITH_NCCL). Compiled in CI; not yet run on a GPU (see docs/distributed.md).
//
//   ncclComm_t nccl;  ncclCommInitRank(&nccl, world, id, rank);      // the trainer's own
//   cudaStream_t stream;  cudaStreamCreate(&stream);
//   muon::distributed::Sharded<muon::Muon<muon::backend::Cuda<float>>, muon::distributed::NcclCommunicator>
//       opt(muon::distributed::NcclCommunicator(nccl, stream), {.lr = 0.02},
//           {}, muon::backend::Cuda<float>(stream));   // the backend on the same stream
//
// The communicator does not own the NCCL communicator or the stream. Element collectives are
// enqueued on `stream` (the backend's, so that they are ordered with its kernels without
// events): reduce_sum is ncclReduce; reduce_scatter_sum and all_gather with uneven counts are a
// group of ncclReduce / ncclBroadcast calls, one per rank's chunk (NCCL's own ReduceScatter and
// AllGather need equal counts); wait() synchronizes the stream. Host collectives (a few flags,
// checkpoint bytes) go through a device staging buffer the communicator allocates and keeps.
// NCCL and CUDA errors are thrown as muon::Error naming the call.
//
// Without <nccl.h> and <cuda_runtime.h> on the include path this header declares nothing (so
// that it can sit in an include tree built without CUDA); link muon::nccl to use it.
#if __has_include(<nccl.h>) && __has_include(<cuda_runtime.h>)
#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "muon/core/error.hpp"
#include "muon/distributed/communicator.hpp"

namespace muon::distributed {

class NcclCommunicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream) : comm_(comm), stream_(stream) {
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    check(ncclCommCount(comm_, &size_), "ncclCommCount");
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;
  NcclCommunicator(NcclCommunicator&& o) noexcept
      : comm_(o.comm_), stream_(o.stream_), rank_(o.rank_), size_(o.size_), staging_(std::exchange(o.staging_, nullptr)),
        staging_bytes_(std::exchange(o.staging_bytes_, 0)) {}
  NcclCommunicator& operator=(NcclCommunicator&&) = delete;
  ~NcclCommunicator() {
    if (staging_) cudaFree(staging_);
  }

  [[nodiscard]] int rank() const { return rank_; }
  [[nodiscard]] int size() const { return size_; }
  [[nodiscard]] cudaStream_t stream() const { return stream_; }

  template <class T>
  void reduce_sum(const T* send, T* recv, std::size_t n, int root) {
    // NCCL ignores recvbuff off the root, but wants a pointer: give it the send buffer.
    T* out = rank_ == root ? recv : const_cast<T*>(send);
    check(ncclReduce(send, out, n, type<T>(), ncclSum, root, comm_, stream_), "ncclReduce");
  }
  template <class T>
  void reduce_scatter_sum(const T* send, T* recv, std::span<const std::size_t> counts) {
    check_counts(counts);
    check(ncclGroupStart(), "ncclGroupStart");
    std::size_t at = 0;
    for (int r = 0; r < size_; ++r) {
      const std::size_t n = counts[static_cast<std::size_t>(r)];
      if (n > 0) {
        T* out = r == rank_ ? recv : const_cast<T*>(send + at);
        check(ncclReduce(send + at, out, n, type<T>(), ncclSum, r, comm_, stream_), "ncclReduce");
      }
      at += n;
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  }
  template <class T>
  void broadcast(T* buf, std::size_t n, int root) {
    check(ncclBroadcast(buf, buf, n, type<T>(), root, comm_, stream_), "ncclBroadcast");
  }
  template <class T>
  void all_gather(T* buf, std::span<const std::size_t> counts) {
    check_counts(counts);
    check(ncclGroupStart(), "ncclGroupStart");
    std::size_t at = 0;
    for (int r = 0; r < size_; ++r) {
      const std::size_t n = counts[static_cast<std::size_t>(r)];
      if (n > 0) check(ncclBroadcast(buf + at, buf + at, n, type<T>(), r, comm_, stream_), "ncclBroadcast");
      at += n;
    }
    check(ncclGroupEnd(), "ncclGroupEnd");
  }
  void wait() { cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

  void all_reduce(std::span<double> values, ReduceOp op) {
    if (values.empty()) return;
    auto* d = static_cast<double*>(staging(values.size_bytes()));
    cuda(cudaMemcpyAsync(d, values.data(), values.size_bytes(), cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    check(ncclAllReduce(d, d, values.size(), ncclDouble, op == ReduceOp::max ? ncclMax : ncclSum, comm_, stream_),
          "ncclAllReduce");
    cuda(cudaMemcpyAsync(values.data(), d, values.size_bytes(), cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    wait();
  }
  void broadcast_bytes(std::vector<char>& bytes, int root) {
    std::uint64_t n = bytes.size();
    {
      auto* d = static_cast<std::uint64_t*>(staging(sizeof n));
      cuda(cudaMemcpyAsync(d, &n, sizeof n, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
      check(ncclBroadcast(d, d, 1, ncclUint64, root, comm_, stream_), "ncclBroadcast");
      cuda(cudaMemcpyAsync(&n, d, sizeof n, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
      wait();
    }
    bytes.resize(static_cast<std::size_t>(n));
    if (n == 0) return;
    void* d = staging(bytes.size());
    if (rank_ == root) cuda(cudaMemcpyAsync(d, bytes.data(), bytes.size(), cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    check(ncclBroadcast(d, d, bytes.size(), ncclUint8, root, comm_, stream_), "ncclBroadcast");
    cuda(cudaMemcpyAsync(bytes.data(), d, bytes.size(), cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    wait();
  }

 private:
  template <class T>
  static ncclDataType_t type() {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "NcclCommunicator: float or double elements");
    return std::is_same_v<T, float> ? ncclFloat : ncclDouble;
  }
  void check_counts(std::span<const std::size_t> counts) const {
    if (static_cast<int>(counts.size()) != size_)
      detail::fail("NcclCommunicator: " + std::to_string(counts.size()) + " counts for " + std::to_string(size_) + " ranks");
  }
  void* staging(std::size_t bytes) {
    if (bytes > staging_bytes_) {
      wait();  // a previous host collective may still use the old buffer
      if (staging_) cudaFree(staging_);
      staging_ = nullptr;
      staging_bytes_ = 0;
      cuda(cudaMalloc(&staging_, bytes), "cudaMalloc");
      staging_bytes_ = bytes;
    }
    return staging_;
  }
  static void check(ncclResult_t rc, const char* call) {
    if (rc != ncclSuccess) detail::fail(std::string("NcclCommunicator: ") + call + " failed: " + ncclGetErrorString(rc));
  }
  static void cuda(cudaError_t rc, const char* call) {
    if (rc != cudaSuccess) detail::fail(std::string("NcclCommunicator: ") + call + " failed: " + cudaGetErrorString(rc));
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  int rank_ = 0, size_ = 1;
  void* staging_ = nullptr;
  std::size_t staging_bytes_ = 0;
};
static_assert(Communicator<NcclCommunicator>, "muon::distributed::NcclCommunicator must satisfy Communicator");

}  // namespace muon::distributed
#endif
