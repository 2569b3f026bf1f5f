// The CUDA backend (muon/backend/cuda/cuda.cuh): its primitives against plain host loops, the
// Newton-Schulz golden cases, and the named compositions against the Eigen backend on the same
// inputs (the Eigen runs are in reference.cpp, built by the host compiler; see compositions.hpp).
// Built as muon_cuda_tests when CMake finds a CUDA toolkit. Every test that needs a GPU skips
// with "no CUDA device: skipped" where there is none (CI compiles this file but has no GPU);
// "without a device, construction is a muon::Error" runs exactly there.
#include <catch2/catch.hpp>

#include <muon/backend/cuda/cuda.cuh>
#include <muon/muon.hpp>

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <memory>
#include <limits>
#include <random>
#include <span>
#include <utility>
#include <string>
#include <vector>

#include "../support/golden.hpp"
#include "../support/tolerance.hpp"
#include "compositions.hpp"

namespace {

using muon::index_t;
using muon::backend::MatrixView;
using muon::backend::Trans;
template <class T>
using Cuda = muon::backend::Cuda<T>;

// Functors for transform_slices / transform_indexed (host and device).
template <class T>
struct TimesSlice {
  MUON_HOST_DEVICE T operator()(index_t s, T v) const { return v * static_cast<T>(s + 1); }
};
template <class T>
struct PlusIndexMod3 {
  MUON_HOST_DEVICE T operator()(index_t k, T v) const { return v + static_cast<T>(k % 3); }
};

bool has_device() {
  static const bool yes = [] {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  }();
  return yes;
}

// A test that needs a GPU starts with this: without one it is a skip, not a failure.
#define MUON_CUDA_REQUIRE_DEVICE()        \
  do {                                    \
    if (!has_device()) {                  \
      WARN("no CUDA device: skipped");    \
      SUCCEED("no CUDA device: skipped"); \
      return;                             \
    }                                     \
  } while (false)

void cuda_ok(cudaError_t e, const char* what) {
  INFO(what << ": " << cudaGetErrorString(e));
  REQUIRE(e == cudaSuccess);
}

// Device memory owned by a test, filled from and read back to the host (synchronously).
template <class T>
class DeviceVec {
 public:
  explicit DeviceVec(const std::vector<T>& host) : n_(host.size()) {
    cuda_ok(cudaMalloc(reinterpret_cast<void**>(&p_), std::max<std::size_t>(n_, 1) * sizeof(T)), "cudaMalloc");
    upload(host);
  }
  DeviceVec(const DeviceVec&) = delete;
  DeviceVec& operator=(const DeviceVec&) = delete;
  ~DeviceVec() { cudaFree(p_); }
  void upload(const std::vector<T>& host, cudaStream_t s = nullptr) {
    REQUIRE(host.size() == n_);
    cuda_ok(cudaMemcpyAsync(p_, host.data(), n_ * sizeof(T), cudaMemcpyHostToDevice, s), "cudaMemcpyAsync H2D");
    cuda_ok(cudaStreamSynchronize(s), "cudaStreamSynchronize");
  }
  [[nodiscard]] std::vector<T> download(cudaStream_t s = nullptr) const {
    std::vector<T> out(n_);
    cuda_ok(cudaMemcpyAsync(out.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost, s), "cudaMemcpyAsync D2H");
    cuda_ok(cudaStreamSynchronize(s), "cudaStreamSynchronize");
    return out;
  }
  [[nodiscard]] T* data() { return p_; }
  [[nodiscard]] std::size_t size() const { return n_; }

 private:
  T* p_ = nullptr;
  std::size_t n_ = 0;
};

template <class T>
std::vector<T> random_values(std::size_t n, unsigned seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> d(0.0, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(rng));
  return v;
}

template <class A, class B>
double max_abs_diff(const std::vector<A>& a, const std::vector<B>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const double d = std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i]));
    if (!(d <= m)) m = d;  // NaN shows
  }
  return m;
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 2e-4 : 1e-10;
}

}  // namespace

