// After the first step, step() allocates nothing: not through operator new (our buffers, std
// containers) and not through Eigen's internal malloc (its GEMM packing buffers, which the
// Eigen backend replaces with its own), on one thread or several. A product library's own
// bookkeeping inside its calls (oneDNN allocates a little per execute) is counted apart and
// reported, not failed: muon cannot change it. Built as its own executable because it replaces
// the global operator new.
#define EIGEN_RUNTIME_NO_MALLOC
#if defined(__GNUC__) && !defined(__clang__)
// The replacement operator delete below frees what the replacement operator new malloc'ed;
// GCC cannot see that pairing.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
#endif
#include <atomic>
#include <cstdlib>
#include <new>

#include <muon/backend/cpu/library_call.hpp>

// Eigen reports a forbidden malloc through eigen_assert; count instead of aborting so the test
// can say how many happened.
inline std::atomic<long> g_eigen_mallocs{0};
#define eigen_assert(x)                   \
  do {                                    \
    if (!(x)) g_eigen_mallocs.fetch_add(1); \
  } while (false)

#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <muon/backend/eigen.hpp>
#if defined(MUON_WITH_XTENSOR)
#include <muon/backend/xtensor.hpp>
#endif
#include <muon/muon.hpp>

namespace {
std::atomic<long> g_news{0};
std::atomic<long> g_library_news{0};
std::atomic<bool> g_counting{false};
void* counted(std::size_t n, std::size_t align) {
  if (g_counting.load()) (muon::backend::cpu::library_call_depth() > 0 ? g_library_news : g_news).fetch_add(1);
  void* p = align > alignof(std::max_align_t) ? std::aligned_alloc(align, (n + align - 1) / align * align)
                                              : std::malloc(n ? n : 1);
  if (!p) throw std::bad_alloc();
  return p;
}
}  // namespace

