// ManifoldModel (optimizers/manifold_model.hpp): a small MoE transformer's tensors routed by
// role to Stiefel, hypersphere and AdamW groups; every constraint held after training; the
// groups saved and loaded together (bit-identical resume, all-or-nothing rejection); one
// decision about non-finite gradients for all groups; the base lr and its per-group scales.
// Typed over every backend in MUON_TEST_BACKENDS (the bounds hold in float: Stiefel's float32
// floor is ~1e-6, a renormalised row's ~1e-7).
#include <catch2/catch.hpp>

#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <vector>

#include <muon/backend/eigen.hpp>
#include <muon/muon.hpp>

#include "support/backends.hpp"

namespace {

using muon::index_t;
template <class T>
using RowMatT = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// d_model 16, 4 experts of width 32, vocabulary 40; one layer of depth 1.
template <class B>
struct MoE {
  using T = typename B::value_type;
  using RowMat = RowMatT<T>;
  using Vec = Eigen::Matrix<T, Eigen::Dynamic, 1>;
  RowMat embed = RowMat::Zero(40, 16), g_embed = RowMat::Zero(40, 16);
  RowMat qkv = RowMat::Zero(48, 16), g_qkv = RowMat::Zero(48, 16);
  RowMat attn_out = RowMat::Zero(16, 16), g_attn_out = RowMat::Zero(16, 16);
  RowMat gate = RowMat::Zero(4, 16), g_gate = RowMat::Zero(4, 16);
  std::vector<T> up = std::vector<T>(4 * 32 * 16), g_up = std::vector<T>(4 * 32 * 16);
  std::vector<T> down = std::vector<T>(4 * 16 * 32), g_down = std::vector<T>(4 * 16 * 32);
  Vec norm = Vec::Ones(16), g_norm = Vec::Zero(16);
  muon::ManifoldModel<B> opt;

  explicit MoE(typename muon::ManifoldModel<B>::Options o = {}) : opt(std::move(o)) {
    std::mt19937 rng(5);
    std::normal_distribution<double> d(0.0, 0.3);
    for (auto* m : {&embed, &qkv, &attn_out, &gate})
      for (Eigen::Index i = 0; i < m->size(); ++i) m->data()[i] = static_cast<T>(d(rng));
    for (auto& x : up) x = static_cast<T>(d(rng));
    for (auto& x : down) x = static_cast<T>(d(rng));
    opt.add("embed", embed, g_embed, {.role = muon::Role::embedding});
    opt.add("lm_head", embed, g_embed, {.role = muon::Role::output_head});  // tied
    opt.add("qkv", qkv, g_qkv, {.role = muon::Role::query});
    opt.add("attn_out", attn_out, g_attn_out);
    opt.add("gate", gate, g_gate, {.role = muon::Role::router_gate});
    opt.add("up", muon::raw(up.data(), {4, 32, 16}), muon::raw(static_cast<const T*>(g_up.data()), {4, 32, 16}));
    opt.add("down", muon::raw(down.data(), {4, 16, 32}), muon::raw(static_cast<const T*>(g_down.data()), {4, 16, 32}));
    opt.add("norm", norm, g_norm, {.role = muon::Role::norm});
  }
  void gradients(int t) {
    std::mt19937 rng(static_cast<unsigned>(1000 + t));
    std::normal_distribution<double> d(0.0, 1.0);
    for (auto* m : {&g_embed, &g_qkv, &g_attn_out, &g_gate})
      for (Eigen::Index i = 0; i < m->size(); ++i) m->data()[i] = static_cast<T>(d(rng));
    for (auto& x : g_up) x = static_cast<T>(d(rng));
    for (auto& x : g_down) x = static_cast<T>(d(rng));
    for (Eigen::Index i = 0; i < g_norm.size(); ++i) g_norm[i] = static_cast<T>(d(rng));
  }
  std::vector<T> everything() const {
    std::vector<T> v;
    for (const auto* m : {&embed, &qkv, &attn_out, &gate}) v.insert(v.end(), m->data(), m->data() + m->size());
    v.insert(v.end(), up.begin(), up.end());
    v.insert(v.end(), down.begin(), down.end());
    v.insert(v.end(), norm.data(), norm.data() + norm.size());
    return v;
  }
};

// ||W^T W - I||_F for a tall slice, ||W W^T - I||_F for a wide one.
template <class T>
double stiefel_error(const T* data, index_t rows, index_t cols) {
  using RowMat = RowMatT<double>;
  const RowMat w = Eigen::Map<const RowMatT<T>>(data, rows, cols).template cast<double>();
  const RowMat gram = rows >= cols ? RowMat(w.transpose() * w) : RowMat(w * w.transpose());
  return (gram - RowMat::Identity(gram.rows(), gram.cols())).norm();
}
template <class T>
double max_row_norm_error(const RowMatT<T>& m) {
  return (m.template cast<double>().rowwise().norm().array() - 1.0).abs().maxCoeff();
}

}  // namespace

