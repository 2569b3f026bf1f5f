// The xtensor backend: registration of xtensor containers (xtensor, xarray, xtensor_fixed,
// xt::adapt; row- and column-major), the error for a non-contiguous view, and the same numbers
// as the Eigen backend (several Muon steps, the exact polar factor, the golden trajectories).
// The backend conformance suite covers the Backend concept itself.
#if defined(MUON_WITH_XTENSOR)
#include <catch2/catch.hpp>

#include <muon/backend/eigen.hpp>
#include <muon/backend/xtensor.hpp>
#include <muon/muon.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "support/golden.hpp"
#include "support/tolerance.hpp"

namespace {

using Catch::Matchers::Contains;
using muon::index_t;

template <class T, class X>
void fill_random(X& x, unsigned seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  for (auto& v : x) v = static_cast<T>(normal(rng));
}

template <class T>
double tolerance() {
  return std::is_same_v<T, float> ? 1e-5 : 1e-12;
}

}  // namespace

TEMPLATE_TEST_CASE("xtensor: containers register with their shape and layout", "[xtensor][registration]", float,
                   double) {
  using T = TestType;
  xt::xtensor<T, 2> row = xt::zeros<T>({6, 4});
  xt::xtensor<T, 2, xt::layout_type::column_major> col = xt::zeros<T>({6, 4});
  xt::xarray<T> arr = xt::zeros<T>({3, 6, 4});
  xt::xarray<T, xt::layout_type::column_major> arr_col = xt::zeros<T>({6, 4});
  xt::xtensor_fixed<T, xt::xshape<6, 4>> fixed = xt::zeros<T>({6, 4});
  std::vector<T> storage(24);
  auto adapted = xt::adapt(storage.data(), storage.size(), xt::no_ownership(), std::array<std::size_t, 2>{6, 4});
  auto adapted_col = xt::adapt<xt::layout_type::column_major>(storage.data(), storage.size(), xt::no_ownership(),
                                                              std::array<std::size_t, 2>{6, 4});
  xt::xtensor<T, 1> bias = xt::zeros<T>({5});

  const auto check = [](auto& x, muon::Shape shape, muon::Layout layout, const T* data) {
    const auto r = muon::as_tensor(x);
    CHECK(r.shape == shape);
    CHECK(r.layout == layout);
    CHECK(r.data == data);
  };
  check(row, {6, 4}, muon::Layout::row_major, row.data());
  check(col, {6, 4}, muon::Layout::col_major, col.data());
  check(arr, {3, 6, 4}, muon::Layout::row_major, arr.data());
  check(arr_col, {6, 4}, muon::Layout::col_major, arr_col.data());
  check(fixed, {6, 4}, muon::Layout::row_major, fixed.data());
  check(adapted, {6, 4}, muon::Layout::row_major, storage.data());
  check(adapted_col, {6, 4}, muon::Layout::col_major, storage.data());
  check(bias, {5}, muon::Layout::row_major, bias.data());
  // A transposed view of a row-major matrix is a packed column-major one.
  auto transposed = xt::transpose(row);
  check(transposed, {4, 6}, muon::Layout::col_major, row.data());
  // A view of whole rows is packed: it registers at its offset.
  auto rows = xt::view(arr, 1);
  check(rows, {6, 4}, muon::Layout::row_major, arr.data() + 24);

  STATIC_REQUIRE(muon::tensor_adapter<xt::xtensor<T, 2>>::owns_storage);
  STATIC_REQUIRE(muon::tensor_adapter<xt::xarray<T>>::owns_storage);
  STATIC_REQUIRE(muon::tensor_adapter<xt::xtensor_fixed<T, xt::xshape<6, 4>>>::owns_storage);
  STATIC_REQUIRE(!muon::tensor_adapter<decltype(adapted)>::owns_storage);

  // Every kind, registered and stepped (distinct storage per tensor).
  xt::xtensor<T, 2> g_row = xt::ones<T>({6, 4});
  xt::xtensor<T, 2, xt::layout_type::column_major> g_col = xt::ones<T>({6, 4});
  xt::xarray<T> g_arr = xt::ones<T>({3, 6, 4});
  xt::xtensor_fixed<T, xt::xshape<6, 4>> g_fixed = xt::ones<T>({6, 4});
  std::vector<T> g_storage(24, T(1));
  auto g_adapted = xt::adapt(g_storage.data(), g_storage.size(), xt::no_ownership(), std::array<std::size_t, 2>{6, 4});
  xt::xtensor<T, 1> g_bias = xt::ones<T>({5});
  fill_random<T>(row, 1);
  fill_random<T>(col, 2);
  fill_random<T>(arr, 3);
  fill_random<T>(fixed, 4);
  fill_random<T>(storage, 5);
  muon::Muon<muon::backend::Xtensor<T>> opt;
  opt.add("row", row, g_row);
  opt.add("col", col, g_col);
  opt.add("arr", arr, g_arr);
  opt.add("fixed", fixed, g_fixed);
  opt.add("adapted", adapted, g_adapted);
  opt.add("bias", bias, g_bias, {.role = muon::Role::bias});
  const xt::xtensor<T, 2> before = row;
  REQUIRE(opt.step().all_applied());
  CHECK(xt::amax(xt::abs(row - before))() > T(0));
  CHECK(std::isfinite(static_cast<double>(xt::sum(arr)())));
  CHECK(bias(0) < T(0));  // AdamW moved it against the gradient
}

