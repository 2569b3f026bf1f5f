// The CPU backend's products (backend/cpu/products.hpp) and the step's threads:
//  * gemm and the symmetric product (syrk) agree with a naive double-precision product, for
//    every transpose, beta, batch and size around the block and panel boundaries, on 1, 2 and
//    3 threads; syrk's result is exactly symmetric;
//  * splitting is deterministic: the same thread count gives the same bits twice;
//  * an optimizer gives the same bits on any thread count when every tensor runs whole on one
//    thread, and agrees to float rounding when a big tensor's products are split;
//  * the pool: exceptions reach the caller, nested runs stay on their thread, bad counts throw.
#include <catch2/catch.hpp>

#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>
#include <random>
#include <stdexcept>
#include <vector>

namespace {

using muon::index_t;
using muon::backend::MatrixView;
using muon::backend::Trans;

template <class T>
std::vector<T> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal;
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(normal(rng));
  return v;
}

// C = alpha op(A) op(B) + beta C in double, per slice (row-major, batch-1 operands shared).
template <class T>
std::vector<double> reference_gemm(Trans ta, Trans tb, double alpha, MatrixView<const T> a, MatrixView<const T> b,
                                   double beta, const std::vector<T>& c0, index_t batch, index_t m, index_t n) {
  const index_t k = ta == Trans::no ? a.cols : a.rows;
  std::vector<double> out(static_cast<std::size_t>(batch * m * n));
  for (index_t s = 0; s < batch; ++s) {
    const T* pa = a.data + (a.batch == 1 ? 0 : s * a.slice_size());
    const T* pb = b.data + (b.batch == 1 ? 0 : s * b.slice_size());
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) {
        double sum = 0;
        for (index_t p = 0; p < k; ++p) {
          const double x = ta == Trans::no ? pa[i * a.cols + p] : pa[p * a.cols + i];
          const double y = tb == Trans::no ? pb[p * b.cols + j] : pb[j * b.cols + p];
          sum += x * y;
        }
        const auto idx = static_cast<std::size_t>((s * m + i) * n + j);
        out[idx] = alpha * sum + (beta == 0 ? 0.0 : beta * static_cast<double>(c0[idx]));
      }
  }
  return out;
}

template <class T>
double tolerance(index_t k) {
  return (std::is_same_v<T, float> ? 4e-6 : 1e-13) * std::sqrt(static_cast<double>(k) + 1) * 4;
}

}  // namespace

TEMPLATE_TEST_CASE("products: gemm matches a double reference on 1, 2 and 3 threads", "[products]", float, double) {
  using T = TestType;
  const int threads = GENERATE(1, 2, 3);
  auto pool = muon::shared_thread_pool(threads);
  muon::backend::Eigen<T> b;
  b.set_pool(pool.get());
  struct Case {
    index_t batch, m, n, k;
  };
  // Sizes around the panel unit (16) and big enough to be split (> 4 MFLOP per thread).
  const Case cases[] = {{1, 1, 1, 1}, {1, 7, 5, 3}, {2, 33, 17, 65}, {1, 300, 260, 200}, {3, 130, 140, 90}, {1, 17, 400, 310}};
  for (const auto& cs : cases) {
    for (Trans ta : {Trans::no, Trans::yes})
      for (Trans tb : {Trans::no, Trans::yes})
        for (double beta : {0.0, 1.0, -0.5}) {
          const index_t ar = ta == Trans::no ? cs.m : cs.k, ac = ta == Trans::no ? cs.k : cs.m;
          const index_t br = tb == Trans::no ? cs.k : cs.n, bc = tb == Trans::no ? cs.n : cs.k;
          auto av = random_values<T>(static_cast<std::size_t>(cs.batch * ar * ac), 1);
          auto bv = random_values<T>(static_cast<std::size_t>(br * bc), 2);  // batch 1: shared
          auto cv = random_values<T>(static_cast<std::size_t>(cs.batch * cs.m * cs.n), 3);
          const auto c0 = cv;
          MatrixView<const T> a{av.data(), cs.batch, ar, ac}, bm{bv.data(), 1, br, bc};
          b.gemm(ta, tb, T(0.75), a, bm, static_cast<T>(beta), MatrixView<T>{cv.data(), cs.batch, cs.m, cs.n});
          const auto ref = reference_gemm<T>(ta, tb, 0.75, a, bm, beta, c0, cs.batch, cs.m, cs.n);
          double err = 0;
          for (std::size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::abs(ref[i] - static_cast<double>(cv[i])));
          INFO("threads " << threads << " batch " << cs.batch << " " << cs.m << "x" << cs.n << "x" << cs.k << " ta "
                          << (ta == Trans::yes) << " tb " << (tb == Trans::yes) << " beta " << beta);
          CHECK(err <= tolerance<T>(cs.k));
        }
  }
}