TEST_CASE("Cuda: without a device, construction is a muon::Error naming it", "[cuda]") {
  if (has_device()) {
    SUCCEED("a CUDA device is present: the no-device error cannot be shown here");
    return;
  }
  try {
    Cuda<float> b;
    FAIL("constructed a CUDA backend without a device");
  } catch (const muon::Error& e) {
    INFO(e.what());
    CHECK(std::string(e.what()).find("no CUDA device") != std::string::npos);
    CHECK(std::string(e.what()).find("cudaGetDeviceCount") != std::string::npos);
  }
}

TEST_CASE("Cuda: a destroyed stream is refused with a muon::Error", "[cuda][.invalid_stream]") {
  // Hidden (run by name in scripts/gpu_check.sh): what a driver does with a stale handle is
  // not promised, so a crash here must not take the other tests down with it.
  MUON_CUDA_REQUIRE_DEVICE();
  cudaStream_t s = nullptr;
  cuda_ok(cudaStreamCreate(&s), "cudaStreamCreate");
  cuda_ok(cudaStreamDestroy(s), "cudaStreamDestroy");
  CHECK_THROWS_AS(Cuda<float>(s), muon::Error);
}

namespace {

// Plain host references for the primitives (double accumulation).
template <class T>
void host_gemm(Trans ta, Trans tb, T alpha, MatrixView<const T> a, MatrixView<const T> b, T beta, MatrixView<T> c) {
  const index_t k = ta == Trans::no ? a.cols : a.rows;
  for (index_t s = 0; s < c.batch; ++s) {
    const T* as = a.data + (a.batch == 1 ? 0 : s * a.slice_size());
    const T* bs = b.data + (b.batch == 1 ? 0 : s * b.slice_size());
    T* cs = c.data + s * c.slice_size();
    for (index_t i = 0; i < c.rows; ++i)
      for (index_t j = 0; j < c.cols; ++j) {
        double sum = 0;
        for (index_t l = 0; l < k; ++l) {
          const double x = ta == Trans::no ? as[i * a.cols + l] : as[l * a.cols + i];
          const double y = tb == Trans::no ? bs[l * b.cols + j] : bs[j * b.cols + l];
          sum += x * y;
        }
        const double old = beta == T(0) ? 0.0 : static_cast<double>(beta) * cs[i * c.cols + j];
        cs[i * c.cols + j] = static_cast<T>(static_cast<double>(alpha) * sum + old);
      }
  }
}

}  // namespace

