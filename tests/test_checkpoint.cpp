// Checkpoints: save/load round trips, bit-identical resume, and rejection of damaged or
// mismatched files with the optimizer left exactly as it was. Typed over every backend in
// MUON_TEST_BACKENDS.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <muon/muon.hpp>
#include <sstream>

#include "support/backends.hpp"
#include "support/buffers.hpp"

namespace {

// The same backend family with the other scalar (for the "another scalar type" rejection).
template <class B>
struct other_scalar;
template <template <class> class Family, class T>
struct other_scalar<Family<T>> {
  using type = Family<std::conditional_t<std::is_same_v<T, float>, double, float>>;
};

// A model with a matrix, a 3-D stack, a bias and a tied embedding / head, with gradients that
// depend only on the step index (so two runs see the same gradients). The matrix and the
// embedding are stored column-major, the rest row-major.
template <class B, template <class> class Opt = muon::Muon>
struct Model {
  using T = typename B::value_type;
  std::vector<T> w = std::vector<T>(12 * 20), gw = std::vector<T>(12 * 20);
  std::vector<T> stack = std::vector<T>(2 * 6 * 9, T(0.1)), gstack = std::vector<T>(2 * 6 * 9);
  std::vector<T> b = std::vector<T>(12), gb = std::vector<T>(12);
  std::vector<T> emb = std::vector<T>(30 * 8), gemb = std::vector<T>(30 * 8);
  Opt<B> opt;

  explicit Model(typename Opt<B>::Options o = {}) : opt(o) {
    for (std::size_t i = 0; i < w.size(); ++i) w[i] = static_cast<T>(std::sin(0.3 * static_cast<double>(i)));
    for (std::size_t i = 0; i < emb.size(); ++i) emb[i] = static_cast<T>(std::cos(0.7 * static_cast<double>(i)));
    using muon::test::raw_col_major;
    opt.add("w", raw_col_major(w.data(), 12, 20), raw_col_major(gw.data(), 12, 20));
    opt.add("experts", muon::raw(stack.data(), {2, 6, 9}), muon::raw(static_cast<const T*>(gstack.data()), {2, 6, 9}));
    opt.add("b", muon::raw(b.data(), {12}), muon::raw(gb.data(), {12}), {.role = muon::Role::bias});
    opt.add("embed", raw_col_major(emb.data(), 30, 8), raw_col_major(gemb.data(), 30, 8), {.role = muon::Role::embedding});
    opt.add("lm_head", raw_col_major(emb.data(), 30, 8), raw_col_major(gemb.data(), 30, 8), {.role = muon::Role::output_head});
  }
  void gradients(int t) {
    auto f = [t](std::size_t i, double scale) { return static_cast<T>(scale * std::sin(1.7 * t + 0.11 * static_cast<double>(i))); };
    for (std::size_t i = 0; i < gw.size(); ++i) gw[i] = f(i, 1.0);
    for (std::size_t i = 0; i < gstack.size(); ++i) gstack[i] = f(i, 0.5);
    for (std::size_t i = 0; i < gb.size(); ++i) gb[i] = f(i, 2.0);
    for (std::size_t i = 0; i < gemb.size(); ++i) gemb[i] = f(i, 0.3);
  }
  void train(int from, int to) {
    for (int t = from; t < to; ++t) {
      gradients(t);
      REQUIRE(opt.step().all_applied());
    }
  }
  bool same_parameters(const Model& o) const { return w == o.w && stack == o.stack && b == o.b && emb == o.emb; }
  // Copies o's parameters into this model's registered buffers (in place: the optimizer holds
  // their pointers).
  void copy_parameters(const Model& o) {
    std::copy(o.w.begin(), o.w.end(), w.begin());
    std::copy(o.stack.begin(), o.stack.end(), stack.begin());
    std::copy(o.b.begin(), o.b.end(), b.begin());
    std::copy(o.emb.begin(), o.emb.end(), emb.begin());
  }
};

template <class M>
struct Frozen {
  std::map<std::string, std::vector<double>> state;
  std::uint64_t steps;
  double lr, fallback_lr;
  std::vector<double> w;
  std::vector<double> stack;
  explicit Frozen(M& m)
      : state(m.opt.state_snapshot()),
        steps(m.opt.steps_taken()),
        lr(m.opt.lr()),
        fallback_lr(m.opt.fallback_lr()),
        w(m.w.begin(), m.w.end()),
        stack(m.stack.begin(), m.stack.end()) {}
  bool operator==(const Frozen&) const = default;
};

std::string bytes_of(auto& opt, bool parameters) {
  std::ostringstream os;
  opt.save(os, {.parameters = parameters});
  return os.str();
}

}  // namespace

