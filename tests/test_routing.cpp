// Routing and registration: the shape/role rules, overrides, tied tensors, the routing report,
// tensor adapters (Eigen Matrix / Map / Ref, raw pointer views) and the memory report.
#include <catch2/catch.hpp>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

namespace {
using B = muon::backend::Eigen<float>;
using Opt = muon::Muon<B>;
using Mat = Eigen::MatrixXf;
using Vec = Eigen::VectorXf;

muon::ParamInfo info(muon::Shape s, muon::Role r = muon::Role::none) { return {"p", s, r, std::nullopt, 0, 0}; }
}  // namespace

TEST_CASE("ShapeRoleRouter rules, first match wins", "[routing]") {
  muon::policy::ShapeRoleRouter r;
  using muon::Path;
  CHECK(r.route(info({64, 32})).path == Path::matrix);
  CHECK(r.route(info({64, 32})).rule == "rank 2");
  CHECK(r.route(info({4, 64, 32})).path == Path::matrix);
  CHECK(r.route(info({64})).path == Path::fallback);
  CHECK(r.route(info({64})).rule == "rank 1 < 2");
  CHECK(r.route(info({8, 4, 3, 3})).rule == "rank 4 > 3 (use a 2-D view)");
  CHECK(r.route(info({64, 1})).rule == "min dim 1 < 2");
  CHECK(r.route(info({32 * 64, 64})).path == Path::matrix);  // exactly 32:1 stays
  CHECK(r.route(info({33 * 64, 64})).path == Path::fallback);
  CHECK(r.route(info({33 * 64, 64})).rule == "aspect 33:1 > 32:1");
  for (auto role : {muon::Role::embedding, muon::Role::output_head, muon::Role::norm, muon::Role::bias})
    CHECK(r.route(info({64, 64}, role)).path == Path::fallback);
  CHECK(r.route(info({64, 64}, muon::Role::embedding)).rule == "role embedding");
  CHECK(r.route(info({64, 64}, muon::Role::query)).path == Path::matrix);

  muon::policy::ShapeRoleRouter custom({.min_dim = 16, .max_aspect_ratio = 4, .overrides = {{"p", Path::matrix}}});
  CHECK(custom.route(info({8, 64}, muon::Role::bias)).path == Path::matrix);  // override beats role
  CHECK(custom.route({"q", {8, 64}, muon::Role::none, std::nullopt, 0, 0}).rule == "min dim 8 < 16");
  CHECK(custom.route({"q", {16, 128}, muon::Role::none, std::nullopt, 0, 0}).rule == "aspect 8:1 > 4:1");
  CHECK(custom.route({"q", {16, 128}, muon::Role::none, muon::Path::matrix, 0, 0}).rule == "override (registration)");
  CHECK_THROWS_AS(muon::policy::ShapeRoleRouter({.min_dim = 0}), muon::Error);
}

TEST_CASE("routing report lists every tensor, tied names, totals and share", "[routing]") {
  Mat w1 = Mat::Random(64, 32), g1 = Mat::Zero(64, 32);
  Mat emb = Mat::Random(100, 32), gemb = Mat::Zero(100, 32);
  Vec b = Vec::Zero(64), gb = Vec::Zero(64);
  Opt opt;
  CHECK(opt.add("w1", w1, g1) == 0);
  CHECK(opt.add("embed", emb, gemb, {.role = muon::Role::embedding}) == 1);
  CHECK(opt.add("b", b, gb, {.role = muon::Role::bias}) == 2);
  CHECK(opt.add("lm_head", emb, gemb, {.role = muon::Role::output_head}) == 1);  // tied: same id
  CHECK(opt.size() == 3);
  CHECK(opt.id("lm_head") == 1);
  CHECK_THROWS_WITH(opt.id("nope"), Catch::Contains("no parameter named 'nope'"));

  const auto report = opt.routing_report();
  REQUIRE(report.entries.size() == 3);
  CHECK(report.entries[1].aliases == std::vector<std::string>{"lm_head"});
  CHECK(report.count(muon::Path::matrix) == 1);
  CHECK(report.elements(muon::Path::matrix) == 64 * 32);
  CHECK(report.elements(muon::Path::fallback) == 100 * 32 + 64);
  CHECK(report.matrix_share() == Approx(2048.0 / (2048 + 3200 + 64)));
  const std::string table = report.to_string();
  CHECK_THAT(table, Catch::Contains("embed = lm_head"));
  CHECK_THAT(table, Catch::Contains("(64, 32)"));
  CHECK_THAT(table, Catch::Contains("role bias"));
  CHECK_THAT(table, Catch::Contains("matrix share 38.6%"));

  // The tied tensor is updated once per step: one AdamW step, not two.
  gemb.setConstant(1.0f);
  const Mat before = emb;
  opt.step();
  const auto snap = opt.state_snapshot();
  CHECK(snap.at("embed/fallback/step") == std::vector<double>{1});
  // AdamW's first step moves each weight by lr (times the sign of the gradient), after decay.
  const Mat expected = (before * (1.0f - 1e-3f * 0.01f)).array() - 1e-3f;
  CHECK((emb - expected).cwiseAbs().maxCoeff() < 1e-6f);
}

