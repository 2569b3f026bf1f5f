// The backend conformance suite: what every Backend must do, checked against naive host
// references. A new backend (xtensor, CUDA) adds itself to the type list and must pass all of
// it. Data moves in and out only through the concept's own copy_to_host / copy_from_host /
// read, so the suite works for device memory too.
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <muon/backend/eigen.hpp>

#include "support/backends.hpp"
#if defined(MUON_WITH_XTENSOR)
#include <muon/backend/xtensor.hpp>
#endif
#include <muon/muon.hpp>
#include <random>

namespace {

using muon::index_t;
using muon::backend::MatrixView;
using muon::backend::Trans;

template <class B>
struct Device {
  using T = typename B::value_type;
  B b;

  // Uploads host values into a fresh backend buffer (kept alive by the returned holder).
  struct Tensor {
    typename B::template Buffer<T> buf;
    index_t batch, rows, cols;
    MatrixView<T> view() { return {buf.data(), batch, rows, cols}; }
  };
  Tensor upload(const std::vector<T>& host, index_t batch, index_t rows, index_t cols) {
    Tensor t{b.template allocate<T>(host.size()), batch, rows, cols};
    b.copy_from_host(host, t.view());
    return t;
  }
  std::vector<T> download(Tensor& t) {
    std::vector<T> host(static_cast<std::size_t>(t.view().size()));
    b.copy_to_host(t.view(), host);
    b.synchronize();
    return host;
  }
  std::vector<double> read(typename B::template Buffer<typename B::accum_type>& acc, std::size_t n) {
    std::vector<double> host(n);
    b.read(acc.data(), host);
    return host;
  }
};

template <class T>
std::vector<T> random_values(std::size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<double> u(-1, 1);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(u(rng));
  return v;
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 2e-5 : 1e-12;
}

}  // namespace

#define MUON_CONFORMANCE_BACKENDS MUON_TEST_BACKENDS  // tests/support/backends.hpp

TEMPLATE_TEST_CASE("backend: allocate gives zeroed buffers of the asked size", "[backend]", MUON_CONFORMANCE_BACKENDS) {
  using T = typename TestType::value_type;
  Device<TestType> d;
  auto t = d.upload(std::vector<T>(0), 1, 0, 0);
  CHECK(t.buf.size() == 0);
  typename Device<TestType>::Tensor z{d.b.template allocate<T>(37), 1, 1, 37};
  CHECK(z.buf.size() == 37);
  for (T x : d.download(z)) CHECK(x == T(0));
}

TEMPLATE_TEST_CASE("backend: batched GEMM with transposes, alpha, beta and broadcast", "[backend][gemm]",
                   MUON_CONFORMANCE_BACKENDS) {
  using T = typename TestType::value_type;
  Device<TestType> d;
  const index_t batch = 3, m = 37, n = 29, k = 41;
  const auto ta = GENERATE(Trans::no, Trans::yes);
  const auto tb = GENERATE(Trans::no, Trans::yes);
  const bool broadcast_b = GENERATE(false, true);
  const T alpha = T(0.75), beta = GENERATE(T(0), T(1), T(-0.5));
  const index_t ar = ta == Trans::no ? m : k, ac = ta == Trans::no ? k : m;
  const index_t br = tb == Trans::no ? k : n, bc = tb == Trans::no ? n : k;
  const index_t bb = broadcast_b ? 1 : batch;
  const auto ha = random_values<T>(static_cast<std::size_t>(batch * ar * ac), 1);
  const auto hb = random_values<T>(static_cast<std::size_t>(bb * br * bc), 2);
  auto hc = random_values<T>(static_cast<std::size_t>(batch * m * n), 3);
  if (beta == T(0)) hc[5] = std::numeric_limits<T>::quiet_NaN();  // beta == 0 must ignore old C
  auto a = d.upload(ha, batch, ar, ac);
  auto b = d.upload(hb, bb, br, bc);
  auto c = d.upload(hc, batch, m, n);
  d.b.reserve_gemm(m, n, k);
  d.b.gemm(ta, tb, alpha, a.view(), b.view(), beta, c.view());
  const auto out = d.download(c);
  double err = 0;
  for (index_t s = 0; s < batch; ++s)
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) {
        double acc = 0;
        for (index_t p = 0; p < k; ++p) {
          const double av = ha[static_cast<std::size_t>(s * ar * ac + (ta == Trans::no ? i * ac + p : p * ac + i))];
          const std::size_t boff = static_cast<std::size_t>((broadcast_b ? 0 : s) * br * bc);
          const double bv = hb[boff + static_cast<std::size_t>(tb == Trans::no ? p * bc + j : j * bc + p)];
          acc += av * bv;
        }
        const std::size_t ci = static_cast<std::size_t>((s * m + i) * n + j);
        const double old = beta == T(0) ? 0.0 : static_cast<double>(hc[ci]);
        err = std::max(err, std::abs(static_cast<double>(out[ci]) - (alpha * acc + beta * old)));
      }
  CHECK(err <= tolerance<T>() * k);
}