TEMPLATE_TEST_CASE("products: syrk is exactly symmetric and matches a double reference", "[products]", float, double) {
  using T = TestType;
  const int threads = GENERATE(1, 2, 3);
  auto pool = muon::shared_thread_pool(threads);
  muon::backend::Eigen<T> b;
  b.set_pool(pool.get());
  // n around the 128-row block: one block, a partial last block, several blocks.
  for (index_t n : {1, 5, 128, 129, 300, 520})
    for (index_t k : {1, 64, 257})
      for (Trans t : {Trans::no, Trans::yes})
        for (double beta : {0.0, 1.0, 2.0}) {
          const index_t batch = n <= 129 ? 2 : 1;
          const index_t ar = t == Trans::no ? n : k, ac = t == Trans::no ? k : n;
          auto av = random_values<T>(static_cast<std::size_t>(batch * ar * ac), 4);
          // beta != 0 reads the upper triangle of C: start from a symmetric C.
          auto cv = random_values<T>(static_cast<std::size_t>(batch * n * n), 5);
          for (index_t s = 0; s < batch; ++s)
            for (index_t i = 0; i < n; ++i)
              for (index_t j = 0; j < i; ++j) cv[static_cast<std::size_t>((s * n + i) * n + j)] = cv[static_cast<std::size_t>((s * n + j) * n + i)];
          const auto c0 = cv;
          MatrixView<const T> a{av.data(), batch, ar, ac};
          b.syrk(t, T(1.5), a, static_cast<T>(beta), MatrixView<T>{cv.data(), batch, n, n});
          const auto ref = reference_gemm<T>(t, t == Trans::no ? Trans::yes : Trans::no, 1.5, a, a, beta, c0, batch, n, n);
          double err = 0;
          bool symmetric = true;
          for (index_t s = 0; s < batch; ++s)
            for (index_t i = 0; i < n; ++i)
              for (index_t j = 0; j < n; ++j) {
                const auto idx = static_cast<std::size_t>((s * n + i) * n + j);
                err = std::max(err, std::abs(ref[idx] - static_cast<double>(cv[idx])));
                symmetric = symmetric && cv[idx] == cv[static_cast<std::size_t>((s * n + j) * n + i)];
              }
          INFO("threads " << threads << " n " << n << " k " << k << " trans " << (t == Trans::yes) << " beta " << beta);
          CHECK(symmetric);
          CHECK(err <= tolerance<T>(k) * 2);
        }
}

TEST_CASE("products: a split product gives the same bits every time for a given thread count", "[products]") {
  for (int threads : {2, 3}) {
    auto pool = muon::shared_thread_pool(threads);
    muon::backend::Eigen<float> b;
    b.set_pool(pool.get());
    auto av = random_values<float>(400 * 300, 6);
    std::vector<float> first(400 * 400), again(400 * 400);
    MatrixView<const float> a{av.data(), 1, 400, 300};
    b.syrk(Trans::no, 1.0f, a, 0.0f, MatrixView<float>{first.data(), 1, 400, 400});
    b.syrk(Trans::no, 1.0f, a, 0.0f, MatrixView<float>{again.data(), 1, 400, 400});
    CHECK(first == again);
    b.gemm(Trans::no, Trans::yes, 1.0f, a, a, 0.0f, MatrixView<float>{first.data(), 1, 400, 400});
    b.gemm(Trans::no, Trans::yes, 1.0f, a, a, 0.0f, MatrixView<float>{again.data(), 1, 400, 400});
    CHECK(first == again);
  }
}

namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Steps a Muon over a fixed set of tensors and returns every parameter afterwards.
std::vector<RowMat> run_muon(int threads, bool with_big, int steps = 3) {
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<std::pair<int, int>> shapes{{96, 64}, {64, 64}, {40, 120}, {128, 32}, {16, 16}, {200, 1}};
  if (with_big) shapes.push_back({640, 512});  // alone more than one thread's share: split
  std::vector<RowMat> w, g;
  for (auto [r, c] : shapes) {
    w.push_back(RowMat::NullaryExpr(r, c, [&] { return 0.1f * normal(rng); }));
    g.push_back(RowMat::NullaryExpr(r, c, [&] { return normal(rng); }));
  }
  muon::Muon<muon::backend::Eigen<float>> opt({.threads = threads});
  const char* names[] = {"t0", "t1", "t2", "t3", "t4", "t5", "t6"};
  for (std::size_t i = 0; i < w.size(); ++i)
    opt.add(names[i], w[i], g[i], {.role = shapes[i].second == 1 ? muon::Role::bias : muon::Role::none});
  for (int s = 0; s < steps; ++s) {
    for (auto& x : g) x *= 0.9f;
    REQUIRE(opt.step().all_applied());
  }
  return w;
}

}  // namespace

TEST_CASE("threads: the same bits on any thread count when tensors run whole", "[products][threads]") {
  const auto one = run_muon(1, false);
  for (int threads : {2, 3, 4}) {
    const auto many = run_muon(threads, false);
    for (std::size_t i = 0; i < one.size(); ++i) {
      INFO("threads " << threads << " tensor " << i);
      CHECK(one[i] == many[i]);
    }
  }
}

TEST_CASE("threads: a split tensor agrees to rounding, and repeats bit for bit", "[products][threads]") {
  const auto one = run_muon(1, true);
  for (int threads : {2, 3}) {
    const auto a = run_muon(threads, true);
    const auto b = run_muon(threads, true);
    for (std::size_t i = 0; i < one.size(); ++i) {
      INFO("threads " << threads << " tensor " << i);
      CHECK(a[i] == b[i]);
      CHECK((a[i] - one[i]).cwiseAbs().maxCoeff() <= 1e-5f);
    }
  }
}

TEST_CASE("threads: option checks and the resolved count", "[products][threads]") {
  using Opt = muon::Muon<muon::backend::Eigen<float>>;
  CHECK_THROWS_WITH(Opt({.threads = -1}), Catch::Contains("threads"));
  CHECK_THROWS_WITH(Opt({.threads = 5000}), Catch::Contains("threads"));
  CHECK(Opt({.threads = 3}).threads() == 3);
  CHECK(Opt(Opt::Options{}).threads() == muon::available_cores());
  // Optimizers asking for the same count share one pool.
  CHECK(muon::shared_thread_pool(3).get() == muon::shared_thread_pool(3).get());
}

TEST_CASE("thread pool: exceptions, nesting, counts", "[products][threads]") {
  muon::ThreadPool pool(3);
  std::atomic<int> ran{0};
  pool.run(3, [&](int) { ran.fetch_add(1); });
  CHECK(ran == 3);
  // A task's exception reaches the caller after every task finished; the pool stays usable.
  ran = 0;
  CHECK_THROWS_WITH(pool.run(3,
                             [&](int i) {
                               ran.fetch_add(1);
                               if (i == 2) throw std::runtime_error("task 2 failed");
                             }),
                    "task 2 failed");
  CHECK(ran == 3);
  ran = 0;
  pool.run(2, [&](int) { ran.fetch_add(1); });
  CHECK(ran == 2);
  // Nested: runs the inner tasks on the calling task's thread, one after another.
  std::atomic<int> inner{0};
  pool.run(3, [&](int) { pool.run(3, [&](int) { inner.fetch_add(1); }); });
  CHECK(inner == 9);
  CHECK_THROWS_WITH(pool.run(4, [](int) {}), Catch::Contains("4 tasks for 3 threads"));
  CHECK_THROWS(muon::ThreadPool(0));
}