TEMPLATE_TEST_CASE("Cuda: primitives agree with host loops", "[cuda]", float, double) {
  MUON_CUDA_REQUIRE_DEVICE();
  using T = TestType;
  Cuda<T> gpu;
  const double tol = tolerance<T>() * 10;

  SECTION("gemm: every transpose combination, batched, a shared operand, beta 0 over NaN") {
    const index_t batch = 3, m = 17, n = 9, k = 13;
    for (Trans ta : {Trans::no, Trans::yes})
      for (Trans tb : {Trans::no, Trans::yes})
        for (index_t a_batch : {index_t{1}, batch}) {
          const index_t ar = ta == Trans::no ? m : k, ac = ta == Trans::no ? k : m;
          const index_t br = tb == Trans::no ? k : n, bc = tb == Trans::no ? n : k;
          auto a = random_values<T>(static_cast<std::size_t>(a_batch * ar * ac), 1);
          auto b = random_values<T>(static_cast<std::size_t>(batch * br * bc), 2);
          for (T beta : {T(0), T(0.5)}) {
            std::vector<T> c(static_cast<std::size_t>(batch * m * n), beta == T(0) ? std::numeric_limits<T>::quiet_NaN() : T(1));
            DeviceVec<T> da(a), db(b), dc(c);
            gpu.gemm(ta, tb, T(1.5), MatrixView<const T>{da.data(), a_batch, ar, ac}, MatrixView<const T>{db.data(), batch, br, bc},
                     beta, MatrixView<T>{dc.data(), batch, m, n});
            host_gemm(ta, tb, T(1.5), MatrixView<const T>{a.data(), a_batch, ar, ac}, MatrixView<const T>{b.data(), batch, br, bc},
                      beta, MatrixView<T>{c.data(), batch, m, n});
            INFO("ta " << (ta == Trans::yes) << " tb " << (tb == Trans::yes) << " a batch " << a_batch << " beta " << beta);
            CHECK(max_abs_diff(dc.download(), c) <= tol);
          }
        }
  }

  SECTION("add_to_diagonal and the elementwise transforms") {
    auto x = random_values<T>(2 * 5 * 7, 3);
    auto y = random_values<T>(2 * 5 * 7, 4);
    DeviceVec<T> dx(x), dy(y);
    const MatrixView<T> gx{dx.data(), 2, 5, 7};
    gpu.add_to_diagonal(gx, T(2));
    gpu.transform(gx, muon::fn::Lerp<T>{T(0.3)}, MatrixView<const T>(gx), MatrixView<const T>{dy.data(), 2, 5, 7});
    gpu.transform_slices(gx, TimesSlice<T>{}, MatrixView<const T>(gx));
    gpu.transform_indexed(gx, PlusIndexMod3<T>{}, MatrixView<const T>(gx));
    for (index_t s = 0; s < 2; ++s)
      for (index_t i = 0; i < 5; ++i) x[static_cast<std::size_t>(s * 35 + i * 7 + i)] += T(2);
    for (std::size_t k = 0; k < x.size(); ++k) {
      x[k] = muon::fn::Lerp<T>{T(0.3)}(x[k], y[k]);
      x[k] = TimesSlice<T>{}(static_cast<index_t>(k / 35), x[k]);
      x[k] = PlusIndexMod3<T>{}(static_cast<index_t>(k), x[k]);
    }
    CHECK(max_abs_diff(dx.download(), x) <= tol);
  }

  SECTION("reductions, per slice, in double") {
    const std::size_t batch = 4, len = 300;
    auto x = random_values<T>(batch * len, 5);
    auto y = random_values<T>(batch * len, 6);
    x[7] = std::numeric_limits<T>::quiet_NaN();
    x[400] = std::numeric_limits<T>::infinity();
    x[401] = -std::numeric_limits<T>::infinity();
    DeviceVec<T> dx(x), dy(y);
    DeviceVec<double> out(std::vector<double>(batch, 0.0));
    std::vector<double> host(batch);
    const MatrixView<const T> gx{dx.data(), 4, 6, 50}, gy{dy.data(), 4, 6, 50};
    auto expect = [&](const char* what, auto per_slice) {
      gpu.read(out.data(), host);
      INFO(what);
      for (std::size_t s = 0; s < batch; ++s) {
        const double e = per_slice(s);
        if (std::isnan(e))
          CHECK(std::isnan(host[s]));
        else
          CHECK(host[s] == Approx(e).epsilon(1e-12).margin(1e-12));
      }
    };
    gpu.frobenius_norms(gx, out.data());
    expect("frobenius_norms", [&](std::size_t s) {
      double sum = 0;
      for (std::size_t i = 0; i < len; ++i) sum += static_cast<double>(x[s * len + i]) * x[s * len + i];
      return std::sqrt(sum);
    });
    gpu.dots(gx, gy, out.data());
    expect("dots", [&](std::size_t s) {
      double sum = 0;
      for (std::size_t i = 0; i < len; ++i) sum += static_cast<double>(x[s * len + i]) * y[s * len + i];
      return sum;
    });
    gpu.max_abs(gx, out.data());
    expect("max_abs (NaN ignored, as on the CPU backends)", [&](std::size_t s) {
      double m = 0;
      for (std::size_t i = 0; i < len; ++i) m = std::max(m, static_cast<double>(std::abs(x[s * len + i])));
      return m;
    });
    gpu.count_non_finite(gx, out.data());
    expect("count_non_finite", [&](std::size_t s) {
      double bad = 0;
      for (std::size_t i = 0; i < len; ++i) bad += std::isfinite(x[s * len + i]) ? 0 : 1;
      return bad;
    });
    if constexpr (std::is_same_v<T, double>) {  // a sum of squares that overflows double
      DeviceVec<T> dbig(std::vector<T>(300, T(1e300)));
      gpu.frobenius_norms(MatrixView<const T>{dbig.data(), 1, 1, 300}, out.data());
      gpu.read(out.data(), std::span<double>(host.data(), 1));
      CHECK(host[0] == Approx(1e300 * std::sqrt(300.0)).epsilon(1e-12));
    }
  }

  SECTION("reductions over large slices (chunked, then combined) agree with host loops") {
    for (const auto [batch, len] : {std::pair<index_t, index_t>{1, 1000003}, std::pair<index_t, index_t>{3, 200000}}) {
      auto x = random_values<T>(static_cast<std::size_t>(batch * len), 9);
      auto y = random_values<T>(static_cast<std::size_t>(batch * len), 10);
      x[12345] = std::numeric_limits<T>::quiet_NaN();
      x[static_cast<std::size_t>(len - 1)] = std::numeric_limits<T>::infinity();
      DeviceVec<T> dx(x), dy(y);
      DeviceVec<double> out(std::vector<double>(static_cast<std::size_t>(batch), 0.0));
      std::vector<double> host(static_cast<std::size_t>(batch));
      const MatrixView<const T> gx{dx.data(), batch, 1, len}, gy{dy.data(), batch, 1, len};
      auto slice_sum = [&](index_t s, auto term) {
        double acc = 0;
        for (index_t i = 0; i < len; ++i) acc = term(acc, static_cast<double>(x[static_cast<std::size_t>(s * len + i)]),
                                                     static_cast<double>(y[static_cast<std::size_t>(s * len + i)]));
        return acc;
      };
      auto check = [&](const char* what, auto term, double relative) {
        gpu.read(out.data(), host);
        for (index_t s = 0; s < batch; ++s) {
          const double e = slice_sum(s, term);
          INFO(what << " batch " << batch << " len " << len << " slice " << s << ": " << host[static_cast<std::size_t>(s)]
                    << " vs " << e);
          if (std::isnan(e))
            CHECK(std::isnan(host[static_cast<std::size_t>(s)]));
          else
            CHECK(host[static_cast<std::size_t>(s)] == Approx(e).epsilon(relative).margin(relative));
        }
      };
      gpu.dots(gx, gy, out.data());  // slice 0 holds a NaN and, at its end, an Inf
      check("dots", [](double a, double u, double v) { return a + u * v; }, 1e-9);
      gpu.max_abs(gy, out.data());
      check("max_abs", [](double a, double, double v) { return std::max(a, std::abs(v)); }, 0);
      gpu.count_non_finite(gx, out.data());
      check("count_non_finite", [](double a, double u, double) { return a + (std::isfinite(u) ? 0 : 1); }, 0);
      gpu.frobenius_norms(gy, out.data());
      gpu.read(out.data(), host);
      for (index_t s = 0; s < batch; ++s) {
        double sum = 0;
        for (index_t i = 0; i < len; ++i) sum += static_cast<double>(y[static_cast<std::size_t>(s * len + i)]) * y[static_cast<std::size_t>(s * len + i)];
        CHECK(host[static_cast<std::size_t>(s)] == Approx(std::sqrt(sum)).epsilon(1e-12));
      }
    }
    if constexpr (std::is_same_v<T, double>) {  // overflowing sum of squares on the chunked path
      DeviceVec<T> dbig(std::vector<T>(100000, T(1e300)));
      DeviceVec<double> out(std::vector<double>(1, 0.0));
      std::vector<double> host(1);
      gpu.frobenius_norms(MatrixView<const T>{dbig.data(), 1, 1, 100000}, out.data());
      gpu.read(out.data(), host);
      CHECK(host[0] == Approx(1e300 * std::sqrt(100000.0)).epsilon(1e-12));
    }
  }

  SECTION("buffers are zeroed; host copies round-trip") {
    auto buf = gpu.template allocate<T>(1000);
    std::vector<T> back(1000, T(7));
    gpu.copy_to_host(MatrixView<const T>{buf.data(), 1, 1, 1000}, back);
    CHECK(std::all_of(back.begin(), back.end(), [](T v) { return v == T(0); }));
    const auto v = random_values<T>(1000, 8);
    gpu.copy_from_host(v, MatrixView<T>{buf.data(), 1, 1, 1000});
    gpu.copy_to_host(MatrixView<const T>{buf.data(), 1, 1, 1000}, back);
    CHECK(back == v);
  }
}