TEMPLATE_TEST_CASE("resume from a checkpoint continues bit-identically", "[checkpoint]", MUON_TEST_BACKENDS) {
  using B = TestType;
  // The reference run changes both learning rates after step 5, as a schedule would.
  Model<B> uninterrupted;
  uninterrupted.train(0, 5);
  uninterrupted.opt.set_lr(0.015);
  uninterrupted.opt.set_fallback_lr(7e-4);
  uninterrupted.train(5, 10);

  Model<B> first;
  first.train(0, 5);
  first.opt.set_lr(0.015);  // the current values travel with the checkpoint
  first.opt.set_fallback_lr(7e-4);

  SECTION("with parameters in the file") {
    const std::string file = bytes_of(first.opt, true);
    Model<B> resumed;  // fresh parameters and state
    std::istringstream is(file);
    resumed.opt.load(is);
    CHECK(resumed.opt.steps_taken() == 5);
    CHECK(resumed.opt.lr() == 0.015);
    CHECK(resumed.opt.fallback_lr() == 7e-4);
    CHECK(resumed.same_parameters(first));
    resumed.train(5, 10);
    CHECK(resumed.same_parameters(uninterrupted));
  }
  SECTION("parameters restored by the trainer") {
    const std::string file = bytes_of(first.opt, false);
    Model<B> resumed;
    resumed.copy_parameters(first);
    std::istringstream is(file);
    resumed.opt.load(is);
    resumed.train(5, 10);
    CHECK(resumed.same_parameters(uninterrupted));
  }
  SECTION("save after load reproduces the file") {
    const std::string file = bytes_of(first.opt, true);
    Model<B> resumed;
    std::istringstream is(file);
    resumed.opt.load(is);
    CHECK(bytes_of(resumed.opt, true) == file);
  }
}

TEMPLATE_TEST_CASE("damaged or mismatched checkpoints are rejected and change nothing", "[checkpoint][bad_input]",
                   MUON_TEST_BACKENDS) {
  using B = TestType;
  using T = typename B::value_type;
  Model<B> source;
  source.train(0, 3);
  const std::string good = bytes_of(source.opt, true);

  Model<B> target;
  target.train(0, 2);
  target.opt.set_lr(0.01);
  const Frozen<Model<B>> before(target);

  auto expect_rejected = [&](const std::string& file, const std::string& needle) {
    std::istringstream is(file);
    try {
      target.opt.load(is);
      FAIL("load accepted a bad checkpoint (expected: " << needle << ")");
    } catch (const muon::Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
    CHECK(Frozen<Model<B>>(target) == before);
  };

  SECTION("truncated") {
    for (std::size_t cut : {std::size_t{0}, std::size_t{5}, std::size_t{20}, good.size() / 2, good.size() - 1})
      expect_rejected(good.substr(0, cut), "checkpoint");
  }
  SECTION("one flipped byte anywhere") {
    for (std::size_t at : {std::size_t{9}, std::size_t{40}, good.size() / 3, good.size() - 9, good.size() - 1}) {
      std::string bad = good;
      bad[at] = static_cast<char>(bad[at] ^ 0x20);
      expect_rejected(bad, "checkpoint");
    }
  }
  SECTION("bad magic") {
    std::string bad = good;
    bad[0] = 'X';
    expect_rejected(bad, "not a muon checkpoint");
  }
  SECTION("a newer format version (with a valid checksum)") {
    std::string bad = good;
    bad[8] = 3;
    const auto sum = muon::detail::fnv1a64(reinterpret_cast<const unsigned char*>(bad.data()), bad.size() - 8);
    for (int i = 0; i < 8; ++i) bad[bad.size() - 8 + static_cast<std::size_t>(i)] = static_cast<char>((sum >> (8 * i)) & 0xff);
    expect_rejected(bad, "format version 3 is not supported");
  }
  SECTION("a parameter missing from the file") {
    muon::Muon<B> small;
    std::vector<T> w(12 * 20), gw(12 * 20);
    small.add("w", muon::test::raw_col_major(w.data(), 12, 20), muon::test::raw_col_major(gw.data(), 12, 20));
    small.step();
    expect_rejected(bytes_of(small, false), "parameter 'experts': missing from the checkpoint");
  }
  SECTION("a tensor the optimizer does not have") {
    Model<B> bigger;
    std::vector<T> extra(3), gextra(3);
    bigger.opt.add("extra", muon::raw(extra.data(), {3}), muon::raw(gextra.data(), {3}));
    expect_rejected(bytes_of(bigger.opt, false), "tensor 'extra' is not registered");
  }
  SECTION("a shape mismatch") {
    muon::Muon<B> other;
    std::vector<T> w(20 * 12), gw(20 * 12);
    other.add("w", muon::test::raw_col_major(w.data(), 20, 12), muon::test::raw_col_major(gw.data(), 20, 12));
    expect_rejected(bytes_of(other, false), "parameter 'w': checkpoint shape (20, 12) differs from the registered (12, 20)");
  }
  SECTION("another scalar type") {
    Model<typename other_scalar<B>::type> other;
    expect_rejected(bytes_of(other.opt, false), "-bit floating point");
  }
  SECTION("another fallback policy") {
    Model<B, muon::MuonSGD> other({.fallback = {.momentum = 0.9}});
    other.train(0, 1);
    expect_rejected(bytes_of(other.opt, false), "parameter 'b': state 'fallback/exp_avg' is missing");
  }
}