TEMPLATE_TEST_CASE("ManifoldModel routes by role and keeps every constraint", "[manifold_model]", MUON_TEST_BACKENDS) {
  using B = TestType;
  MoE<B> moe;
  CHECK(moe.opt.group("embed") == "embeddings");
  CHECK(moe.opt.group("lm_head") == "embeddings");
  CHECK(moe.opt.group("qkv") == "stiefel");
  CHECK(moe.opt.group("attn_out") == "stiefel");
  CHECK(moe.opt.group("up") == "stiefel");
  CHECK(moe.opt.group("gate") == "router_gates");
  CHECK(moe.opt.group("norm") == "norms");
  const auto report = moe.opt.routing_report();
  REQUIRE(report.entries.size() == 7);  // the tied head is an alias of the embedding
  CHECK(report.count(muon::Path::matrix) == 6);
  CHECK(moe.opt.norms().fallback_lr() == Approx(0.2));  // 10 x the base lr 0.02

  const auto norm0 = moe.norm;
  muon::ModelStepResult r;
  for (int t = 0; t < 300; ++t) {
    moe.gradients(t);
    r = moe.opt.step();
    REQUIRE(r.all_applied());
  }
  CHECK(stiefel_error(moe.qkv.data(), 48, 16) < 1e-4);
  CHECK(stiefel_error(moe.attn_out.data(), 16, 16) < 1e-4);
  for (index_t e = 0; e < 4; ++e) {
    CHECK(stiefel_error(moe.up.data() + e * 32 * 16, 32, 16) < 1e-4);
    CHECK(stiefel_error(moe.down.data() + e * 16 * 32, 16, 32) < 1e-4);
  }
  CHECK(max_row_norm_error(moe.embed) < 1e-6);
  CHECK(max_row_norm_error(moe.gate) < 1e-6);
  CHECK((moe.norm - norm0).norm() > 0.1);  // AdamW at lr 0.2 moved it
  // The step's constraint numbers come from the groups.
  CHECK(r.constraint.max_stiefel_error < 1e-4);
  CHECK(r.constraint.max_sphere_error < 1e-6);
  CHECK(r.constraint.dual_iterations > 0);
  CHECK(r.step == 300);
  CHECK(moe.opt.memory_report().state_bytes() > 0);
}

TEMPLATE_TEST_CASE("ManifoldModel saves and loads its groups together", "[manifold_model][checkpoint]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  using RowMat = RowMatT<T>;
  MoE<B> a, b;
  for (int t = 0; t < 20; ++t) {
    a.gradients(t);
    a.opt.step();
  }
  std::stringstream file;
  a.opt.save(file, {.parameters = true});
  const std::string bytes = file.str();

  // Damaged files are rejected and change nothing.
  const auto before = b.everything();
  for (std::size_t cut : {std::size_t{4}, bytes.size() / 2, bytes.size() - 1}) {
    std::istringstream truncated(bytes.substr(0, cut));
    CHECK_THROWS_AS(b.opt.load(truncated), muon::Error);
  }
  std::string flipped = bytes;
  flipped[bytes.size() - 28] ^= 0x5a;  // inside the last group's checkpoint
  std::istringstream bad(flipped);
  CHECK_THROWS_WITH(b.opt.load(bad), Catch::Contains("checksum mismatch"));
  // The same flip with the container's checksum recomputed: the group's own checksum names it.
  const auto sum = muon::detail::fnv1a64(reinterpret_cast<const unsigned char*>(flipped.data()), flipped.size() - 8);
  for (int i = 0; i < 8; ++i) flipped[flipped.size() - 8 + static_cast<std::size_t>(i)] = static_cast<char>((sum >> (8 * i)) & 0xff);
  std::istringstream bad_group(flipped);
  CHECK_THROWS_WITH(b.opt.load(bad_group), Catch::Contains("group 'norms'"));
  CHECK(b.everything() == before);
  CHECK(b.opt.steps_taken() == 0);

  // A model missing one tensor cannot take the checkpoint; nothing is loaded into any group.
  {
    muon::ManifoldModel<B> partial;
    RowMat q = RowMat::Zero(48, 16), gq = RowMat::Zero(48, 16);
    partial.add("qkv", q, gq);
    std::istringstream in(bytes);
    CHECK_THROWS_AS(partial.load(in), muon::Error);
    CHECK(q.isZero());
  }

  // The container itself: a flipped step-count bit is caught by its checksum; group names that
  // are unknown or appear twice are refused even with a valid checksum.
  {
    std::string steps_flipped = bytes;
    steps_flipped[12] ^= 0x04;  // u64 steps after "MUONMODL" and the version
    std::istringstream in(steps_flipped);
    CHECK_THROWS_WITH(b.opt.load(in), Catch::Contains("checksum mismatch"));
    // Rebuilt with chosen group names (str name, u64 size, blob), checksum recomputed.
    auto rebuilt = [&](const std::vector<std::string>& names) {
      muon::detail::CheckpointWriter w;
      w.put_raw(bytes.data(), 8);
      w.put(std::uint32_t{2});
      w.put(std::uint64_t{20});
      w.put(static_cast<std::uint32_t>(names.size()));
      for (const auto& n : names) {
        w.put_string(n);
        w.put(std::uint64_t{3});
        w.put_raw("abc", 3);
      }
      std::ostringstream os;
      w.finish(os);
      return os.str();
    };
    std::istringstream unknown(rebuilt({"stiefel", "embeddings", "router_gates", "norms", "extra"}));
    CHECK_THROWS_WITH(b.opt.load(unknown), Catch::Contains("unknown group 'extra'"));
    std::istringstream twice(rebuilt({"stiefel", "stiefel", "embeddings", "router_gates", "norms"}));
    CHECK_THROWS_WITH(b.opt.load(twice), Catch::Contains("group 'stiefel' appears twice"));
    CHECK(b.everything() == before);
    CHECK(b.opt.steps_taken() == 0);
  }

  std::istringstream in(bytes);
  b.opt.load(in);
  CHECK(b.everything() == a.everything());
  for (int t = 20; t < 30; ++t) {
    a.gradients(t);
    b.gradients(t);
    a.opt.step();
    b.opt.step();
  }
  CHECK(b.everything() == a.everything());
  CHECK(b.opt.steps_taken() == 30);
}