TEMPLATE_TEST_CASE("Cuda: Newton-Schulz matches the ns5 golden cases (a 3-D stack among them)", "[cuda][golden]", float,
                   double) {
  MUON_CUDA_REQUIRE_DEVICE();
  using T = TestType;
  using B = Cuda<T>;
  const auto names = muon::test::golden_case_names("ns5");
  REQUIRE(names.size() == 4);
  for (const auto& name : names) {
    const auto c = muon::test::load_golden_case(name);
    muon::policy::NewtonSchulz ns(muon::test::ns_options_from(c));
    const auto& in = c.array("input").values;
    std::vector<T> x(in.begin(), in.end());
    const index_t rank = static_cast<index_t>(c.shape.size());
    const index_t batch = rank == 3 ? static_cast<index_t>(c.shape[0]) : 1;
    const auto rows = static_cast<index_t>(c.shape[static_cast<std::size_t>(rank - 2)]);
    const auto cols = static_cast<index_t>(c.shape[static_cast<std::size_t>(rank - 1)]);
    B backend;
    DeviceVec<T> dx(x);
    const MatrixView<T> view{dx.data(), batch, rows, cols};
    muon::Workspace<B> ws;
    ws.allocate(backend, ns.plan(backend, batch, rows, cols));
    ns.apply(backend, view, ws);
    const auto ours = dx.download();
    const double err = max_abs_diff(ours, c.array("expected").values);
    INFO(name << ": max abs error " << err << ", tolerance " << muon::test::Tolerance<T>::golden(c.suggested_atol));
    CHECK(err <= muon::test::Tolerance<T>::golden(c.suggested_atol));
  }
}