TEST_CASE("tensor adapters: Eigen Matrix, Map, Ref, row-major, raw views", "[registration]") {
  // Initialised: uninitialised memory may hold NaN, and the step below must apply everything.
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> rm = Mat::Random(6, 10), grm = Mat::Random(6, 10);
  std::vector<float> buf(6 * 10), gbuf(6 * 10);
  Eigen::Map<Mat> map(buf.data(), 6, 10);
  Eigen::Map<const Mat> gmap(gbuf.data(), 6, 10);
  Mat m = Mat::Random(6, 10), gm = Mat::Random(6, 10);
  Eigen::Ref<Mat> ref(m);
  Eigen::Ref<const Mat> gref(gm);
  std::vector<float> stack(3 * 6 * 10), gstack(stack.size());

  auto t = muon::as_tensor(rm);
  CHECK(t.shape == muon::Shape{6, 10});
  CHECK(t.layout == muon::Layout::row_major);
  CHECK(muon::as_tensor(m).layout == muon::Layout::col_major);
  CHECK(muon::as_tensor(map).data == buf.data());
  Vec v(7);
  CHECK(muon::as_tensor(v).shape == muon::Shape{7});

  Opt opt;
  opt.add("row_major", rm, grm);
  opt.add("map", map, gmap);
  opt.add("ref", ref, gref);
  opt.add("stack", muon::raw(stack.data(), {3, 6, 10}), muon::raw(static_cast<const float*>(gstack.data()), {3, 6, 10}));
  // A temporary view (Map) is fine to pass: it does not own the elements.
  std::vector<float> buf2(6 * 10), gbuf2(6 * 10);
  opt.add("temporary_map", Eigen::Map<Mat>(buf2.data(), 6, 10), Eigen::Map<const Mat>(gbuf2.data(), 6, 10));
  const auto report = opt.routing_report();
  CHECK(report.count(muon::Path::matrix) == 5);
  CHECK(report.entries[3].shape == muon::Shape{3, 6, 10});
  CHECK(report.entries[3].rule == "rank 3 (per-slice matrices)");
  CHECK(opt.step().all_applied());
}

TEST_CASE("a column-major parameter gets the same update as its row-major copy", "[registration]") {
  // The logical shape drives lr adjustment (rows / cols of the logical matrix), so storing the
  // same matrix transposed in memory must not change anything.
  Mat w = Mat::Random(40, 16), g = Mat::Random(40, 16);
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> wr = w, gr = g;
  Opt a({.lr_adjust = muon::LrAdjust::original}), b({.lr_adjust = muon::LrAdjust::original});
  a.add("w", w, g);
  b.add("w", wr, gr);
  for (int i = 0; i < 3; ++i) {
    a.step();
    b.step();
  }
  CHECK((w - Mat(wr)).cwiseAbs().maxCoeff() < 1e-6f);
}

TEST_CASE("lr adjustment follows the logical shape", "[muon]") {
  CHECK(muon::adjusted_lr(0.02, muon::LrAdjust::original, 64, 16) == Approx(0.04));
  CHECK(muon::adjusted_lr(0.02, muon::LrAdjust::original, 16, 64) == Approx(0.02));
  CHECK(muon::adjusted_lr(0.02, muon::LrAdjust::match_rms_adamw, 16, 64) == Approx(0.02 * 0.2 * 8));
  CHECK(muon::adjusted_lr(0.02, muon::LrAdjust::none, 16, 64) == 0.02);
}

TEMPLATE_TEST_CASE("memory: one buffer per matrix, two per AdamW tensor, workspace bounded", "[memory]", float, double) {
  using T = TestType;
  using M = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic>;
  using V = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  M w1 = M::Zero(128, 64), g1 = M::Zero(128, 64);
  M w2 = M::Zero(64, 64), g2 = M::Zero(64, 64);
  M w3 = M::Zero(32, 96), g3 = M::Zero(32, 96);
  V b = V::Zero(128), gb = V::Zero(128);
  muon::Muon<muon::backend::Eigen<T>> opt;
  opt.add("w1", w1, g1);
  opt.add("w2", w2, g2);
  opt.add("w3", w3, g3);
  opt.add("b", b, gb, {.role = muon::Role::bias});
  opt.step();
  const auto mem = opt.memory_report();
  CHECK(mem.matrix_state_bytes == (128 * 64 + 64 * 64 + 32 * 96) * sizeof(T));
  CHECK(mem.fallback_state_bytes == 2 * 128 * sizeof(T));
  CHECK(mem.filter_state_bytes == 0);
  // Newton-Schulz needs u, X^T-sized Y, and two min-dim squares: at most 4 copies of the
  // largest matrix (plus alignment and a few norms), shared by all tensors of a thread; one
  // such workspace per thread that runs tensors side by side.
  const std::size_t largest = 128 * 64 * sizeof(T);
  REQUIRE(mem.workspace_copies >= 1);
  CHECK(mem.workspace_copies <= static_cast<std::size_t>(opt.threads()));
  CHECK(mem.workspace_bytes % mem.workspace_copies == 0);
  CHECK(mem.workspace_bytes / mem.workspace_copies <= 4 * largest + 1024);
  CHECK(mem.workspace_bytes / mem.workspace_copies >= 2 * largest);
  // GEMM packing space stays within about two copies of the largest matrix.
  CHECK(mem.backend_scratch_bytes <= 2 * largest + 1024);
  std::ostringstream os;
  os << mem;
  CHECK_THAT(os.str(), Catch::Contains("workspace"));
}