TEMPLATE_TEST_CASE("ManifoldModel decides about non-finite gradients for all groups at once", "[manifold_model][bad_input]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  using RowMat = RowMatT<T>;
  {
    MoE<B> moe({.non_finite = muon::NonFinitePolicy::skip_step});
    moe.gradients(0);
    moe.g_norm[2] = std::numeric_limits<T>::quiet_NaN();
    const auto before = moe.everything();
    const auto r = moe.opt.step();
    CHECK(r.skipped.size() == 7);
    CHECK(moe.everything() == before);
    CHECK(moe.opt.stiefel().steps_taken() == 1);  // the schedules stay in line
  }
  {
    MoE<B> moe({.non_finite = muon::NonFinitePolicy::throw_error});
    moe.gradients(0);
    moe.g_up[7] = std::numeric_limits<T>::infinity();
    const auto before = moe.everything();
    CHECK_THROWS_WITH(moe.opt.step(), Catch::Contains("'up'"));
    CHECK(moe.everything() == before);
  }
  {
    MoE<B> moe({.loss_scaling = true});
    moe.gradients(0);
    moe.g_gate(1, 1) = std::numeric_limits<T>::infinity();
    const auto before = moe.everything();
    const auto r = moe.opt.step({.inv_scale = 0.5});
    CHECK(r.overflow);
    CHECK(moe.everything() == before);
  }
  {
    MoE<B> moe;  // default: only the bad tensor is skipped
    moe.gradients(0);
    moe.g_qkv(0, 0) = std::numeric_limits<T>::quiet_NaN();
    const RowMat qkv = moe.qkv;
    const auto r = moe.opt.step();
    REQUIRE(r.skipped.size() == 1);
    CHECK(r.skipped[0] == "qkv");
    CHECK(moe.qkv == qkv);
    CHECK_THROWS_WITH(moe.opt.step({.inv_scale = 0.5}), Catch::Contains("loss_scaling"));
  }
}

TEMPLATE_TEST_CASE("ManifoldModel: one base lr, scaled per group", "[manifold_model]", MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  using RowMat = RowMatT<T>;
  MoE<B> moe({.lr = 0.01, .embedding_lr_scale = 0.5});
  CHECK(moe.opt.stiefel().lr() == Approx(0.01));
  CHECK(moe.opt.embeddings().lr() == Approx(0.005));
  CHECK(moe.opt.norms().fallback_lr() == Approx(0.1));
  moe.opt.set_lr(0.04);
  CHECK(moe.opt.router_gates().lr() == Approx(0.04));
  CHECK(moe.opt.norms().fallback_lr() == Approx(0.4));
  CHECK_THROWS(moe.opt.set_lr(-1.0));
  RowMat dup = RowMat::Zero(4, 4), gdup = RowMat::Zero(4, 4);
  CHECK_THROWS_WITH(moe.opt.add("qkv", dup, gdup), Catch::Contains("already registered"));
}