namespace {

using muon::test::cuda::Spec;

std::vector<Spec> default_model() {
  return {{"w0", muon::Shape{32, 16}},
          {"w1", muon::Shape{16, 48}},
          {"stack", muon::Shape{3, 8, 12}},  // a 3-D stack of matrices (batched GEMM)
          {"bias", muon::Shape{16}}};
}

// Runs `steps` steps of Tag's composition on the CUDA backend (on a stream of its own) and on
// the Eigen backend from the same weights and gradients, and checks that they agree.
template <class Tag, class T = float>
void compare_with_eigen(const std::vector<Spec>& model, int steps) {
  using muon::test::cuda::element_count;
  std::vector<std::vector<T>> w0;
  std::vector<std::vector<std::vector<T>>> grads(static_cast<std::size_t>(steps));
  for (std::size_t i = 0; i < model.size(); ++i) {
    const std::size_t n = element_count(model[i].shape);
    w0.push_back(random_values<T>(n, 100 + static_cast<unsigned>(i), 0.2));
    for (int t = 0; t < steps; ++t)
      grads[static_cast<std::size_t>(t)].push_back(random_values<T>(n, 1000 * static_cast<unsigned>(t + 1) + static_cast<unsigned>(i)));
  }
  const auto expected = muon::test::cuda::eigen_run<Tag, T>(model, w0, grads);

  cudaStream_t stream = nullptr;
  cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  {
    using Opt = typename Tag::template type<Cuda<T>>;
    typename Opt::Options options{};
    Tag::configure(options);
    Opt opt(options, Cuda<T>(stream));
    std::vector<std::unique_ptr<DeviceVec<T>>> dw, dg;
    for (std::size_t i = 0; i < model.size(); ++i) {
      dw.push_back(std::make_unique<DeviceVec<T>>(w0[i]));
      dg.push_back(std::make_unique<DeviceVec<T>>(grads[0][i]));
      opt.add(model[i].name, muon::raw(dw[i]->data(), model[i].shape), muon::raw(dg[i]->data(), model[i].shape),
              model[i].options);
    }
    for (int t = 0; t < steps; ++t) {
      for (std::size_t i = 0; i < model.size(); ++i) dg[i]->upload(grads[static_cast<std::size_t>(t)][i], stream);
      const auto r = opt.step();
      INFO(Tag::name << " step " << t);
      CHECK(r.skipped.size() == expected.skipped[static_cast<std::size_t>(t)]);
      CHECK(static_cast<std::size_t>(r.constraint.clipped_heads) == expected.clipped_heads[static_cast<std::size_t>(t)]);
    }
    for (std::size_t i = 0; i < model.size(); ++i) {
      const double d = max_abs_diff(dw[i]->download(stream), expected.params[i]);
      INFO(Tag::name << " " << model[i].name << ": max abs difference from the Eigen backend " << d);
      CHECK(d <= tolerance<T>());
    }
  }
  cuda_ok(cudaStreamDestroy(stream), "cudaStreamDestroy");
}

}  // namespace

