#pragma once
// MpiCommunicator: the Communicator concept (distributed/communicator.hpp) over MPI, for host
// memory (CPU backends). Link muon::mpi (MPI::MPI_CXX, defines MUON_WITH_MPI).
//
//   MPI_Init(&argc, &argv);
//   {
//     muon::distributed::MpiCommunicator comm(MPI_COMM_WORLD);   // duplicates the communicator
//     muon::distributed::Sharded<muon::Muon<muon::backend::Eigen<float>>, muon::distributed::MpiCommunicator>
//         opt(std::move(comm), {.lr = 0.02});
//     ...
//   }  // destroy it before MPI_Finalize (it frees its duplicate communicator)
//   MPI_Finalize();
//
// Element collectives are MPI-3 non-blocking collectives (MPI_Ireduce, MPI_Ireduce_scatter,
// MPI_Ibcast, MPI_Iallgatherv) on a private duplicate of the trainer's communicator, so that the
// optimizer's traffic never matches the trainer's own messages; wait() is MPI_Waitall. MPI errors
// are returned (MPI_ERRORS_RETURN on the duplicate) and thrown as muon::Error naming the call.
// Counts are MPI ints: a tensor (or a rank's slice) above 2^31 - 1 elements is refused.
//
// Without <mpi.h> on the include path this header declares nothing (so that it can sit in an
// include tree built without MPI); link muon::mpi to use it.
#if __has_include(<mpi.h>)
// The C API only: MPI's deprecated C++ bindings would need -Wno-cast-function-type.
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#ifndef MPICH_SKIP_MPICXX
#define MPICH_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "muon/core/error.hpp"
#include "muon/distributed/communicator.hpp"

namespace muon::distributed {

class MpiCommunicator {
 public:
  struct Options {
    // false: MPI-3 non-blocking collectives, completed together by wait() (the default; lets a
    // library overlap them). true: each call is the blocking collective (MPI_Reduce, ...), for
    // MPI libraries whose non-blocking collectives are slower (Open MPI's libnbc on shared
    // memory is: see docs/distributed.md) or lack them.
    bool blocking = false;
  };

  // Duplicates `comm` (MPI must be initialised). Throws muon::Error when MPI is not.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD) : MpiCommunicator(comm, Options{}) {}
  MpiCommunicator(MPI_Comm comm, Options options) : options_(options) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) detail::fail("MpiCommunicator: MPI is not initialised (call MPI_Init first)");
    check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  MpiCommunicator(MpiCommunicator&& o) noexcept
      : options_(o.options_), comm_(std::exchange(o.comm_, MPI_COMM_NULL)), rank_(o.rank_), size_(o.size_), requests_(std::move(o.requests_)),
        counts_(std::move(o.counts_)) {}
  MpiCommunicator& operator=(MpiCommunicator&& o) noexcept {
    if (this != &o) {
      release();
      options_ = o.options_;
      comm_ = std::exchange(o.comm_, MPI_COMM_NULL);
      rank_ = o.rank_;
      size_ = o.size_;
      requests_ = std::move(o.requests_);
      counts_ = std::move(o.counts_);
    }
    return *this;
  }
  ~MpiCommunicator() { release(); }

  [[nodiscard]] int rank() const { return rank_; }
  [[nodiscard]] int size() const { return size_; }
  [[nodiscard]] MPI_Comm comm() const { return comm_; }

