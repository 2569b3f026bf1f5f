#pragma once
// The one pool of threads a step runs on.
//
// Why our own pool: the step has two kinds of parallel work, products split across threads and
// independent tensors run side by side, and both must use the same threads. A BLAS's or
// OpenMP's own threads on top of ours would fight over the same cores, so the product libraries
// are always called single-threaded (backend/cpu/products.hpp) and the splitting is ours.
//
// run(n, task) calls task(0) ... task(n - 1) concurrently, task(0) on the calling thread, and
// returns when all have finished. Which task runs on which thread never changes what a task
// computes, so results depend only on how the work is split, which depends only on the thread
// count: results are deterministic for a given count. Workers spin briefly after a task (the
// next product of a Newton-Schulz iteration follows within microseconds), then sleep.
//
// Optimizers with the same thread count share one pool per process (shared_thread_pool), and
// run() from a task of the pool (nested) runs its tasks one after another on that thread.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "muon/core/error.hpp"

namespace muon {

// The cores this process may run on (its CPU affinity where the OS tells, else the machine's).
[[nodiscard]] inline int available_cores() {
#if defined(__linux__)
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
#endif
  const unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

class ThreadPool {
 public:
  static constexpr int k_max_threads = 1024;

  explicit ThreadPool(int threads) : size_(threads) {
    if (threads < 1 || threads > k_max_threads)
      detail::fail("ThreadPool: thread count must be in [1, " + std::to_string(k_max_threads) + "], got " +
                   std::to_string(threads));
    errors_.resize(static_cast<std::size_t>(threads));
    workers_.reserve(static_cast<std::size_t>(threads - 1));
    for (int w = 1; w < threads; ++w) workers_.emplace_back([this, w] { worker_loop(w); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }

  [[nodiscard]] int size() const { return size_; }

  // Runs task(i) for i in [0, n), n <= size(), concurrently; task(0) on the calling thread.
  // Rethrows the first exception (by task index) after every task has finished. Does not
  // allocate.
  template <class F>
  void run(int n, F&& task) {
    if (n <= 0) return;
    if (n > size_) detail::fail("ThreadPool::run: " + std::to_string(n) + " tasks for " + std::to_string(size_) + " threads");
    if (n == 1 || in_task()) {  // one task, or nested in a task of a pool: run them here
      for (int i = 0; i < n; ++i) task(i);
      return;
    }
    std::lock_guard caller(run_mutex_);  // one job at a time (optimizers may share the pool)
    using Fn = std::remove_reference_t<F>;
    job_ = [](void* ctx, int i) { (*static_cast<Fn*>(ctx))(i); };
    job_ctx_ = static_cast<void*>(&task);
    job_tasks_ = n;
    // Every worker acknowledges every job (those without a task too), so that none can still
    // be looking at this job when the next one is published.
    pending_.store(size_ - 1, std::memory_order_relaxed);
    {
      std::lock_guard lock(mutex_);
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    run_one(0);
    // Wait for the workers: spin a little (they usually finish together), then sleep.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
      if (spin < k_spins) continue;
      std::unique_lock lock(mutex_);
      done_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
    }
    for (int i = 0; i < n; ++i) {
      if (errors_[static_cast<std::size_t>(i)]) {
        std::exception_ptr e = errors_[static_cast<std::size_t>(i)];
        for (auto& x : errors_) x = nullptr;
        std::rethrow_exception(e);
      }
    }
  }

  // Whether the calling thread is running a task of some pool.
  [[nodiscard]] static bool in_task() { return task_depth() > 0; }

 private:
  static constexpr int k_spins = 20000;  // ~10-50 microseconds before sleeping

  static int& task_depth() {
    thread_local int depth = 0;
    return depth;
  }

  void run_one(int i) {
    ++task_depth();
    try {
      job_(job_ctx_, i);
    } catch (...) {
      errors_[static_cast<std::size_t>(i)] = std::current_exception();
    }
    --task_depth();
  }

  void worker_loop(int w) {
    std::uint64_t seen = 0;
    for (;;) {
      // Wait for a new job: spin, then sleep.
      std::uint64_t g = generation_.load(std::memory_order_acquire);
      for (int spin = 0; g == seen && spin < k_spins; ++spin) g = generation_.load(std::memory_order_acquire);
      if (g == seen) {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
        g = generation_.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop_) return;
      if (w < job_tasks_) run_one(w);
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        std::lock_guard lock(mutex_);
        done_.notify_one();
      }
    }
  }

  int size_;
  std::vector<std::thread> workers_;
  std::vector<std::exception_ptr> errors_;
  std::mutex run_mutex_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable done_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<int> pending_{0};
  bool stop_ = false;
  void (*job_)(void*, int) = nullptr;
  void* job_ctx_ = nullptr;
  int job_tasks_ = 0;
};

// The process's pool of `threads` threads (0 = available_cores()), shared by every optimizer
// that asks for the same count and kept while one of them holds it.
[[nodiscard]] inline std::shared_ptr<ThreadPool> shared_thread_pool(int threads) {
  if (threads < 0) detail::fail("threads must be >= 0 (0 = every available core), got " + std::to_string(threads));
  if (threads == 0) threads = available_cores();
  static std::mutex registry_mutex;
  static std::map<int, std::weak_ptr<ThreadPool>> registry;
  std::lock_guard lock(registry_mutex);
  auto& slot = registry[threads];
  if (auto pool = slot.lock()) return pool;
  auto pool = std::make_shared<ThreadPool>(threads);
  slot = pool;
  return pool;
}

}  // namespace muon