TEST_CASE("Cuda: the named compositions agree with the Eigen backend over a few steps", "[cuda][compositions]") {
  MUON_CUDA_REQUIRE_DEVICE();
  namespace c = muon::test::cuda;
  const int steps = 4;
  SECTION("Muon") { compare_with_eigen<c::MuonTag>(default_model(), steps); }
  SECTION("Muon, double") { compare_with_eigen<c::MuonTag, double>(default_model(), steps); }
  SECTION("MuonSGD") { compare_with_eigen<c::MuonSGDTag>(default_model(), steps); }
  SECTION("MuonLion") { compare_with_eigen<c::MuonLionTag>(default_model(), steps); }
  SECTION("Grokfast") { compare_with_eigen<c::GrokfastTag>(default_model(), steps); }
  SECTION("MuonGrokfast") { compare_with_eigen<c::MuonGrokfastTag>(default_model(), steps); }
  SECTION("StiefelMuon") { compare_with_eigen<c::StiefelMuonTag>(default_model(), steps); }
  SECTION("HypersphereMuon") { compare_with_eigen<c::HypersphereMuonTag>(default_model(), steps); }
  SECTION("GrokfastMA") { compare_with_eigen<c::GrokfastMATag>(default_model(), steps); }
  SECTION("Muon with NorMuon") { compare_with_eigen<c::NorMuonTag>(default_model(), steps); }
  // The same functors round the same float values on both sides: bit-identical codes are
  // expected except where the GPU's fused multiply-adds move a value across a rounding boundary
  // (one bf16 ulp of momentum moves a weight by about lr 2^-8), so the float tolerance holds.
  SECTION("Muon with bf16 momentum and q8 AdamW moments") { compare_with_eigen<c::LowMemoryTag>(default_model(), steps); }
  SECTION("MuonClip (weight_norm mode: heads clipped on both)") {
    std::vector<Spec> model = default_model();
    model.push_back({"q", muon::Shape{32, 24}, {.role = muon::Role::query, .heads = 4}});
    model.push_back({"k", muon::Shape{32, 24}, {.role = muon::Role::key, .heads = 4}});
    compare_with_eigen<c::MuonClipTag>(model, steps);
  }
}

TEST_CASE("Cuda: a NaN gradient skips that tensor, as on the Eigen backend", "[cuda]") {
  MUON_CUDA_REQUIRE_DEVICE();
  std::vector<float> w = random_values<float>(32 * 16, 1), g = random_values<float>(32 * 16, 2);
  g[5] = std::numeric_limits<float>::quiet_NaN();
  DeviceVec<float> dw(w), dg(g);
  muon::Muon<Cuda<float>> opt({.threads = 1});
  opt.add("w", muon::raw(dw.data(), {32, 16}), muon::raw(dg.data(), {32, 16}));
  const auto r = opt.step();
  REQUIRE(r.skipped.size() == 1);
  CHECK(dw.download() == w);
}