TEMPLATE_TEST_CASE("xtensor: a strided slice is refused, naming the parameter and the layout needed",
                   "[xtensor][registration]", float, double) {
  using T = TestType;
  xt::xtensor<T, 2> w = xt::ones<T>({8, 6}), g = xt::ones<T>({8, 6});
  auto every_other_column = xt::view(w, xt::all(), xt::range(0, 6, 2));
  auto g_columns = xt::view(g, xt::all(), xt::range(0, 6, 2));
  muon::Muon<muon::backend::Xtensor<T>> opt;
  REQUIRE_THROWS_WITH(opt.add("layer0.weight", every_other_column, g_columns),
                      Contains("layer0.weight") && Contains("parameter") && Contains("not contiguous") &&
                          Contains("row-major") && Contains("column-major"));
  auto g_view = xt::view(g, xt::range(0, 8, 2), xt::all());
  auto w_rows = xt::view(w, xt::range(0, 4), xt::all());
  REQUIRE_THROWS_WITH(opt.add("layer1.weight", w_rows, g_view), Contains("layer1.weight") && Contains("gradient"));
  CHECK(opt.routing_report().entries.empty());
}

TEMPLATE_TEST_CASE("xtensor: Muon on Xtensor matches Muon on Eigen on the same data", "[xtensor][parity]", float,
                   double) {
  using T = TestType;
  using RowMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using ColMat = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  // xt::zeros(shape): a braced list in a constructor would be the values of a rank-1 tensor.
  xt::xtensor<T, 2> xw = xt::zeros<T>({48, 32}), xg = xt::zeros<T>({48, 32});
  xt::xtensor<T, 2, xt::layout_type::column_major> xc = xt::zeros<T>({40, 56}), xgc = xt::zeros<T>({40, 56});
  xt::xtensor<T, 3> xs = xt::zeros<T>({3, 16, 24}), xgs = xt::zeros<T>({3, 16, 24});
  xt::xtensor<T, 1> xb = xt::zeros<T>({48}), xgb = xt::zeros<T>({48});
  fill_random<T>(xw, 11);
  fill_random<T>(xc, 12);
  fill_random<T>(xs, 13);
  fill_random<T>(xb, 14);
  RowMat ew = Eigen::Map<RowMat>(xw.data(), 48, 32), eg(48, 32);
  ColMat ec = Eigen::Map<ColMat>(xc.data(), 40, 56), egc(40, 56);
  std::vector<T> es(xs.begin(), xs.end()), egs(es.size());
  Vec eb = Eigen::Map<Vec>(xb.data(), 48), egb(48);

  muon::Muon<muon::backend::Xtensor<T>> xopt({.lr = 0.02, .weight_decay = 0.01});
  muon::Muon<muon::backend::Eigen<T>> eopt({.lr = 0.02, .weight_decay = 0.01});
  xopt.add("w", xw, xg);
  xopt.add("c", xc, xgc);
  xopt.add("s", xs, xgs);
  xopt.add("b", xb, xgb, {.role = muon::Role::bias});
  eopt.add("w", ew, eg);
  eopt.add("c", ec, egc);
  eopt.add("s", muon::raw(es.data(), {3, 16, 24}), muon::raw(static_cast<const T*>(egs.data()), {3, 16, 24}));
  eopt.add("b", eb, egb, {.role = muon::Role::bias});

  double worst = 0;
  for (int step = 0; step < 5; ++step) {
    fill_random<T>(xg, 100 + step);
    fill_random<T>(xgc, 200 + step);
    fill_random<T>(xgs, 300 + step);
    fill_random<T>(xgb, 400 + step);
    eg = Eigen::Map<RowMat>(xg.data(), 48, 32);
    egc = Eigen::Map<ColMat>(xgc.data(), 40, 56);
    std::copy(xgs.begin(), xgs.end(), egs.begin());
    egb = Eigen::Map<Vec>(xgb.data(), 48);
    REQUIRE(xopt.step().all_applied());
    REQUIRE(eopt.step().all_applied());
    const auto diff = [](const T* a, const T* b, std::size_t n) {
      double m = 0;
      for (std::size_t i = 0; i < n; ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
      return m;
    };
    worst = std::max({worst, diff(xw.data(), ew.data(), xw.size()), diff(xc.data(), ec.data(), xc.size()),
                      diff(xs.data(), es.data(), xs.size()), diff(xb.data(), eb.data(), xb.size())});
  }
  INFO("worst max-abs difference over 5 steps: " << worst);
  CHECK(worst <= tolerance<T>());
}

TEMPLATE_TEST_CASE("xtensor: polar_factor (SvdPolar) matches the Eigen backend's", "[xtensor][svd]", float, double) {
  using T = TestType;
  const index_t batch = 2, rows = 12, cols = 20;
  std::vector<T> a(static_cast<std::size_t>(batch * rows * cols));
  fill_random<T>(a, 7);
  std::fill(a.begin() + rows * cols, a.end(), T(0));  // a zero slice maps to zero
  std::vector<T> b = a;
  muon::backend::Xtensor<T> xb;
  muon::backend::Eigen<T> eb;
  xb.polar_factor({a.data(), batch, rows, cols});
  eb.polar_factor({b.data(), batch, rows, cols});
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i)
    worst = std::max(worst, std::abs(static_cast<double>(a[i]) - static_cast<double>(b[i])));
  CHECK(worst <= (std::is_same_v<T, float> ? 1e-6 : 1e-12));
  CHECK(a[static_cast<std::size_t>(rows * cols)] == T(0));
}