  template <class T>
  void reduce_sum(const T* send, T* recv, std::size_t n, int root) {
    const void* s = (rank_ == root && send == recv) ? MPI_IN_PLACE : static_cast<const void*>(send);
    if (options_.blocking)
      check(MPI_Reduce(s, recv, count(n), type<T>(), MPI_SUM, root, comm_), "MPI_Reduce");
    else
      check(MPI_Ireduce(s, recv, count(n), type<T>(), MPI_SUM, root, comm_, &next()), "MPI_Ireduce");
  }
  template <class T>
  void reduce_scatter_sum(const T* send, T* recv, std::span<const std::size_t> counts) {
    std::vector<int>& c = keep(counts);
    if (options_.blocking)
      check(MPI_Reduce_scatter(send, recv, c.data(), type<T>(), MPI_SUM, comm_), "MPI_Reduce_scatter");
    else
      check(MPI_Ireduce_scatter(send, recv, c.data(), type<T>(), MPI_SUM, comm_, &next()), "MPI_Ireduce_scatter");
  }
  template <class T>
  void broadcast(T* buf, std::size_t n, int root) {
    if (options_.blocking)
      check(MPI_Bcast(buf, count(n), type<T>(), root, comm_), "MPI_Bcast");
    else
      check(MPI_Ibcast(buf, count(n), type<T>(), root, comm_, &next()), "MPI_Ibcast");
  }
  template <class T>
  void all_gather(T* buf, std::span<const std::size_t> counts) {
    std::vector<int>& c = keep(counts);
    std::vector<int>& displs = counts_.emplace_back(c.size());
    long long at = 0;
    for (std::size_t r = 0; r < c.size(); ++r) {
      if (at > INT_MAX) detail::fail("MpiCommunicator: an all-gather of more than 2^31 - 1 elements");
      displs[r] = static_cast<int>(at);
      at += c[r];
    }
    if (options_.blocking)
      check(MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, c.data(), displs.data(), type<T>(), comm_),
            "MPI_Allgatherv");
    else
      check(MPI_Iallgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, c.data(), displs.data(), type<T>(), comm_, &next()),
            "MPI_Iallgatherv");
  }
  void wait() {
    if (!requests_.empty()) {
      const int rc = MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
      requests_.clear();
      counts_.clear();
      check(rc, "MPI_Waitall");
    }
    counts_.clear();
  }
  void all_reduce(std::span<double> values, ReduceOp op) {
    check(MPI_Allreduce(MPI_IN_PLACE, values.data(), count(values.size()), MPI_DOUBLE, op == ReduceOp::max ? MPI_MAX : MPI_SUM,
                        comm_),
          "MPI_Allreduce");
  }
  void broadcast_bytes(std::vector<char>& bytes, int root) {
    auto n = static_cast<std::uint64_t>(bytes.size());
    check(MPI_Bcast(&n, 1, MPI_UINT64_T, root, comm_), "MPI_Bcast");
    bytes.resize(static_cast<std::size_t>(n));
    for (std::uint64_t at = 0; at < n; at += INT_MAX) {  // in chunks MPI's int count can hold
      const auto k = static_cast<int>(std::min<std::uint64_t>(INT_MAX, n - at));
      check(MPI_Bcast(bytes.data() + at, k, MPI_CHAR, root, comm_), "MPI_Bcast");
    }
  }

 private:
  template <class T>
  static MPI_Datatype type() {
    static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "MpiCommunicator: float or double elements");
    return std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE;
  }
  static int count(std::size_t n) {
    if (n > static_cast<std::size_t>(INT_MAX))
      detail::fail("MpiCommunicator: " + std::to_string(n) + " elements in one collective (MPI counts stop at 2^31 - 1)");
    return static_cast<int>(n);
  }
  std::vector<int>& keep(std::span<const std::size_t> counts) {
    if (static_cast<int>(counts.size()) != size_)
      detail::fail("MpiCommunicator: " + std::to_string(counts.size()) + " counts for " + std::to_string(size_) + " ranks");
    std::vector<int>& c = counts_.emplace_back(counts.size());  // MPI reads them until the operation completes
    for (std::size_t r = 0; r < counts.size(); ++r) c[r] = count(counts[r]);
    return c;
  }
  MPI_Request& next() { return requests_.emplace_back(MPI_REQUEST_NULL); }
  static void check(int rc, const char* call) {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(rc, text, &len);
    detail::fail(std::string("MpiCommunicator: ") + call + " failed: " + std::string(text, static_cast<std::size_t>(len)));
  }
  void release() noexcept {
    if (comm_ == MPI_COMM_NULL) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) {
      if (!requests_.empty()) MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE);
      MPI_Comm_free(&comm_);
    }
    comm_ = MPI_COMM_NULL;
  }

  Options options_{};
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0, size_ = 1;
  std::vector<MPI_Request> requests_;
  std::deque<std::vector<int>> counts_;  // stable addresses while MPI holds them
};
static_assert(Communicator<MpiCommunicator>, "muon::distributed::MpiCommunicator must satisfy Communicator");

}  // namespace muon::distributed
#endif