// ---- bf16 products (Cuda<float> is a backend::Bf16Products) -------------------------------------

TEST_CASE("Cuda: bf16 conversion rounds exactly as the CPU backends do", "[cuda][bf16]") {
  MUON_CUDA_REQUIRE_DEVICE();
  Cuda<float> gpu;
  std::vector<float> x = random_values<float>(4096, 21, 3.0);
  const float specials[] = {0.0f, -0.0f, 1.0f + 0x1p-8f /* a tie: to even */, 1.0f + 3 * 0x1p-8f, 0x1p-130f /* subnormal */,
                            std::numeric_limits<float>::max(), -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()};
  std::copy(std::begin(specials), std::end(specials), x.begin());
  DeviceVec<float> dx(x);
  DeviceVec<muon::bfloat16> d16(std::vector<muon::bfloat16>(x.size()));
  gpu.convert(MatrixView<const float>{dx.data(), 1, 64, 64}, MatrixView<muon::bfloat16>{d16.data(), 1, 64, 64});
  const auto got = d16.download();
  std::size_t differ = 0;
  for (std::size_t i = 0; i < x.size(); ++i) differ += got[i].bits != muon::detail::float_to_bf16(x[i]);
  CHECK(differ == 0);
  CHECK(gpu.bf16_unavailable_reason().empty());  // sm_80 and newer; the checks run on sm_90
}

TEST_CASE("Cuda: bf16 products equal a double product of the rounded operands", "[cuda][bf16]") {
  MUON_CUDA_REQUIRE_DEVICE();
  Cuda<float> gpu;
  const index_t batch = 2, m = 24, k = 260, n = 20;
  const auto a = random_values<float>(static_cast<std::size_t>(batch * m * k), 31);
  const auto b = random_values<float>(static_cast<std::size_t>(batch * k * n), 32);
  auto rounded = [](const std::vector<float>& v) {
    std::vector<float> r(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) r[i] = muon::detail::bf16_to_float(muon::detail::float_to_bf16(v[i]));
    return r;
  };
  auto ar = rounded(a), br = rounded(b);
  DeviceVec<float> da(a), db(b);
  DeviceVec<muon::bfloat16> a16(std::vector<muon::bfloat16>(a.size())), b16(std::vector<muon::bfloat16>(b.size()));
  gpu.convert(MatrixView<const float>{da.data(), batch, m, k}, MatrixView<muon::bfloat16>{a16.data(), batch, m, k});
  gpu.convert(MatrixView<const float>{db.data(), batch, k, n}, MatrixView<muon::bfloat16>{b16.data(), batch, k, n});

  SECTION("gemm, float accumulation: a few float ulps of sums of 260 unit terms") {
    DeviceVec<float> dc(std::vector<float>(static_cast<std::size_t>(batch * m * n), std::numeric_limits<float>::quiet_NaN()));
    gpu.gemm(Trans::no, Trans::no, 1.0f, MatrixView<const muon::bfloat16>{a16.data(), batch, m, k},
             MatrixView<const muon::bfloat16>{b16.data(), batch, k, n}, 0.0f, MatrixView<float>{dc.data(), batch, m, n});
    std::vector<float> c(static_cast<std::size_t>(batch * m * n));
    host_gemm(Trans::no, Trans::no, 1.0f, MatrixView<const float>{ar.data(), batch, m, k},
              MatrixView<const float>{br.data(), batch, k, n}, 0.0f, MatrixView<float>{c.data(), batch, m, n});
    CHECK(max_abs_diff(dc.download(), c) < 2e-4);
  }
  SECTION("syrk: A A^T exactly symmetric, beta folds in the old C") {
    std::vector<float> c0(static_cast<std::size_t>(batch * m * m));
    for (index_t s = 0; s < batch; ++s)  // a symmetric C on entry
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < m; ++j) c0[static_cast<std::size_t>((s * m + i) * m + j)] = 0.01f * static_cast<float>(i + j);
    DeviceVec<float> dc(c0);
    gpu.syrk(Trans::no, 0.5f, MatrixView<const muon::bfloat16>{a16.data(), batch, m, k}, 2.0f,
             MatrixView<float>{dc.data(), batch, m, m});
    std::vector<float> c = c0;
    host_gemm(Trans::no, Trans::yes, 0.5f, MatrixView<const float>{ar.data(), batch, m, k},
              MatrixView<const float>{ar.data(), batch, m, k}, 2.0f, MatrixView<float>{c.data(), batch, m, m});
    const auto got = dc.download();
    CHECK(max_abs_diff(got, c) < 2e-4);
    std::size_t asymmetric = 0;
    for (index_t s = 0; s < batch; ++s)
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < i; ++j)
          asymmetric += got[static_cast<std::size_t>((s * m + i) * m + j)] != got[static_cast<std::size_t>((s * m + j) * m + i)];
    CHECK(asymmetric == 0);
  }
}