void* operator new(std::size_t n) { return counted(n, 0); }
void* operator new[](std::size_t n) { return counted(n, 0); }
void* operator new(std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void* operator new[](std::size_t n, std::align_val_t a) { return counted(n, static_cast<std::size_t>(a)); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }

template <class Opt>
void check_steps_allocate_nothing(Opt& opt) {
  opt.step();  // the first step may allocate (workspace, per-thread scratch)
  g_news = 0;
  g_library_news = 0;
  g_eigen_mallocs = 0;
  g_counting = true;
  Eigen::internal::set_is_malloc_allowed(false);
  for (int i = 0; i < 3; ++i) opt.step();
  Eigen::internal::set_is_malloc_allowed(true);
  g_counting = false;
  INFO("threads " << opt.threads() << "; allocations inside the product library's own calls over 3 steps: "
                  << g_library_news.load());
  CHECK(g_news.load() == 0);
  CHECK(g_eigen_mallocs.load() == 0);
}

TEMPLATE_TEST_CASE("step() allocates nothing after the first step", "[allocation]", float, double) {
  using T = TestType;
  using Mat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  // Large enough that Eigen's own product would heap-allocate its packing buffers.
  Mat w1 = Mat::Random(384, 256), g1 = Mat::Random(384, 256);
  Mat w2 = Mat::Random(128, 512), g2 = Mat::Random(128, 512);
  std::vector<T> experts(4 * 64 * 96), gexperts(experts.size(), T(0.5));
  Vec b = Vec::Random(384), gb = Vec::Random(384);
  Mat emb = Mat::Random(1000, 64), gemb = Mat::Random(1000, 64);

  SECTION("Muon + AdamW, with skipped (NaN) parameters, on 1, 2 and 3 threads") {
    const int threads = GENERATE(1, 2, 3);
    muon::Muon<muon::backend::Eigen<T>> opt({.threads = threads});
    Mat s1 = Mat::Random(48, 40), gs1 = Mat::Random(48, 40), s2 = Mat::Random(48, 40), gs2 = Mat::Random(48, 40);
    opt.add("s1", s1, gs1);  // a bucket: orthogonalised together
    opt.add("s2", s2, gs2);
    opt.add("w1", w1, g1);
    opt.add("w2", w2, g2);
    opt.add("experts", muon::raw(experts.data(), {4, 64, 96}), muon::raw(gexperts.data(), {4, 64, 96}));
    opt.add("b", b, gb, {.role = muon::Role::bias});
    opt.add("emb", emb, gemb, {.role = muon::Role::embedding});
    opt.add("head", emb, gemb, {.role = muon::Role::output_head});  // tied
    check_steps_allocate_nothing(opt);
    gb(0) = std::numeric_limits<T>::quiet_NaN();
    gs2(1, 1) = std::numeric_limits<T>::quiet_NaN();  // a bucket member skipped
    check_steps_allocate_nothing(opt);
  }
  SECTION("NorMuon, telemetry, Grokfast filter and QK-Clip") {
    muon::MuonGrokfastClip<muon::backend::Eigen<T>> opt(
        {.normuon = true, .telemetry = true, .constraint = {.mode = muon::policy::QKClipMode::weight_norm, .max_head_norm = 1.0}});
    opt.add("w1", w1, g1, {.role = muon::Role::query, .heads = 4});
    opt.add("w2", w2, g2);
    opt.add("b", b, gb, {.role = muon::Role::bias});
    check_steps_allocate_nothing(opt);
  }
  SECTION("Hypersphere, both retractions, row-major stack and column-major matrices") {
    for (const auto mode : {muon::policy::SphereRetraction::renormalize, muon::policy::SphereRetraction::analytic}) {
      muon::HypersphereMuon<muon::backend::Eigen<T>> opt({.constraint = {.retraction = mode}});
      opt.add("emb", emb, gemb, {.role = muon::Role::embedding});
      opt.add("w2", w2, g2);
      opt.add("experts", muon::raw(experts.data(), {4, 64, 96}), muon::raw(gexperts.data(), {4, 64, 96}));
      opt.add("b", b, gb, {.role = muon::Role::bias});
      check_steps_allocate_nothing(opt);
    }
  }
  SECTION("StiefelMuon: tall row-major, column-major and stacked tensors, retracting and not, warm or not") {
    // retract_every 2: the counted steps retract (polish, Gram matrices) and skip (error only).
    // w1 is left out: ten Polar Express calls a step on it take seconds.
    const bool warm = GENERATE(false, true);
    std::vector<T> tall(160 * 64), gtall(tall.size(), T(0.25));
    for (std::size_t i = 0; i < tall.size(); ++i) tall[i] = static_cast<T>(std::sin(0.37 * static_cast<double>(i)));
    muon::StiefelMuon<muon::backend::Eigen<T>> opt({.constraint = {.retract_every = 2, .warm_start = warm}});
    opt.add("tall", muon::raw(tall.data(), {160, 64}), muon::raw(static_cast<const T*>(gtall.data()), {160, 64}));
    opt.add("w2", w2, g2);  // column-major: wide logically, tall in storage
    opt.add("experts", muon::raw(experts.data(), {4, 64, 96}), muon::raw(gexperts.data(), {4, 64, 96}));
    opt.add("b", b, gb, {.role = muon::Role::bias});
    check_steps_allocate_nothing(opt);
  }
  SECTION("Polar Express, SGD with momentum") {
    muon::Optimizer<muon::backend::Eigen<T>, muon::policy::NoFilter, muon::policy::ShapeRoleRouter,
                    muon::policy::PolarExpress, muon::policy::NoConstraint, muon::policy::SGD>
        opt({.orthogonalizer = {.steps = 8}, .fallback = {.momentum = 0.9, .nesterov = true}});
    opt.add("w1", w1, g1);
    opt.add("w2", w2, g2);
    opt.add("b", b, gb, {.role = muon::Role::bias});
    check_steps_allocate_nothing(opt);
  }
}

#if defined(MUON_WITH_XTENSOR)
TEMPLATE_TEST_CASE("step() on the xtensor backend allocates nothing after the first step", "[allocation][xtensor]",
                   float, double) {
  using T = TestType;
  xt::xtensor<T, 2> w1 = xt::ones<T>({384, 256}), g1 = xt::ones<T>({384, 256});
  xt::xtensor<T, 2, xt::layout_type::column_major> w2 = xt::ones<T>({128, 512}), g2 = xt::ones<T>({128, 512});
  xt::xarray<T> experts = xt::ones<T>({4, 64, 96}), gexperts = xt::ones<T>({4, 64, 96});
  xt::xtensor<T, 1> b = xt::ones<T>({384}), gb = xt::ones<T>({384});
  for (std::size_t i = 0; i < w1.size(); ++i) g1.data()[i] = static_cast<T>(std::sin(0.1 * static_cast<double>(i)));
  for (std::size_t i = 0; i < w2.size(); ++i) g2.data()[i] = static_cast<T>(std::cos(0.3 * static_cast<double>(i)));
  const int threads = GENERATE(1, 2, 3);
  muon::Muon<muon::backend::Xtensor<T>> opt({.threads = threads});
  opt.add("w1", w1, g1);
  opt.add("w2", w2, g2);
  opt.add("experts", experts, gexperts);
  opt.add("b", b, gb, {.role = muon::Role::bias});
  check_steps_allocate_nothing(opt);
  gb(0) = std::numeric_limits<T>::quiet_NaN();  // a skipped parameter
  check_steps_allocate_nothing(opt);
}
#endif

TEST_CASE("master weights, quantized views, loss scaling and schedules allocate nothing after the first step",
          "[allocation][master_weights]") {
  using Mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic>;
  Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, Eigen::Dynamic> w(256, 192);
  Eigen::Matrix<Eigen::half, Eigen::Dynamic, Eigen::Dynamic> gw(256, 192);
  Mat view = Mat::Random(128, 64), gview = Mat::Random(128, 64);
  Eigen::Matrix<Eigen::bfloat16, Eigen::Dynamic, 1> b(64), gb(64);
  for (Eigen::Index i = 0; i < w.size(); ++i) {
    w.data()[i] = Eigen::bfloat16(0.01f * static_cast<float>(i % 17));
    gw.data()[i] = Eigen::half(64.0f * static_cast<float>(i % 5));
  }
  for (Eigen::Index i = 0; i < b.size(); ++i) b[i] = gb[i] = Eigen::bfloat16(0.5f);
  muon::Muon<muon::backend::Eigen<float>> opt(
      {.loss_scaling = true, .schedule = muon::Schedule::warmup_cosine({.warmup_steps = 2, .total_steps = 100})});
  opt.add("w", w, gw);
  opt.add("view", view, gview, {.fake_quant_bits = 4});
  opt.add("b", b, gb, {.role = muon::Role::bias});
  opt.step({.inv_scale = 1.0 / 64.0});
  g_news = 0;
  g_eigen_mallocs = 0;
  g_counting = true;
  Eigen::internal::set_is_malloc_allowed(false);
  for (int i = 0; i < 3; ++i) opt.step({.inv_scale = 1.0 / 64.0});
  gw(3, 3) = Eigen::half(std::numeric_limits<float>::infinity());
  const bool overflow = opt.step({.inv_scale = 1.0 / 64.0}).overflow;
  Eigen::internal::set_is_malloc_allowed(true);
  g_counting = false;
  CHECK(overflow);
  CHECK(g_news.load() == 0);
  CHECK(g_eigen_mallocs.load() == 0);
}