namespace {

// Many small tensors of a few shapes (buckets: 16 + 4 of 32 x 48, 5 of 64 x 64) and a bias.
struct ManySmall {
  std::vector<RowMat> w, g;
  std::vector<std::pair<int, int>> shapes;
  explicit ManySmall(unsigned seed) {
    for (int i = 0; i < 20; ++i) shapes.push_back({32, 48});
    for (int i = 0; i < 5; ++i) shapes.push_back({64, 64});
    shapes.push_back({200, 1});
    std::mt19937 rng(seed);
    std::normal_distribution<float> normal;
    for (auto [r, c] : shapes) {
      w.push_back(RowMat::NullaryExpr(r, c, [&] { return 0.1f * normal(rng); }));
      g.push_back(RowMat::NullaryExpr(r, c, [&] { return normal(rng); }));
    }
  }
  [[nodiscard]] muon::ParamOptions options(std::size_t i) const {
    return {.role = shapes[i].second == 1 ? muon::Role::bias : muon::Role::none};
  }
};

std::string tensor_name(std::size_t i) {
  std::string name = "t";
  name += std::to_string(i);
  return name;
}

}  // namespace

TEST_CASE("buckets: same-shape small tensors orthogonalised as one batch match one at a time", "[products][threads]") {
  // Together: one optimizer (buckets). Alone: one optimizer per tensor (no bucket can form).
  ManySmall together(21), alone(21);
  muon::Muon<muon::backend::Eigen<float>> opt({.threads = 1});
  std::vector<std::unique_ptr<muon::Muon<muon::backend::Eigen<float>>>> singles;
  for (std::size_t i = 0; i < together.w.size(); ++i) {
    opt.add(tensor_name(i), together.w[i], together.g[i], together.options(i));
    singles.push_back(std::make_unique<muon::Muon<muon::backend::Eigen<float>>>(muon::Muon<muon::backend::Eigen<float>>::Options{.threads = 1}));
    singles.back()->add(tensor_name(i), alone.w[i], alone.g[i], alone.options(i));
  }
  for (int s = 0; s < 3; ++s) {
    REQUIRE(opt.step().all_applied());
    for (auto& o : singles) REQUIRE(o->step().all_applied());
  }
  for (std::size_t i = 0; i < together.w.size(); ++i) {
    INFO("tensor " << i);
    CHECK((together.w[i] - alone.w[i]).cwiseAbs().maxCoeff() <= 1e-6f);
  }
}

TEST_CASE("buckets: the same bits on 1, 2 and 3 threads, and a skipped member is left alone", "[products][threads]") {
  auto run = [](int threads, bool nan) {
    ManySmall m(22);
    if (nan) m.g[3](0, 0) = std::numeric_limits<float>::quiet_NaN();
    const RowMat before = m.w[3];
    muon::Muon<muon::backend::Eigen<float>> opt({.threads = threads});
    for (std::size_t i = 0; i < m.w.size(); ++i) opt.add(tensor_name(i), m.w[i], m.g[i], m.options(i));
    for (int s = 0; s < 2; ++s) {
      const auto r = opt.step();
      CHECK(r.skipped.size() == (nan ? 1u : 0u));
    }
    if (nan) CHECK(m.w[3] == before);
    return m.w;
  };
  const auto one = run(1, false);
  for (int threads : {2, 3}) {
    const auto many = run(threads, false);
    for (std::size_t i = 0; i < one.size(); ++i) CHECK(one[i] == many[i]);
  }
  // With a skipped member the others still move as before (to rounding: the bucket's batched
  // products see a zero slice in its place).
  const auto skipped = run(2, true);
  for (std::size_t i = 0; i < one.size(); ++i)
    if (i != 3) CHECK((skipped[i] - one[i]).cwiseAbs().maxCoeff() <= 1e-6f);
}