TEST_CASE("Cuda: Newton-Schulz in bf16 precision is within the CPU's bf16 tolerance of the golden cases",
          "[cuda][bf16][golden]") {
  MUON_CUDA_REQUIRE_DEVICE();
  // The same bound as tests/test_bf16.cpp (3e-2; the CPU's worst case is 2.1e-2): bf16 keeps 8
  // significant bits and the iterations do not damp the operands' rounding.
  double worst = 0;
  for (const std::string family : {"ns5", "polar_express"}) {
    for (const auto& name : muon::test::golden_case_names(family)) {
      const auto c = muon::test::load_golden_case(name);
      auto o = muon::test::ns_options_from(c);
      o.precision = muon::Precision::bf16;
      muon::policy::NewtonSchulz ns(o);
      const auto& in = c.array("input").values;
      const std::vector<float> x(in.begin(), in.end());
      const auto& s = c.shape;
      const index_t batch = s.size() == 3 ? static_cast<index_t>(s[0]) : 1;
      const auto rows = static_cast<index_t>(s[s.size() - 2]), cols = static_cast<index_t>(s[s.size() - 1]);
      Cuda<float> backend;
      DeviceVec<float> dx(x);
      muon::Workspace<Cuda<float>> ws;
      ws.allocate(backend, ns.plan(backend, batch, rows, cols));
      ns.apply(backend, MatrixView<float>{dx.data(), batch, rows, cols}, ws);
      const double err = max_abs_diff(dx.download(), c.array("expected").values);
      INFO(name << ": max abs error in bf16 on the GPU " << err);
      CHECK(err <= 3e-2);
      worst = std::max(worst, err);
    }
  }
  CHECK(worst > 0);  // bf16 really ran (fp32 matches to ~1e-6)
}

TEST_CASE("Cuda: one lane whatever Options::threads says; the result does not depend on it", "[cuda]") {
  MUON_CUDA_REQUIRE_DEVICE();
  const auto w = random_values<float>(64 * 32, 41, 0.2), g = random_values<float>(64 * 32, 42);
  const auto w2 = random_values<float>(32 * 32, 43, 0.2), g2 = random_values<float>(32 * 32, 44);
  auto run = [&](int threads) {
    DeviceVec<float> dw(w), dg(g), dw2(w2), dg2(g2);
    muon::Muon<Cuda<float>> opt({.threads = threads});
    opt.add("a", muon::raw(dw.data(), {64, 32}), muon::raw(dg.data(), {64, 32}));
    opt.add("b", muon::raw(dw2.data(), {32, 32}), muon::raw(dg2.data(), {32, 32}));
    for (int t = 0; t < 3; ++t) REQUIRE(opt.step().all_applied());
    CHECK(opt.memory_report().workspace_copies == 1);
    auto out = dw.download();
    const auto b = dw2.download();
    out.insert(out.end(), b.begin(), b.end());
    return out;
  };
  CHECK(run(4) == run(1));
}