TEMPLATE_TEST_CASE("backend: transform and transform_slices", "[backend]", MUON_CONFORMANCE_BACKENDS) {
  using T = typename TestType::value_type;
  Device<TestType> d;
  const auto hx = random_values<T>(2 * 5 * 7, 4), hy = random_values<T>(2 * 5 * 7, 5);
  auto x = d.upload(hx, 2, 5, 7);
  auto y = d.upload(hy, 2, 5, 7);
  auto out = d.upload(std::vector<T>(hx.size()), 2, 5, 7);
  d.b.transform(out.view(), muon::fn::Axpy<T>{T(2)}, x.view(), y.view());
  auto r = d.download(out);
  for (std::size_t i = 0; i < r.size(); ++i) CHECK(r[i] == T(2) * hx[i] + hy[i]);
  // In place, and with the slice index.
  d.b.transform_slices(x.view(), [](index_t s, T v) { return v + static_cast<T>(s); }, x.view());
  r = d.download(x);
  for (std::size_t i = 0; i < r.size(); ++i) CHECK(r[i] == hx[i] + static_cast<T>(i / 35));
  // With the flat index.
  d.b.transform_indexed(out.view(), [](index_t k, T v) { return v * static_cast<T>(k % 7); }, y.view());
  r = d.download(out);
  for (std::size_t i = 0; i < r.size(); ++i) CHECK(r[i] == hy[i] * static_cast<T>(i % 7));
}

TEMPLATE_TEST_CASE("backend: reductions per slice, in accum_type, left on the backend", "[backend]",
                   MUON_CONFORMANCE_BACKENDS) {
  using T = typename TestType::value_type;
  Device<TestType> d;
  auto hx = random_values<T>(3 * 4 * 6, 6);
  const auto hy = random_values<T>(hx.size(), 7);
  hx[30] = std::numeric_limits<T>::infinity();
  hx[31] = std::numeric_limits<T>::quiet_NaN();
  hx[70] = -std::numeric_limits<T>::infinity();
  auto x = d.upload(hx, 3, 4, 6);
  auto y = d.upload(hy, 3, 4, 6);
  auto acc = d.b.template allocate<typename TestType::accum_type>(3);
  d.b.count_non_finite(x.view(), acc.data());
  CHECK(d.read(acc, 3) == std::vector<double>{0, 2, 1});

  auto finite = d.upload(hy, 3, 4, 6);
  d.b.frobenius_norms(finite.view(), acc.data());
  auto norms = d.read(acc, 3);
  d.b.dots(finite.view(), y.view(), acc.data());
  auto dots = d.read(acc, 3);
  d.b.max_abs(finite.view(), acc.data());
  auto maxes = d.read(acc, 3);
  for (int s = 0; s < 3; ++s) {
    double sq = 0, mx = 0;
    for (int i = 0; i < 24; ++i) {
      const double v = hy[static_cast<std::size_t>(s * 24 + i)];
      sq += v * v;
      mx = std::max(mx, std::abs(v));
    }
    CHECK(norms[static_cast<std::size_t>(s)] == Approx(std::sqrt(sq)).epsilon(1e-12));
    CHECK(dots[static_cast<std::size_t>(s)] == Approx(sq).epsilon(1e-12));
    CHECK(maxes[static_cast<std::size_t>(s)] == mx);
  }
}

TEMPLATE_TEST_CASE("backend: Frobenius norm of values near the type's maximum stays finite", "[backend]",
                   MUON_CONFORMANCE_BACKENDS) {
  using T = typename TestType::value_type;
  Device<TestType> d;
  // Squares overflow even in double for T = double; the norm itself (max / 2) does not.
  const T big = std::numeric_limits<T>::max() / T(8);
  auto x = d.upload(std::vector<T>(16, big), 1, 4, 4);
  auto acc = d.b.template allocate<typename TestType::accum_type>(1);
  d.b.frobenius_norms(x.view(), acc.data());
  const double norm = d.read(acc, 1)[0];
  CHECK(std::isfinite(norm));
  CHECK(norm == Approx(4.0 * static_cast<double>(big)));
}