TEMPLATE_TEST_CASE("xtensor: Muon matches the torch.optim.Muon golden trajectories", "[xtensor][golden]", float,
                   double) {
  using T = TestType;
  const auto names = muon::test::golden_case_names("muon");
  REQUIRE(!names.empty());
  for (const auto& name : names) {
    const auto c = muon::test::load_golden_case(name);
    if (c.shape.size() != 2) continue;
    const auto o = muon::test::muon_options_from<typename muon::Muon<muon::backend::Xtensor<T>>::Options>(c);
    // Column-major xtensor matrices: the transposed physical path.
    xt::xtensor<T, 2, xt::layout_type::column_major> w = xt::zeros<T>({c.shape[0], c.shape[1]});
    xt::xtensor<T, 2, xt::layout_type::column_major> g = xt::zeros<T>({c.shape[0], c.shape[1]});
    const auto& p0 = c.array("p0").values;
    for (std::size_t i = 0; i < c.shape[0]; ++i)
      for (std::size_t j = 0; j < c.shape[1]; ++j) w(i, j) = static_cast<T>(p0[i * c.shape[1] + j]);
    muon::Muon<muon::backend::Xtensor<T>> opt(o);
    opt.add("w", w, g);
    double worst = 0;
    for (std::size_t t = 0; t < static_cast<std::size_t>(c.steps); ++t) {
      const auto grad = muon::test::slice(c.array("grads"), t);
      const auto expected = muon::test::slice(c.array("expected"), t);
      for (std::size_t i = 0; i < c.shape[0]; ++i)
        for (std::size_t j = 0; j < c.shape[1]; ++j) g(i, j) = static_cast<T>(grad[i * c.shape[1] + j]);
      REQUIRE(opt.step().all_applied());
      for (std::size_t i = 0; i < c.shape[0]; ++i)
        for (std::size_t j = 0; j < c.shape[1]; ++j)
          worst = std::max(worst, std::abs(static_cast<double>(w(i, j)) - expected[i * c.shape[1] + j]));
    }
    const double tol = muon::test::Tolerance<T>::golden(c.suggested_atol);
    INFO(name << ": worst max-abs error over steps " << worst << ", tolerance " << tol);
    CHECK(worst <= tol);
  }
}

#endif  // MUON_WITH_XTENSOR
